"""The scale ladder's maths (analysis/curves.py, scaling.py) on synthetic data with known answers, fixed RNGs."""

import math

import numpy as np
import pytest

from gptlab.experiments.analysis import curves, scaling, stats
from gptlab.experiments.analysis.scaling import Rung

C0 = 1e10


def law(c, E=2.0, A=3.0, alpha=0.3):
    return E + A * (np.asarray(c, float) / C0) ** -alpha


def ladder(rng, computes, seeds, sd, base=law, var=None):
    """Rungs with `seeds` noisy losses of each curve at every compute."""
    var = var or base
    return [
        Rung([c] * seeds, base(c) + rng.normal(0, sd, seeds), [c] * seeds, var(c) + rng.normal(0, sd, seeds))
        for c in computes
    ]


def test_fit_recovers_a_known_exponent_offset_and_scale():
    # 6 computes over 5 decades, 4 noisy points each (sd 0.005 nats): within 2.5% of E, 10% of alpha and A
    rng = np.random.default_rng(0)
    c = np.repeat(np.logspace(10, 15, 6), 4)
    y = law(c) + rng.normal(0, 0.005, c.size)
    f = curves.fit_curve(c, y, C0)
    assert f.form == "saturating"
    assert f.E == pytest.approx(2.0, rel=0.025)
    assert f.alpha == pytest.approx(0.3, rel=0.10)
    assert f.A == pytest.approx(3.0, rel=0.10)
    # and another truth, to show the fit is not anchored to these numbers
    y2 = law(c, E=3.1, A=1.5, alpha=0.55) + rng.normal(0, 0.005, c.size)
    f2 = curves.fit_curve(c, y2, C0)
    assert (f2.E, f2.alpha) == (pytest.approx(3.1, rel=0.025), pytest.approx(0.55, rel=0.10))


def test_fit_falls_back_to_a_power_law_then_a_constant_with_fewer_computes():
    c = np.array([1e10, 1e10, 1e11, 1e11])
    f = curves.fit_curve(c, law(c), C0)
    assert f.form == "power" and f(1e10) == pytest.approx(law(1e10), rel=1e-9)
    assert curves.fit_curve([1e10, 1e10], [4.0, 4.2]).form == "constant"


@pytest.mark.parametrize("delta", [0.05, -0.08])
def test_offset_model_recovers_a_known_offset(delta):
    rng = np.random.default_rng(1)
    rungs = ladder(rng, np.logspace(10, 12, 3), 4, 0.01, var=lambda c: law(c) + delta)
    f = curves.fit_pair(rungs)
    assert f.model == "offset"  # 3 rungs < MIN_RUNGS_FULL
    assert f.delta == pytest.approx(delta, abs=0.01)
    assert f.delta_at(1e18) == f.delta and f.var(1e11) - f.base(1e11) == pytest.approx(f.delta)
    # two rungs (a pure power law for the baseline): the variant's curve is still the baseline's + δ
    two = curves.fit_pair(rungs[:2])
    assert two.base.form == "power" and two.var(1e11) - two.base(1e11) == pytest.approx(two.delta)
    # a single rung: the offset is the difference of the means
    one = curves.fit_pair(rungs[:1])
    assert one.delta == pytest.approx(np.mean(rungs[0].var) - np.mean(rungs[0].base))


def test_separate_fits_from_four_rungs_give_a_scale_dependent_delta():
    rng = np.random.default_rng(2)
    rungs = ladder(rng, np.logspace(10, 13, 5), 3, 0.003, var=lambda c: law(c, E=1.9, A=3.3))
    f = curves.fit_pair(rungs)
    assert f.model == "separate"

    def truth(c):
        return law(c, E=1.9, A=3.3) - law(c)

    assert f.delta_at(1e10) == pytest.approx(truth(1e10), abs=0.02)
    assert f.delta_at(1e14) == pytest.approx(truth(1e14), abs=0.03)


def rungs_for_trend(deltas, se=0.005, df=4):
    deltas = np.asarray(deltas, float)
    half = 2.776 * se  # t(0.975, 4)
    return dict(
        log_c=np.arange(deltas.size) + 10.0,
        delta=deltas,
        se=np.full(deltas.size, se),
        df=np.full(deltas.size, df),
        ci_low=deltas - half,
        ci_high=deltas + half,
    )


