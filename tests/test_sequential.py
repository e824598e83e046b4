"""Adaptive seeds (experiments/sequential.py): boundaries against published values and a Monte Carlo check,
the family-wise false-positive rate and the power of the design measured on simulated experiments (vectorised),
naive peeking shown to inflate the rate, and a real `gptlab experiment --until-decided` run."""

import json
import math
import sqlite3
import tomllib

import numpy as np
import pytest
import tomli_w
from conftest import tiny_overrides
from scipy import stats

from gptlab import GptlabError
from gptlab.config import parse_overrides
from gptlab.experiments.analysis import sequential as sq
from gptlab.experiments.analysis.stats import compare, compare_paired, power_two_sample, seeds_needed

ALPHA = 0.05


def binom_interval(p: float, n: int, level: float = 0.99) -> tuple[float, float]:
    lo, hi = stats.binom.interval(level, n, p)
    return lo / n, hi / n


def per_side(t, alpha):
    """ldbounds/gsDesign's symmetric two-sided convention: alpha/2 spent on each side by the one-sided
    O'Brien-Fleming-type function."""
    return 2 * sq.obf_spending(t, alpha / 2)


@pytest.mark.parametrize(
    "info,published",
    [
        # ldbounds::bounds(c(.10, .33, 1), iuse=c(1, 1), alpha=c(.025, .025))
        ([0.10, 0.33, 1.0], [6.9913, 3.7308, 1.9605]),
        # gsDesign(k=5, test.type=2, sfu=sfLDOF): the textbook five equally spaced looks
        ([0.2, 0.4, 0.6, 0.8, 1.0], [4.8769, 3.3569, 2.6803, 2.2898, 2.0310]),
    ],
)
def test_boundaries_reproduce_published_values(info, published):
    assert sq.boundaries(info, ALPHA, spending=per_side) == pytest.approx(published, abs=2e-4)


def test_obrien_fleming_spending_first_look_and_total():
    # alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t)): the first look's boundary is z_{alpha/2} / sqrt(t) exactly
    b = sq.boundaries([0.25, 0.5, 0.75, 1.0], ALPHA)
    assert b[0] == pytest.approx(stats.norm.isf(ALPHA / 2) / 0.5, rel=1e-9)
    assert np.all(np.diff(b) < 0) and b[-1] > stats.norm.isf(ALPHA / 2)  # the last look pays a little for peeking
    assert sq.obf_spending(1.0, ALPHA) == pytest.approx(ALPHA)
    assert sq.crossing_probability([0.25, 0.5, 0.75, 1.0], b) == pytest.approx(ALPHA, abs=1e-7)
    assert sq.boundaries([1.0], ALPHA)[0] == pytest.approx(stats.norm.isf(ALPHA / 2))  # one look: fixed design
    with pytest.raises(ValueError, match="increase"):
        sq.boundaries([0.5, 0.4, 1.0], ALPHA)


def test_boundaries_spend_alpha_on_a_brownian_motion():
    """Monte Carlo check of the recursive integration, unequal looks: the canonical Z_k cross each look's
    boundary for the first time with the cumulative probability alpha(t_k) (binomial 99% interval)."""
    info = np.array([0.15, 0.4, 0.55, 0.8, 1.0])
    b = sq.boundaries(info, ALPHA)
    n = 200_000
    rng = np.random.default_rng(7)
    w = np.cumsum(rng.standard_normal((n, info.size)) * np.sqrt(np.diff(info, prepend=0.0)), axis=1)
    crossed = np.maximum.accumulate(np.abs(w / np.sqrt(info)) >= b, axis=1).mean(0)
    for k, t in enumerate(info):
        target = sq.obf_spending(t, ALPHA)
        lo, hi = binom_interval(target, n)
        assert lo <= crossed[k] <= hi, (k, crossed[k], target)


