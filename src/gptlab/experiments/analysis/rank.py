"""Rank agreement across a ladder's rungs: does the variants' order by Δ hold from one rung to the next?

Each rung is a mapping arm -> final losses, one per seed (the baseline under `baseline`; in a paired design the
i-th losses of every arm share a seed). A variant's Δ at a rung is mean(variant) - mean(baseline). Between
consecutive rungs, Kendall's τ of the Δs of the variants both rungs have (scipy.stats.kendalltau, τ-b), with a
bootstrap percentile interval: each replicate resamples every arm's seeds within each rung (paired: one draw of
seed indices per rung, shared by its arms) and recomputes τ. `decision_rule` turns the agreement of the two
largest rungs into the rule the report recommends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from gptlab.experiments.analysis.scaling import interval

LARGEST = "the largest rung's ranking"
EXTRAPOLATION = "the extrapolation"
# Published ladder studies (DataDecide, Magnusson et al. 2025) found that the ranking at the largest affordable
# scale predicts the ranking at the target about 80% of the time, and that no extrapolation method beat it.
DATADECIDE = "DataDecide (2025): the largest affordable scale's ranking predicts the target's about 80% of the time"


@dataclass
class Agreement:
    """τ between rung `lower` and rung `lower + 1` over `variants`, with its bootstrap interval."""

    lower: int
    variants: list[str]
    tau: float
    low: float
    high: float


def deltas(rung: Mapping[str, Sequence[float]], variants: Sequence[str], baseline: str = "baseline") -> np.ndarray:
    base = float(np.mean(rung[baseline]))
    return np.array([float(np.mean(rung[v])) - base for v in variants])


def tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two rankings (nan with fewer than 2 items or no order in one of them)."""
    if len(a) < 2:
        return math.nan
    return float(_st.kendalltau(a, b).statistic)


def _resample(rung: Mapping[str, Sequence[float]], rng: np.random.Generator, paired: bool) -> dict:
    arms = {k: np.asarray(v, dtype=float) for k, v in rung.items()}
    sizes = {v.size for v in arms.values()}
    if paired and len(sizes) == 1:
        n = sizes.pop()
        idx = rng.integers(0, n, n)
        return {k: v[idx] for k, v in arms.items()}
    return {k: v[rng.integers(0, v.size, v.size)] for k, v in arms.items()}


def rank_agreement(
    rungs: Sequence[Mapping[str, Sequence[float]]],
    baseline: str = "baseline",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    paired: bool = False,
) -> list[Agreement]:
    """τ of the variants' Δ between each pair of consecutive rungs (in the given order, smallest first)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(len(rungs) - 1):
        lo_rung, hi_rung = rungs[k], rungs[k + 1]
        names = [v for v in lo_rung if v != baseline and v in hi_rung]
        point = tau(deltas(lo_rung, names, baseline), deltas(hi_rung, names, baseline))
        draws = np.array(
            [
                tau(
                    deltas(_resample(lo_rung, rng, paired), names, baseline),
                    deltas(_resample(hi_rung, rng, paired), names, baseline),
                )
                for _ in range(n_boot if len(names) >= 2 else 0)
            ]
        )
        out.append(Agreement(k, names, point, *interval(draws, level)))
    return out


def decision_rule(agreements: Sequence[Agreement], backtest_reliable: bool | None = None) -> tuple[str, str]:
    """(rule, reason): which ranking the report recommends deciding by. The largest rung's, unless the order
    changes between the two largest rungs (τ's interval does not exclude 0 from above) and the extrapolation's
    backtest predicted the largest rung within its interval (`backtest_reliable` True for every variant): then the
    extrapolation, whose trend has earned some trust."""
    if not agreements or not math.isfinite(agreements[-1].tau):
        return LARGEST, f"no ranking to compare across rungs (fewer than 2 rungs or 2 variants); {DATADECIDE}"
    a = agreements[-1]
    where = f"rungs {a.lower} and {a.lower + 1}: τ = {a.tau:.2f} ({a.low:.2f} to {a.high:.2f})"
    if math.isfinite(a.low) and a.low > 0:
        return LARGEST, f"the ranking holds between {where}; {DATADECIDE}, and no extrapolation beat it"
    if backtest_reliable:
        return EXTRAPOLATION, f"the ranking changes between {where}, and the backtest predicted the largest rung"
    return LARGEST, (
        f"the ranking changes between {where} and the extrapolation's backtest "
        f"{'missed' if backtest_reliable is False else 'could not be run'}: the largest rung is the nearest evidence, "
        "a provisional ranking"
    )
