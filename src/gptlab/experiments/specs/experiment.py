"""What an experiment is: a matrix of variants x seeds on one base config, read from a TOML spec and checked
before anything runs (every run's config is resolved once, so a typo fails in seconds, not after hours).

Spec (TOML):

    name = "seed-interventions"
    base = "../tiny-cpu.toml"          # relative to the spec file
    seeds = [1, 2, 3]
    baseline = "baseline"              # the variant every other one is compared with
    alpha = 0.05                       # optional: the family-wise error rate of the verdicts (0 < alpha < 0.5)
    equivalence_margin = 0.01          # optional, nats: a variant whose 90% CI of the difference is inside
                                       # ±margin reads "equivalent within ±0.01" (TOST)
    design = "paired"                  # optional: "independent" (default: Welch's test; every run trains with
                                       # its own seed, run_seed(), so no two variants share initialisation or
                                       # data order) or "paired" (every variant's seed s trains with seed s, as
                                       # the baseline's does: the per-seed differences are tested)
    tune = "lr"                        # optional: also compare every variant at its own best train.lr
    tune_grid = [1e-3, 2e-3, 4e-3]     # with tune: the values the sweep tries (besides the base value)
    tune_seeds = [1001]                # with tune: the sweep's seeds (default [1001]; apart from `seeds`)
    target = { config = "../gpt2-small-baseline.toml", tokens = 3.26e9 }   # optional: what the report's regime
                                       # table sets the screen beside (default: the seed's GPT-2 small)
    [overrides.train]                  # optional: applied to every run (same budget for all)
    tokens = 1_000_000
    [[variants]]
    name = "baseline"
    interventions = []
    [[variants]]
    name = "grad_clip"
    interventions = ["grad_clip:max_norm=1.0"]
    reference = 3.678                  # optional published loss, shown in the report
    seeds = [1, 2, 3, 4, 5]            # optional: this variant's own seeds
"""

from __future__ import annotations

import difflib
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import deep_merge, read_config_toml, read_toml
from gptlab.io import plain_name

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SPEC_KEYS = {
    "name",
    "base",
    "seeds",
    "baseline",
    "variants",
    "overrides",
    "description",
    "equivalence_margin",
    "design",
    "tune",
    "tune_grid",
    "tune_seeds",
    "alpha",
    "target",
}
DESIGNS = ("independent", "paired")
_VARIANT_KEYS = {"name", "interventions", "reference", "seeds"}


TUNE_MARK = "@"  # separates a variant's name from its tuned setting in derived names (tuning.py)
TUNE_ALIASES = {"lr": "train.lr", "muon_lr": "train.muon_lr", "weight_decay": "train.weight_decay"}


def label(x: float) -> str:
    """A tuned value as it appears in run names."""
    return f"{x:.6g}"


@dataclass
class Tune:
    """tune / tune_grid / tune_seeds: sweep one number setting and compare each variant at its best value."""

    param: str  # dotted config key, e.g. "train.lr"
    grid: list[float]  # the values tried besides each variant's base value
    seeds: list[int]  # the sweep's seeds

    @property
    def short(self) -> str:
        return self.param.rsplit(".", 1)[-1]


@dataclass
class Variant:
    name: str
    interventions: list[str] = field(default_factory=list)
    reference: float | None = None
    seeds: list[int] | None = None  # this variant's own seeds (default: the spec's)
    overrides: dict = field(default_factory=dict)  # a derived variant's own settings (tuning.py), applied last

    def at(self, tune: Tune, x: float, seeds: list[int] | None = None) -> Variant:
        """This variant with the tuned setting at `x` (named VARIANT@SHORT=VALUE), on `seeds`."""
        section, key = tune.param.split(".", 1)
        return Variant(
            f"{self.name}{TUNE_MARK}{tune.short}={label(x)}", list(self.interventions), None, seeds, {section: {key: x}}
        )


