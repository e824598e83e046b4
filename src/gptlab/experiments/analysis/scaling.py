"""The maths of the scale ladder (ladder.py), over the fits of curves.py: the difference a variant makes at each rung,
its trend with scale, its extrapolation to a target compute with a bootstrap prediction interval over seeds, and
the backtest that predicts the largest rung from the others. Pure functions on numbers (numpy + scipy).

Conventions as in stats.py: lower loss is better, Δ = variant - baseline (negative = the variant helps).

Fits (`fit_pair`, `fit_curve`): see curves.py.

Trend (`trend`): see TREND_RULE (the report prints it).

Bootstrap (`bootstrap_pairs`): each replicate resamples the seeds within every rung (baseline and variant
independently, or the pairs together in a paired design), each resampled loss put back as
mean + sqrt(n / (n - 1)) (x - mean) so that the resampled mean has the sample's unbiased variance (the plain
bootstrap shrinks it by (n - 1) / n, a lot with 2-3 seeds), and refits. Percentiles of the replicates give the
intervals.

Seed noise needs seeds: a rung where the baseline or the variant has fewer than 2 seeds (paired: 2 pairs) has no
noise estimate (`noise_note`). Its Δ gets no CI or p (only the number and the note), the trend is untested, and
neither the target's prediction interval nor the backtest is computed: the bootstrap cannot resample that rung,
so an interval would treat its Δ as exact and come out too narrow (a backtest could then fail, or pass, on noise
it never saw). The point estimates (fits, extrapolated Δ, backtest prediction and error) are still given.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gptlab.experiments.analysis import stats
from gptlab.experiments.analysis.curves import ALPHA_BOUNDS, MIN_RUNGS_FULL, PairFit, Rung, fit_pair

__all__ = [  # the ladder's report reads the fit constants and the rung type from here, with the rules they serve
    "ALPHA_BOUNDS",
    "MIN_RUNGS_FULL",
    "TRENDS",
    "TREND_RULE",
    "Backtest",
    "Extrapolation",
    "PairFit",
    "Rung",
    "backtest",
    "bootstrap_pairs",
    "extrapolate",
    "interval",
    "noise_note",
    "resample",
    "rung_delta",
    "trend",
]

TRENDS = ("grows", "shrinks", "flips", "flat")
TREND_RULE = (
    "Trend of Δ with scale, decided in this order: **flips** when Δ at the smallest and at the largest rung have "
    "opposite signs and both their CIs exclude 0; otherwise a weighted least-squares line of Δ on log10(compute) "
    "(weights 1/SE² of each rung's Δ) is tested: its slope's standard error comes from the rungs' own SEs, inflated "
    "by the residual scatter when that is larger (χ²/(K-2) > 1, K rungs), and t = slope/SE is compared with a t "
    "distribution with the smallest per-rung degrees of freedom; when its two-sided p < alpha the trend is "
    "**grows** if the slope moves Δ away from zero at the largest rung (the fitted Δ there and the slope have the "
    "same sign) and **shrinks** otherwise; else **flat** (no detectable change with scale, which is not proof of "
    'none; "flat (untested)" when no slope test was possible: fewer than 2 seeds or 2 computes).'
)


def noise_note(rungs: list[Rung], paired: bool = False) -> str:
    """ "" when every rung has at least 2 seeds in both groups (paired: 2 pairs); else the note that replaces
    seed-noise intervals, e.g. "1 seed: no noise estimate" (the smallest count of the rungs)."""
    n = min(min(r.base.size, r.var.size) for r in rungs) if rungs else 0
    if n >= 2:
        return ""
    return f"{n} {'seed pair' if paired else 'seed'}{'' if n == 1 else 's'}: no noise estimate"


# ---------------------------------------------------------------------------------------------------- per rung
def rung_delta(r: Rung, design: str = "independent", alpha: float = 0.05) -> dict:
    """Δ at one rung by stats.py (Welch or paired as the design says): diff, ci_low, ci_high, p, se, df, and
    note: "" or, with fewer than 2 seeds in a group, noise_note's (then CI, p, se and df are nan)."""
    paired = design == "paired" and r.base.size == r.var.size
    cmp = (stats.compare_paired if paired else stats.compare)(r.base, r.var, alpha=alpha)
    out = {k: cmp[k] for k in ("diff", "ci_low", "ci_high", "p", "mean_baseline", "mean_variant")}
    out["note"] = noise_note([r], paired)
    if not out["note"]:
        t = stats.design_test("paired" if paired else "independent")(r.base, r.var)
        out.update(se=float(t["se"]), df=float(t["df"]))
    else:
        out.update(se=float("nan"), df=float("nan"))
    out["n_baseline"], out["n_variant"] = int(r.base.size), int(r.var.size)
    return out


