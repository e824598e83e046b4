"""A ladder's analysis: every variant against the baseline across the rungs (per-rung Δ, trend, extrapolation,
backtest; the rules in scaling.py), each rung's regime (regime.py: a rung whose baseline is not clearly below the
unigram model is uninformative and left out of the fits unless the spec keeps it), which variants the largest
rung cannot judge at the target, and the rank agreement between consecutive fitted rungs (rank.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptlab.experiments.analysis import scaling
from gptlab.experiments.analysis.pairing import pair_by_seed
from gptlab.experiments.analysis.rank import decision_rule, rank_agreement
from gptlab.experiments.analysis.regime import Regime, acts_on, config_regime, not_judged
from gptlab.experiments.specs.ladder import Ladder


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


def pair_rungs(base: list[list[dict]], var: list[list[dict]], paired: bool) -> tuple[list[int], list, list]:
    """The rungs where both have runs, as scaling.Rung (paired: the runs paired by seed by pairing.pair_by_seed,
    in seed order), and (rung index, what the pairing left out) for each rung where it left a run out."""
    idx, out, left_out = [], [], []
    for k, (b, v) in enumerate(zip(base, var, strict=True)):
        if paired:
            pairing = pair_by_seed(b, v)
            b, v = pairing.base, pairing.var
            if pairing.left_out:
                left_out.append((k, pairing.note()))
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
    return idx, out, left_out


def rung_regimes(lad: Ladder, data: dict[str, list[list[dict]]]) -> list[Regime]:
    """Each rung's regime: its baseline config's, with the mean test loss of its recorded baseline runs (nan
    without) and the unigram model's loss on its data (read once per corpus)."""
    spec = lad.spec
    bv = next(v for v in spec.variants if v.name == spec.baseline)
    unigram: dict[tuple, Regime] = {}
    out = []
    for r, runs in zip(lad.rungs, data[spec.baseline], strict=True):
        cfg = r.spec.resolved_config(bv, r.spec.seeds[0], lad.extra)
        loss = float(np.mean([x["test_loss"] for x in runs])) if runs else math.nan
        key = (cfg.data.dir, cfg.data.vocab)
        if key not in unigram:
            unigram[key] = config_regime(cfg, loss)
            out.append(unigram[key])
        else:
            out.append(config_regime(cfg, loss, with_unigram=False))
            out[-1] = Regime(**{**out[-1].__dict__, "unigram_loss": unigram[key].unigram_loss})
    return out


def analyse(lad: Ladder, exp_dir: Path, target: Regime | None = None) -> dict:
    """Every variant against the baseline across the rungs: per-rung Δ, trend, extrapolation, backtest, and
    (paired design) "unpaired": [(rung index, what the pairing by seed left out)]. The fits use the rungs in
    "fitted" (all but the uninformative ones, unless lad.keep_uninformative); with a `target` regime, a variant
    whose interventions act on what the largest rung and the target differ in too much gets "not_judged" (the
    reason) and no reliable word; "rank" holds τ between consecutive fitted rungs and the decision rule."""
    spec = lad.spec
    level = 1 - spec.alpha
    paired = spec.design == "paired"
    data = collect(lad, exp_dir)
    regimes = rung_regimes(lad, data)
    uninformative = [k for k, g in enumerate(regimes) if g.row()["informative"] is False]
    fitted = [k for k in range(len(lad.rungs)) if lad.keep_uninformative or k not in uninformative]
    variants = []
    for v in spec.variants:
        if v.name == spec.baseline:
            continue
        idx, rungs, unpaired = pair_rungs(data[spec.baseline], data[v.name], paired)
        entry: dict = {"variant": v.name, "rungs": idx, "per_rung": [], "data": rungs, "unpaired": unpaired}
        entry["not_judged"] = not_judged(acts_on(v.interventions), regimes[-1], target) if target else None
        variants.append(entry)
        if not rungs:
            entry["missing"] = True
            continue
        for k, r in zip(idx, rungs, strict=True):
            entry["per_rung"].append(dict(scaling.rung_delta(r, spec.design, spec.alpha), rung=k, compute=r.compute))
        keep = [j for j, k in enumerate(idx) if k in fitted]
        entry["fit_rungs"] = [idx[j] for j in keep]
        if not keep:
            entry["unfitted"] = True
            continue
        rungs = entry["data"] = [rungs[j] for j in keep]
        pr = [entry["per_rung"][j] for j in keep]
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
        entry["reliable"] = None if bt is None or entry["not_judged"] else bt.reliable
    rank_idx = [k for k in fitted if data[spec.baseline][k]]
    rank_rungs = [
        {v.name: [x["test_loss"] for x in data[v.name][k]] for v in spec.variants if data[v.name][k]} for k in rank_idx
    ]
    agreements = rank_agreement(rank_rungs, spec.baseline, lad.bootstrap, level, paired=paired)
    for a in agreements:  # positions in rank_rungs -> the rungs' indices (uninformative rungs are left out)
        a.lower = rank_idx[a.lower]
    judged = [e.get("reliable") for e in variants if not e.get("missing") and not e["not_judged"]]
    reliable = None if not judged or None in judged else all(judged)
    return {
        "variants": variants,
        "level": level,
        "baseline_runs": data[spec.baseline],  # per rung, as collect gave them (the confirmation plan's SD trend)
        "regimes": regimes,
        "uninformative": uninformative,
        "fitted": fitted,
        "rank": {"agreements": agreements, "rule": decision_rule(agreements, reliable)},
    }


def done_counts(lad: Ladder, exp_dir: Path, keep: set[str] | None = None) -> list[int]:
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