@dataclass
class Spec:
    path: Path
    name: str
    base: Path
    seeds: list[int]
    baseline: str
    variants: list[Variant]
    overrides: dict
    equivalence_margin: float | None = None  # nats; the report's TOST margin
    design: str = "independent"  # the report's test: Welch's (independent) or paired by seed
    alpha: float = 0.05  # the verdicts' family-wise error rate (Holm; sequential: Bonferroni over variants)
    tune: Tune | None = None  # sweep a setting and compare each variant at its best value too (tuning.py)
    target: tuple[Path, float | None] | None = None  # (config, tokens or None): the regime table's target

    def run_id(self, variant: str, seed: int) -> str:
        """The run's name, also its folder's under runs/ (a plain name: never a path out of it)."""
        return plain_name(f"{variant}-s{seed}", f"{self.path}: run id")

    def run_seed(self, variant: Variant, seed: int) -> int:
        """The train.seed run `seed` of `variant` trains with (initialisation, dropout and, unless data.data_seed
        pins it, data order). Paired: `seed` itself, shared with the baseline's seed `seed`. Independent: a seed
        of the run's own, crc32 of "VARIANT/seed", so that Welch's test compares independent samples (sharing
        seeds across variants correlates them and makes the test conservative)."""
        if self.design == "paired":
            return seed
        return zlib.crc32(f"{variant.name}/{seed}".encode()) & 0x7FFFFFFF

    def matrix(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in (v.seeds or self.seeds)]

    def raw_config(self, variant: Variant, seed: int, extra: dict | None = None) -> dict:
        """The run's config as a TOML-ready dict: base, then the spec's overrides, then `extra` (--set),
        then the run's name and seed; the variant's interventions appended to the base's."""
        raw = read_config_toml(self.base)
        raw = deep_merge(raw, self.overrides)
        if extra:
            raw = deep_merge(raw, extra)
        if variant.overrides:
            raw = deep_merge(raw, variant.overrides)
        raw = deep_merge(
            raw,
            {
                "name": f"{self.name}/{self.run_id(variant.name, seed)}",
                "train": {"seed": self.run_seed(variant, seed), "progress": False},
            },
        )
        raw["interventions"] = list(raw.get("interventions", [])) + list(variant.interventions)
        return raw

    def resolve(self, variant: Variant, seed: int, extra: dict | None = None, where: str = ""):
        """The run's config resolved (config.resolve of raw_config: preset, interventions, validation, corpus
        vocabulary) with its hash; errors name `where` (default: the spec file)."""
        from gptlab.config import resolve

        return resolve(self.raw_config(variant, seed, extra), where=where or str(self.path))

    def resolved_config(self, variant: Variant, seed: int, extra: dict | None = None, where: str = ""):
        """The run's typed, validated config (`resolve`'s)."""
        return self.resolve(variant, seed, extra, where).cfg