@pytest.mark.parametrize(
    "deltas, word",
    [
        ([-0.02, -0.05, -0.08, -0.11], "grows"),  # the win gets larger with scale
        ([0.02, 0.05, 0.08, 0.11], "grows"),  # so does a loss
        ([-0.11, -0.08, -0.05, -0.02], "shrinks"),  # the win fades
        ([-0.06, -0.03, 0.03, 0.06], "flips"),  # helps small, hurts large, both ends significant
        ([-0.05, -0.051, -0.049, -0.05], "flat"),
        ([-0.05, 0.0, -0.05, 0.0], "flat"),  # scatter, no slope
    ],
)
def test_trend_rule_gives_each_word(deltas, word):
    t = scaling.trend(**rungs_for_trend(deltas), alpha=0.05)
    assert t["word"] == word, t
    assert word in scaling.TRENDS


def test_trend_flips_needs_both_ends_significant_and_scatter_widens_the_slope():
    # same signs change, but the smallest rung's CI covers 0: a significant slope through zero is "shrinks"
    r = rungs_for_trend([-0.005, -0.03, 0.03, 0.06])
    r["ci_low"][0], r["ci_high"][0] = -0.02, 0.01
    assert scaling.trend(**r)["word"] != "flips"
    # residual scatter far above the per-rung SEs inflates the slope's SE
    tight = scaling.trend(**rungs_for_trend([0.0, 0.01, 0.02, 0.03]))
    noisy = scaling.trend(**rungs_for_trend([0.0, 0.04, -0.01, 0.03]))
    assert noisy["slope_se"] > 3 * tight["slope_se"]


def test_rung_delta_follows_the_design():
    r = Rung([1e10] * 3, [3.00, 3.10, 3.05], [1e10] * 3, [2.98, 3.07, 3.04])
    ind, par = scaling.rung_delta(r, "independent"), scaling.rung_delta(r, "paired")
    assert ind["ci_low"] == pytest.approx(stats.compare(r.base, r.var)["ci_low"])
    assert par["ci_low"] == pytest.approx(stats.compare_paired(r.base, r.var)["ci_low"])
    assert par["ci_high"] - par["ci_low"] < ind["ci_high"] - ind["ci_low"]  # pairing removes the seed effect


def test_bootstrap_prediction_interval_covers_the_truth_in_most_datasets():
    # 50 synthetic ladders (3 rungs x 4 seeds, sd 0.02) with a true offset of -0.03: the 95% interval of the
    # extrapolated delta covers -0.03 in at least 85% of them (measured: see the assertion's message)
    rng = np.random.default_rng(3)
    hits, widths = 0, []
    for i in range(50):
        rungs = ladder(rng, np.logspace(10, 12, 3), 4, 0.02, var=lambda c: law(c) - 0.03)
        ex = scaling.extrapolate(rungs, 1e18, level=0.95, n_boot=100, seed=i)
        hits += ex.low <= -0.03 <= ex.high
        widths.append(ex.high - ex.low)
    assert hits >= 43, f"covered in {hits}/50"
    assert 0.01 < np.median(widths) < 0.1  # an interval, not the whole line


def test_backtest_flags_a_bent_series_and_passes_a_clean_one():
    rng = np.random.default_rng(4)
    computes = np.logspace(10, 12, 4)
    clean = ladder(rng, computes, 3, 0.01, var=lambda c: law(c) - 0.05)
    # bent: the same -0.05 at the three smaller rungs, then +0.10 at the largest
    bent = ladder(rng, computes, 3, 0.01, var=lambda c: law(c) + np.where(c >= computes[-1], 0.10, -0.05))
    ok, bad = scaling.backtest(clean, n_boot=200), scaling.backtest(bent, n_boot=200)
    assert ok.reliable is True and ok.low <= ok.measured <= ok.high
    assert bad.reliable is False and not bad.low <= bad.measured <= bad.high
    assert bad.predicted == pytest.approx(-0.05, abs=0.03) and bad.error == pytest.approx(0.15, abs=0.04)
    assert scaling.backtest(clean[:1]).reliable is None  # one rung: nothing to predict from