def test_each_looks_test_is_the_reports_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(3.7, 0.02, 5), rng.normal(3.68, 0.04, 3)
    diff, t, df, p = (float(x) for x in sq.look_test(a, b))
    ref = compare(a, b)
    assert (diff, t, df, p) == pytest.approx((ref["diff"], ref["t"], ref["df"], ref["p"]), rel=1e-9)
    b = a - 0.01 + rng.normal(0, 0.001, 5)
    diff, t, df, p = (float(x) for x in sq.look_test(a, b, "paired"))
    ref = compare_paired(a, b)
    assert (diff, t, df, p) == pytest.approx((ref["diff"], ref["t"], ref["df"], ref["p"]), rel=1e-9)
    assert p < 1e-3 and float(sq.look_test(a, b)[3]) > 0.1  # pairing removes the seed effect Welch sees
    # identical losses in both groups (an A/A comparison on a deterministic machine): p = 1
    assert float(sq.look_test([3.7, 3.8], [3.7, 3.8])[3]) == 1.0
    assert float(sq.look_test([3.7, 3.7], [3.6, 3.6])[3]) == 0.0
    assert float(sq.look_test([3.7, 3.8], [3.7, 3.8], "paired")[3]) == 1.0
    assert float(sq.look_test([3.5, 3.75], [3.25, 3.5], "paired")[3]) == 0.0  # the same difference in every pair


# Paired data built so that the two tests disagree: a seed effect of ~0.1 shared by the baseline and the variant
# of each seed, and a small consistent difference of -0.01 (within 1e-6). The paired t-test sees -0.01 at every
# seed; Welch's sees two groups whose means differ by a tenth of their spread.
SEED_EFFECT = np.array([0.10, -0.08, 0.05, -0.12, 0.02, 0.09])
PAIRED_BASE = 3.7 + SEED_EFFECT
PAIRED_VAR = PAIRED_BASE - 0.01 + np.array([0.0, 1e-6, -1e-6, 2e-6, 0.0, -1e-6])


def run_looks(design, seeds_per_look=(2, 4, 6)):
    s = sq.Sequential("base", ["v"], max_seeds=6, seeds_per_round=2, design=design)
    for r, k in enumerate(seeds_per_look, start=1):
        if not s.undecided():
            break
        s.update(
            {
                "base": dict(zip(range(1, k + 1), PAIRED_BASE[:k], strict=True)),
                "v": dict(zip(range(1, k + 1), PAIRED_VAR[:k], strict=True)),
            },
            {"base": k, "v": k},
            r,
        )
    return s


def test_paired_design_looks_use_the_paired_test():
    paired, welch = run_looks("paired"), run_looks("independent")
    # paired: decided at the first look (2 pairs), by the paired p, the one the report shows
    assert paired.decision == {"v": "better"} and len(paired.looks["v"]) == 1
    lk = paired.looks["v"][0]
    ref = compare_paired(PAIRED_BASE[:2], PAIRED_VAR[:2])
    assert lk.p == pytest.approx(ref["p"], rel=1e-9) and lk.df == 1 and lk.p <= lk.nominal_p
    assert lk.info == pytest.approx(2 / 6)
    # Welch on the same numbers never crosses: it runs to the last look and finds nothing
    assert welch.decision == {"v": "within noise"} and len(welch.looks["v"]) == 3
    assert all(x.p > 0.5 for x in welch.looks["v"])
    j = paired.to_json(2)
    assert j["test"] == "paired t-test on the per-seed differences" and "paired t-test" in j["method"]
    assert run_looks("independent").to_json(2)["test"] == "Welch's t-test"


def test_paired_looks_pair_by_seed():
    """The seeds both groups have are the pairs, whatever the order or the extra seeds of the baseline; a
    variant seed whose run diverged (no loss) drops its pair."""
    s = sq.Sequential("base", ["v"], max_seeds=6, seeds_per_round=2, design="paired")
    base = {7: PAIRED_BASE[0], 3: PAIRED_BASE[1], 9: PAIRED_BASE[2], 4: 9.9}
    var = {9: PAIRED_VAR[2], 7: PAIRED_VAR[0], 3: PAIRED_VAR[1], 5: 1.0}  # 5: no baseline run; 4: no variant run
    s.update({"base": base, "v": var}, {"base": 4, "v": 4}, 1)
    lk = s.looks["v"][0]
    order = [3, 7, 9]
    ref = compare_paired([base[k] for k in order], [var[k] for k in order])
    assert (lk.n_variant, lk.n_baseline) == (3, 3) and lk.p == pytest.approx(ref["p"], rel=1e-9)
    assert lk.diff == pytest.approx(ref["diff"], rel=1e-9)


