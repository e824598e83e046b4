"""The maths of the scale ladder (ladder.py): loss-vs-compute fits, the difference a variant makes at each rung,
its trend with scale, its extrapolation to a target compute with a bootstrap prediction interval over seeds, and
the backtest that predicts the largest rung from the others. Pure functions on numbers (numpy + scipy).

Conventions as in stats.py: lower loss is better, Δ = variant - baseline (negative = the variant helps).

Fits (`fit_pair`):
- "separate": with at least MIN_RUNGS_FULL rungs, baseline and variant each get a saturating power law
  L(C) = E + A (C / C0)^(-α) (C0: the smallest compute of the ladder), fitted by weighted least squares on every
  run's loss (each weighted by 1 / the seed variance of its group at its rung, so a noisy rung counts less; a
  group with fewer than 2 seeds, or no spread, has no variance of its own and takes the pooled seed variance of
  the groups that have 2+ seeds) (scipy.optimize.curve_fit, trust-region reflective, bounds 0 <= E < min loss,
  A > 0, ALPHA_BOUNDS),
  started from the best of a grid of E values with log(L - E) regressed on log C. Δ(C) = L_v(C) - L_b(C).
- "offset": with fewer rungs, or when a separate fit fails, both are fitted together with the baseline's form
  and one shared E, A, α: L_b(C) = f(C), L_v(C) = f(C) + δ; Δ(C) = δ at every scale. f is the saturating law
  when the ladder has at least 3 distinct computes, a pure power law A (C / C0)^(-α) with 2, a constant with 1.

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
from scipy import optimize
from scipy import stats as _st

from gptlab.experiments.analysis import stats

MIN_RUNGS_FULL = 4  # a variant gets its own E, A, α from this many rungs on; fewer: the offset model
ALPHA_BOUNDS = (1e-4, 5.0)
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


# ---------------------------------------------------------------------------------------------------- curves
@dataclass
class Curve:
    """L(C) = E + A (C / c0)^(-alpha); form "saturating", "power" (E = 0; a variant's
    offset curve: E = its δ) or "constant" (A = 0)."""

    form: str
    E: float
    A: float
    alpha: float
    c0: float

    def __call__(self, c) -> np.ndarray | float:
        x = np.asarray(c, dtype=float) / self.c0
        out = self.E + self.A * x ** (-self.alpha)
        return float(out) if np.ndim(out) == 0 else out


def _sat(x, E, A, a):
    return E + A * x ** (-a)


def _sat_jac(x, E, A, a):
    p = x ** (-a)
    return np.column_stack([np.ones_like(x), p, -A * p * np.log(x)])


def _init_grid(x: np.ndarray, y: np.ndarray, e_max: float) -> tuple[float, float, float]:
    """(E, A, α) to start from: for E on a grid below min(y), log(y - E) regressed on log x; the best SSE."""
    best = None
    lx = np.log(x)
    for frac in (0.0, 0.25, 0.5, 0.7, 0.85, 0.93, 0.97, 0.99):
        E = frac * e_max
        z = np.log(np.maximum(y - E, 1e-12))
        slope, icpt = np.polyfit(lx, z, 1)
        a = float(np.clip(-slope, *ALPHA_BOUNDS))
        A = float(math.exp(icpt))
        sse = float(np.sum((_sat(x, E, A, a) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, E, A, a)
    return best[1], best[2], best[3]


def fit_curve(c, loss, c0: float | None = None, sigma=None) -> Curve | None:
    """The saturating law fitted to points (c, loss) (3+ distinct c), else a pure power law (2), else a
    constant (1); None if the points cannot be fitted (non-finite, non-positive). `sigma`: each point's
    standard deviation (weighted least squares), default equal weights."""
    c, y = np.asarray(c, dtype=float), np.asarray(loss, dtype=float)
    sd = np.ones_like(y) if sigma is None else np.asarray(sigma, dtype=float)
    ok = np.isfinite(c) & np.isfinite(y) & (c > 0) & (y > 0)
    c, y, sd = c[ok], y[ok], sd[ok]
    if not y.size:
        return None
    c0 = float(c0 or c.min())
    x = c / c0
    distinct = np.unique(c).size
    if distinct == 1:
        return Curve("constant", float(np.average(y, weights=sd**-2)), 0.0, 0.0, c0)
    if distinct >= 3:
        e_max = float(y.min()) * (1 - 1e-6)
        p0 = _init_grid(x, y, e_max)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = optimize.curve_fit(
                    _sat,
                    x,
                    y,
                    p0=p0,
                    sigma=sd,
                    jac=_sat_jac,
                    bounds=([0.0, 1e-12, ALPHA_BOUNDS[0]], [e_max, np.inf, ALPHA_BOUNDS[1]]),
                    method="trf",
                    maxfev=5000,
                )
            if np.all(np.isfinite(p)):
                return Curve("saturating", float(p[0]), float(p[1]), float(p[2]), c0)
        except (RuntimeError, ValueError, optimize.OptimizeWarning):
            pass
    slope, icpt = np.polyfit(np.log(x), np.log(y), 1, w=y / sd)  # log y's SD is about sd / y
    return Curve("power", 0.0, float(math.exp(icpt)), float(-slope), c0)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Rung:
    """One rung's measurements: the baseline's and the variant's compute (training FLOPs, per run) and final
    losses (one per seed; in a paired design the i-th of each share a seed)."""

    c_base: np.ndarray
    base: np.ndarray
    c_var: np.ndarray
    var: np.ndarray

    def __post_init__(self):
        self.c_base, self.base = np.asarray(self.c_base, float), np.asarray(self.base, float)
        self.c_var, self.var = np.asarray(self.c_var, float), np.asarray(self.var, float)

    @property
    def compute(self) -> float:
        """The rung's compute on the Δ axis: the baseline's mean FLOPs."""
        return float(np.mean(self.c_base))


def _points(rungs: list[Rung]) -> tuple[np.ndarray, ...]:
    cb = np.concatenate([r.c_base for r in rungs])
    lb = np.concatenate([r.base for r in rungs])
    cv = np.concatenate([r.c_var for r in rungs])
    lv = np.concatenate([r.var for r in rungs])
    return cb, lb, cv, lv


def noise_note(rungs: list[Rung], paired: bool = False) -> str:
    """ "" when every rung has at least 2 seeds in both groups (paired: 2 pairs); else the note that replaces
    seed-noise intervals, e.g. "1 seed: no noise estimate" (the smallest count of the rungs)."""
    n = min(min(r.base.size, r.var.size) for r in rungs) if rungs else 0
    if n >= 2:
        return ""
    return f"{n} {'seed pair' if paired else 'seed'}{'' if n == 1 else 's'}: no noise estimate"


def _sigmas(rungs: list[Rung]) -> tuple[np.ndarray, np.ndarray]:
    """Each point's weight in the fits: the seed SD of its group (baseline or variant) at its rung, so that a
    noisy rung counts less; a group without spread of its own (1 seed, or equal losses) takes the pooled SD of
    the groups with 2+ seeds, sqrt(sum (n - 1) s^2 / sum (n - 1)) (1 if there is none, or it is 0)."""
    groups = [r.base for r in rungs] + [r.var for r in rungs]
    raw = [float(np.std(v, ddof=1)) if v.size >= 2 else math.nan for v in groups]
    dof = sum(v.size - 1 for v in groups if v.size >= 2)
    pooled = (
        math.sqrt(sum((v.size - 1) * x**2 for v, x in zip(groups, raw, strict=True) if v.size >= 2) / dof)
        if dof
        else 0.0
    )
    fill = pooled if math.isfinite(pooled) and pooled > 0 else 1.0
    fixed = [x if math.isfinite(x) and x > 0 else fill for x in raw]
    k = len(rungs)
    sb = np.concatenate([np.full(r.base.size, fixed[i]) for i, r in enumerate(rungs)])
    sv = np.concatenate([np.full(r.var.size, fixed[k + i]) for i, r in enumerate(rungs)])
    return sb, sv


# ---------------------------------------------------------------------------------------------------- pair fits
@dataclass
class PairFit:
    """A variant's fit against the baseline: model "separate" (two curves) or "offset" (one curve + delta)."""

    model: str
    base: Curve
    var: Curve
    delta: float | None = None  # the offset model's δ
    note: str = ""

    def delta_at(self, c) -> np.ndarray | float:
        if self.model == "offset":
            return self.delta if np.ndim(c) == 0 else np.full(np.shape(c), self.delta)
        return self.var(c) - self.base(c)