def test_interval_needs_enough_finite_draws():
    assert all(math.isnan(x) for x in scaling.interval(np.array([1.0, np.nan] * 4), 0.95))
    lo, hi = scaling.interval(np.arange(1001.0), 0.9)
    assert (lo, hi) == (pytest.approx(50.0), pytest.approx(950.0))


def test_paired_bootstrap_keeps_the_pairs_together():
    # a large seed effect shared by baseline and variant (same seed, same init): the paired bootstrap's interval
    # of Δ is as narrow as the pairs' differences; resampling each side on its own sees the seed spread
    rng = np.random.default_rng(5)
    rungs = []
    for c in np.logspace(10, 12, 3):
        seed_effect = rng.normal(0, 0.1, 4)
        rungs.append(
            Rung([c] * 4, law(c) + seed_effect, [c] * 4, law(c) + seed_effect - 0.02 + rng.normal(0, 0.002, 4))
        )
    paired = scaling.extrapolate(rungs, 1e15, n_boot=200, paired=True)
    independent = scaling.extrapolate(rungs, 1e15, n_boot=200, paired=False)
    assert paired.low < -0.02 < paired.high and paired.high - paired.low < 0.01
    assert independent.high - independent.low > 5 * (paired.high - paired.low)


def test_trend_without_spread_is_untested():
    r = rungs_for_trend([-0.05, -0.02, 0.01])
    r["se"][:] = np.nan
    t = scaling.trend(**r)
    assert t["word"] == "flat" and t["tested"] is False and math.isnan(t["p"])
    assert scaling.trend(**rungs_for_trend([-0.05, -0.02, 0.01]))["tested"] is True


def test_offset_model_weights_a_noisy_rung_less():
    # the smallest rung's seeds scatter 20x more than the others' and its Δ is off; the inverse-variance
    # weighted offset follows the two precise rungs (-0.20), an unweighted mean of the rungs' Δ would be -0.06
    rng = np.random.default_rng(6)
    sds, offs = [0.2, 0.01, 0.01], [0.22, -0.20, -0.20]
    rungs = [
        Rung([c] * 3, law(c) + rng.normal(0, sd, 3), [c] * 3, law(c) + off + rng.normal(0, sd, 3))
        for c, sd, off in zip(np.logspace(10, 12, 3), sds, offs, strict=True)
    ]
    assert curves.fit_pair(rungs).delta == pytest.approx(-0.20, abs=0.03)


def test_one_seed_group_is_weighted_by_the_pooled_seed_variance():
    # a group with one seed has no variance of its own: its points take the pooled SD of the groups with 2+ seeds,
    # sqrt(sum (n - 1) s^2 / sum (n - 1)) = sqrt((4 * 2 * 0.01^2 + 1 * 2 * 0.03^2) / 10), not their median 0.02
    five, two = np.array([-0.02, -0.01, 0.0, 0.01, 0.02]), np.array([-0.03, 0.03]) / math.sqrt(2)
    five *= 0.01 / np.std(five, ddof=1)
    rungs = [
        Rung([1e10] * 5, 3 + five, [1e10] * 5, 3 - five),
        Rung([1e11] * 2, 2.5 + two, [1e11] * 2, 2.4 + two),
        Rung([1e12], [2.0], [1e12], [1.9]),
    ]
    sb, sv = curves._sigmas(rungs)
    pooled = math.sqrt((4 * 2 * 0.01**2 + 1 * 2 * 0.03**2) / 10)
    assert sb[:5] == pytest.approx([0.01] * 5) and sv[5:7] == pytest.approx([0.03] * 2)
    assert sb[-1] == pytest.approx(pooled) and sv[-1] == pytest.approx(pooled)
    assert scaling.noise_note(rungs) == "1 seed: no noise estimate" and scaling.noise_note(rungs[:2]) == ""
    assert scaling.noise_note(rungs, paired=True) == "1 seed pair: no noise estimate"
    ex = scaling.extrapolate(rungs, 1e15, n_boot=50)
    bt = scaling.backtest(rungs, n_boot=50)
    assert math.isfinite(ex.delta) and math.isnan(ex.low) and ex.note == "1 seed: no noise estimate"
    assert bt.reliable is None and math.isfinite(bt.predicted) and bt.measured == pytest.approx(-0.1)
