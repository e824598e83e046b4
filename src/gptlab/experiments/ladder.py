"""`gptlab ladder SPEC`: does a variant's win at small scale survive at GPT-2 scale?

A ladder spec is an experiment spec (spec.py) with a [ladder] table:

    [ladder]
    rungs = [                                   # model overrides, smallest first (non-embedding params must grow)
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

Non-embedding parameters: every parameter but the token and position embeddings and an untied output head
(model.non_embedding_params). Each rung K is an experiment of its own, run by the experiment runner in EXP/rung-K
(its spec, with the rung's model and token budget merged into [overrides], in EXP/specs/rung-K.toml): finished runs
are skipped on a rerun, every rung has its own results.sqlite and report. The ladder's report (EXP/report.md,
report.html, plots/ladder-VARIANT.png, ladder.json) fits loss against the training FLOPs each run recorded and
judges every variant by the rules in scaling.py.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w

from gptlab import GptlabError
from gptlab.config import (
    ModelConfig,
    deep_merge,
    load_config,
    parse_overrides,
    read_toml,
)
from gptlab.experiments import scaling
from gptlab.experiments.spec import Spec, load_spec
from gptlab.io import claim_dir, confined, plain_name

LADDER_KEYS = ("rungs", "tokens_per_param", "tokens", "flops", "seeds", "target", "bootstrap")
TARGET_KEYS = ("config", "tokens")
TOKEN_RULES = ("tokens_per_param", "tokens", "flops")
RUN_OVERHEAD_S = 8.0  # CPU time estimates: process start, data and the test evaluation of one tiny run (2 cores)
_MEASURABLE_STEP_FLOPS = 5e10  # without a GPU, time a rung's step only below this (a few seconds on 2 cores)
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

    @property
    def spec(self) -> Spec:
        """The settings every rung shares (baseline, variants, design, alpha): the first rung's spec."""
        return self.rungs[0].spec

    @property
    def span(self) -> float:
        return self.rungs[-1].non_embedding / self.rungs[0].non_embedding


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
        if not _number(value) or value <= 0:
            raise GptlabError(f"{where}.tokens_per_param: expected a positive number (e.g. 20), got {value!r}")
    elif not (isinstance(value, list) and len(value) == len(rungs) and all(_number(x) and x > 0 for x in value)):
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
    target = lad.get("target")
    if not isinstance(target, dict) or "config" not in target:
        raise GptlabError(
            f'{where}.target: expected a table {{ config = "CONFIG.toml", tokens = N }} (the model '
            f"Δ is extrapolated to, relative to this file), got {target!r}"
        )
    bad = sorted(set(target) - set(TARGET_KEYS))
    if bad:
        raise GptlabError(f"{where}.target.{bad[0]}: unknown key (config, tokens)")
    if not isinstance(target["config"], str):
        raise GptlabError(f"{where}.target.config: expected a path to a config TOML, got {target['config']!r}")
    tcfg_path = (p.parent / target["config"]).resolve()
    if not tcfg_path.is_file():
        raise GptlabError(f"{where}.target.config: {target['config']} not found (looked for {tcfg_path})")
    if "tokens" in target and not (_number(target["tokens"]) and target["tokens"] > 0):
        raise GptlabError(f"{where}.target.tokens: expected a positive number of tokens, got {target['tokens']!r}")
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
        if b.non_embedding <= a.non_embedding:
            raise GptlabError(
                f"{where}.rungs[{b.index}]: {b.non_embedding:,} non-embedding parameters, not more "
                f"than rung {a.index}'s {a.non_embedding:,} (list the rungs smallest first)"
            )
    tcfg = load_config(tcfg_path)
    from gptlab.model import GPTModel, count_params
    from gptlab.train.flops import flops_per_token, token_budget

    with _meta():
        t_params = count_params(GPTModel(tcfg.model))
    t_tokens = float(target.get("tokens") or token_budget(tcfg, t_params))
    return Ladder(p, name, plans, tcfg_path, t_params, t_tokens, flops_per_token(tcfg.model) * t_tokens, n_boot, extra)


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