def test_paired_null_family_wise_rate_stays_at_alpha():
    """4,000 null experiments in the paired design (a seed effect shared within each pair, 3 variants): the
    family-wise rate is within the binomial 99% interval of alpha; with a small effect the paired test finds
    it far more often than Welch's on the same data."""
    looks, n, m = sq.schedule(2, 2, 8), 4000, 3
    rng = np.random.default_rng(17)
    seed_effect = rng.normal(0, 3.0, (n, 1, 8))
    base = seed_effect[:, 0] + rng.standard_normal((n, 8))
    variants = seed_effect + rng.standard_normal((n, m, 8))
    verdict, _ = sq.simulate(base, variants, looks, ALPHA, design="paired")
    lo, hi = binom_interval(ALPHA, n)
    assert lo <= float((verdict != 0).any(1).mean()) <= hi
    variants[:, 0] -= 2.0
    paired, _ = sq.simulate(base, variants, looks, ALPHA, design="paired")
    welch, _ = sq.simulate(base, variants, looks, ALPHA)
    assert (paired[:, 0] == -1).mean() > 0.5 > 5 * (welch[:, 0] == -1).mean()


# The simulated experiments: m variants compared with one shared baseline, seeds in rounds, a look every round.
NULL_DESIGNS = [  # (variants, first seeds, seeds per round, max seeds)
    (3, 2, 2, 10),  # 5 looks
    (3, 2, 1, 12),  # 11 looks, one seed at a time
]


@pytest.mark.parametrize("m,n_first,per_round,max_seeds", NULL_DESIGNS)
def test_null_family_wise_rate_stays_at_alpha(m, n_first, per_round, max_seeds):
    """4,000 null experiments: no variant differs from the baseline; the rate of experiments with any verdict
    (better or worse) is within the binomial 99% interval of alpha, although every round was peeked at."""
    looks = sq.schedule(n_first, per_round, max_seeds)
    n = 4000
    rng = np.random.default_rng(11 + max_seeds)
    base = rng.standard_normal((n, max_seeds))
    variants = rng.standard_normal((n, m, max_seeds))
    verdict, at = sq.simulate(base, variants, looks, ALPHA)
    fwer = float((verdict != 0).any(1).mean())
    lo, hi = binom_interval(ALPHA, n)
    assert lo <= fwer <= hi, (fwer, lo, hi)
    # Bonferroni: each variant alone at alpha / m
    lo_v, hi_v = binom_interval(ALPHA / m, n * m)
    assert lo_v <= float((verdict != 0).mean()) <= hi_v
    assert set(np.unique(at[verdict != 0])) - {len(looks) - 1}, "some verdicts come at an early look"


def test_naive_peeking_inflates_the_false_positive_rate():
    """The reason for the correction: Welch p < alpha at every one of 5 looks, one variant, no true effect."""
    looks, n = sq.schedule(2, 2, 10), 4000
    rng = np.random.default_rng(5)
    base, variants = rng.standard_normal((n, 10)), rng.standard_normal((n, 1, 10))
    naive, _ = sq.simulate(base, variants, looks, ALPHA, adjust=False)
    corrected, _ = sq.simulate(base, variants, looks, ALPHA)
    naive_rate = float((naive != 0).mean())
    assert naive_rate > binom_interval(ALPHA, n)[1] and naive_rate > 2 * ALPHA  # measured: ~0.12
    assert float((corrected != 0).mean()) <= binom_interval(ALPHA, n)[1]


@pytest.mark.parametrize("m", [1, 3])
def test_known_effect_found_with_planned_power(m):
    """A variant 1.0 SD better than the baseline (the other m - 1 variants null), max_seeds = what the fixed
    design needs for 80% power at alpha / m. Planned power of the sequential design: the fixed t-test's power
    less what O'Brien-Fleming spending gives up for its early looks (exact, by the same integration with drift).
    The variant is found at least that often (the lower end of the binomial 99% interval), never in the wrong direction,
    and with fewer seeds on average than the fixed design."""
    d, n = 1.0, 4000
    max_seeds = seeds_needed(d, alpha=ALPHA / m, power=0.8)
    looks = sq.schedule(2, 2, max_seeds)
    info = [sq.info_fraction(k, k, max_seeds) for k in looks]
    drift, z = d * math.sqrt(max_seeds / 2), stats.norm.isf(ALPHA / m / 2)
    z_fixed = stats.norm.sf(z - drift) + stats.norm.cdf(-z - drift)
    z_seq = sq.crossing_probability(info, sq.boundaries(info, ALPHA / m), drift)
    planned = power_two_sample(d, max_seeds, ALPHA / m) - (z_fixed - z_seq)
    assert 0.77 < planned < 0.81
    rng = np.random.default_rng(21 + m)
    base = rng.standard_normal((n, max_seeds))
    variants = rng.standard_normal((n, m, max_seeds))
    variants[:, 0] -= d  # lower loss: better
    verdict, at = sq.simulate(base, variants, looks, ALPHA)
    found = float((verdict[:, 0] == -1).mean())
    # measured: m=1 0.784 (planned 0.787), m=3 0.782 (planned 0.796); with 20,000 experiments 0.778 and 0.791:
    # the t-test's small df at the interim looks costs about another point that the normal theory does not see
    assert found >= binom_interval(planned, n)[0], (found, planned)
    assert not (verdict[:, 0] == 1).any()
    assert np.mean(np.asarray(looks)[at[:, 0]]) < 0.85 * max_seeds


