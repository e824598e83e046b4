"""Honest statistics for comparing final losses across seeds: pure functions, numpy + scipy only.

Conventions: lower loss is better, so a *negative* difference (variant - baseline) is an improvement. Every
function accepts any iterable of numbers; None entries are rejected. Every t-test takes its p from t_p_two_sided
and every CI its width from t_half_width. The verdict rules (`verdict`) and the constants they use live here, so
the report's "Rules" part can be written from the same values the code applies:

- two designs: "independent" (Welch's t-test, variant and baseline seeds unrelated) and "paired" (a paired
  t-test on per-seed differences; baseline and variant share the (init, data) seed of each pair);
- "better"/"worse" need the Holm-adjusted p < alpha over the experiment's comparisons; an unadjusted
  p < alpha alone is "suggestive (lower|higher)";
- "equivalent within ±δ" needs a margin δ and both one-sided tests of TOST at alpha (the 1 - 2 alpha CI of
  the difference inside ±δ);
- MDE: the difference the design detects with POWER at alpha at the current n;
- seeds needed (estimate): from Hedges' g with the SD at its upper SD_UPPER_CONFIDENCE chi-square bound.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import optimize, special
from scipy import stats as _st

SEEDS_NEEDED_CAP = 10_000
POWER = 0.8  # the power MDE and seeds needed are computed for
SD_UPPER_CONFIDENCE = 0.8  # seeds needed uses the SD at its upper one-sided bound at this confidence
DESIGNS = ("independent", "paired")

BASELINE = "baseline"
NEEDS_SEEDS = "needs >= 2 seeds"
BETTER, WORSE = "better", "worse"


def suggestive_word(diff: float) -> str:
    return f"suggestive ({'lower' if diff < 0 else 'higher'})"


def equivalent_word(margin: float) -> str:
    return f"equivalent within ±{margin:g}"


def within_noise_word(n: int | str) -> str:
    return f"within noise at n={n}"


def _as_array(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError("expected a flat sequence of numbers")
    return arr


def _as_samples(values) -> np.ndarray:
    """A 1-d sequence, or an array of many samples along its last axis (the simulations: one sample per row,
    or per (experiment, variant) in 3-d; the two groups' leading axes broadcast against each other)."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    if arr.ndim < 1:
        raise ValueError("expected a flat sequence of numbers (or an array of samples along its last axis)")
    return arr


def _scalar(x):
    """0-d arrays -> float; arrays stay arrays."""
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


def t_p_two_sided(t, df):
    """Two-sided p of a t statistic with df degrees of freedom, 2 P(T_df > |t|) (arrays broadcast)."""
    return 2.0 * _st.t.sf(np.abs(t), df)


def t_half_width(se, df, quantile: float):
    """Half-width of a t interval, t_df(quantile) * se (quantile 1 - alpha/2: a two-sided 1 - alpha CI)."""
    return _st.t.ppf(quantile, df) * se


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
    half = float(t_half_width(sem, n - 1, 0.5 + confidence / 2.0))
    return dict(n=n, mean=mean, std=std, sem=sem, ci_low=mean - half, ci_high=mean + half)


def hedges_correction(df: float) -> float:
    """Exact small-sample bias correction J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)) (Hedges 1981)."""
    if not df > 1:
        return float("nan")
    return float(math.exp(special.gammaln(df / 2.0) - special.gammaln((df - 1) / 2.0)) / math.sqrt(df / 2.0))


def sd_upper_bound(sd: float, df: float, confidence: float = SD_UPPER_CONFIDENCE) -> float:
    """Upper one-sided `confidence` bound of a normal SD from a sample SD with df degrees of freedom:
    sd * sqrt(df / chi2_{1-confidence}(df)) (df s^2 / sigma^2 ~ chi-square(df))."""
    if not df > 0 or not math.isfinite(sd):
        return float("nan")
    return float(sd * math.sqrt(df / _st.chi2.ppf(1.0 - confidence, df)))


def _power_t(nc: float, df: float, alpha: float) -> float:
    """Power of a two-sided t-test with df degrees of freedom and noncentrality nc."""
    tc = float(_st.t.ppf(1.0 - alpha / 2.0, df))
    nc = abs(nc)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        pw = float(_st.nct.sf(tc, df, nc) + _st.nct.cdf(-tc, df, nc))
    if not math.isfinite(pw):
        # scipy's nct can return nan far out in the tail (large nc); the normal approximation is
        # essentially exact there.
        pw = float(_st.norm.sf(tc - nc) + _st.norm.cdf(-tc - nc))
    return min(1.0, max(0.0, pw))


def power_two_sample(d: float, n: int, alpha: float = 0.05, n2: int | None = None) -> float:
    """Power of a two-sided two-sample t-test, n per group (or n and n2), standardized effect d (noncentral t)."""
    n2 = n if n2 is None else n2
    if n < 2 or n2 < 2:
        return float("nan")
    return _power_t(abs(d) / math.sqrt(1.0 / n + 1.0 / n2), n + n2 - 2, alpha)


def power_paired(dz: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test on n pairs, dz = mean difference / SD of the differences."""
    if n < 2:
        return float("nan")
    return _power_t(abs(dz) * math.sqrt(n), n - 1, alpha)


def seeds_needed(
    d: float, alpha: float = 0.05, power: float = POWER, cap: int = SEEDS_NEEDED_CAP, paired: bool = False
) -> int | str | None:
    """Smallest n per group (pairs if `paired`, dz then) with power_two_sample(d, n, alpha) >= power.

    None when d is 0, nan or infinite (no meaningful answer); the string ">10000" (">cap") when
    even `cap` seeds per group would not be enough.
    """
    if d is None or not math.isfinite(d) or d == 0:
        return None
    d = abs(float(d))
    pw = power_paired if paired else power_two_sample
    if pw(d, 2, alpha) >= power:
        return 2
    # Power increases with n: double until it is reached, then bisect (keeps nc moderate for big d).
    lo, hi = 2, 4
    while pw(d, min(hi, cap), alpha) < power:
        if hi >= cap:
            return f">{cap}"
        lo, hi = hi, hi * 2
    hi = min(hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pw(d, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def mde(
    sd: float, n: int, n2: int | None = None, alpha: float = 0.05, power: float = POWER, paired: bool = False
) -> float:
    """Minimum detectable effect: the |difference| a two-sided t-test at alpha detects with `power`.

    Independent design: n and n2 seeds, `sd` the pooled SD of the two groups (noncentral t with n + n2 - 2
    df). Paired: n pairs, `sd` the SD of the per-seed differences (noncentral t with n - 1 df). nan when it
    cannot be computed (fewer than 2 seeds, no finite SD).
    """
    n2 = n if n2 is None else n2
    if n < 2 or n2 < 2 or sd is None or not math.isfinite(sd) or sd < 0:
        return float("nan")
    if sd == 0:
        return 0.0

    def gap(d: float) -> float:
        return (power_paired(d, n, alpha) if paired else power_two_sample(d, n, alpha, n2)) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2.0
        if hi > 1e6:
            return float("nan")
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12)) * sd


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


def welch_test(baseline, variant) -> dict:
    """Welch's t-test of diff = mean(variant) - mean(baseline): diff, se, df (Welch–Satterthwaite), t, p
    (two-sided). 1-d inputs give floats; N-d inputs (samples along the last axis, leading axes broadcast; the
    simulated experiments of sequential.py) give arrays. A zero
    standard error gives t = ±inf (p = 0) or, with diff = 0, t = 0 (p = 1): the difference is exact."""
    a, b = _as_samples(baseline), _as_samples(variant)
    n1, n2 = a.shape[-1], b.shape[-1]
    v1, v2 = np.var(a, axis=-1, ddof=1), np.var(b, axis=-1, ddof=1)
    diff = np.mean(b, axis=-1) - np.mean(a, axis=-1)
    w1, w2 = v1 / n1, v2 / n2
    se = np.sqrt(w1 + w2)
    with np.errstate(all="ignore"):
        big = np.maximum(w1, w2)  # Welch-Satterthwaite, scaled by the larger term so tiny variances cannot underflow
        s1, s2 = w1 / big, w2 / big
        df = np.where(big > 0, (s1 + s2) ** 2 / (s1**2 / (n1 - 1) + s2**2 / (n2 - 1)), n1 + n2 - 2.0)
        t = np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)))
    p = t_p_two_sided(t, df)
    return dict(diff=_scalar(diff), se=_scalar(se), df=_scalar(df), t=_scalar(t), p=_scalar(p))


def paired_test(baseline, variant) -> dict:
    """Paired t-test on the per-seed differences d_i = variant_i - baseline_i (pairs in the given order):
    diff (mean of d), sd (of d), se, df = n - 1, t, p (two-sided). N-d inputs: pairs along the last axis, the
    leading axes broadcast (one simulated experiment per row). A zero SD of d gives t = ±inf (p = 0) or, with
    diff = 0, t = 0 (p = 1)."""
    a, b = _as_samples(baseline), _as_samples(variant)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"paired test needs as many baseline as variant values (pairs), got {a.shape[-1]} and {b.shape[-1]}"
        )
    d = b - a
    n = d.shape[-1]
    diff = np.mean(d, axis=-1)
    sd = np.std(d, axis=-1, ddof=1)
    se = sd / math.sqrt(n)
    with np.errstate(all="ignore"):
        t = np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)))
    df = np.full(np.shape(diff), n - 1.0)
    p = t_p_two_sided(t, df)
    return dict(diff=_scalar(diff), sd=_scalar(sd), se=_scalar(se), df=_scalar(df), t=_scalar(t), p=_scalar(p))


def design_test(design: str):
    """The test statistic of a design: paired_test for "paired" (pairs by seed), welch_test for "independent".
    The report (compare / compare_paired), the ladder's rungs and the sequential looks all take it from here."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    return paired_test if design == "paired" else welch_test


def tost(baseline, variant, margin: float, alpha: float = 0.05, paired: bool = False) -> dict:
    """Two one-sided tests (Schuirmann 1987) for equivalence within ±margin of diff = variant - baseline.

    H0 lower: diff <= -margin, tested by t_lower = (diff + margin) / se (one-sided, upper tail);
    H0 upper: diff >= +margin, tested by t_upper = (diff - margin) / se (one-sided, lower tail).
    Welch's se and df (or the paired t's with paired=True). equivalent = both p < alpha, which is the
    same as the (1 - 2 alpha) CI of diff lying inside (-margin, +margin). Returns diff, se, df, p_lower,
    p_upper, p (= the larger), ci_low/ci_high (the 1 - 2 alpha CI), equivalent. 2-d inputs give arrays.
    """
    if not (margin is not None and math.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalence margin must be a positive number, got {margin!r}")
    w = paired_test(baseline, variant) if paired else welch_test(baseline, variant)
    diff, se, df = np.asarray(w["diff"]), np.asarray(w["se"]), np.asarray(w["df"])
    with np.errstate(all="ignore"):
        t_lo = np.where(se > 0, (diff + margin) / se, np.where(diff + margin > 0, np.inf, -np.inf))
        t_hi = np.where(se > 0, (diff - margin) / se, np.where(diff - margin < 0, -np.inf, np.inf))
    p_lower = _st.t.sf(t_lo, df)
    p_upper = _st.t.cdf(t_hi, df)
    half = t_half_width(se, df, 1.0 - alpha)
    p = np.maximum(p_lower, p_upper)
    return dict(
        diff=_scalar(diff),
        se=_scalar(se),
        df=_scalar(df),
        p_lower=_scalar(p_lower),
        p_upper=_scalar(p_upper),
        p=_scalar(p),
        ci_low=_scalar(diff - half),
        ci_high=_scalar(diff + half),
        equivalent=(p < alpha) if np.ndim(p) else bool(p < alpha),
    )


def verdict(
    diff: float,
    p: float,
    p_adjusted: float,
    n: int,
    alpha: float = 0.05,
    equivalent: bool = False,
    margin: float | None = None,
) -> str:
    """The verdict word, by the rules in the module docstring (in this order): "better"/"worse" when the
    Holm-adjusted p < alpha; "suggestive (lower|higher)" when only the unadjusted p < alpha; "equivalent
    within ±margin" when TOST says so; else "within noise at n=N". nan p: "needs >= 2 seeds"."""
    if p is None or not math.isfinite(p):
        return NEEDS_SEEDS
    if p_adjusted is not None and math.isfinite(p_adjusted) and p_adjusted < alpha and diff != 0:
        return BETTER if diff < 0 else WORSE
    if p < alpha and diff != 0:
        return suggestive_word(diff)
    if equivalent and margin is not None:
        return equivalent_word(margin)
    return within_noise_word(n)


def _effect_sizes(out: dict, diff: float, sd: float, df: float, alpha: float, power: float, paired: bool) -> None:
    """cohen_d, hedges_g (bias-corrected with df) and the conservative seeds-needed estimate into out."""
    if sd > 0:
        d = diff / sd
    else:
        d = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    g = d * hedges_correction(df) if math.isfinite(d) else d
    out["cohen_d"], out["hedges_g"] = float(d), float(g)
    # Conservative: the observed |g| re-expressed with the SD at its upper one-sided bound.
    d_cons = g * math.sqrt(_st.chi2.ppf(1.0 - SD_UPPER_CONFIDENCE, df) / df) if math.isfinite(g) else g
    out["seeds_needed"] = seeds_needed(d_cons, alpha=alpha, power=power, paired=paired)


def _empty(n1: int, n2: int, a: np.ndarray, b: np.ndarray) -> dict:
    nan = float("nan")
    out: dict = dict(
        n_baseline=n1,
        n_variant=n2,
        mean_baseline=nan,
        mean_variant=nan,
        diff=nan,
        t=nan,
        df=nan,
        p=nan,
        ci_low=nan,
        ci_high=nan,
        cohen_d=nan,
        hedges_g=nan,
        seeds_needed=None,
        mde=nan,
        equivalent=None,
        tost_p=nan,
        tost_ci_low=nan,
        tost_ci_high=nan,
        verdict=NEEDS_SEEDS,
    )
    if n1:
        out["mean_baseline"] = float(np.mean(a))
    if n2:
        out["mean_variant"] = float(np.mean(b))
    if n1 and n2:
        out["diff"] = out["mean_variant"] - out["mean_baseline"]
    return out


def _finish(out: dict, a, b, alpha: float, margin: float | None, paired: bool, n: int) -> dict:
    if margin is not None:
        e = tost(a, b, margin, alpha=alpha, paired=paired)
        out.update(equivalent=e["equivalent"], tost_p=e["p"], tost_ci_low=e["ci_low"], tost_ci_high=e["ci_high"])
    out["verdict"] = verdict(out["diff"], out["p"], out["p"], n, alpha, bool(out["equivalent"]), margin)
    return out


def compare(
    baseline_values: Iterable[float],
    variant_values: Iterable[float],
    alpha: float = 0.05,
    power: float = POWER,
    equivalence_margin: float | None = None,
) -> dict:
    """Welch comparison of a variant against the baseline (diff = mean(variant) - mean(baseline)).

    Returns: n_baseline, n_variant, mean_baseline, mean_variant, diff, t (Welch), df (Welch–Satterthwaite), p
    (two-sided), ci_low/ci_high (Welch CI of diff at confidence 1 - alpha, i.e. 95% by default), cohen_d (pooled
    sd), hedges_g, seeds_needed (int, ">10000" or None: the conservative estimate, see _effect_sizes), mde (the
    difference detectable with `power` at alpha with these n and the pooled SD), equivalent / tost_p / tost_ci_low
    / tost_ci_high (TOST at ±equivalence_margin; None/nan without a margin) and verdict for a family of this one
    comparison (build_rows re-decides it with the Holm-adjusted p). With fewer than 2 values in either group
    only the means and diff are filled in.
    """
    a = _as_array(baseline_values)
    b = _as_array(variant_values)
    n1, n2 = int(a.size), int(b.size)
    out = _empty(n1, n2, a, b)
    if n1 < 2 or n2 < 2:
        return out
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("compare() needs finite values (drop diverged runs first)")

    w = welch_test(a, b)
    diff, df = out["diff"], w["df"]
    half = float(t_half_width(w["se"], df, 1.0 - alpha / 2.0))
    out.update(t=w["t"], df=df, p=w["p"], ci_low=diff - half, ci_high=diff + half)
    v1, v2 = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    sp = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    _effect_sizes(out, diff, sp, n1 + n2 - 2, alpha, power, paired=False)
    out["mde"] = mde(sp, n1, n2, alpha=alpha, power=power)
    return _finish(out, a, b, alpha, equivalence_margin, False, min(n1, n2))


def compare_paired(
    baseline_values: Iterable[float],
    variant_values: Iterable[float],
    alpha: float = 0.05,
    power: float = POWER,
    equivalence_margin: float | None = None,
) -> dict:
    """Paired comparison: baseline_values[i] and variant_values[i] share a seed (init, data order).

    A paired t-test on the per-seed differences: diff = their mean, t, df = n - 1, p (two-sided), ci_low /
    ci_high (t interval of the mean difference at 1 - alpha); cohen_d / hedges_g are dz (diff over the SD of
    the differences; J(n - 1)); seeds_needed is in pairs, mde uses the SD of the differences. Same keys as
    compare() plus n_pairs. Fewer than 2 pairs: only the means and diff.
    """
    a = _as_array(baseline_values)
    b = _as_array(variant_values)
    if a.size != b.size:
        raise ValueError(
            f"compare_paired() needs one baseline value per variant value (pairs), got {a.size} and {b.size}"
        )
    n = int(a.size)
    out = _empty(n, n, a, b)
    out["n_pairs"] = n
    if n < 2:
        return out
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("compare_paired() needs finite values (drop diverged runs first)")
    w = paired_test(a, b)
    diff = float(np.mean(b - a))
    half = float(t_half_width(w["se"], n - 1, 1.0 - alpha / 2.0))
    out.update(diff=diff, t=w["t"], df=w["df"], p=w["p"], ci_low=diff - half, ci_high=diff + half)
    _effect_sizes(out, diff, w["sd"], n - 1, alpha, power, paired=True)
    out["mde"] = mde(w["sd"], n, alpha=alpha, power=power, paired=True)
    return _finish(out, a, b, alpha, equivalence_margin, True, n)
