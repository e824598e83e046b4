"""The regime table of both reports, screen beside target (analysis/regime.py), and what follows from each row;
the target each report sets the screen beside; which variants the screen cannot judge (regime.not_judged)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gptlab import GptlabError
from gptlab.experiments.analysis.regime import (
    INFORMATIVE_MARGIN,
    MAX_FACTOR,
    Regime,
    acts_on,
    config_regime,
    not_judged,
)
from gptlab.experiments.analysis.yardsticks import SEED_BASELINE, SEED_TOKENS
from gptlab.experiments.report.format import DASH, fmt

# The experiment report's target when its spec names none: the seed's GPT-2 small, from the repository's configs/
# (configs are not installed with the package; a checkout run with PYTHONPATH=src or an editable install has them).
SEED_CONFIG = Path(__file__).resolve().parents[4] / "configs" / "gpt2-small-baseline.toml"


@dataclass
class Target:
    """What a report sets its screen beside: the target's config and tokens, its Regime (None: the config could
    not be read), and the line the report says about it."""

    config: Path
    tokens: float | None
    regime: Regime | None
    note: str


def load_target(config: str | Path | None = None, tokens: float | None = None) -> Target:
    """The target at `config` trained for `tokens` (None: the config's own budget); default the seed's GPT-2 small
    (SEED_CONFIG, SEED_TOKENS). Its baseline loss is the seed's published test loss when the config is the seed's,
    else unknown; its unigram loss and epochs are unknown unless its data is prepared here."""
    from gptlab.config import load_config

    if config is None:
        config, tokens = SEED_CONFIG, SEED_TOKENS if tokens is None else tokens
    path = Path(config)
    if not path.is_file():
        return Target(path, tokens, None, f"The target's config {path} was not found: the screen column only.")
    try:
        cfg = load_config(path)
    except GptlabError as e:
        return Target(path, tokens, None, f"The target's config could not be read ({e}): the screen column only.")
    if tokens:
        cfg.train.tokens, cfg.train.flops = int(tokens), 0.0
    seed = SEED_CONFIG.is_file() and path.resolve() == SEED_CONFIG
    reg = config_regime(cfg, SEED_BASELINE if seed else math.nan)
    what = "the seed's GPT-2 small, its published test loss" if seed else "no published baseline loss"
    data = "" if reg.train_tokens else f"; its data ({cfg.data.dir}) is not prepared here, so its epochs are unknown"
    return Target(path, tokens, reg, f"Target: `{path}`, {reg.tokens:,} tokens ({what}{data}).")


def _ratio(a: float, b: float) -> float:
    lo, hi = sorted((float(a), float(b)))
    return math.inf if lo <= 0 else hi / lo


def _apart(name: str, s: float, t: float, what: str) -> str:
    r = _ratio(s, t)
    if r > MAX_FACTOR:
        return f"{name} ×{r:,.0f} apart: interventions acting on {what} are not judged"
    return f"{name} within ×{MAX_FACTOR:g}: interventions acting on {what} are judged"


def _epochs_follow(s: Regime, t: Regime) -> str:
    if not math.isfinite(t.epochs):
        return (
            "the target's epochs are unknown: interventions acting on data repetition are judged only when the "
            "screen reads its data at most once"
        )
    if not_judged(("data_repetition",), s, t):
        return (
            f"screen {s.epochs:.3g} epochs, target {t.epochs:.3g}: interventions acting on data repetition are "
            "not judged"
        )
    return "both read their data alike: interventions acting on data repetition are judged"


def regime_table(screens: list[tuple[str, Regime]], target: Regime | None) -> tuple[list[str], list[list[str]]]:
    """Rows of quantities, one column per screen (a rung, or the experiment's baseline) and the target, and what
    follows, comparing the last screen column (the largest rung) with the target."""
    s = screens[-1][1]
    cols = [r for _, r in screens] + ([target] if target is not None else [])
    low = [name for name, r in screens if r.row()["informative"] is False]
    loss_follows = (
        f"uninformative: {', '.join(low)} (baseline not {INFORMATIVE_MARGIN:g} nats below the unigram model)"
        if low
        else f"informative where both are measured (baseline ≥ {INFORMATIVE_MARGIN:g} nats below the unigram model)"
    )
    t = target

    def follows(fn):
        return fn() if t is not None else DASH

    rows = [
        ("baseline test loss", [fmt(r.baseline_loss, ".4f") for r in cols], loss_follows),
        ("unigram model's test loss", [fmt(r.unigram_loss, ".4f") for r in cols], "word frequencies alone"),
        (
            "context learned (nats)",
            [fmt(r.context_learned, "+.4f") for r in cols],
            "what the baseline learned beyond word frequencies",
        ),
        (
            "optimizer steps",
            [f"{r.steps:,}" for r in cols],
            follows(lambda: _apart("steps", s.steps, t.steps, "the training horizon")),
        ),
        (
            "tokens per step",
            [f"{r.tokens_per_step:,}" for r in cols],
            follows(lambda: _apart("tokens per step", s.tokens_per_step, t.tokens_per_step, "the batch")),
        ),
        (
            "tokens per parameter",
            [fmt(r.tokens_per_param, ".3g") for r in cols],
            follows(
                lambda: (
                    f"×{_ratio(s.tokens_per_param, t.tokens_per_param):.3g} apart: the screen's models are "
                    f"{'less' if s.tokens_per_param < t.tokens_per_param else 'more'} trained for their size than "
                    "the target"
                )
            ),
        ),
        ("epochs over the training data", [fmt(r.epochs, ".3g") for r in cols], follows(lambda: _epochs_follow(s, t))),
        (
            "context length",
            [f"{r.context:,}" for r in cols],
            follows(lambda: f"the screen sees dependencies up to {s.context:,} tokens, the target up to {t.context:,}"),
        ),
        ("width", [f"{r.width:,}" for r in cols], follows(lambda: _apart("width", s.width, t.width, "the width"))),
        (
            "precision",
            [r.precision for r in cols],
            follows(
                lambda: (
                    "the same: interventions acting on precision are judged"
                    if s.precision == t.precision
                    else "different: interventions acting on precision are not judged"
                )
            ),
        ),
    ]
    head = ["quantity"] + [name for name, _ in screens] + (["target"] if target is not None else []) + ["what follows"]
    return head, [[q, *vals, why] for q, vals, why in rows]


def not_judged_reason(interventions, screen: Regime, target: Regime | None) -> str | None:
    """ "not judged by this screen: acts on ..." for a variant whose interventions act on what the screen and the
    target differ in too much (regime.not_judged); None when the screen judges it or there is no target."""
    if target is None:
        return None
    why = not_judged(acts_on(interventions), screen, target)
    return f"not judged by this screen: {why}" if why else None


def experiment_regime(run_dirs: dict[str, Path], losses: dict[str, list[float]], baseline: str, target: Target):
    """The experiment report's regime part: its baseline config (the first baseline run directory in `run_dirs`,
    variant -> run directory) beside `target`, and a line per variant the screen cannot judge. None when no
    baseline run directory holds its config (results recorded without their runs)."""
    from gptlab.config import config_from_run

    if baseline not in run_dirs:
        return None
    base_cfg = config_from_run(run_dirs[baseline])
    losses_b = [x for x in losses.get(baseline, []) if x is not None and math.isfinite(x)]
    screen = config_regime(base_cfg, sum(losses_b) / len(losses_b) if losses_b else math.nan)
    lines = [target.note]
    if screen.row()["informative"] is False:
        lines.append(
            f"The baseline is not {INFORMATIVE_MARGIN:g} nats below the unigram model: the screen has not learned "
            "context beyond word frequencies, and its Δs say little about the target."
        )
    for name, rd in sorted(run_dirs.items()):
        if name == baseline:
            continue
        extra = [s for s in config_from_run(rd).interventions if s not in base_cfg.interventions]
        why = not_judged_reason(extra, screen, target.regime)
        if why:
            lines.append(f"{name}: {why}.")
    return {"table": regime_table([("screen (baseline)", screen)], target.regime), "lines": lines}
