"""Rank agreement across rungs (analysis/rank.py) on constructed ladders where the answer is known."""

import math

import numpy as np
import pytest

from gptlab.experiments.analysis import rank

DELTAS = {"a": -0.10, "b": -0.05, "c": 0.0, "d": 0.04, "e": 0.09}


def rung(deltas, sd, rng, n=4):
    out = {"baseline": 6.0 + rng.normal(0, sd, n)}
    out.update({v: 6.0 + d + rng.normal(0, sd, n) for v, d in deltas.items()})
    return out


def test_identical_rankings_give_tau_one_and_reversed_minus_one():
    rng = np.random.default_rng(0)
    same = [rung(DELTAS, 1e-4, rng), rung({v: d / 2 for v, d in DELTAS.items()}, 1e-4, rng)]
    (a,) = rank.rank_agreement(same, n_boot=200)
    assert a.tau == pytest.approx(1.0) and a.low == pytest.approx(1.0) and a.variants == list(DELTAS)
    flipped = [same[0], rung({v: -d for v, d in DELTAS.items()}, 1e-4, rng)]
    (b,) = rank.rank_agreement(flipped, n_boot=200)
    assert b.tau == pytest.approx(-1.0) and b.high == pytest.approx(-1.0)


def test_noisy_rungs_give_a_wide_interval():
    rng = np.random.default_rng(1)
    noisy = [rung(DELTAS, 0.2, rng), rung(DELTAS, 0.2, rng)]  # seed SD twice the largest Δ
    (a,) = rank.rank_agreement(noisy, n_boot=500)
    assert a.high - a.low > 0.9 and a.low < 0 < a.high  # τ of 5 items moves in steps of 0.2
    clean = [rung(DELTAS, 0.005, rng), rung(DELTAS, 0.005, rng)]
    (b,) = rank.rank_agreement(clean, n_boot=500)
    assert b.high - b.low < 0.5


def test_paired_resampling_keeps_shared_seed_noise_out_of_the_order():
    rng = np.random.default_rng(2)
    rungs = []
    for _ in range(2):
        shared = rng.normal(0, 0.2, 6)  # big seed effect shared by every arm of a pair, small own noise
        r = {"baseline": 6.0 + shared + rng.normal(0, 0.002, 6)}
        r.update({v: 6.0 + d + shared + rng.normal(0, 0.002, 6) for v, d in DELTAS.items()})
        rungs.append(r)
    (p,) = rank.rank_agreement(rungs, n_boot=300, paired=True)
    (i,) = rank.rank_agreement(rungs, n_boot=300, paired=False)
    assert p.low == pytest.approx(1.0) and i.low < 0.6


def test_decision_rule():
    holds = rank.Agreement(0, list(DELTAS), 1.0, 0.6, 1.0)
    changes = rank.Agreement(1, list(DELTAS), 0.2, -0.6, 0.8)
    assert rank.decision_rule([changes, holds])[0] == rank.LARGEST
    rule, why = rank.decision_rule([holds, changes], backtest_reliable=True)
    assert rule == rank.EXTRAPOLATION and "τ = 0.20 (-0.60 to 0.80)" in why and "rungs 1 and 2" in why
    rule, why = rank.decision_rule([holds, changes], backtest_reliable=False)
    assert rule == rank.LARGEST and "missed" in why
    assert rank.decision_rule([])[0] == rank.LARGEST


def test_one_variant_has_no_tau():
    rng = np.random.default_rng(3)
    (a,) = rank.rank_agreement([rung({"a": -0.1}, 0.01, rng), rung({"a": -0.1}, 0.01, rng)])
    assert math.isnan(a.tau) and math.isnan(a.low)
    assert "fewer than 2" in rank.decision_rule([a])[1]
    assert rank.tau([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