# ---------------------------------------------------------------------------------------------------- dry run
def print_dry_run(lad: Ladder, extra: dict) -> None:
    import torch

    from gptlab.experiments.dry_run import _MEASURABLE_PARAMS, _measure_flops
    from gptlab.train.flops import PEAK_FLOPS, flops_per_token

    spec = lad.spec
    print(
        f"ladder {lad.name}: {len(lad.rungs)} rungs x {len(spec.variants)} variants, "
        f"{sum(len(r.spec.matrix()) for r in lad.rungs)} runs  (base {spec.base})"
    )
    print(
        f"{'rung':<7} {'non-emb params':>14} {'params':>11} {'tokens/run':>11} {'FLOPs/run':>9} {'runs':>5} "
        f"{'FLOPs':>9} {'est. min':>8}  model"
    )
    total_f, total_s, n_timed, unprepared = 0.0, 0.0, 0, None
    for r in lad.rungs:
        runs = len(r.spec.matrix())
        fl = r.flops * runs
        cfg, _, vocab = r.spec.resolve(r.spec.variants[0], r.spec.seeds[0], extra)
        if vocab is None and cfg.data.vocab == "corpus":
            unprepared = cfg.data.dir
        step_flops = flops_per_token(cfg.model) * cfg.train.micro_batch_size * cfg.model.context_length
        if torch.cuda.is_available() or (r.params < _MEASURABLE_PARAMS and step_flops < _MEASURABLE_STEP_FLOPS):
            secs = fl / _measure_flops(cfg) + (0 if torch.cuda.is_available() else RUN_OVERHEAD_S * runs)
            n_timed += 1
        else:
            secs = fl / (PEAK_FLOPS["H100"] * 0.40)
        total_f, total_s = total_f + fl, total_s + secs
        print(
            f"{r.name:<7} {r.non_embedding:>14,} {r.params:>11,} {r.tokens:>11,} {r.flops:>9.2e} {runs:>5} "
            f"{fl:>9.2e} {secs / 60:>8.1f}  {r.describe()}"
        )
    if unprepared:
        print(f"(data.vocab = 'corpus' but {unprepared} is not prepared yet: sizes above use the full vocabulary)")
    c_max = lad.rungs[-1].flops
    print(
        f"non-embedding span {lad.span:.1f}x{'' if lad.span >= MIN_SPAN else f' (< {MIN_SPAN:g}x)'}; "
        f"compute span {c_max / lad.rungs[0].flops:.1f}x per run"
    )
    print(
        f"target {lad.target_config.name}: {lad.target_params:,} params, {lad.target_tokens:.3g} tokens, "
        f"{lad.target_flops:.3e} FLOPs = {lad.target_flops / c_max:.3g}x the largest rung"
    )
    if n_timed == len(lad.rungs):
        how = "this machine's measured FLOP/s for each rung's model" + (
            "" if torch.cuda.is_available() else f" + {RUN_OVERHEAD_S:g} s per run for start and test evaluation"
        )
    else:
        how = (
            f"{len(lad.rungs) - n_timed} rung(s) too big to time without a GPU at 40% MFU of 1x H100 (bf16 peak "
            f"989 TFLOP/s), {n_timed} timed on this machine"
        )
    print(f"total {total_f:.3e} FLOPs; estimated {total_s / 60:.1f} min run one after another ({how})")


