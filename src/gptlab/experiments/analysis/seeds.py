"""Seed noise at the target: the trend of the seed SD with compute, the correlation of paired runs, and the seeds
per arm each design needs to decide a Δ there. Pure functions on numbers (numpy + scipy).

SD trend (`sd_trend`): log SD is a straight line in log compute, fitted by weighted least squares over the rungs.
A rung's sample SD s from n seeds has df = n - 1 and df s²/σ² ~ χ²(df), so log s has mean
log σ + (ψ(df/2) - log(df/2)) / 2 and variance ψ'(df/2) / 4 (ψ, ψ': digamma, trigamma). Each rung's log s is
corrected by that bias and weighted by the inverse of that variance: a rung of 2 seeds counts little, one of 20
much more. The prediction's standard error combines those variances through the fit (inflated by the residual
scatter when it is larger than they explain: the covariance times χ²/(K - 2) when that is above 1, K rungs, the
particle physicists' scale factor); the interval is exp(log-prediction ± z se), one for the true SD at the target
compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as _st

from gptlab.experiments.analysis import stats

# The published band for GPT-2 small (124M): the SD of the final validation loss across repeated runs of one
# recipe is about 0.0014 to 0.002 nats (KellerJordan/modded-nanogpt, the records' logs of 13 to 80 runs each).
ANCHOR_SD_124M = (0.0014, 0.002)


@dataclass
class SdTrend:
    """log SD = intercept + slope log10(compute); `predict` gives the SD at a compute with its interval."""

    intercept: float
    slope: float  # change of log SD per decade of compute
    cov: np.ndarray  # covariance of (intercept, slope)
    scale: float  # the covariance's inflation by the residual scatter (1: the per-rung variances explain it)
    rungs: int

    def predict(self, compute: float, level: float = 0.95) -> tuple[float, float, float]:
        """(SD, low, high) at `compute`: the point and the `level` interval of the true SD."""
        x = np.array([1.0, math.log10(compute)])
        mu = float(x @ [self.intercept, self.slope])
        se = math.sqrt(float(x @ self.cov @ x))
        q = float(_st.norm.ppf(0.5 + level / 2))
        return math.exp(mu), math.exp(mu - q * se), math.exp(mu + q * se)


def log_sd_moments(n: int) -> tuple[float, float]:
    """(bias, variance) of log s for a normal sample SD s of n values: E[log s] - log σ and Var[log s]."""
    h = (n - 1) / 2.0
    return 0.5 * (float(special.digamma(h)) - math.log(h)), 0.25 * float(special.polygamma(1, h))


def sd_trend(compute, sd, n) -> SdTrend | None:
    """The SD trend over rungs (compute, seed SD, seeds). Rungs with fewer than 2 seeds or no positive SD carry no
    information and are dropped; None with fewer than 2 rungs at distinct computes left."""
    c, s, k = (np.asarray(v, dtype=float) for v in (compute, sd, n))
    ok = (k >= 2) & np.isfinite(s) & (s > 0) & np.isfinite(c) & (c > 0)
    c, s, k = c[ok], s[ok], k[ok]
    if np.unique(c).size < 2:
        return None
    moments = [log_sd_moments(int(m)) for m in k]
    y = np.log(s) - np.array([b for b, _ in moments])
    w = 1.0 / np.array([v for _, v in moments])
    X = np.column_stack([np.ones_like(c), np.log10(c)])
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * y)
    scale = 1.0
    if c.size > 2:
        scale = max(1.0, float(np.sum(w * (y - X @ beta) ** 2)) / (c.size - 2))
    return SdTrend(float(beta[0]), float(beta[1]), cov * scale, scale, int(c.size))


def paired_correlation(baseline, variant) -> float:
    """Pearson correlation of paired final losses (the i-th baseline and variant runs share a seed); nan with
    fewer than 3 pairs or no spread."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(variant, dtype=float)
    if a.size != b.size:
        raise ValueError(f"paired runs: {a.size} baseline and {b.size} variant losses")
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def paired_sd(sd_baseline: float, sd_variant: float, rho: float) -> float:
    """SD of the per-seed differences of paired runs: sqrt(s_b² + s_v² - 2 ρ s_b s_v)."""
    return math.sqrt(max(0.0, sd_baseline**2 + sd_variant**2 - 2.0 * rho * sd_baseline * sd_variant))


def seeds_per_arm(delta: float, sd: float, rho: float = 0.0, alpha: float = 0.05, power: float = stats.POWER) -> dict:
    """Seeds per arm to decide `delta` with `power` at two-sided `alpha`, for an SD `sd` of each arm's loss and a
    correlation `rho` of paired runs: independent (Welch; stats.seeds_needed of Δ/sd) and paired (pairs; of
    Δ / the SD of the differences), and `design`, the one needing fewer ("independent" on a tie or without ρ)."""
    indep = stats.seeds_needed(delta / sd if sd > 0 else math.inf, alpha=alpha, power=power)
    paired = None
    if math.isfinite(rho):
        d_sd = paired_sd(sd, sd, rho)
        paired = stats.seeds_needed(delta / d_sd if d_sd > 0 else math.inf, alpha=alpha, power=power, paired=True)
    design = "independent"
    if isinstance(paired, int) and (not isinstance(indep, int) or paired < indep):
        design = "paired"
    return dict(independent=indep, paired=paired, design=design)
