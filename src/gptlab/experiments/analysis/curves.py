"""Loss-vs-compute fits of the scale ladder (scaling.py uses them): a saturating power law per group, or
the offset model that shares one curve between the baseline and a variant. Pure functions on numbers (numpy +
scipy). Lower loss is better, Δ = variant - baseline.

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
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize

MIN_RUNGS_FULL = 4  # a variant gets its own E, A, α from this many rungs on; fewer: the offset model
ALPHA_BOUNDS = (1e-4, 5.0)


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