# ---------------------------------------------------------------------------------------------------- running
def run_ladder(
    spec_path: str,
    out: str | None = None,
    dry_run: bool = False,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    bootstrap: int | None = None,
    **run_options,
) -> int:
    """Run (or with dry_run, only print) every rung of the ladder through the experiment runner, then write the
    ladder report. The exit status for the CLI."""
    from gptlab.experiments.runner import ExperimentLock, Stopped, StopSignals, run_experiment
    from gptlab.io import atomic_write_text
    from gptlab.train.signals import EXIT_PREEMPTED

    extra = parse_overrides(overrides or [])
    lad = load_ladder(spec_path, extra)
    if bootstrap is not None:
        lad.bootstrap = bootstrap
    if dry_run:
        print_dry_run(lad, extra)
        return 0
    exp_dir = claim_dir(
        Path(out) if out else confined("experiments", lad.name, f"{lad.path}: name"),
        LADDER_DIR,
        "--out" if out else "ladder folder",
        run_options.get("force", False),
        _written_before,
    )
    keep = None if not only else set(only) | {lad.spec.baseline}  # --only: these variants and the baseline
    exp_dir.mkdir(parents=True, exist_ok=True)
    # one ladder runner per folder (each rung's runner also locks its rung's folder); a stop signal between rungs
    # ends the ladder, one during a rung is passed on to its runs by the rung's runner (runner.py)
    try:
        with ExperimentLock(exp_dir, "ladder folder"), StopSignals():
            done = _done_counts(lad, exp_dir, keep)
            total = sum(sum(keep is None or v.name in keep for v, _ in r.spec.matrix()) for r in lad.rungs)
            print(
                f"ladder {lad.name}: {len(lad.rungs)} rungs, {total} runs, {sum(done)} already done, "
                f"{total - sum(done)} to run -> {exp_dir}",
                flush=True,
            )
            status = 0
            for r in lad.rungs:
                spec_file = exp_dir / "specs" / f"{r.name}.toml"
                atomic_write_text(
                    spec_file, f"# rung {r.index} of {lad.path} (written by `gptlab ladder`)\n" + tomli_w.dumps(r.table)
                )
                rc = run_experiment(
                    str(spec_file), out=str(exp_dir / r.name), overrides=overrides, only=only, **run_options
                )
                if rc in (130, EXIT_PREEMPTED):  # stopped: the rung's runner said so
                    return rc
                status = status or rc
            res = write_ladder_report(lad, exp_dir)
    except Stopped as s:
        print(s.line(), file=sys.stderr)
        return s.exit_code
    print(format_summary(res))
    print(f"ladder report: {res['markdown']}  {res['html']}")
    return status


LADDER_DIR = "ladder"  # the kind of folder `ladder` writes (io.claim_dir)


def _written_before(p: Path) -> bool:
    """A ladder folder of an earlier gptlab (no owner file): specs/rung-K.toml and a rung-K folder."""
    return any((p / "specs").glob("rung-*.toml")) and any(q.is_dir() for q in p.glob("rung-*"))


def _done_counts(lad: Ladder, exp_dir: Path, keep: set[str] | None = None) -> list[int]:
    from gptlab.experiments.results import DB_NAME, ResultsDB

    out = []
    for r in lad.rungs:
        db_path = exp_dir / r.name / DB_NAME
        if not db_path.is_file():
            out.append(0)
            continue
        with ResultsDB(db_path, create=False) as db:
            ids = db.run_ids()
        out.append(sum(r.spec.run_id(v.name, s) in ids for v, s in r.spec.matrix() if keep is None or v.name in keep))
    return out


# ---------------------------------------------------------------------------------------------------- analysis
def collect(lad: Ladder, exp_dir: Path) -> dict[str, list[list[dict]]]:
    """variant -> per rung, its recorded runs of the rung's matrix with a finite test loss, trained with the config
    the ladder now gives them (a run recorded before the rung's model, tokens or overrides changed, and not redone,
    e.g. of a variant left out by --only, is left out)."""
    from gptlab.experiments.results import DB_NAME, ResultsDB

    out: dict[str, list[list[dict]]] = {v.name: [] for v in lad.spec.variants}
    for r in lad.rungs:
        db_path = exp_dir / r.name / DB_NAME
        rows = {}
        if db_path.is_file():
            with ResultsDB(db_path, create=False) as db:
                rows = {x["run_id"]: x for x in db.runs()}
        for v in r.spec.variants:
            got = [
                rows[rid]
                for s in (v.seeds or r.spec.seeds)
                if (rid := r.spec.run_id(v.name, s)) in rows
                and rows[rid]["config_hash"] == r.spec.resolve(v, s, lad.extra).hash
            ]
            out[v.name].append(
                [x for x in got if x["test_loss"] is not None and math.isfinite(x["test_loss"]) and x["flops"]]
            )
    return out


def _pair_rungs(base: list[list[dict]], var: list[list[dict]], paired: bool) -> tuple[list[int], list]:
    """The rungs where both have runs, as scaling.Rung (paired: the seeds both have, in seed order)."""
    idx, out = [], []
    for k, (b, v) in enumerate(zip(base, var, strict=True)):
        if paired:
            seeds = sorted({x["seed"] for x in b} & {x["seed"] for x in v})
            b = sorted([x for x in b if x["seed"] in seeds], key=lambda x: x["seed"])
            v = sorted([x for x in v if x["seed"] in seeds], key=lambda x: x["seed"])
        if b and v:
            idx.append(k)
            out.append(
                scaling.Rung(
                    [x["flops"] for x in b],
                    [x["test_loss"] for x in b],
                    [x["flops"] for x in v],
                    [x["test_loss"] for x in v],
                )
            )
    return idx, out


