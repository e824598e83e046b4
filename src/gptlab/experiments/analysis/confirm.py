"""Confirming a ladder's leads at the target: how many seeds, runs, GPU-hours and dollars it takes.

- A **lead** is a variant whose Δ at the largest rung with runs of both favours it (Δ < 0). A variant whose Δ there
  is 0 or above, which includes every variant whose interval there excludes any gain, is not planned for.
- **Seed SD at the target**: seeds.sd_trend over the baseline's SD at each rung (its seeds' sample SD, the rung's
  mean training FLOPs, its number of seeds), predicted at the target's FLOPs with its interval. With fewer than 2
  rungs of 2+ baseline seeds there is no trend: the published 124M anchor band (seeds.ANCHOR_SD_124M) is used
  instead, its upper end as the SD.
- **Correlation of paired runs**: pooled over the rungs, the Pearson correlation of the same-seed pairs' losses,
  each centred on its rung's mean (so the rungs' different losses do not make it up). Only a paired ladder
  measures it: in the independent design no two runs share initialisation or data order (Spec.run_seed).
- **Δ to plan for**: the extrapolated Δ at the target when the variant is judged (no `not_judged` reason), its
  extrapolation gives a finite Δ < 0 and its backtest is not unreliable; else the largest rung's Δ.
- **Δ sized for**: the smaller gain of that Δ and `min_effect` (the smallest gain worth confirming at the target;
  default 0.014 nats, the seed's gradient clipping: 3.692 → 3.678): a screen's Δ on a tiny model (often tenths of
  a nat) is no estimate of the target's, so a confirmation sized for it alone would be far too small.
- **Seeds per arm** (fixed design): seeds.seeds_per_arm for that Δ and SD, power 0.8, at alpha / leads
  (Bonferroni, as --until-decided spends it); the design is the one needing fewer seeds.
- **Sequential design** (`--until-decided`): max seeds M = the fewest seeds, from the fixed design's up, at which the
  O'Brien-Fleming design with looks every R = max(2, ceil(M / 4)) seeds has power 0.8 for that Δ (z-approximation
  of sequential.crossing_probability); expected seeds = Σ looks' seeds × P(stop there) under that Δ.
- **Cost**: gptlab.plan.plan of the target config (the cost model of `gptlab plan`) on the chosen GPU type and
  count: GPU-hours per run = its wall hours × GPUs, dollars = runs × GPU-hours per run × price per GPU-hour.
"""

from __future__ import annotations

import math

import numpy as np

from gptlab.experiments.analysis import seeds, sequential
from gptlab.experiments.specs.confirm import MIN_EFFECT
from gptlab.experiments.specs.experiment import MAX_SEEDS

PLAN_POWER = 0.8
LEAD_RULE = (
    "A lead: a variant whose Δ at the largest rung favours it (Δ < 0); one whose Δ there is 0 or above, including "
    "every one whose interval excludes a gain, is not planned for."
)


def rung_sds(base_runs: list[list[dict]]) -> list[tuple[float, float, int]]:
    """(mean training FLOPs, sample SD of the final test loss, seeds) of the baseline at each rung with runs."""
    out = []
    for runs in base_runs:
        if runs:
            y = np.array([x["test_loss"] for x in runs], dtype=float)
            sd = float(np.std(y, ddof=1)) if y.size >= 2 else math.nan
            out.append((float(np.mean([x["flops"] for x in runs])), sd, int(y.size)))
    return out


# A trend of the seed SD is planned with only while its interval at the target spans at most this ratio (two
# orders of magnitude): a few rungs of 3 seeds, extrapolated six decades of compute, can give an interval from
# 1e-7 to 1e12, and a point estimate inside it says nothing a budget can rest on.
MAX_SD_SPREAD = 100.0


