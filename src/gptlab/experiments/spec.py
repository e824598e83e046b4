"""What an experiment is: a matrix of variants x seeds on one base config, read from a TOML spec and checked
before anything runs (every run's config is resolved once, so a typo fails in seconds, not after hours).

Spec (TOML):

    name = "seed-interventions"
    base = "../tiny-cpu.toml"          # relative to the spec file
    seeds = [1, 2, 3]
    baseline = "baseline"              # the variant every other one is compared with
    equivalence_margin = 0.01          # optional, nats: a variant whose 90% CI of the difference is inside
                                       # ±margin reads "equivalent within ±0.01" (TOST)
    design = "paired"                  # optional: "independent" (default: Welch's test) or "paired" (every
                                       # variant's seed s shares initialisation and data order with the
                                       # baseline's seed s: the per-seed differences are tested)
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
import re
from dataclasses import dataclass, field
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import deep_merge, read_config_toml, read_toml

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SPEC_KEYS = {"name", "base", "seeds", "baseline", "variants", "overrides", "description", "equivalence_margin",
              "design"}
DESIGNS = ("independent", "paired")
_VARIANT_KEYS = {"name", "interventions", "reference", "seeds"}


@dataclass
class Variant:
    name: str
    interventions: list[str] = field(default_factory=list)
    reference: float | None = None
    seeds: list[int] | None = None  # this variant's own seeds (default: the spec's)


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

    def run_id(self, variant: str, seed: int) -> str:
        return f"{variant}-s{seed}"

    def matrix(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in (v.seeds or self.seeds)]

    def raw_config(self, variant: Variant, seed: int, extra: dict | None = None) -> dict:
        """The run's config as a TOML-ready dict: base, then the spec's overrides, then `extra` (--set),
        then the run's name and seed; the variant's interventions appended to the base's."""
        raw = read_config_toml(self.base)
        raw = deep_merge(raw, self.overrides)
        if extra:
            raw = deep_merge(raw, extra)
        raw = deep_merge(raw, {"name": f"{self.name}/{self.run_id(variant.name, seed)}",
                               "train": {"seed": seed, "progress": False}})
        raw["interventions"] = list(raw.get("interventions", [])) + list(variant.interventions)
        return raw

    def resolved_config(self, variant: Variant, seed: int, extra: dict | None = None, where: str = ""):
        """The run's typed, validated config with preset and interventions applied (errors name `where`)."""
        from gptlab.config import from_dict, resolve_preset, validate
        from gptlab.interventions import apply_interventions

        raw = self.raw_config(variant, seed, extra)
        cfg = from_dict(raw, where or str(self.path))
        resolve_preset(cfg, set(raw.get("model", {})) - {"preset"}, where)
        apply_interventions(cfg, cfg.interventions, where)
        validate(cfg, where)
        return cfg


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec; every variant's config is resolved once here."""
    p = Path(path)
    d = read_toml(p)
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
        raise GptlabError(f"{where}: design: expected \"independent\" or \"paired\", got {design!r}")
    spec = Spec(p, d.get("name", p.stem), base, seeds, baseline, variants, overrides,
                None if margin is None else float(margin), design)
    for v in variants:
        spec.resolved_config(v, seeds[0], where=f"{where}: variant {v.name}")
    return spec


def _variant(v, where: str) -> Variant:
    """One [[variants]] entry, checked; `where` is "SPEC: variants[i]"."""
    if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not _NAME_RE.match(v["name"]):
        raise GptlabError(f"{where}.name: expected a name of letters, digits, _ . + -")
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


def _seed_list(seeds, where: str) -> list[int]:
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        raise GptlabError(f"{where}: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GptlabError(f"{where}: duplicate seeds in {seeds}")
    return seeds


def report_settings(exp_dir: Path) -> dict:
    """What the runner judged an experiment by, from the spec.toml its folder holds (the defaults without one):
    baseline, equivalence_margin, design, the variants' published references and the title, as keyword
    arguments of write_report. `gptlab report` and the leaderboard use them, so they judge as the run did."""
    p = Path(exp_dir) / "spec.toml"
    d = read_toml(p) if p.is_file() else {}
    refs = {str(v.get("name")): v["reference"] for v in d.get("variants", []) if isinstance(v, dict)
            and v.get("reference") is not None}
    out = {"baseline": str(d.get("baseline", "baseline")), "equivalence_margin": d.get("equivalence_margin"),
           "design": d.get("design", "independent"), "reference": refs or None}
    if "name" in d:
        out["title"] = str(d["name"])
    return out