def analyse(lad: Ladder, exp_dir: Path) -> dict:
    """Every variant against the baseline across the rungs: per-rung Δ, trend, extrapolation, backtest."""
    spec = lad.spec
    level = 1 - spec.alpha
    paired = spec.design == "paired"
    data = collect(lad, exp_dir)
    variants = []
    for v in spec.variants:
        if v.name == spec.baseline:
            continue
        idx, rungs = _pair_rungs(data[spec.baseline], data[v.name], paired)
        entry: dict = {"variant": v.name, "rungs": idx, "per_rung": [], "data": rungs}
        variants.append(entry)
        if not rungs:
            entry["missing"] = True
            continue
        for k, r in zip(idx, rungs, strict=True):
            entry["per_rung"].append(dict(scaling.rung_delta(r, spec.design, spec.alpha), rung=k, compute=r.compute))
        pr = entry["per_rung"]
        entry["trend"] = scaling.trend(
            [math.log10(x["compute"]) for x in pr],
            [x["diff"] for x in pr],
            [x["se"] for x in pr],
            [x["df"] for x in pr],
            [x["ci_low"] for x in pr],
            [x["ci_high"] for x in pr],
            spec.alpha,
        )
        cmin, cmax = min(r.c_base.min() for r in rungs), max(r.c_base.max() for r in rungs)
        entry["grid"] = np.logspace(math.log10(cmin / 1.5), math.log10(max(lad.target_flops, cmax) * 1.5), 80)
        ex = scaling.extrapolate(
            rungs, lad.target_flops, level, lad.bootstrap, seed=0, paired=paired, grid=entry["grid"]
        )
        entry["extrapolation"] = ex
        entry["backtest"] = (
            scaling.backtest(rungs, level, lad.bootstrap, seed=1, paired=paired) if len(rungs) >= 2 else None
        )
        bt = entry["backtest"]
        entry["reliable"] = None if bt is None else bt.reliable
    return {"variants": variants, "level": level}


# ---------------------------------------------------------------------------------------------------- report
def _f(x, spec: str = "+.4f") -> str:
    return "—" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else format(x, spec)


def _ci(lo, hi) -> str:
    return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:+.4f}, {hi:+.4f}]"


def _label(e: dict) -> str:
    if e.get("reliable") is False:
        return "**unreliable**"
    if e.get("reliable") is True:
        return "reliable"
    bt = e.get("backtest")
    return f"not tested ({bt.note})" if bt is not None and bt.note else "not tested"


def _trend_word(t: dict) -> str:
    return t["word"] if t.get("tested") or t["word"] == "flips" else f"{t['word']} (untested)"


def format_summary(res: dict) -> str:
    """The summary table as aligned text (the terminal)."""
    from gptlab.experiments.report.tables import text_table

    return text_table(*res["summary"])


def _summary_table(lad: Ladder, an: dict) -> tuple[list[str], list[list[str]]]:
    lv = f"{an['level']:.0%}"
    head = [
        "variant",
        "Δ smallest rung",
        "Δ largest rung",
        "trend",
        "slope /decade (p)",
        "fit",
        "Δ at target",
        f"{lv} PI",
        "backtest predicted",
        "measured",
        "error",
        f"{lv} PI of measured",
        "backtest",
    ]
    body = []
    for e in an["variants"]:
        if e.get("missing"):
            body.append([e["variant"]] + ["—"] * 11 + ["no runs"])
            continue
        pr, t, ex, bt = e["per_rung"], e["trend"], e["extrapolation"], e["backtest"]
        body.append(
            [
                e["variant"],
                _f(pr[0]["diff"]),
                _f(pr[-1]["diff"]),
                _trend_word(t),
                f"{_f(t['slope'])} ({_f(t['p'], '.3g')})",
                ex.fit.model if ex.fit else "—",
                _f(ex.delta),
                _ci(ex.low, ex.high) if not ex.note else f"— ({ex.note})",
                _f(bt.predicted) if bt else "—",
                _f(bt.measured) if bt else "—",
                _f(bt.error) if bt else "—",
                _ci(bt.low, bt.high) if bt else "—",
                _label(e),
            ]
        )
    return head, body