def fit_offset(rungs: list[Rung], c0: float | None = None) -> PairFit | None:
    """The offset model: one curve f (shared E, A, α) for both, the variant shifted by δ."""
    cb, lb, cv, lv = _points(rungs)
    if not (lb.size and lv.size):
        return None
    sb, sv = _sigmas(rungs)
    c0 = float(c0 or min(cb.min(), cv.min()))
    distinct = np.unique(np.concatenate([cb, cv])).size
    if distinct >= 3:  # start from the grid's curve for the baseline (the joint fit refines it)
        E0, A0, a0 = (
            _init_grid(cb / c0, lb, float(lb.min()) * (1 - 1e-6))
            if np.unique(cb).size >= 2
            else (0.0, float(np.mean(lb)), ALPHA_BOUNDS[0])
        )
        base0 = Curve("saturating", E0, A0, a0, c0)
    else:
        base0 = fit_curve(cb, lb, c0, sb)
    if base0 is None:
        return None
    delta0 = float(np.average(lv - base0(cv), weights=sv**-2))
    c_all = np.concatenate([cb, cv]) / c0
    ind = np.concatenate([np.zeros(lb.size), np.ones(lv.size)])
    y = np.concatenate([lb, lv])
    sd = np.concatenate([sb, sv])
    if base0.form == "saturating":
        e_max = float(min(lb.min(), (lv - delta0).min())) * (1 - 1e-6)

        def f(xi, E, A, a, d):
            return _sat(xi[0], E, A, a) + d * xi[1]

        def jac(xi, E, A, a, d):
            return np.column_stack([_sat_jac(xi[0], E, A, a), xi[1]])

        p0 = [min(base0.E, e_max * 0.999), base0.A, base0.alpha, delta0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = optimize.curve_fit(
                    f,
                    np.vstack([c_all, ind]),
                    y,
                    p0=p0,
                    sigma=sd,
                    jac=jac,
                    bounds=(
                        [0.0, 1e-12, ALPHA_BOUNDS[0], -np.inf],
                        [max(e_max, 1e-9), np.inf, ALPHA_BOUNDS[1], np.inf],
                    ),
                    method="trf",
                    maxfev=5000,
                )
            if np.all(np.isfinite(p)):
                base = Curve("saturating", float(p[0]), float(p[1]), float(p[2]), c0)
                return PairFit(
                    "offset", base, Curve("saturating", float(p[0] + p[3]), float(p[1]), float(p[2]), c0), float(p[3])
                )
        except (RuntimeError, ValueError):
            pass
    if base0.form == "constant":
        d = float(np.average(lv, weights=sv**-2) - np.average(lb, weights=sb**-2))
        return PairFit("offset", base0, Curve("constant", base0.E + d, 0.0, 0.0, c0), d)

    # pure power law with an offset: linear in (log A, α) for fixed δ; δ by a bounded scalar search
    def sse(d: float) -> float:
        cur = _power_only(c_all * c0, y - d * ind, c0, sd)
        return math.inf if cur is None else float(np.sum(((cur(c_all * c0) + d * ind - y) / sd) ** 2))

    span = max(1e-6, float(np.ptp(y)) + abs(delta0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = optimize.minimize_scalar(sse, bounds=(delta0 - span, delta0 + span), method="bounded")
    d = float(r.x)
    power = _power_only(c_all * c0, y - d * ind, c0, sd)
    return PairFit("offset", power, Curve("power", d, power.A, power.alpha, c0), d) if power else None  # L_b + d


def _power_only(c, y, c0, sd) -> Curve | None:
    if np.any(y <= 0) or np.unique(c).size < 2:
        return None
    slope, icpt = np.polyfit(np.log(c / c0), np.log(y), 1, w=y / sd)
    return Curve("power", 0.0, float(math.exp(icpt)), float(-slope), c0)


def fit_pair(rungs: list[Rung], min_full: int = MIN_RUNGS_FULL, c0: float | None = None) -> PairFit | None:
    """Separate saturating fits with at least `min_full` rungs (both must come out saturating), else (or on
    failure) the offset model; None when nothing could be fitted."""
    cb, lb, cv, lv = _points(rungs)
    sb, sv = _sigmas(rungs)
    c0 = float(c0 or min(cb.min(), cv.min()))
    if len(rungs) >= min_full:
        b, v = fit_curve(cb, lb, c0, sb), fit_curve(cv, lv, c0, sv)
        if b is not None and v is not None and b.form == v.form == "saturating":
            return PairFit("separate", b, v)
        fb = fit_offset(rungs, c0)
        if fb is not None:
            fb.note = "separate fit failed: offset model"
        return fb
    return fit_offset(rungs, c0)


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
    p = float(2 * _st.t.sf(abs(t), dof)) if math.isfinite(dof) and dof > 0 else nan
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
