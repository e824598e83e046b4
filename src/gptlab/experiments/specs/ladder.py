"""`gptlab ladder SPEC`: does a variant's win at small scale survive at GPT-2 scale?

A ladder spec is an experiment spec (spec.py) with a [ladder] table:

    [ladder]
    rungs = [                                   # model overrides, smallest first (see below)
      { n_layers = 1, emb_dim = 32, n_heads = 2 },
      { n_layers = 2, emb_dim = 64, n_heads = 4 },
      { n_layers = 3, emb_dim = 96, n_heads = 4 },
    ]
    tokens_per_param = 20                       # tokens = 20 x the rung's non-embedding parameters; or
    # tokens = [40_000, 80_000, 160_000]        # explicit tokens per rung; or
    # flops = [1e11, 6e11, 2e12]                # an explicit FLOP budget per rung (train.flops: equal compute)
    seeds = [1, 2, 3]                           # optional: the seeds of every rung, or one list per rung
    bootstrap = 200                             # optional: bootstrap replicates of the intervals
    target = { config = "../gpt2-small-baseline.toml", tokens = 3.26e9 }   # where Δ is extrapolated
    keep_uninformative = false                  # optional: keep rungs not clearly below the unigram model in fits

Rungs go smallest first: a rung's non-embedding parameters are at least the previous rung's, and its training
FLOPs per run (the baseline's) are more. So a ladder grows the model (a scale ladder), or keeps one model and
grows its token budget (a horizon ladder: equal rungs with tokens = [N, 2N, 4N, 8N], which measures how a
variant's Δ moves with training length).

Non-embedding parameters: every parameter but the token and position embeddings and an untied output head
(model.non_embedding_params). Each rung K is an experiment of its own, run by the experiment runner in EXP/rung-K
(its spec, with the rung's model and token budget merged into [overrides], in EXP/specs/rung-K.toml): finished runs
are skipped on a rerun, every rung has its own results.sqlite and report. The ladder's report (EXP/report.md,
report.html, plots/ladder-VARIANT.png, ladder.json) fits loss against the training FLOPs each run recorded and
judges every variant by the rules in scaling.py.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import (
    ModelConfig,
    deep_merge,
    load_config,
    read_toml,
)
from gptlab.experiments.specs.experiment import Spec, load_spec, positive_number, read_target
from gptlab.io import plain_name

LADDER_KEYS = (
    "rungs",
    "tokens_per_param",
    "tokens",
    "flops",
    "seeds",
    "target",
    "bootstrap",
    "keep_uninformative",
    "confirm",
)
TOKEN_RULES = ("tokens_per_param", "tokens", "flops")
MIN_SPAN = 10.0  # a ladder narrower than this in non-embedding parameters is flagged in the report
_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}


@dataclass
class RungPlan:
    index: int
    model: dict  # the rung's model overrides
    spec: Spec  # the rung's experiment (its matrix, seeds and configs)
    table: dict  # its spec as a TOML table (written to EXP/specs/rung-K.toml)
    non_embedding: int
    params: int
    tokens: int  # the baseline's training tokens (whole steps)
    flops: float  # the baseline's training FLOPs per run

    @property
    def name(self) -> str:
        return f"rung-{self.index}"

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.model.items()) or "(base model)"


@dataclass
class Ladder:
    path: Path
    name: str
    rungs: list[RungPlan]
    target_config: Path
    target_params: int
    target_tokens: float
    target_flops: float
    bootstrap: int
    extra: dict | None = None  # the --set overrides the rungs were resolved with (what their runs must match)
    keep_uninformative: bool = False  # fit rungs whose baseline is not clearly below the unigram model too

    @property
    def spec(self) -> Spec:
        """The settings every rung shares (baseline, variants, design, alpha): the first rung's spec."""
        return self.rungs[0].spec

    @property
    def span(self) -> float:
        return self.rungs[-1].non_embedding / self.rungs[0].non_embedding