def _rung_table(lad: Ladder, exp_dir: Path) -> tuple[list[str], list[list[str]]]:
    done = _done_counts(lad, exp_dir)
    head = ["rung", "model", "non-emb params", "params", "tokens/run", "FLOPs/run (baseline)", "runs done"]
    body = [
        [
            r.name,
            r.describe(),
            f"{r.non_embedding:,}",
            f"{r.params:,}",
            f"{r.tokens:,}",
            f"{r.flops:.3e}",
            f"{n}/{len(r.spec.matrix())}",
        ]
        for r, n in zip(lad.rungs, done, strict=True)
    ]
    return head, body


def _variant_table(e: dict, lad: Ladder) -> tuple[list[str], list[list[str]]]:
    lv = f"{1 - lad.spec.alpha:.0%}"
    head = [
        "rung",
        "FLOPs",
        "n baseline",
        "n variant",
        "mean baseline",
        "mean variant",
        "Δ",
        f"{lv} CI of Δ",
        "p (paired t)" if lad.spec.design == "paired" else "p (Welch)",
    ]
    body = [
        [
            lad.rungs[x["rung"]].name,
            f"{x['compute']:.3e}",
            str(x["n_baseline"]),
            str(x["n_variant"]),
            _f(x["mean_baseline"], ".4f"),
            _f(x["mean_variant"], ".4f"),
            _f(x["diff"]),
            _ci(x["ci_low"], x["ci_high"]),
            _f(x["p"], ".3g"),
        ]
        for x in e["per_rung"]
    ]
    if any(x["note"] for x in e["per_rung"]):
        head.append("note")
        for row, x in zip(body, e["per_rung"], strict=True):
            row.append(x["note"] or "—")
    return head, body


def _rules(lad: Ladder, an: dict) -> list[str]:
    lv = f"{an['level']:.0%}"
    spec = lad.spec
    test = "paired t-test on per-seed differences" if spec.design == "paired" else "Welch's t-test"
    return [
        f"Δ = variant − baseline final test loss (nats/token; negative = the variant helps), at each rung by "
        f"{test} with its {lv} CI (the experiment's design and alpha = {spec.alpha:g}).",
        scaling.TREND_RULE.replace("alpha", f"alpha = {spec.alpha:g}"),
        f"Fits of loss against training FLOPs C (what each run recorded): with at least {scaling.MIN_RUNGS_FULL} "
        f"rungs the baseline and the variant each get L(C) = E + A·C^(−α) (least squares over every run, each "
        f"weighted by 1/the seed variance of its group at its rung; a group with fewer than 2 seeds, or no "
        f"spread, takes the pooled seed variance of the groups with 2+ seeds, "
        f"0 ≤ E < min loss, A > 0, {scaling.ALPHA_BOUNDS[0]:g} ≤ α ≤ {scaling.ALPHA_BOUNDS[1]:g}); with fewer "
        f"rungs, or when that fit fails, the **offset** model: the baseline's form with one shared E, A, α and "
        f"the variant shifted by a constant δ, so its extrapolated Δ is δ at every scale (a constant-Δ "
        f"assumption, not a finding). Column *fit* says which was used.",
        f"Δ at target: the fit's Δ at the target's compute ({lad.target_flops:.3e} FLOPs: "
        f"{lad.target_config.name}, {lad.target_tokens:.3g} tokens). Its {lv} prediction interval: "
        f"{lad.bootstrap} bootstrap replicates resampling the seeds within each rung (residuals inflated by "
        f"√(n/(n−1))), refitted, percentiles. It covers seed noise only, not the error of the functional form "
        f"far beyond the data.",
        f"Backtest: the same fit on every rung but the largest predicts the largest rung's Δ; its {lv} interval "
        f"for the *measured* Δ adds the bootstrap variation of the fit and of the largest rung's own Δ. A "
        f"variant whose measured Δ falls outside it is **unreliable**: the ladder's trend did not carry one rung "
        f"further, so its extrapolation many orders of magnitude further should not be trusted either. "
        f"*reliable* only says the one-rung backtest passed.",
        f"Seed noise needs seeds: at a rung where the baseline or the variant has fewer than 2 seeds"
        f"{' (pairs)' if spec.design == 'paired' else ''}, Δ is shown without CI or p, with the note "
        f'"1 seed: no noise estimate"; the trend is then untested, and the {lv} PI at the target and the '
        f"backtest's interval are not computed (the bootstrap cannot resample that rung, so they would treat its "
        f"Δ as exact): the point values are shown and the backtest is *not tested*, neither reliable nor "
        f"unreliable.",
    ]