def predict_sd(rows: list[tuple[float, float, int]], target_flops: float, level: float = 0.95) -> dict:
    """The seed SD at the target: from the rungs' trend with its `level` interval, else (no trend, or one too
    uncertain at the target to plan with: MAX_SD_SPREAD) the anchor band's upper end."""
    trend = seeds.sd_trend(*zip(*rows, strict=True)) if rows else None
    lo_a, hi_a = seeds.ANCHOR_SD_124M
    anchor = dict(source="anchor", sd=hi_a, low=lo_a, high=hi_a)
    if trend is None:
        note = "no SD trend (fewer than 2 rungs with 2+ baseline seeds): the 124M anchor band, its upper end"
        return dict(anchor, note=note)
    sd, lo, hi = trend.predict(target_flops, level)
    if not (math.isfinite(sd) and 0 < lo and math.isfinite(hi) and hi / lo <= MAX_SD_SPREAD):
        note = (
            f"the rungs' SD trend ({trend.rungs} rungs) is too uncertain at the target to plan with "
            f"({sd:.3g}, {level:.0%} interval [{lo:.3g}, {hi:.3g}], more than {MAX_SD_SPREAD:g}x wide): the 124M "
            f"anchor band, its upper end"
        )
        return dict(anchor, note=note, trend_sd=sd, trend_low=lo, trend_high=hi)
    note = f"trend of {trend.rungs} rungs"
    return dict(source="trend", sd=sd, low=lo, high=hi, slope=trend.slope, rungs=trend.rungs, note=note)


def pooled_correlation(pairs) -> tuple[float, int]:
    """(ρ, pairs) of same-seed pairs pooled over rungs: `pairs` is, per rung, (baseline losses, variant losses) in
    seed order; each rung's losses are centred on their mean; rungs with fewer than 2 pairs are left out."""
    a, b = [], []
    for base, var in pairs:
        x, y = np.asarray(base, dtype=float), np.asarray(var, dtype=float)
        if x.size >= 2 and x.size == y.size:
            a.extend(x - x.mean())
            b.extend(y - y.mean())
    return seeds.paired_correlation(a, b), len(a)


def planned_delta(e: dict) -> tuple[float, str]:
    """The Δ a confirmation is sized for, and which one it is (see the module docstring)."""
    ex, last = e.get("extrapolation"), e["per_rung"][-1]["diff"]
    if (
        not e.get("not_judged")
        and ex is not None
        and math.isfinite(ex.delta)
        and ex.delta < 0
        and e.get("reliable") is not False
    ):
        return float(ex.delta), "extrapolated to the target"
    return float(last), "measured at the largest rung"


def is_lead(e: dict) -> bool:
    return not e.get("missing") and bool(e.get("per_rung")) and e["per_rung"][-1]["diff"] < 0


def sequential_design(delta: float, sd_diff: float, n_fixed: int, alpha: float, paired: bool) -> dict:
    """Max seeds M, seeds per round R, the looks, the expected seeds per arm and the power (z-approximation) of the
    O'Brien-Fleming design for Δ `delta` with an SD `sd_diff` of one arm (independent) or of the differences
    (paired)."""

    def design(m: int) -> dict:
        r = max(2, math.ceil(m / 4))
        looks = sequential.schedule(r, r, m)
        info = [sequential.info_fraction(n, n, m) for n in looks]
        bounds = sequential.boundaries(info, alpha)
        drift = abs(delta) / sd_diff * math.sqrt(m if paired else m / 2)
        expected, before = 0.0, 0.0
        for k, n in enumerate(looks):
            last = k == len(looks) - 1
            upto = 1.0 if last else sequential.crossing_probability(info[: k + 1], bounds[: k + 1], drift)
            expected += n * (upto - before)
            before = upto
        power = sequential.crossing_probability(info, bounds, drift)
        return dict(max_seeds=m, seeds_per_round=r, looks=looks, expected=expected, power=power)

    m = max(2, n_fixed)
    d = design(m)
    while d["power"] < PLAN_POWER and m < min(MAX_SEEDS, 2 * n_fixed):
        m += 1
        d = design(m)
    return d


