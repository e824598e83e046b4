"""Tuned baselines: every variant compared at its own best value of one setting (usually train.lr), beside the
comparison at the base config's value.

An intervention that changes the effective step size (Muon, a batch rule) can look better at the baseline's lr
only because the baseline's lr was not the best for it, or for the baseline. A sweep trains every variant at every
value of a grid (few seeds, kept apart from the experiment's seeds), picks each variant's value with the lowest
mean *validation* loss (the test split plays no part in the choice, so the test comparison that follows is not
biased by it), and the experiment then trains every variant at its chosen value on the experiment's seeds.

Run ids: a sweep run is `VARIANT@lr=VALUE-sSEED`; a tuned run is the plain `VARIANT-sSEED` when the chosen value is
the base config's (the run at the baseline's lr is then reused), else `VARIANT@lr=VALUE-sSEED`. Variant names
cannot contain "@", so these runs are never mistaken for a spec's own variants (the leaderboard leaves them out).

EXP/sweep.json holds the grid, each variant's mean validation loss per value, the chosen values and, once the tuned
matrix has run, the tuned run ids; the report reads it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from gptlab import GptlabError
from gptlab.experiments.specs.experiment import MAX_GRID, Spec, Tune, label
from gptlab.experiments.specs.matrix import PlannedRun

SWEEP_FILE = "sweep.json"
CRITERION = "lowest mean final validation loss over the sweep's seeds"


def parse_grid(text: str, where: str = "--grid") -> list[float]:
    """ "1e-3,2e-3,4e-3" (a list) or "1e-3:8e-3:4" (4 values spaced evenly in log from 1e-3 to 8e-3); at most
    MAX_GRID values."""
    if text.count(",") >= MAX_GRID:
        raise GptlabError(f"{where}: more than {MAX_GRID} values (each one is a run per variant and seed)")
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            lo_f, hi_f, k = float(lo), float(hi), int(n)
            if k > MAX_GRID:
                raise GptlabError(f"{where}: {k} values; at most {MAX_GRID} (each one is a run per variant and seed)")
            if not (0 < lo_f < hi_f and k >= 2):
                raise ValueError
            step = (math.log(hi_f) - math.log(lo_f)) / (k - 1)
            return [float(f"{math.exp(math.log(lo_f) + i * step):.6g}") for i in range(k)]
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GptlabError(
            f"{where}: expected values like 1e-3,2e-3,4e-3 or a log grid LO:HI:N (0 < LO < HI, N >= 2), got {text!r}"
        ) from None


def base_values(spec: Spec, planned: list[PlannedRun]) -> dict[str, float]:
    """Each variant's value of the tuned setting without tuning, read from its planned runs (specs/matrix.py):
    what its untuned runs train with, the spec's overrides, --set and its interventions included."""
    section, key = spec.tune.param.split(".", 1)
    out: dict[str, float] = {}
    for p in planned:
        out.setdefault(p.variant.name, float(getattr(getattr(p.cfg, section), key)))
    missing = [v.name for v in spec.variants if v.name not in out]
    if missing:
        raise GptlabError(f"tune: no planned run of {', '.join(missing)} to read its {spec.tune.param} from")
    return out


def values(tune: Tune, base: float) -> list[float]:
    """A variant's candidates: the grid and its base value."""
    return sorted(set(tune.grid) | {base})


def sweep_spec(spec: Spec, base: dict[str, float]) -> Spec:
    """Every variant at every candidate value (the grid and its value in `base`: base_values), on the sweep's
    seeds."""
    tune = spec.tune
    return replace(
        spec, variants=[v.at(tune, x, tune.seeds) for v in spec.variants for x in values(tune, base[v.name])]
    )


def tuned_spec(spec: Spec, best: dict[str, float], base: dict[str, float]) -> Spec:
    """Every variant at its chosen value on the experiment's seeds: the plain variant where that is its base value."""
    return replace(
        spec,
        variants=[v if best[v.name] == base[v.name] else v.at(spec.tune, best[v.name], v.seeds) for v in spec.variants],
    )


def choose(spec: Spec, val_loss: dict[str, float | None], base: dict[str, float]) -> dict:
    """Each variant's chosen value among its candidates (the grid and its value in `base`) from the sweep runs'
    final validation losses (run id -> loss; a diverged run counts as infinitely bad). Returns sweep.json's
    content without the tuned runs."""
    tune = spec.tune
    table: dict[str, dict[str, float | None]] = {}
    best: dict[str, float] = {}
    at_edge = []
    for v in spec.variants:
        cands = values(tune, base[v.name])
        means = {}
        for x in cands:
            losses = [val_loss.get(spec.run_id(v.at(tune, x).name, s)) for s in tune.seeds]
            if any(loss is None for loss in losses):
                raise GptlabError(f"sweep: {v.name} at {tune.param}={label(x)} has no finished run for every seed")
            finite = all(math.isfinite(loss) for loss in losses)
            means[x] = sum(losses) / len(losses) if finite else math.inf
        chosen = min(cands, key=lambda x: (means[x], x))
        if not math.isfinite(means[chosen]):
            raise GptlabError(f"sweep: {v.name} diverged at every {tune.param} value tried")
        table[v.name] = {label(x): (means[x] if math.isfinite(means[x]) else None) for x in cands}
        best[v.name] = chosen
        if chosen in (cands[0], cands[-1]):
            at_edge.append(v.name)
    return {
        "param": tune.param,
        "grid": tune.grid,
        "seeds": tune.seeds,
        "criterion": CRITERION,
        "val_loss": table,
        "best": best,
        "base": {v.name: base[v.name] for v in spec.variants},
        "at_edge": at_edge,
    }


def read_sweep(exp_dir: str | Path) -> dict | None:
    p = Path(exp_dir) / SWEEP_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GptlabError(f"{p}: unreadable ({e})") from None


def format_sweep(sweep: dict) -> tuple[list[str], list[list[str]]]:
    """The sweep as a table: a row per variant, a column per value tried, the chosen one marked with *."""
    cols = sorted({float(x) for row in sweep["val_loss"].values() for x in row})
    body = []
    for name, row in sweep["val_loss"].items():
        cells = [name]
        for x in cols:
            loss = row.get(label(x))
            mark = "*" if x == sweep["best"][name] else ""
            cells.append("-" if label(x) not in row else ("diverged" if loss is None else f"{loss:.4f}{mark}"))
        body.append(cells)
    return ["variant"] + [f"{sweep['param']}={label(x)}" for x in cols], body


def sweep_notes(sweep: dict) -> list[str]:
    """What the reader must know about the choice: its criterion and values at the grid's edge."""
    out = [
        f"{sweep['param']} chosen per variant by the {sweep['criterion']} ({len(sweep['seeds'])} seed(s): "
        f"{', '.join(map(str, sweep['seeds']))}); * marks the chosen value; the test split played no part."
    ]
    if sweep["at_edge"]:
        out.append(
            f"chosen at the edge of the values tried: {', '.join(sweep['at_edge'])} (the best value may lie "
            f"outside the grid; widen tune_grid)"
        )
    return out