def load_ladder(path: str | Path, extra: dict | None = None) -> Ladder:
    """Read and check a ladder spec; every rung's experiment spec is resolved (its configs checked) here."""
    p = Path(path)
    d = read_toml(p)
    where = f"{p}: ladder"
    lad = d.pop("ladder", None)
    if not isinstance(lad, dict):
        raise GptlabError(f"{where}: missing [ladder] table (rungs, tokens_per_param or tokens or flops, target)")
    for k in lad:
        if k not in LADDER_KEYS:
            close = difflib.get_close_matches(k, LADDER_KEYS, n=1)
            raise GptlabError(
                f"{where}.{k}: unknown key"
                + (f" (did you mean '{close[0]}'?)" if close else f" (expected one of {', '.join(LADDER_KEYS)})")
            )
    rungs = lad.get("rungs")
    if not isinstance(rungs, list) or len(rungs) < 2 or not all(isinstance(r, dict) for r in rungs):
        raise GptlabError(
            f"{where}.rungs: expected a list of at least 2 tables of model settings, e.g. "
            f"[{{ n_layers = 2, emb_dim = 64, n_heads = 2 }}, ...], got {rungs!r}"
        )
    for i, r in enumerate(rungs):
        bad = sorted(set(r) - _MODEL_KEYS)
        if bad:
            close = difflib.get_close_matches(bad[0], _MODEL_KEYS, n=1)
            raise GptlabError(
                f"{where}.rungs[{i}].{bad[0]}: not a model setting"
                + (f" (did you mean '{close[0]}'?)" if close else "")
            )
    rules = [k for k in TOKEN_RULES if k in lad]
    if len(rules) != 1:
        raise GptlabError(
            f"{where}: expected exactly one token rule of tokens_per_param, tokens, flops, got "
            f"{', '.join(rules) or 'none'}"
        )
    rule, value = rules[0], lad[rules[0]]
    if rule == "tokens_per_param":
        if not positive_number(value):
            raise GptlabError(f"{where}.tokens_per_param: expected a positive number (e.g. 20), got {value!r}")
    elif not (isinstance(value, list) and len(value) == len(rungs) and all(positive_number(x) for x in value)):
        raise GptlabError(
            f"{where}.{rule}: expected a list of {len(rungs)} positive numbers (one per rung), got {value!r}"
        )
    seeds = lad.get("seeds", d.get("seeds", [1, 2, 3]))
    if isinstance(seeds, list) and seeds and all(isinstance(s, list) for s in seeds):
        if len(seeds) != len(rungs):
            raise GptlabError(f"{where}.seeds: expected one seed list per rung ({len(rungs)}), got {len(seeds)}")
        per_rung = seeds
    else:
        per_rung = [seeds] * len(rungs)
    n_boot = lad.get("bootstrap", 200)
    if not (isinstance(n_boot, int) and not isinstance(n_boot, bool) and 20 <= n_boot <= 100_000):
        raise GptlabError(f"{where}.bootstrap: expected an integer from 20 to 100000, got {n_boot!r}")
    keep = lad.get("keep_uninformative", False)
    if not isinstance(keep, bool):
        raise GptlabError(f"{where}.keep_uninformative: expected true or false, got {keep!r}")
    target = lad.get("target")
    tcfg_path, t_tokens_set = read_target(target, p, f"{where}.target")  # checked as an experiment spec's target
    if "base" not in d:
        raise GptlabError(f"{p}: base: missing (the base config TOML, relative to this file)")
    base = (p.parent / d["base"]).resolve()
    name = plain_name(d.get("name", p.stem), f"{p}: name")  # experiments/NAME: a folder of experiments/
    plans: list[RungPlan] = []
    for i, model in enumerate(rungs):
        plans.append(
            _plan_rung(
                p, d, base, name, i, model, per_rung[i], rule, value if rule == "tokens_per_param" else value[i], extra
            )
        )
    for a, b in zip(plans, plans[1:], strict=False):
        if b.non_embedding < a.non_embedding:
            raise GptlabError(
                f"{where}.rungs[{b.index}]: {b.non_embedding:,} non-embedding parameters, fewer than "
                f"rung {a.index}'s {a.non_embedding:,} (list the rungs smallest first)"
            )
        if b.flops <= a.flops:
            raise GptlabError(
                f"{where}.rungs[{b.index}]: {b.flops:.4g} training FLOPs per run, not more than rung "
                f"{a.index}'s {a.flops:.4g} (each rung must add compute: a larger model, or the same model "
                f"with a larger token budget)"
            )
    tcfg = load_config(tcfg_path)
    from gptlab.model import GPTModel, count_params
    from gptlab.train.flops import flops_per_token, token_budget

    with _meta():
        t_params = count_params(GPTModel(tcfg.model))
    t_tokens = float(t_tokens_set or token_budget(tcfg, t_params))
    t_flops = flops_per_token(tcfg.model) * t_tokens
    return Ladder(p, name, plans, tcfg_path, t_params, t_tokens, t_flops, n_boot, extra, keep)


def _meta():
    import torch

    return torch.device("meta")


def _plan_rung(
    p: Path, d: dict, base: Path, name: str, i: int, model: dict, seeds, rule: str, value, extra: dict | None
) -> RungPlan:
    from gptlab.model import GPTModel, count_params, non_embedding_params
    from gptlab.train.flops import flops_per_token, planned_steps, tokens_for_flops

    where = f"{p}: ladder.rungs[{i}]"

    def table(train: dict) -> dict:
        t = {k: v for k, v in d.items()}
        t.update(name=f"{name}.rung-{i}", base=str(base), seeds=seeds)
        t["overrides"] = deep_merge(d.get("overrides", {}), {"model": dict(model), "train": train})
        return t

    try:
        probe = load_spec(p, table({"tokens": 1, "flops": 0.0}))
    except GptlabError as e:
        raise GptlabError(f"{where}: {e}") from None
    bv = next(v for v in probe.variants if v.name == probe.baseline)
    cfg = probe.resolved_config(bv, probe.seeds[0], extra)
    with _meta():
        n_ne = non_embedding_params(GPTModel(cfg.model))
    if rule == "flops":
        if tokens_for_flops(cfg.model, value) < 1:
            raise GptlabError(
                f"{p}: ladder.flops[{i}]: {value:g} FLOPs is less than one token of this rung's "
                f"model ({flops_per_token(cfg.model):.3g} FLOPs per token)"
            )
        train = {"tokens": 0, "flops": float(value)}
    else:
        want = value * n_ne if rule == "tokens_per_param" else value
        if not 1 <= want < 2**63:
            field = rule if rule == "tokens_per_param" else f"{rule}[{i}]"
            raise GptlabError(
                f"{p}: ladder.{field}: gives {want:g} training tokens at rung {i}; expected at least "
                f"1 and less than 2^63"
            )
        train = {"tokens": int(round(want)), "flops": 0.0}
    t = table(train)
    spec = load_spec(p, t)
    cfg = spec.resolved_config(bv, spec.seeds[0], extra)
    with _meta():
        n = count_params(GPTModel(cfg.model))
    tokens = planned_steps(cfg, n) * cfg.train.global_batch_size * cfg.model.context_length
    return RungPlan(i, dict(model), spec, t, n_ne, n, tokens, flops_per_token(cfg.model) * tokens)
