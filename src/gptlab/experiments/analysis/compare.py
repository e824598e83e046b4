"""One row of statistics per variant of an experiment against its baseline: the variant's runs summarized, the
difference with its CI, p, Holm over the experiment's comparisons, effect sizes, MDE and the verdict (the rules
are stats.py's; the paired design pairs runs by pairing.py's rule). The report (report/rows.py, tables.py) turns
the rows into words and strings; the leaderboard ranks them."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from gptlab import GptlabError
from gptlab.experiments.analysis import stats as st
from gptlab.experiments.analysis.pairing import finite, pair_by_seed

__all__ = ["build_rows", "finite"]


def _clean(x: Any) -> Any:
    """nan/inf floats -> None so rows are JSON-friendly."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _mean(xs: Iterable[float | None]) -> float | None:
    v = [float(x) for x in xs if finite(x)]
    return float(np.mean(v)) if v else None


def build_rows(
    runs: list[dict],
    baseline: str,
    judge: dict[str, float] | None = None,
    reference: dict[str, float] | None = None,
    alpha: float = 0.05,
    equivalence_margin: float | None = None,
    design: str = "independent",
) -> list[dict]:
    """Per-variant statistics vs the baseline, sorted baseline first then by mean test loss.

    Verdicts by stats.verdict: Holm over all the variants' comparisons with the baseline at `alpha`, TOST
    at ±`equivalence_margin` (nats) if given. `design`: "independent" (Welch) or "paired" (runs matched by
    seed by pairing.pair_by_seed, paired t on the per-seed differences; a row's `unpaired` says which seeds were
    left out of the pairing and why, "" when none were)."""
    if design not in st.DESIGNS:
        raise GptlabError(f"design: {design!r} is not one of {', '.join(st.DESIGNS)}")
    if equivalence_margin is not None and not (finite(equivalence_margin) and equivalence_margin > 0):
        raise GptlabError(f"equivalence_margin: expected a positive number of nats, got {equivalence_margin!r}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[str(r.get("variant") or "")].append(r)
    if baseline not in groups:
        raise GptlabError(f"baseline variant {baseline!r} has no runs; variants present: {', '.join(sorted(groups))}")
    ctx = dict(
        baseline=baseline,
        judge=judge or {},
        reference=reference or {},
        alpha=alpha,
        margin=equivalence_margin,
        design=design,
        base_runs=groups[baseline],
    )
    rows = [_row(variant, rs, **ctx) for variant, rs in groups.items()]
    others = [r for r in rows if r["variant"] != baseline]
    for r, ph in zip(others, st.holm([r["p"] for r in others]), strict=True):
        r["p_holm"] = _clean(ph)
    m = sum(r["p"] is not None for r in others)  # the Holm family: every comparison that has a p
    for r in rows:
        r["holm_significant"] = None if r["p_holm"] is None else bool(r["p_holm"] < alpha)
        r["n_comparisons"] = m
        if r["variant"] != baseline and r["p"] is not None:
            r["verdict"] = st.verdict(
                r["diff"], r["p"], r["p_holm"], r["n_compared"], alpha, bool(r["equivalent"]), equivalence_margin
            )

    def key(r: dict) -> tuple:
        m = r["mean"]
        return (r["variant"] != baseline, m is None, m if m is not None else 0.0, r["variant"])

    rows.sort(key=key)
    return rows


def _test_losses(rs: list[dict]) -> list[float]:
    return [float(r["test_loss"]) for r in rs if finite(r.get("test_loss"))]


def _downstream(rs: list[dict]) -> dict[str, float]:
    """{"TASK acc_norm (n=N)": mean over the variant's runs} for each downstream column that every run of the
    variant has, on the same documents and task settings (equal shas); runs carry them as r["downstream"]
    (render.py)."""
    cols: list[dict] = [r.get("downstream") or {} for r in rs]
    out = {}
    for label in sorted(set().union(*cols)) if cols else []:
        vals = [c.get(label) for c in cols]
        if all(v is not None for v in vals) and len({sha for _, sha in vals}) == 1:
            out[label] = float(np.mean([acc for acc, _ in vals]))
    return out


def _row(
    variant: str,
    rs: list[dict],
    baseline: str,
    base_runs: list[dict],
    judge: dict[str, float],
    reference: dict[str, float],
    alpha: float,
    margin: float | None,
    design: str,
) -> dict:
    """One variant's row: its runs summarized, and compared with the baseline's test losses."""
    vals = _test_losses(rs)
    s = st.summarize(vals)
    interventions: list[str] = []
    for r in rs:
        for it in r.get("interventions") or []:
            if it not in interventions:
                interventions.append(it)
    judged = [judge[r["run_id"]] for r in rs if r["run_id"] in judge]
    row: dict[str, Any] = dict(
        variant=variant,
        interventions=interventions,
        n=s["n"],
        n_runs=len(rs),
        n_excluded=len(rs) - s["n"],
        seeds=sorted(r.get("seed") for r in rs if r.get("seed") is not None),
        run_ids=[r["run_id"] for r in rs],
        test_losses=vals,
        mean=s["mean"],
        std=s["std"],
        sem=s["sem"],
        ci_low=s["ci_low"],
        ci_high=s["ci_high"],
        design=design,
        equivalence_margin=margin,
        diff_ci_level=1 - alpha,
        diff=None,
        diff_ci_low=None,
        diff_ci_high=None,
        t=None,
        df=None,
        p=None,
        p_holm=None,
        cohen_d=None,
        hedges_g=None,
        seeds_needed=None,
        mde=None,
        n_compared=None,
        equivalent=None,
        tost_p=None,
        tost_ci_low=None,
        tost_ci_high=None,
        verdict=st.BASELINE if variant == baseline else st.NEEDS_SEEDS,
        tokens=_mean(r.get("tokens") for r in rs),
        tokens_per_s=_mean(r.get("tokens_per_s") for r in rs),
        judge=float(np.mean(judged)) if judged else None,
        n_judged=len(judged),
        published=float(reference[variant]) if variant in reference and finite(reference[variant]) else None,
        downstream=_downstream(rs),
        unpaired="",
    )
    if variant != baseline:
        if design == "paired":
            pairing = pair_by_seed(base_runs, rs)
            b_vals = [float(r["test_loss"]) for r in pairing.base]
            v_vals = [float(r["test_loss"]) for r in pairing.var]
            c = st.compare_paired(b_vals, v_vals, alpha=alpha, equivalence_margin=margin)
            row["unpaired"] = pairing.note()
            n_compared = c["n_pairs"]
        else:
            c = st.compare(_test_losses(base_runs), vals, alpha=alpha, equivalence_margin=margin)
            n_compared = min(c["n_baseline"], c["n_variant"])
        row.update(
            diff=c["diff"],
            diff_ci_low=c["ci_low"],
            diff_ci_high=c["ci_high"],
            t=c["t"],
            df=c["df"],
            p=c["p"],
            cohen_d=c["cohen_d"],
            hedges_g=c["hedges_g"],
            seeds_needed=c["seeds_needed"],
            mde=c["mde"],
            n_compared=n_compared,
            equivalent=c["equivalent"],
            tost_p=c["tost_p"],
            tost_ci_low=c["tost_ci_low"],
            tost_ci_high=c["tost_ci_high"],
            verdict=c["verdict"],
        )
    return {k: _clean(v) for k, v in row.items()}