def load_spec(path: str | Path, data: dict | None = None, check_configs: bool = True) -> Spec:
    """Read and check a spec; every variant's config is resolved once here (at its first seed), unless not
    `check_configs`: then the caller resolves them (the runner's specs/matrix.py plan_matrix resolves every run
    of the matrix once; a spec with tune settings is still checked here, as read_tune resolves its grid).
    `data`: the spec's table instead of the file's (a derived spec, e.g. a ladder's rung; `path` still names it
    and anchors `base`)."""
    p = Path(path)
    d = read_toml(p) if data is None else data
    where = str(p)
    for k in d:
        if k not in _SPEC_KEYS:
            close = difflib.get_close_matches(k, _SPEC_KEYS, n=1)
            raise GptlabError(f"{where}: {k}: unknown key" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if "base" not in d:
        raise GptlabError(f"{where}: base: missing (the base config TOML, relative to this file)")
    base = (p.parent / d["base"]).resolve()
    if not base.is_file():
        raise GptlabError(f"{where}: base: {d['base']} not found (looked for {base})")
    seeds = _seed_list(d.get("seeds", [1, 2, 3]), f"{where}: seeds")
    variants = [_variant(v, f"{where}: variants[{i}]") for i, v in enumerate(d.get("variants", []))]
    if not variants:
        raise GptlabError(f"{where}: variants: at least one [[variants]] entry is needed")
    names = [v.name for v in variants]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise GptlabError(f"{where}: variants: duplicate name {sorted(dup)[0]}")
    baseline = d.get("baseline", "baseline")
    if baseline not in names:
        raise GptlabError(f"{where}: baseline: '{baseline}' is not one of the variants ({', '.join(names)})")
    overrides = d.get("overrides", {})
    if not isinstance(overrides, dict):
        raise GptlabError(f"{where}: overrides: expected a table")
    margin = d.get("equivalence_margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0):
        raise GptlabError(f"{where}: equivalence_margin: expected a positive number of nats, got {margin!r}")
    design = d.get("design", "independent")
    if design not in DESIGNS:
        raise GptlabError(f'{where}: design: expected "independent" or "paired", got {design!r}')
    alpha = d.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
        raise GptlabError(f"{where}: alpha: expected a number between 0 and 0.5 (e.g. 0.05), got {alpha!r}")
    name = plain_name(d.get("name", p.stem), f"{where}: name")  # experiments/NAME: a folder of experiments/
    spec = Spec(
        p,
        name,
        base,
        seeds,
        baseline,
        variants,
        overrides,
        None if margin is None else float(margin),
        design,
        float(alpha),
    )
    if "target" in d:
        spec.target = read_target(d["target"], p, f"{where}: target")
    tuned = any(k in d for k in ("tune", "tune_grid", "tune_seeds"))
    for v in variants if check_configs or tuned else []:
        spec.resolved_config(v, seeds[0], where=f"{where}: variant {v.name}")
    if tuned:
        spec.tune = read_tune(spec, d, where)
    return spec


def positive_number(x) -> bool:
    """A finite number above 0 as TOML gives it (int or float; `true` is not a number)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def read_target(target, p: Path, where: str) -> tuple[Path, float | None]:
    """A target table { config = "CONFIG.toml", tokens = N }, checked as a ladder's [ladder] target is: the config
    relative to the spec file `p` and present, tokens (optional) a positive number."""
    if not isinstance(target, dict) or "config" not in target:
        raise GptlabError(f'{where}: expected a table {{ config = "CONFIG.toml", tokens = N }}, got {target!r}')
    bad = sorted(set(target) - {"config", "tokens"})
    if bad:
        raise GptlabError(f"{where}.{bad[0]}: unknown key (config, tokens)")
    if not isinstance(target["config"], str):
        raise GptlabError(f"{where}.config: expected a path to a config TOML, got {target['config']!r}")
    path = (p.parent / target["config"]).resolve()
    if not path.is_file():
        raise GptlabError(f"{where}.config: {target['config']} not found (looked for {path})")
    tokens = target.get("tokens")
    if tokens is not None and not positive_number(tokens):
        raise GptlabError(f"{where}.tokens: expected a positive number of tokens, got {tokens!r}")
    return path, None if tokens is None else float(tokens)


def read_tune(
    spec: Spec,
    d: dict,
    where: str,
    param: str | None = None,
    grid: list[float] | None = None,
    seeds: list[int] | None = None,
) -> Tune:
    """The spec's tune / tune_grid / tune_seeds (or `gptlab sweep`'s --param / --grid / --seeds instead),
    checked: the setting is a number of the config and every variant's config resolves at every value."""
    param = param or d.get("tune")
    if not isinstance(param, str) or not param:
        raise GptlabError(f'{where}: tune: expected the setting to tune, e.g. "lr" or "train.lr", got {param!r}')
    param = TUNE_ALIASES.get(param, param)
    section, _, key = param.partition(".")
    cfg = spec.resolved_config(spec.variants[0], spec.seeds[0])
    value = getattr(getattr(cfg, section, None), key, None) if key else None
    if not isinstance(value, float):
        raise GptlabError(f"{where}: tune: {param} is not a number setting of the config (e.g. train.lr)")
    if grid is None:
        grid = d.get("tune_grid")
        if not isinstance(grid, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in grid):
            raise GptlabError(f"{where}: tune_grid: expected a list of numbers, got {grid!r}")
    if len(grid) > MAX_GRID:
        raise GptlabError(
            f"{where}: tune_grid: {len(grid)} values; at most {MAX_GRID} (each one is a run per variant and seed)"
        )
    grid = sorted({float(x) for x in grid})
    labels = [label(x) for x in grid]
    if len(grid) < 2 or len(set(labels)) != len(labels):
        raise GptlabError(f"{where}: tune_grid: expected at least 2 distinct values, got {labels}")
    seeds = _seed_list(seeds if seeds is not None else d.get("tune_seeds", [1001]), f"{where}: tune_seeds")
    tune = Tune(param, grid, seeds)
    for v in spec.variants:
        for x in grid:
            spec.resolved_config(v.at(tune, x), seeds[0], where=f"{where}: {param}={label(x)}, variant {v.name}")
    return tune


def _variant(v, where: str) -> Variant:
    """One [[variants]] entry, checked; `where` is "SPEC: variants[i]"."""
    if (
        not isinstance(v, dict)
        or not isinstance(v.get("name"), str)
        or not _NAME_RE.match(v["name"])
        or v["name"] in (".", "..")
    ):
        raise GptlabError(f"{where}.name: expected a name of letters, digits, _ . + - (not . or ..)")
    extra = set(v) - _VARIANT_KEYS
    if extra:
        raise GptlabError(f"{where}.{sorted(extra)[0]}: unknown key (name, interventions, reference, seeds)")
    seeds = _seed_list(v["seeds"], f"{where}.seeds") if "seeds" in v else None
    interventions = v.get("interventions", [])
    if not isinstance(interventions, list) or not all(isinstance(x, str) for x in interventions):
        raise GptlabError(f"{where}.interventions: expected a list of strings")
    ref = v.get("reference")
    if ref is not None and not isinstance(ref, (int, float)):
        raise GptlabError(f"{where}.reference: expected a number")
    return Variant(v["name"], interventions, float(ref) if ref is not None else None, seeds)


MAX_SEEDS = 1_000  # seeds of a variant (the spec's lists and --max-seeds): each one is a training run
MAX_GRID = 1_000  # values of a tune grid (the spec's tune_grid and --grid): each one is a run per variant and seed


def _seed_list(seeds, where: str) -> list[int]:
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        raise GptlabError(f"{where}: expected a non-empty list of integers, got {seeds!r}")
    if len(seeds) > MAX_SEEDS:
        raise GptlabError(f"{where}: {len(seeds)} seeds; at most {MAX_SEEDS} (each one is a training run)")
    if len(set(seeds)) != len(seeds):
        raise GptlabError(f"{where}: duplicate seeds in {seeds}")
    return seeds


def report_settings(exp_dir: Path) -> dict:
    """What the runner judged an experiment by, from the spec.toml its folder holds (the defaults without one):
    baseline, alpha, equivalence_margin, design, the variants' published references, whether it was tuned (`tune`), the
    regime table's target, the variants (runs of variants since removed from the spec stay out) and the title, as
    keyword arguments of write_report. `gptlab report` and the leaderboard use them, so they judge as the run did."""
    p = Path(exp_dir) / "spec.toml"
    d = read_toml(p) if p.is_file() else {}
    refs = {
        str(v.get("name")): v["reference"]
        for v in d.get("variants", [])
        if isinstance(v, dict) and v.get("reference") is not None
    }
    out = {
        "baseline": str(d.get("baseline", "baseline")),
        "equivalence_margin": d.get("equivalence_margin"),
        "design": d.get("design", "independent"),
        "reference": refs or None,
        "tuned": "tune" in d,
        "alpha": float(d.get("alpha", 0.05)),
    }
    names = [str(v.get("name")) for v in d.get("variants", []) if isinstance(v, dict)]
    if names:
        out["variants"] = names
    t = d.get("target")
    if isinstance(t, dict) and isinstance(t.get("config"), str):  # absolute in a spec.toml the runner wrote
        tokens = t.get("tokens")
        out["target"] = (
            (p.parent / t["config"]).resolve(),
            float(tokens) if isinstance(tokens, (int, float)) else None,
        )
    if "name" in d:
        out["title"] = str(d["name"])
    return out