def lead_plan(
    e: dict, sd: dict, rho: float, alpha: float, family: int, per_run: dict, min_effect: float = MIN_EFFECT
) -> dict:
    """One lead's confirmation plan: `sd` from predict_sd, `rho` its correlation of paired runs (nan: not
    measured), `family` the leads sharing alpha, `per_run` the cost model's hours/GPUs/cost of one run; sized
    for the smaller gain of the planned Δ and `min_effect`."""
    delta, source = planned_delta(e)
    if -delta > min_effect:
        delta, source = -min_effect, f"min_effect ({source}: {delta:+.4f})"
    a = alpha / max(1, family)
    arm = seeds.seeds_per_arm(delta, sd["sd"], rho, alpha=a, power=PLAN_POWER)
    design = arm["design"]
    n = arm[design]
    out = dict(
        variant=e["variant"],
        delta=delta,
        delta_source=source,
        rho=rho,
        design=design,
        seeds=arm,
        alpha=a,
        n_fixed=n if isinstance(n, int) else None,
    )
    if not isinstance(n, int) or n > MAX_SEEDS:  # more seeds than a spec may list: no plan worth costing
        out["n_fixed"] = None
        out["note"] = f"needs {n} seeds per arm, more than the {MAX_SEEDS} a spec may list"
        return out
    sd_diff = seeds.paired_sd(sd["sd"], sd["sd"], rho) if design == "paired" else sd["sd"]
    seq = sequential_design(delta, sd_diff, n, a, design == "paired")
    out["sequential"] = seq
    out["runs"] = 2 * n  # the variant's arm and the baseline's
    out["runs_max"] = 2 * seq["max_seeds"]
    out["runs_expected"] = 2 * seq["expected"]
    out.update(cost(out["runs"], per_run))
    return out


def cost(runs: float, per_run: dict) -> dict:
    """GPU-hours and dollars of `runs` runs of the plan `per_run` (gptlab.plan.plan's hours, gpus, cost)."""
    gpu_hours = per_run["hours"] * per_run["gpus"]
    return dict(gpu_hours=runs * gpu_hours, cost=runs * per_run["cost"])


def run_cost(cfg, gpu: str, gpus: int, mfu: float, price: float | None) -> dict:
    """One run of the target config on `gpus` x `gpu`: gptlab.plan.plan (the `gptlab plan` cost model)."""
    from gptlab.plan import plan

    return plan(cfg, gpus=gpus, gpu_type=gpu, mfu=mfu, price=price)


def confirm_plan(
    an: dict,
    base_runs: list[list[dict]],
    target_flops: float,
    alpha: float,
    paired: bool,
    per_run,
    min_effect: float = MIN_EFFECT,
):
    """Every lead's plan (analysis/ladder.analyse's `an`, the baseline's runs per rung from collect), and the
    emitted spec's totals: the baseline runs as many seeds as the lead needing most."""
    sd = predict_sd(rung_sds(base_runs), target_flops, an["level"])
    leads = [e for e in an["variants"] if is_lead(e)]
    plans = []
    for e in leads:
        rho, n_pairs = math.nan, 0
        if paired:
            rho, n_pairs = pooled_correlation([(r.base, r.var) for r in e["data"]])
        p = lead_plan(e, sd, rho, alpha, len(leads), per_run, min_effect)
        p["pairs"] = n_pairs
        plans.append(p)
    ok = [p for p in plans if p.get("n_fixed")]
    total = None
    if ok:  # one spec, one design: paired when any lead's plan is (it has ρ, so every lead has a paired count)
        design = "paired" if any(p["design"] == "paired" for p in ok) else "independent"
        n = [p["seeds"][design] if isinstance(p["seeds"][design], int) else p["n_fixed"] for p in ok]
        m_max = max(p["sequential"]["max_seeds"] for p in ok)
        runs = sum(n) + max(n)
        total = dict(
            seeds=max(n),
            max_seeds=max(m_max, max(n)),
            seeds_per_round=max(p["sequential"]["seeds_per_round"] for p in ok),
            runs=runs,
            runs_max=sum(p["sequential"]["max_seeds"] for p in ok) + m_max,
            design=design,
            **cost(runs, per_run),
        )
    return dict(
        sd=sd,
        anchor=seeds.ANCHOR_SD_124M,
        leads=plans,
        total=total,
        per_run=per_run,
        rule=LEAD_RULE,
        min_effect=min_effect,
    )
