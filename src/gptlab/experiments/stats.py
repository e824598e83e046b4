"""Honest statistics for comparing final losses across seeds: pure functions, numpy + scipy only.

Conventions: lower loss is better, so a *negative* difference (variant - baseline) is an
improvement. Every function accepts any iterable of numbers; None entries are rejected.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from scipy import special
from scipy import stats as _st

SEEDS_NEEDED_CAP = 10_000


def _as_array(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError("expected a flat sequence of numbers")
    return arr


def summarize(values: Iterable[float], confidence: float = 0.95) -> dict:
    """n, mean, sample std (ddof=1), standard error and a Student-t confidence interval.

    With n == 1 the std, sem and CI are nan (one seed says nothing about spread); n == 0 gives
    nan everywhere.
    """
    x = _as_array(values)
    n = int(x.size)
    nan = float("nan")
    if n == 0:
        return dict(n=0, mean=nan, std=nan, sem=nan, ci_low=nan, ci_high=nan)
    mean = float(np.mean(x))
    if n == 1:
        return dict(n=1, mean=mean, std=nan, sem=nan, ci_low=nan, ci_high=nan)
    std = float(np.std(x, ddof=1))
    sem = std / math.sqrt(n)
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
    return dict(n=n, mean=mean, std=std, sem=sem, ci_low=mean - half, ci_high=mean + half)


def hedges_correction(df: float) -> float:
    """Exact small-sample bias correction J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)) (Hedges 1981)."""
    if not df > 1:
        return float("nan")
    return float(math.exp(special.gammaln(df / 2.0) - special.gammaln((df - 1) / 2.0)) / math.sqrt(df / 2.0))


def power_two_sample(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample t-test, n per group, standardized effect d (noncentral t)."""
    if n < 2:
        return float("nan")
    df = 2 * n - 2
    tc = float(_st.t.ppf(1.0 - alpha / 2.0, df))
    nc = abs(d) * math.sqrt(n / 2.0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        pw = float(_st.nct.sf(tc, df, nc) + _st.nct.cdf(-tc, df, nc))
    if not math.isfinite(pw):
        # scipy's nct can return nan far out in the tail (large nc); the normal approximation is
        # essentially exact there.
        pw = float(_st.norm.sf(tc - nc) + _st.norm.cdf(-tc - nc))
    return min(1.0, max(0.0, pw))


def seeds_needed(d: float, alpha: float = 0.05, power: float = 0.8, cap: int = SEEDS_NEEDED_CAP) -> int | str | None:
    """Smallest n per group with power_two_sample(d, n, alpha) >= power.

    None when d is 0, nan or infinite (no meaningful answer); the string ">10000" (">cap") when
    even `cap` seeds per group would not be enough.
    """
    if d is None or not math.isfinite(d) or d == 0:
        return None
    d = abs(float(d))
    if power_two_sample(d, 2, alpha) >= power:
        return 2
    # Power increases with n: double until it is reached, then bisect (keeps nc moderate for big d).
    lo, hi = 2, 4
    while power_two_sample(d, min(hi, cap), alpha) < power:
        if hi >= cap:
            return f">{cap}"
        lo, hi = hi, hi * 2
    hi = min(hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_two_sample(d, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values (same order as given; None/nan stay nan).

    adjusted p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)) over the sorted finite p-values, m = their count.
    """
    p = np.array([np.nan if v is None else float(v) for v in pvalues], dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def compare(baseline_values: Iterable[float], variant_values: Iterable[float], alpha: float = 0.05,
            power: float = 0.8) -> dict:
    """Welch comparison of a variant against the baseline (diff = mean(variant) - mean(baseline)).

    Returns: n_baseline, n_variant, mean_baseline, mean_variant, diff, t (Welch), df
    (Welch–Satterthwaite), p (two-sided), ci_low/ci_high (Welch CI of diff at confidence
    1 - alpha, i.e. 95% by default), cohen_d (pooled sd), hedges_g, seeds_needed (int, ">10000"
    or None; for the observed |d| at `alpha` and `power`), verdict ("better" / "worse" /
    "within noise at n=<min n>" / "needs >= 2 seeds"). With fewer than 2 values in either
    group only the means and diff are filled in.
    """
    a = _as_array(baseline_values)
    b = _as_array(variant_values)
    n1, n2 = int(a.size), int(b.size)
    nan = float("nan")
    out: dict = dict(n_baseline=n1, n_variant=n2, mean_baseline=nan, mean_variant=nan, diff=nan, t=nan, df=nan,
                     p=nan, ci_low=nan, ci_high=nan, cohen_d=nan, hedges_g=nan, seeds_needed=None,
                     verdict="needs >= 2 seeds")
    if n1:
        out["mean_baseline"] = float(np.mean(a))
    if n2:
        out["mean_variant"] = float(np.mean(b))
    if n1 and n2:
        out["diff"] = out["mean_variant"] - out["mean_baseline"]
    if n1 < 2 or n2 < 2:
        return out
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("compare() needs finite values (drop diverged runs first)")

    diff = out["diff"]
    v1, v2 = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    se2 = v1 / n1 + v2 / n2
    if se2 > 0:
        with warnings.catch_warnings():  # "precision loss" for nearly identical values: harmless here
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _st.ttest_ind(b, a, equal_var=False)
        t, p = float(res.statistic), float(res.pvalue)
        w1, w2 = v1 / n1, v2 / n2  # Welch-Satterthwaite, scaled by the larger term so tiny variances cannot underflow
        w1, w2 = w1 / max(w1, w2), w2 / max(w1, w2)
        df = (w1 + w2) ** 2 / (w1**2 / (n1 - 1) + w2**2 / (n2 - 1))
        half = float(_st.t.ppf(1.0 - alpha / 2.0, df)) * math.sqrt(se2)
        ci = (diff - half, diff + half)
    else:  # every seed gave the identical loss in both groups: the difference is exact
        df = float(n1 + n2 - 2)
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        ci = (diff, diff)
    out.update(t=t, df=float(df), p=p, ci_low=float(ci[0]), ci_high=float(ci[1]))

    sp2 = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
    if sp2 > 0:
        d = diff / math.sqrt(sp2)
    else:
        d = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    out["cohen_d"] = float(d)
    out["hedges_g"] = float(d * hedges_correction(n1 + n2 - 2)) if math.isfinite(d) else float(d)
    out["seeds_needed"] = seeds_needed(d, alpha=alpha, power=power)

    if p < alpha and diff < 0:
        out["verdict"] = "better"
    elif p < alpha and diff > 0:
        out["verdict"] = "worse"
    else:
        out["verdict"] = f"within noise at n={min(n1, n2)}"
    return out