def test_state_per_round_agrees_with_the_vectorised_simulation():
    """The runner's Sequential.update, fed one simulated experiment at a time, reaches the decisions (and looks)
    of sq.simulate on the same data."""
    looks, m, n = sq.schedule(2, 2, 8), 2, 150
    rng = np.random.default_rng(9)
    base = rng.standard_normal((n, 8))
    variants = rng.standard_normal((n, m, 8)) + np.array([-1.5, 0.0])[None, :, None]
    verdict, at = sq.simulate(base, variants, looks, ALPHA)
    words = {-1: "better", 1: "worse", 0: "within noise"}
    for i in range(n):
        s = sq.Sequential("base", ["a", "b"], max_seeds=8, seeds_per_round=2)
        planned = {"base": 0, "a": 0, "b": 0}
        for r, k in enumerate(looks, start=1):
            for g in ["base", *s.undecided()]:
                planned[g] = k
            losses = {
                "base": base[i, : planned["base"]],
                "a": variants[i, 0, : planned["a"]],
                "b": variants[i, 1, : planned["b"]],
            }
            s.update(losses, dict(planned), r)
        for j, v in enumerate(["a", "b"]):
            assert s.decision[v] == words[int(verdict[i, j])]
            assert len(s.looks[v]) == at[i, j] + 1
    assert (verdict[:, 0] == -1).sum() > n // 2  # the effect was found often enough to test both paths