# ---------------------------------------------------------------------------------------------------- trend
def trend(log_c, delta, se, df, ci_low, ci_high, alpha: float = 0.05) -> dict:
    """The trend word of Δ across rungs (TREND_RULE) with the slope's numbers: word, slope (Δ per decade of
    compute), slope_se, t, p, df."""
    x, d = np.asarray(log_c, float), np.asarray(delta, float)
    s, dfs = np.asarray(se, float), np.asarray(df, float)
    lo, hi = np.asarray(ci_low, float), np.asarray(ci_high, float)
    order = np.argsort(x)
    x, d, s, dfs, lo, hi = x[order], d[order], s[order], dfs[order], lo[order], hi[order]
    nan = float("nan")
    out = dict(word="flat", slope=nan, slope_se=nan, t=nan, p=nan, df=nan, tested=False)

    def excludes0(i):
        return bool(np.isfinite(lo[i]) and np.isfinite(hi[i]) and (lo[i] > 0 or hi[i] < 0))

    if x.size >= 2 and excludes0(0) and excludes0(-1) and np.sign(d[0]) != np.sign(d[-1]):
        out["word"] = "flips"
    if x.size < 2 or not np.all(np.isfinite(s)) or np.any(s <= 0) or np.unique(x).size < 2:
        return out
    w = 1.0 / s**2
    xm = float(np.sum(w * x) / np.sum(w))
    sxx = float(np.sum(w * (x - xm) ** 2))
    slope = float(np.sum(w * (x - xm) * d) / sxx)
    icpt = float(np.sum(w * d) / np.sum(w)) - slope * xm
    scale = 1.0
    if x.size > 2:
        chi2 = float(np.sum(w * (d - icpt - slope * x) ** 2))
        scale = max(1.0, chi2 / (x.size - 2))
    slope_se = math.sqrt(scale / sxx)
    dof = float(np.min(dfs)) if np.all(np.isfinite(dfs)) else nan
    t = slope / slope_se
    p = float(stats.t_p_two_sided(t, dof)) if math.isfinite(dof) and dof > 0 else nan
    out.update(slope=slope, slope_se=slope_se, t=t, p=p, df=dof, tested=math.isfinite(p))
    if out["word"] == "flips":
        return out
    if math.isfinite(p) and p < alpha:
        at_largest = icpt + slope * float(x[-1])
        out["word"] = "grows" if np.sign(slope) == np.sign(at_largest) else "shrinks"
    return out


# ---------------------------------------------------------------------------------------------------- bootstrap
def resample(rungs: list[Rung], rng: np.random.Generator, paired: bool = False) -> list[Rung]:
    """The rungs with their seeds resampled (see the module docstring: inflated to keep the variance)."""
    out = []
    for r in rungs:

        def draw(vals, idx):
            n = vals.size
            if n < 2:
                return vals.copy()
            m = vals.mean()
            return m + math.sqrt(n / (n - 1)) * (vals[idx] - m)

        if paired and r.base.size == r.var.size:
            i = rng.integers(0, r.base.size, r.base.size)
            out.append(Rung(r.c_base[i], draw(r.base, i), r.c_var[i], draw(r.var, i)))
        else:
            ib, iv = rng.integers(0, r.base.size, r.base.size), rng.integers(0, r.var.size, r.var.size)
            out.append(Rung(r.c_base[ib], draw(r.base, ib), r.c_var[iv], draw(r.var, iv)))
    return out


def bootstrap_pairs(
    rungs: list[Rung], fn: Callable[[list[Rung]], np.ndarray | float], n: int = 200, seed: int = 0, paired: bool = False
) -> np.ndarray:
    """fn evaluated on `n` resampled ladders (rows; nan where fn could not fit)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        try:
            rows.append(np.atleast_1d(np.asarray(fn(resample(rungs, rng, paired)), dtype=float)))
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            rows.append(None)
    width = max((r.size for r in rows if r is not None), default=1)
    return np.vstack([r if r is not None else np.full(width, np.nan) for r in rows])


def interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of the finite draws (nan, nan with fewer than 10)."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if d.size < 10:
        return float("nan"), float("nan")
    q = (1 - level) / 2
    return float(np.quantile(d, q)), float(np.quantile(d, 1 - q))


# ---------------------------------------------------------------------------------------------------- analysis
@dataclass
class Extrapolation:
    """A variant's Δ at the target compute: point estimate and bootstrap prediction interval; with a grid, the
    bootstrap bands of the variant's loss and of Δ over it (for the plot)."""

    fit: PairFit | None
    delta: float
    low: float
    high: float
    draws: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    failed: int = 0  # bootstrap replicates that could not be fitted
    band: dict = field(repr=False, default_factory=dict)  # {"var": (lo, hi), "delta": (lo, hi)} over the grid
    note: str = ""  # why there is no interval (noise_note: a rung with fewer than 2 seeds)


