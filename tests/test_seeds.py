"""Seed noise at the target (analysis/seeds.py) on constructed ladders with known SDs, fixed RNGs."""

import math

import numpy as np
import pytest

from gptlab.experiments.analysis import seeds

COMPUTE = np.array([1e12, 1e13, 1e14, 1e15])
TRUE_SD = 0.04 * 0.5 ** np.arange(4)  # halves per rung (per decade of compute)
TARGET = 1e17  # two decades past the largest rung: a true SD of 0.04 / 2**5


def sample_sds(rng, n):
    return np.array([np.std(rng.normal(6.0, s, n), ddof=1) for s in TRUE_SD])


def test_an_sd_that_halves_per_rung_is_predicted_at_the_target_within_its_interval():
    rng = np.random.default_rng(0)
    truth = 0.04 * 0.5**5
    covered, widths = 0, []
    for _ in range(200):
        fit = seeds.sd_trend(COMPUTE, sample_sds(rng, 5), [5] * 4)
        sd, lo, hi = fit.predict(TARGET)
        covered += lo <= truth <= hi
        widths.append(hi / lo)
    assert covered >= 180  # a 95% interval: 190 expected of 200
    fit = seeds.sd_trend(COMPUTE, sample_sds(np.random.default_rng(1), 20), [20] * 4)
    assert fit.slope == pytest.approx(math.log(0.5), abs=0.15)
    sd, lo, hi = fit.predict(TARGET)
    assert lo < truth < hi and hi / lo < np.median(widths)  # more seeds per rung: a narrower interval


def test_the_sd_estimate_is_unbiased_on_the_log_scale():
    rng = np.random.default_rng(2)
    n = 3
    logs = [math.log(np.std(rng.normal(0, 1.0, n), ddof=1)) for _ in range(20_000)]
    bias, var = seeds.log_sd_moments(n)
    assert np.mean(logs) == pytest.approx(bias, abs=0.02)
    assert np.var(logs) == pytest.approx(var, rel=0.05)


def test_trend_needs_two_rungs_with_two_seeds():
    assert seeds.sd_trend([1e12, 1e13], [0.01, 0.02], [1, 5]) is None
    assert seeds.sd_trend([1e12, 1e13], [0.01, 0.02], [3, 5]) is not None


def test_paired_correlation_and_the_sd_of_differences():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.01, 2000)  # what a shared seed (init, data order) contributes to both runs
    base = 6.0 + shared + rng.normal(0, 0.005, 2000)
    var = 5.99 + shared + rng.normal(0, 0.005, 2000)
    rho = seeds.paired_correlation(base, var)
    assert rho == pytest.approx(0.01**2 / (0.01**2 + 0.005**2), abs=0.03)
    sd = float(np.std(base, ddof=1))
    assert seeds.paired_sd(sd, sd, rho) == pytest.approx(float(np.std(var - base, ddof=1)), rel=0.05)
    assert math.isnan(seeds.paired_correlation([1.0, 2.0], [1.0, 2.0]))


def test_seeds_needed_fall_as_the_paired_correlation_rises():
    need = [seeds.seeds_per_arm(-0.014, 0.02, rho)["paired"] for rho in (0.0, 0.5, 0.8, 0.95)]
    assert need == sorted(need, reverse=True) and need[0] > need[-1]
    indep = seeds.seeds_per_arm(-0.014, 0.02, 0.0)
    assert indep["paired"] >= indep["independent"] and indep["design"] == "independent"
    assert seeds.seeds_per_arm(-0.014, 0.02, 0.9)["design"] == "paired"