def test_next_seeds_extends_undecided_variants_and_the_baseline():
    planned = {"baseline": [1, 2, 3], "a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]}
    new = sq.next_seeds(planned, ["b", "c"], "baseline", 2, 8)
    assert new == {"b": [4, 5], "c": [4, 5], "baseline": [4, 5]}  # "a" was decided: it gets none
    planned = {"baseline": [1, 2, 3, 4, 5], "a": [1, 2, 3], "b": [1, 2, 3, 4, 5], "c": [1, 2, 9]}
    # capped at max_seeds 6; numbers continue after the largest used (9); the baseline as many as the largest
    assert sq.next_seeds(planned, ["b"], "baseline", 3, 6) == {"b": [10], "baseline": [10]}
    assert sq.next_seeds(planned, [], "baseline", 3, 6) == {}
    assert sq.schedule(3, 2, 8) == [3, 5, 7, 8] and sq.schedule(1, 2, 5) == [3, 5] and sq.schedule(4, 2, 4) == [4]


def test_sequential_state_round_line_and_json():
    s = sq.Sequential("baseline", ["grad_clip", "qkv_bias"], max_seeds=4, seeds_per_round=2)
    s.update(
        {"baseline": [3.70, 3.71], "grad_clip": [3.60, 3.61], "qkv_bias": [3.70, 3.72]},
        {"baseline": 2, "grad_clip": 2, "qkv_bias": 2},
        1,
    )
    assert s.round_line() == "round 1: 2 seeds each; decided: -, undecided: grad_clip, qkv_bias"
    s.update(
        {
            "baseline": [3.70, 3.71, 3.70, 3.71],
            "grad_clip": [3.60, 3.61, 3.60, 3.61],
            "qkv_bias": [3.70, 3.72, 3.69, 3.72],
        },
        {"baseline": 4, "grad_clip": 4, "qkv_bias": 4},
        2,
    )
    assert s.round_line() == (
        "round 2: 4 seeds each; decided: grad_clip (better, look 2), qkv_bias (within noise, look 2), undecided: -"
    )
    j = s.to_json(2)
    assert j["design"] == "group-sequential, O'Brien-Fleming spending, 2 looks"
    assert j["alpha_per_variant"] == pytest.approx(0.025)
    last = j["variants"]["grad_clip"]["looks"][-1]
    assert last["final"] and last["info"] == 1.0 and last["p"] <= last["nominal_p"]
    json.dumps(j, allow_nan=False)


# ------------------------------------------------------------------ a real experiment, run until decided


def write_spec(tmp_path, data, variants):
    base = parse_overrides(tiny_overrides(data, **{"train.tokens": 8 * 32 * 4, "train.checkpoint_interval": 2}))
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    spec = {"name": "seq", "base": "base.toml", "seeds": [1, 2], "baseline": "baseline", "variants": variants}
    p = tmp_path / "exp.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


def test_until_decided_options_and_dry_run(small_data, tmp_path):
    from gptlab.experiments.run.runner import plan_experiment

    spec = write_spec(
        tmp_path, small_data, [{"name": "baseline"}, {"name": "no_dropout", "interventions": ["no_dropout"]}]
    )
    plan = plan_experiment(str(spec), until_decided=True, max_seeds=6)
    assert plan.ok
    out = plan.summary.splitlines()[-1]
    assert out.startswith("until decided: group-sequential, O'Brien-Fleming spending, 3 looks at 2, 4, 6 seeds")
    with pytest.raises(GptlabError, match="needs --max-seeds"):
        plan_experiment(str(spec), until_decided=True)
    with pytest.raises(GptlabError, match="--max-seeds: 1 is below"):
        plan_experiment(str(spec), until_decided=True, max_seeds=1)
    with pytest.raises(GptlabError, match="only with --until-decided"):
        plan_experiment(str(spec), max_seeds=4)
    # --first-look: the first N of every arm's seeds, here 3 of a variant's own 5, then rounds of 2 up to 7
    three = write_spec(tmp_path, small_data, [{"name": "baseline"}, {"name": "same", "seeds": [11, 12, 13, 14]}])
    three.write_text(three.read_text().replace("seeds = [\n    1,\n    2,\n]", "seeds = [1, 2, 3, 4, 5]"))
    plan = plan_experiment(str(three), until_decided=True, first_look=3, max_seeds=7, seeds_per_round=2).summary
    assert "until decided: group-sequential, O'Brien-Fleming spending, 3 looks at 3, 5, 7 seeds" in plan
    first = ["baseline-s1", "baseline-s2", "baseline-s3", "same-s11", "same-s12", "same-s13"]
    assert [x.split()[0] for x in plan.splitlines()[2:8]] == first
    from gptlab.experiments.run.status import experiment_status  # --status with the run's --first-look: the same

    rows = experiment_status(str(three), out=str(tmp_path / "nothing yet"), first_look=3)
    assert [(r["run_id"], r["state"]) for r in rows] == [(x, "pending") for x in first]
    with pytest.raises(GptlabError, match=r"--first-look: expected 2 to --max-seeds \(4\) seeds .* got 5"):
        plan_experiment(str(three), until_decided=True, first_look=5, max_seeds=4)
    with pytest.raises(GptlabError, match="only with --until-decided"):
        plan_experiment(str(three), first_look=2)


def test_until_decided_runs_rounds_and_records_a_consistent_state(small_data, tmp_path, capsys):
    """An A/A comparison (the same recipe under another name) never crosses: the rounds run to max_seeds,
    the baseline and the variant get the new seeds 3 and 4, and sequential.json agrees with results.sqlite."""
    from gptlab.cli import main

    spec = write_spec(tmp_path, small_data, [{"name": "baseline"}, {"name": "same"}])
    out = tmp_path / "exp"
    assert (
        main(
            [
                "experiment",
                str(spec),
                "--out",
                str(out),
                "--quiet",
                "--until-decided",
                "--max-seeds",
                "4",
                "--seeds-per-round",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "round 1: 2 seeds each; decided: -, undecided: same" in printed
    assert "round 2: 4 seeds each; decided: same (within noise, look 2), undecided: -" in printed
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("select variant, seed, test_loss from runs order by variant, seed").fetchall()
    assert [(v, s) for v, s, _ in rows] == [(v, s) for v in ("baseline", "same") for s in (1, 2, 3, 4)]
    losses = {v: [x for w, _, x in rows if w == v] for v in ("baseline", "same")}
    state = json.loads((out / "sequential.json").read_text())
    assert state["design"] == "group-sequential, O'Brien-Fleming spending, 2 looks" and state["max_seeds"] == 4
    assert [r["seeds"] for r in state["rounds"]] == [{"baseline": 2, "same": 2}, {"baseline": 4, "same": 4}]
    looks = state["variants"]["same"]["looks"]
    assert [lk["n_variant"] for lk in looks] == [2, 4] and [lk["info"] for lk in looks] == [0.5, 1.0]
    expected_b = sq.boundaries([0.5, 1.0], ALPHA)
    for lk, b in zip(looks, expected_b, strict=True):
        k = lk["n_variant"]
        diff, _, _, p = (float(x) for x in sq.look_test(losses["baseline"][:k], losses["same"][:k]))
        assert lk["diff"] == pytest.approx(diff, abs=1e-12) and lk["p"] == pytest.approx(p)
        assert lk["z_boundary"] == pytest.approx(b) and lk["crossed"] == (p <= lk["nominal_p"])
    assert state["variants"]["same"]["decision"] == "within noise"
    report = (out / "report.md").read_text()  # the report's verdict is the sequential decision, by its printed rule
    assert (
        next(x for x in report.splitlines() if x.startswith("| same ")).split("|").count(" within noise at n=4 ") == 1
    )
    assert "Sequential design (`--until-decided`, sequential.json): group-sequential" in report.split("## Rules")[1]
    # --status lists the rounds' runs too (it listed the spec's seeds 1 and 2 alone: 4 of the 8 runs)
    from gptlab.experiments.run.status import experiment_status

    listed = [(r["run_id"], r["state"]) for r in experiment_status(str(spec), out=str(out))]
    spec_seeds = [(f"{v}-s{s}", "done") for v in ("baseline", "same") for s in (1, 2)]
    assert listed == spec_seeds + [(f"{v}-s{s}", "done") for v in ("baseline", "same") for s in (3, 4)]
    # re-running replays the rounds from results.sqlite and runs nothing new
    assert (
        main(
            [
                "experiment",
                str(spec),
                "--out",
                str(out),
                "--quiet",
                "--until-decided",
                "--max-seeds",
                "4",
                "--seeds-per-round",
                "2",
            ]
        )
        == 0
    )
    again = capsys.readouterr().out
    assert "0 to run" in again and "4 already done" in again and "8 already done" in again
    assert json.loads((out / "sequential.json").read_text()) == state


def test_until_decided_in_the_paired_design_looks_with_the_paired_test(small_data, tmp_path, capsys):
    """design = "paired" with --until-decided: every look's p is the paired t-test's on the seed-matched losses
    recorded in results.sqlite (the report's test), not Welch's, and the report's rule names that test. The spec
    gives 4 seeds and --first-look 2 makes the first look at 2 of them."""
    from gptlab.cli import main

    spec = write_spec(tmp_path, small_data, [{"name": "baseline"}, {"name": "qkv_bias", "interventions": ["qkv_bias"]}])
    d = tomllib.loads(spec.read_text())
    d["design"], d["seeds"] = "paired", [1, 2, 3, 4]  # a fixed design's 4 seeds, run sequentially from 2 of them
    spec.write_text(tomli_w.dumps(d))
    out = tmp_path / "exp"
    seq = ["--until-decided", "--first-look", "2", "--max-seeds", "4", "--seeds-per-round", "2"]
    assert main(["experiment", str(spec), "--out", str(out), "--quiet", *seq]) == 0
    capsys.readouterr()
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("select variant, seed, test_loss from runs").fetchall()
    loss = {(v, s): x for v, s, x in rows}
    state = json.loads((out / "sequential.json").read_text())
    assert state["experiment_design"] == "paired" and state["test"] == "paired t-test on the per-seed differences"
    looks = state["variants"]["qkv_bias"]["looks"]
    assert looks and [lk["n_variant"] for lk in looks] == [2, 4][: len(looks)]  # without --first-look: [4]
    for lk in looks:
        seeds = sorted(s for v, s in loss if v == "qkv_bias")[: lk["n_variant"]]
        b, v = [loss["baseline", s] for s in seeds], [loss["qkv_bias", s] for s in seeds]
        ref = compare_paired(b, v)
        assert lk["p"] == pytest.approx(ref["p"], rel=1e-9) and lk["df"] == len(seeds) - 1
        assert lk["p"] != pytest.approx(compare(b, v)["p"], rel=1e-6)  # Welch's would be another number
        assert lk["crossed"] == (lk["p"] <= lk["nominal_p"])
    report = (out / "report.md").read_text()
    assert "p (paired t)" in report and "(paired t-test on the per-seed differences, the design's test)" in report