def _warnings(lad: Ladder, an: dict) -> list[str]:
    out = []
    if lad.span < MIN_SPAN:
        out.append(
            f"The rungs span {lad.span:.1f}x in non-embedding parameters (less than {MIN_SPAN:g}x): "
            f"trends and extrapolations rest on a narrow range."
        )
    if len(lad.rungs) < scaling.MIN_RUNGS_FULL:
        out.append(
            f"{len(lad.rungs)} rungs: every variant uses the offset model (constant Δ with scale); "
            f"{scaling.MIN_RUNGS_FULL}+ rungs give each variant its own curve."
        )
    c_max = max((x["compute"] for e in an["variants"] for x in e["per_rung"]), default=lad.rungs[-1].flops)
    out.append(
        f"The target's compute is {lad.target_flops / c_max:.3g}x the largest rung's: the extrapolation "
        f"assumes the fitted form holds over that range."
    )
    for e in an["variants"]:
        thin = [(lad.rungs[x["rung"]].name, x["note"]) for x in e["per_rung"] if x["note"]]
        if thin:
            out.append(
                f"{e['variant']}: "
                + "; ".join(f"{name}: {note}" for name, note in thin)
                + " (no CI or p at that rung, no interval at the target, the backtest not tested)."
            )
        ex = e.get("extrapolation")
        if ex is not None and ex.failed:
            out.append(
                f"{e['variant']}: {ex.failed} of {lad.bootstrap} bootstrap refits failed (left out of the interval)."
            )
    return out


