"""gptlab.experiments.stats against published textbook / reference answers (sources cited per test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from gptlab.experiments.stats import (
    compare,
    hedges_correction,
    holm,
    power_two_sample,
    seeds_needed,
    summarize,
)

# Wikipedia, "Welch's t-test", Examples, example 1 (en.wikipedia.org/wiki/Welch%27s_t-test, e.g. revision
# oldid=994214781), also Rosetta Code task "Welch's t-test" (data sets d1, d2).
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]

# Student (1908) sleep data, R's `sleep` dataset: extra hours of sleep with drug 1 (group 1) and drug 2 (group 2).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_welch_wikipedia_example_1():
    # Published: t = -2.46, nu = 25.0 (24.9885 to 4 d.p.), p = 0.021 (Wikipedia); R's t.test(d1, d2) as quoted
    # by Rosetta Code: t = -2.45535639828601, df = 24.9885292902309, p = 0.021378001462867,
    # 95% CI = (-3.98409625405368, -0.349237079279662).
    # (The df is sometimes quoted as "24.9": that is 24.9885 truncated; it rounds to 25.0.)
    c = compare(baseline_values=A2, variant_values=A1)  # diff = mean(A1) - mean(A2)
    assert c["t"] == pytest.approx(-2.45535639828601, abs=1e-9)
    assert round(c["t"], 2) == -2.46
    assert c["df"] == pytest.approx(24.9885292902309, abs=1e-9)
    assert c["p"] == pytest.approx(0.021378001462867, abs=1e-12)
    assert round(c["p"], 3) == 0.021
    assert c["ci_low"] == pytest.approx(-3.98409625405368, abs=1e-6)
    assert c["ci_high"] == pytest.approx(-0.349237079279662, abs=1e-6)
    assert c["diff"] == pytest.approx(20.82 - 22.98666666666667)
    assert c["verdict"] == "better"  # lower "loss" and p < 0.05


def test_welch_wikipedia_student_t_worked_example():
    # Wikipedia, "Student's t-test", Worked examples, unequal variances: screws from two machines;
    # sqrt(s1^2/n1 + s2^2/n2) ~ 0.04849, d.f. ~ 7.031, t ~ 1.959, two-tailed p ~ 0.090
    # (Rosetta Code d7/d8: p = 0.090773324285671).
    a = [30.02, 29.99, 30.11, 29.97, 30.01, 29.99]
    b = [29.89, 29.93, 29.72, 29.98, 30.02, 29.98]
    c = compare(baseline_values=b, variant_values=a)
    assert c["t"] == pytest.approx(1.959, abs=5e-4)
    assert c["df"] == pytest.approx(7.031, abs=5e-4)
    assert c["p"] == pytest.approx(0.090773324285671, abs=1e-12)
    assert c["diff"] == pytest.approx(0.095, abs=1e-9)
    se = c["diff"] / c["t"]
    assert se == pytest.approx(0.04849, abs=5e-6)
    assert c["verdict"] == "within noise at n=6"


def test_welch_rosetta_extreme_variance_ratio():
    # Rosetta Code "Welch's t-test", x = 3.0 4.0 1.0 2.1 vs y = 490.2 340.0 433.9: p = 0.010751561149785
    # (t = -9.5595 with x first).
    c = compare([3.0, 4.0, 1.0, 2.1], [490.2, 340.0, 433.9])
    assert c["p"] == pytest.approx(0.010751561149785, abs=1e-12)
    assert c["t"] == pytest.approx(9.5595, abs=1e-4)
    assert c["verdict"] == "worse"


def test_welch_r_sleep_example():
    # R documentation, ?t.test / example(t.test) on the sleep data (Student 1908):
    # t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p-value = 0.07939,
    # 95 percent CI -3.3654832 0.2054832, means 0.75 and 2.33.
    c = compare(baseline_values=SLEEP_2, variant_values=SLEEP_1)
    assert c["t"] == pytest.approx(-1.8608, abs=5e-5)
    assert c["df"] == pytest.approx(17.776, abs=5e-4)
    assert c["p"] == pytest.approx(0.07939, abs=5e-6)
    assert c["ci_low"] == pytest.approx(-3.3654832, abs=5e-8)
    assert c["ci_high"] == pytest.approx(0.2054832, abs=5e-8)
    assert (c["mean_variant"], c["mean_baseline"]) == pytest.approx((0.75, 2.33))
    assert c["verdict"] == "within noise at n=10"


def test_t_interval_r_sleep_paired_differences():
    # R, t.test(sleep$extra[1:10], sleep$extra[11:20], paired = TRUE) is the one-sample t-interval of the
    # differences: t = -4.0621, df = 9, p-value = 0.002833, 95 percent CI -2.4598858 -0.7001142,
    # mean of the differences -1.58.
    diffs = [a - b for a, b in zip(SLEEP_1, SLEEP_2)]
    s = summarize(diffs)
    assert s["n"] == 10
    assert s["mean"] == pytest.approx(-1.58)
    assert s["ci_low"] == pytest.approx(-2.4598858, abs=5e-8)
    assert s["ci_high"] == pytest.approx(-0.7001142, abs=5e-8)
    assert s["mean"] / s["sem"] == pytest.approx(-4.0621, abs=5e-5)
    assert s["std"] == pytest.approx(np.std(diffs, ddof=1))


@pytest.mark.parametrize("d, n", [(0.1, 1571), (0.5, 64), (0.6, 45), (0.8, 26), (1.0, 17), (1.2, 12)])
def test_seeds_needed_matches_cohen_1988_table(d, n):
    # Cohen, J. (1988). Statistical Power Analysis for the Behavioral Sciences, 2nd ed., Table 2.4.1:
    # n per group for power .80, two-tailed a = .05: d=.10 -> 1571, .50 -> 64, .60 -> 45, .80 -> 26,
    # 1.0 -> 17, 1.2 -> 12.
    assert seeds_needed(d, alpha=0.05, power=0.8) == n
    assert seeds_needed(-d) == n  # sign of the effect does not matter
    assert power_two_sample(d, n) >= 0.8 > power_two_sample(d, n - 1)


def test_seeds_needed_small_effect_exact_vs_cohen_approximation():
    # Cohen's table gives 393 for d = .20; it was computed with a normal approximation. The exact noncentral-t
    # answer (as G*Power, Faul et al. 2007: total N = 788 for d = 0.2, power .80) is 394 per group.
    assert seeds_needed(0.2) == 394
    assert power_two_sample(0.2, 393) == pytest.approx(0.7996, abs=1e-4)


def test_power_values():
    # Table 2.4.1's n is the smallest n reaching power .80, so the power there is just above .80
    # (exact noncentral t: 0.8015 for d=.5, n=64; 0.8075 for d=.8, n=26, as G*Power).
    assert power_two_sample(0.5, 64) == pytest.approx(0.80, abs=0.005)
    assert power_two_sample(0.8, 26) == pytest.approx(0.81, abs=0.005)
    # Large noncentrality: scipy's nct can return nan there; we must still give ~1.
    assert power_two_sample(3.0, 50) == pytest.approx(1.0)


def test_seeds_needed_edge_cases():
    assert seeds_needed(0.0) is None
    assert seeds_needed(float("nan")) is None
    assert seeds_needed(float("inf")) is None
    assert seeds_needed(0.01) == ">10000"
    assert seeds_needed(5.0) == 3  # n = 2 leaves df = 2: power only ~0.6 even for d = 5
    assert seeds_needed(20.0) == 2
    for d in (2.79, 3.17):  # regression: nan power at mid-size n broke the search (answered 302 / 52)
        n = seeds_needed(d)
        assert n in (3, 4) and power_two_sample(d, n) >= 0.8 > power_two_sample(d, n - 1)


def test_holm_wikipedia_example():
    # Wikipedia, "Holm–Bonferroni method", Example: four hypotheses with p = 0.01, 0.04, 0.03, 0.005 at
    # alpha = 0.05: H4 and H1 are rejected, H3 and H2 are not. Adjusted p-values (as R's
    # p.adjust(c(.01,.04,.03,.005), "holm")): 0.03, 0.06, 0.06, 0.02.
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adj] == [True, False, False, True]
    adj = holm([0.01, None, float("nan"), 0.5])
    assert adj[0] == pytest.approx(0.02) and adj[3] == pytest.approx(0.5)
    assert math.isnan(adj[1]) and math.isnan(adj[2])
    assert holm([0.04, 0.03]) == pytest.approx([0.06, 0.06])  # step-down keeps adjusted p monotone
    assert holm([0.02, 0.3]) == pytest.approx([0.04, 0.3])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_cohens_d_and_hedges_g():
    # Hand example: means 2 and 3, both sd 1 -> pooled sd 1, d = 1.
    # Hedges' exact correction J(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)) (Hedges 1981; Hedges & Olkin 1985):
    # J(2) = 1/sqrt(pi) = 0.5642, J(4) = 1 / (sqrt(2) * Gamma(1.5)) = 0.7979, and J(m) ~ 1 - 3/(4m - 1).
    c = compare([1, 2, 3], [2, 3, 4])
    assert c["cohen_d"] == pytest.approx(1.0)
    assert hedges_correction(2) == pytest.approx(1 / math.sqrt(math.pi))
    assert hedges_correction(4) == pytest.approx(1 / (math.sqrt(2) * math.gamma(1.5)))
    assert c["hedges_g"] == pytest.approx(hedges_correction(4))
    for m in (10, 28, 100):
        assert hedges_correction(m) == pytest.approx(1 - 3 / (4 * m - 1), abs=4e-4)
    # Unequal n: pooled sd weights by n - 1.
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0]
    sp = math.sqrt((3 * np.var(a, ddof=1) + 1 * np.var(b, ddof=1)) / 4)
    assert compare(a, b)["cohen_d"] == pytest.approx((3.0 - 2.5) / sp)


def test_summarize_small_n():
    s = summarize([4.2])
    assert s["n"] == 1 and s["mean"] == 4.2
    assert all(math.isnan(s[k]) for k in ("std", "sem", "ci_low", "ci_high"))
    s = summarize([])
    assert s["n"] == 0 and math.isnan(s["mean"])
    # n = 2: half-width = t_{0.975, 1} * sd / sqrt(2) = 12.706 * 0.7071 / 1.4142
    s = summarize([1.0, 2.0])
    assert s["ci_high"] - s["mean"] == pytest.approx(12.7062047 * s["std"] / math.sqrt(2))


def test_verdicts():
    assert compare([4.0], [3.0, 3.1])["verdict"] == "needs >= 2 seeds"
    assert compare([4.0, 4.1], [3.0])["verdict"] == "needs >= 2 seeds"
    c = compare([4.0, 4.1], [3.0])
    assert c["diff"] == pytest.approx(-1.05) and math.isnan(c["p"]) and c["seeds_needed"] is None
    assert compare([4.0, 4.01, 3.99, 4.0], [3.5, 3.51, 3.49, 3.5])["verdict"] == "better"
    assert compare([4.0, 4.01, 3.99, 4.0], [4.5, 4.51, 4.49, 4.5])["verdict"] == "worse"
    assert compare([4.0, 4.1, 3.9, 4.0], [4.01, 3.92, 4.08])["verdict"] == "within noise at n=3"
    # Zero spread in both groups: the difference is exact.
    assert compare([4.0, 4.0], [3.0, 3.0])["verdict"] == "better"
    c = compare([4.0, 4.0], [4.0, 4.0])
    assert c["p"] == 1.0 and c["verdict"] == "within noise at n=2" and c["seeds_needed"] is None
    with pytest.raises(ValueError):
        compare([4.0, float("nan")], [4.0, 4.1])


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.floats(-100, 100), min_size=2, max_size=8),
       hst.lists(hst.floats(-100, 100), min_size=2, max_size=8))
def test_compare_is_antisymmetric_and_ci_contains_diff(a, b):
    c1, c2 = compare(a, b), compare(b, a)
    if not math.isfinite(c1["t"]):
        return
    assert c1["diff"] == pytest.approx(-c2["diff"], abs=1e-9)
    assert c1["p"] == pytest.approx(c2["p"], abs=1e-9)
    assert c1["ci_low"] <= c1["diff"] + 1e-9 <= c1["ci_high"] + 2e-9
    assert (c1["p"] < 0.05) == (c1["ci_low"] > 0 or c1["ci_high"] < 0) or abs(c1["p"] - 0.05) < 1e-6
    assert c1["verdict"] in ("better", "worse") or c1["verdict"].startswith("within noise")