def _delta_fn(c_target: float, min_full: int, c0: float):
    def fn(rs: list[Rung]) -> float:
        f = fit_pair(rs, min_full, c0)
        return float("nan") if f is None else float(f.delta_at(c_target))

    return fn


def extrapolate(
    rungs: list[Rung],
    c_target: float,
    level: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
    paired: bool = False,
    min_full: int = MIN_RUNGS_FULL,
    grid=None,
) -> Extrapolation:
    """Δ at `c_target` from the fit on all rungs, with the bootstrap percentile interval over seeds (and, with
    `grid`, the bands of the same replicates over it). No interval or bands, only the point and a note, when a
    rung has fewer than 2 seeds in a group (noise_note)."""
    c0 = min(r.c_base.min() for r in rungs)
    fit = fit_pair(rungs, min_full, c0)
    point = float("nan") if fit is None else float(fit.delta_at(c_target))
    note = noise_note(rungs, paired)
    if note:
        return Extrapolation(fit, point, float("nan"), float("nan"), note=note)
    g = np.zeros(0) if grid is None else np.asarray(grid, float)

    def fn(rs: list[Rung]) -> np.ndarray:
        f = fit_pair(rs, min_full, c0)
        if f is None:
            return np.full(1 + 2 * g.size, np.nan)
        return np.concatenate(
            [[f.delta_at(c_target)], np.asarray(f.var(g), float).reshape(-1), np.broadcast_to(f.delta_at(g), g.shape)]
        )

    rows = bootstrap_pairs(rungs, fn, n_boot, seed, paired)
    draws = rows[:, 0]
    lo, hi = interval(draws, level)
    band = {}
    if g.size:
        q = (1 - level) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            blo, bhi = np.nanquantile(rows[:, 1:], q, axis=0), np.nanquantile(rows[:, 1:], 1 - q, axis=0)
        m = g.size
        band = {"var": (blo[:m], bhi[:m]), "delta": (blo[m:], bhi[m:])}
    return Extrapolation(fit, point, lo, hi, draws, int(np.sum(~np.isfinite(draws))), band)


@dataclass
class Backtest:
    """The fit on every rung but the largest, predicting the largest rung's measured Δ."""

    predicted: float
    measured: float
    low: float  # prediction interval of the measured Δ
    high: float
    reliable: bool | None  # None: could not be run
    note: str = ""  # why it could not be judged (noise_note: a rung with fewer than 2 seeds)

    @property
    def error(self) -> float:
        return self.measured - self.predicted


def backtest(
    rungs: list[Rung],
    level: float = 0.95,
    n_boot: int = 200,
    seed: int = 0,
    paired: bool = False,
    min_full: int = MIN_RUNGS_FULL,
) -> Backtest:
    """Fit on rungs[:-1], predict Δ at the last rung's compute. The interval is for the *measured* Δ: each
    bootstrap replicate adds the fit's variation (prediction on resampled smaller rungs) and the measurement's
    (the resampled largest rung's Δ minus the measured one). reliable = the measured Δ is inside it. With a rung
    of fewer than 2 seeds in a group: the prediction and the error only, no interval, reliable None and the
    note (noise_note)."""
    nan = float("nan")
    if len(rungs) < 2:
        return Backtest(nan, nan, nan, nan, None)
    c0 = min(r.c_base.min() for r in rungs)
    last = rungs[-1]
    measured = float(np.mean(last.var) - np.mean(last.base))
    fit = fit_pair(rungs[:-1], min_full, c0)
    if fit is None:
        return Backtest(nan, measured, nan, nan, None)
    predicted = float(fit.delta_at(last.compute))
    note = noise_note(rungs, paired)
    if note:
        return Backtest(predicted, measured, nan, nan, None, note)
    pred_fn = _delta_fn(last.compute, min_full, c0)

    def fn(rs: list[Rung]) -> np.ndarray:
        noise = float(np.mean(rs[-1].var) - np.mean(rs[-1].base)) - measured
        return np.array([pred_fn(rs[:-1]) + noise])

    draws = bootstrap_pairs(rungs, fn, n_boot, seed, paired)[:, 0]
    lo, hi = interval(draws, level)
    ok = None if not (math.isfinite(lo) and math.isfinite(hi)) else bool(lo <= measured <= hi)
    return Backtest(predicted, measured, lo, hi, ok)