def plot_variant(lad: Ladder, e: dict, baseline: str, level: float) -> bytes:
    """Log-log loss vs FLOPs (each run, rung means, fitted curves, the extrapolation band to the target) and Δ
    vs FLOPs (per-rung CIs, the fitted Δ, its band, the target's interval, the backtest)."""
    from gptlab.experiments.report.plots import _new_figure, _png

    rungs: list[scaling.Rung] = e["data"]
    ex: scaling.Extrapolation = e["extrapolation"]
    fit, grid = ex.fit, e["grid"]
    cmax = max(r.c_base.max() for r in rungs)
    band = ex.band
    fig = _new_figure(12, 4.8)
    ax, bx = fig.subplots(1, 2)
    for name, cs, ls, color, curve in (
        (baseline, [r.c_base for r in rungs], [r.base for r in rungs], "#222222", fit.base if fit else None),
        (e["variant"], [r.c_var for r in rungs], [r.var for r in rungs], "#1f77b4", fit.var if fit else None),
    ):
        for c, y in zip(cs, ls, strict=True):
            ax.scatter(c, y, s=12, color=color, alpha=0.45, lw=0)
            ax.errorbar(
                [np.mean(c)],
                [np.mean(y)],
                yerr=[[np.mean(y) - y.min()], [y.max() - np.mean(y)]],
                fmt="o",
                color=color,
                ms=5,
                capsize=3,
            )
        if curve is not None:
            ax.plot(
                grid,
                curve(grid),
                color=color,
                lw=1.4,
                ls="--" if name == baseline else "-",
                label=f"{name}: {curve.form} fit",
                zorder=3 if name == baseline else 2,
            )
    far = grid >= cmax
    if band:  # none when a rung has fewer than 2 seeds (scaling.noise_note)
        ax.fill_between(
            grid[far],
            band["var"][0][far],
            band["var"][1][far],
            color="#1f77b4",
            alpha=0.15,
            lw=0,
            label=f"{e['variant']}: {level:.0%} band",
        )
    ax.axvline(lad.target_flops, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final test loss (nats/token)")
    ax.set_title("loss vs compute (points: seeds; bars: min..max)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    pr = e["per_rung"]
    xs = [x["compute"] for x in pr]
    ys = [x["diff"] for x in pr]
    lo = [x["diff"] - x["ci_low"] if math.isfinite(x["ci_low"]) else 0 for x in pr]
    hi = [x["ci_high"] - x["diff"] if math.isfinite(x["ci_high"]) else 0 for x in pr]
    bx.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color="#1f77b4", capsize=3, label=f"Δ per rung ({level:.0%} CI)")
    if fit is not None:
        bx.plot(grid, np.broadcast_to(fit.delta_at(grid), grid.shape), color="#1f77b4", lw=1.2, label="fitted Δ")
    if band:
        bx.fill_between(grid, band["delta"][0], band["delta"][1], color="#1f77b4", alpha=0.12, lw=0)
    if math.isfinite(ex.delta):
        yerr = [[ex.delta - ex.low], [ex.high - ex.delta]] if math.isfinite(ex.low) else None
        bx.errorbar(
            [lad.target_flops],
            [ex.delta],
            yerr=yerr,
            fmt="s",
            color="#d62728",
            capsize=4,
            label=f"target ({level:.0%} PI)",
        )
    bt = e.get("backtest")
    if bt is not None and math.isfinite(bt.predicted):
        yerr = [[bt.predicted - bt.low], [bt.high - bt.predicted]] if math.isfinite(bt.low) else None
        bx.errorbar(
            [xs[-1] * 1.08],
            [bt.predicted],
            yerr=yerr,
            fmt="D",
            mfc="none",
            color="#ff7f0e",
            capsize=3,
            label="backtest prediction",
        )
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xscale("log")
    bx.set_xlabel("training FLOPs")
    bx.set_ylabel(f"Δ test loss ({e['variant']} − {baseline})")
    bx.set_title(f"Δ with scale: {_trend_word(e['trend'])}; backtest {_label(e).strip('*')}")
    bx.grid(True, which="both", alpha=0.25)
    bx.legend(fontsize=8)
    fig.suptitle(f"{e['variant']} vs {baseline}", fontsize=12)
    return _png(fig)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_ladder_report(lad: Ladder, exp_dir: str | Path) -> dict:
    """report.md, report.html (plots embedded), plots/ladder-VARIANT.png and ladder.json in exp_dir, atomically."""
    from gptlab.experiments.report.render import render_html
    from gptlab.experiments.report.tables import markdown_table
    from gptlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    exp_dir = Path(exp_dir)
    an = analyse(lad, exp_dir)
    if all(e.get("missing") for e in an["variants"]):
        raise GptlabError(f"{exp_dir}: no rung has finished runs of both the baseline and a variant yet")
    spec = lad.spec
    pngs = {}
    for e in an["variants"]:
        if not e.get("missing"):
            pngs[f"ladder-{_safe(e['variant'])}.png"] = plot_variant(lad, e, spec.baseline, an["level"])
    for name, data in pngs.items():
        atomic_write_bytes(exp_dir / "plots" / name, data)
    summary = _summary_table(lad, an)
    title = f"Scale ladder: {lad.name}"
    lines = [
        f"# {title}",
        "",
        f"Generated {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} from `{lad.path}` "
        f"({len(lad.rungs)} rungs, each an experiment in `{exp_dir}/rung-K`).",
        "",
        "## Verdict",
        "",
        markdown_table(*summary),
        "",
    ]
    unreliable = [e["variant"] for e in an["variants"] if e.get("reliable") is False]
    if unreliable:
        lines += [
            f"> **unreliable**: {', '.join(unreliable)} — the backtest missed its own interval; do not "
            f"trust the extrapolated Δ.",
            "",
        ]
    lines += [
        "## Rungs",
        "",
        markdown_table(*_rung_table(lad, exp_dir)),
        "",
        f"Target: `{lad.target_config.name}`, {lad.target_params:,} params, {lad.target_tokens:.4g} tokens, "
        f"{lad.target_flops:.3e} training FLOPs.",
        "",
        "## Warnings",
        "",
    ]
    lines += [f"- {w}" for w in _warnings(lad, an)] + ["", "## Backtest", ""]
    for e in an["variants"]:
        bt = e.get("backtest")
        if bt is None:
            lines.append(f"- {e['variant']}: not run (needs 2 rungs with runs of both)")
            continue
        where = (
            f"no interval of the measured Δ ({bt.note})"
            if bt.note
            else f"{an['level']:.0%} interval of the measured Δ {_ci(bt.low, bt.high)}"
        )
        lines.append(
            f"- {e['variant']}: fit on {len(e['rungs']) - 1} rung(s), predicted Δ {_f(bt.predicted)} at "
            f"{lad.rungs[e['rungs'][-1]].name}, measured {_f(bt.measured)}, error {_f(bt.error)}, "
            f"{where}: {_label(e)}"
        )
    lines += ["", "## Per variant", ""]
    for e in an["variants"]:
        lines += [f"### {e['variant']}", ""]
        if e.get("missing"):
            lines += ["No rung has runs of both this variant and the baseline.", ""]
            continue
        ex, t = e["extrapolation"], e["trend"]
        fit = ex.fit
        lines += [
            markdown_table(*_variant_table(e, lad)),
            "",
            f"Trend: **{_trend_word(t)}** (slope {_f(t['slope'])} per decade of compute, "
            f"SE {_f(t['slope_se'], '.4f')}, "
            f"p {_f(t['p'], '.3g')}, df {_f(t['df'], '.3g')}). "
            f"Δ at target: {_f(ex.delta)}, "
            + (f"no PI ({ex.note})" if ex.note else f"{an['level']:.0%} PI {_ci(ex.low, ex.high)}")
            + " "
            f"({fit.model if fit else 'no'} fit). Backtest: {_label(e)}.",
            "",
        ]
        if fit is not None:
            lines += [
                f"Fit: baseline L = {fit.base.E:.4f} + {fit.base.A:.4g}·(C/{fit.base.c0:.3g})^(−{fit.base.alpha:.4g})"
                f" ({fit.base.form}); variant L = {fit.var.E:.4f} + {fit.var.A:.4g}·(C/{fit.var.c0:.3g})"
                f"^(−{fit.var.alpha:.4g}) ({fit.var.form})"
                + (f"; δ = {fit.delta:+.4f}" if fit.delta is not None else "")
                + (f"; {fit.note}" if fit.note else "")
                + ".",
                "",
            ]
        lines += [f"![{e['variant']}](plots/ladder-{_safe(e['variant'])}.png)", ""]
    lines += ["## Rules", ""] + [f"- {r}" for r in _rules(lad, an)] + [""]
    md_text = "\n".join(lines)
    md_path, html_path = exp_dir / "report.md", exp_dir / "report.html"
    atomic_write_text(md_path, md_text)
    atomic_write_text(html_path, render_html(md_text, title, pngs))
    atomic_write_json(exp_dir / "ladder.json", _to_json(lad, an))
    return {
        "markdown": str(md_path),
        "html": str(html_path),
        "plots": [str(exp_dir / "plots" / n) for n in pngs],
        "summary": summary,
        "analysis": an,
    }


def _to_json(lad: Ladder, an: dict) -> dict:
    def num(x):
        return None if x is None or not math.isfinite(x) else float(x)

    out = {
        "name": lad.name,
        "target": {
            "config": str(lad.target_config),
            "params": lad.target_params,
            "tokens": lad.target_tokens,
            "flops": lad.target_flops,
        },
        "rungs": [
            {
                "name": r.name,
                "model": r.model,
                "non_embedding_params": r.non_embedding,
                "params": r.params,
                "tokens": r.tokens,
                "flops": r.flops,
            }
            for r in lad.rungs
        ],
        "level": an["level"],
        "variants": [],
    }
    for e in an["variants"]:
        if e.get("missing"):
            out["variants"].append({"variant": e["variant"], "missing": True})
            continue
        ex, bt = e["extrapolation"], e["backtest"]
        out["variants"].append(
            {
                "variant": e["variant"],
                "per_rung": [{k: (num(v) if isinstance(v, float) else v) for k, v in x.items()} for x in e["per_rung"]],
                "trend": {k: (num(v) if isinstance(v, float) else v) for k, v in e["trend"].items()},
                "fit": ex.fit.model if ex.fit else None,
                "target_delta": num(ex.delta),
                "target_interval": [num(ex.low), num(ex.high)],
                "target_note": ex.note or None,
                "backtest": None
                if bt is None
                else {
                    "predicted": num(bt.predicted),
                    "measured": num(bt.measured),
                    "error": num(bt.error),
                    "interval": [num(bt.low), num(bt.high)],
                    "reliable": bt.reliable,
                    "note": bt.note or None,
                },
            }
        )
    return out
