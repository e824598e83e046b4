"""`gptlab ladder`: the [ladder] table's checks, the rung plans, and a real tiny 2-rung ladder end to end."""

import json
import math
import sqlite3
import tomllib

import pytest
import tomli_w
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.cli import main
from gptlab.config import parse_overrides
from gptlab.experiments.analysis.ladder import collect
from gptlab.experiments.report.ladder import write_ladder_report
from gptlab.experiments.specs.ladder import load_ladder

RUNGS = [{"n_layers": 1, "emb_dim": 16, "n_heads": 2}, {"n_layers": 1, "emb_dim": 64, "n_heads": 2}]


def write_ladder(tmp_path, data, ladder=None, seeds=(1, 2), variants=None, drop=()):
    base = parse_overrides(tiny_overrides(data, **{"train.checkpoint_interval": 100, "train.eval_interval": 100}))
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    # the target's data is not prepared (a folder that does not exist), wherever the tests run: a checkout where
    # the main job prepared data/shakespeare (the config default) would otherwise give the target known epochs
    target = {"model": {"preset": "gpt2-small"}, "data": {"dir": str(tmp_path / "target-data")}}
    (tmp_path / "target.toml").write_text(tomli_w.dumps({**target, "train": {"tokens": 1_000_000_000}}))
    lad = {"rungs": RUNGS, "tokens": [8 * 32 * 4, 8 * 32 * 6], "target": {"config": "target.toml"}}
    lad.update(ladder or {})
    for k in drop:
        lad.pop(k, None)
    spec = {
        "name": "lad",
        "base": "base.toml",
        "seeds": list(seeds),
        "baseline": "baseline",
        "variants": variants or [{"name": "baseline"}, {"name": "no_dropout", "interventions": ["no_dropout"]}],
        "ladder": lad,
    }
    if "ladder" in drop:
        del spec["ladder"]
    p = tmp_path / "ladder.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


@pytest.mark.parametrize(
    "ladder, drop, match",
    [
        ({}, ("ladder",), r"missing \[ladder\] table"),
        ({"rung": []}, (), r"ladder\.rung: unknown key \(did you mean 'rungs'\?\)"),
        ({"rungs": [RUNGS[0]]}, (), r"ladder\.rungs: expected a list of at least 2 tables"),
        (
            {"rungs": [RUNGS[0], {"n_layer": 2}]},
            (),
            r"ladder\.rungs\[1\]\.n_layer: not a model setting \(did you mean "
            r"'n_layers'\?\)",
        ),
        (
            {"tokens_per_param": 20},
            (),
            r"exactly one token rule of tokens_per_param, tokens, flops, got "
            r"tokens_per_param, tokens",
        ),
        ({}, ("tokens",), r"exactly one token rule .* got none"),
        ({"tokens": [1000]}, (), r"ladder\.tokens: expected a list of 2 positive numbers \(one per rung\)"),
        ({"tokens": [1000, -5]}, (), r"ladder\.tokens: expected a list of 2 positive numbers"),
        ({"tokens_per_param": -1}, ("tokens",), r"ladder\.tokens_per_param: expected a positive number"),
        ({"flops": "many"}, ("tokens",), r"ladder\.flops: expected a list of 2"),
        ({"tokens_per_param": 1e305}, ("tokens",), r"ladder\.tokens_per_param: gives inf training tokens at rung 0"),
        (
            {"tokens_per_param": 1e-9},
            ("tokens",),
            r"ladder\.tokens_per_param: gives [\d.e-]+ training tokens at rung 0; "
            r"expected at least 1",
        ),
        ({"flops": [1, 1e12]}, ("tokens",), r"ladder\.flops\[0\]: 1 FLOPs is less than one token"),
        ({"seeds": [[1, 2]]}, (), r"ladder\.seeds: expected one seed list per rung \(2\), got 1"),
        ({"seeds": [1, 1]}, (), r"seeds: duplicate seeds"),
        ({"bootstrap": 5}, (), r"ladder\.bootstrap: expected an integer from 20 to 100000, got 5"),
        ({}, ("target",), r"ladder\.target: expected a table \{ config"),
        ({"target": {"config": "nope.toml"}}, (), r"ladder\.target\.config: nope\.toml not found"),
        ({"target": {"config": "target.toml", "tokens": 0}}, (), r"ladder\.target\.tokens: expected a positive"),
        ({"target": {"config": "target.toml", "flops": 1}}, (), r"ladder\.target\.flops: unknown key"),
        (
            {"rungs": list(reversed(RUNGS))},
            (),
            r"ladder\.rungs\[1\]: 3,\d+ non-embedding parameters, fewer than "
            r"rung 0's 49,\d+ \(list the rungs smallest first\)",
        ),
        ({"rungs": [RUNGS[0], {"n_layers": 1, "emb_dim": 64, "n_heads": 3}]}, (), r"ladder\.rungs\[1\]: .*n_heads"),
    ],
)
def test_bad_ladder_fields_are_one_line_errors(small_data, tmp_path, ladder, drop, match):
    spec = write_ladder(tmp_path, small_data, ladder, drop=drop)
    with pytest.raises(GptlabError, match=match) as e:
        load_ladder(spec)
    assert "\n" not in str(e.value) and str(spec) in str(e.value)


def test_token_rules_and_seeds_per_rung(small_data, tmp_path):
    lad = load_ladder(
        write_ladder(tmp_path, small_data, {"tokens_per_param": 2, "seeds": [[1, 2, 3], [4, 5]]}, drop=("tokens",))
    )
    for r in lad.rungs:
        cfg = r.spec.resolved_config(r.spec.variants[0], r.spec.seeds[0])
        assert cfg.train.tokens == 2 * r.non_embedding and cfg.model.emb_dim == RUNGS[r.index]["emb_dim"]
    assert [r.spec.seeds for r in lad.rungs] == [[1, 2, 3], [4, 5]]
    assert [len(r.spec.matrix()) for r in lad.rungs] == [6, 4]
    assert lad.rungs[1].non_embedding > 10 * lad.rungs[0].non_embedding  # a span of >= 10x
    assert lad.target_params == 163_009_536 and lad.target_tokens == 1e9
    lad = load_ladder(write_ladder(tmp_path, small_data, {"flops": [1e9, 4e9]}, drop=("tokens",)))
    cfg = lad.rungs[1].spec.resolved_config(lad.rungs[1].spec.variants[1], 1)
    assert (cfg.train.flops, cfg.train.tokens) == (4e9, 0)


def test_horizon_ladder_keeps_the_model_and_grows_the_tokens(small_data, tmp_path):
    same = [RUNGS[0]] * 4
    lad = load_ladder(write_ladder(tmp_path, small_data, {"rungs": same, "tokens": [1024, 2048, 4096, 8192]}))
    assert len({r.non_embedding for r in lad.rungs}) == 1 and lad.span == 1
    assert [r.tokens for r in lad.rungs] == [1024, 2048, 4096, 8192]
    assert [r.flops / lad.rungs[0].flops for r in lad.rungs] == pytest.approx([1, 2, 4, 8])
    # equal models need a growing token budget: equal or shrinking compute is refused, naming the rung
    for tokens in ([2048, 2048], [2048, 1024]):
        spec = write_ladder(tmp_path, small_data, {"rungs": same[:2], "tokens": tokens})
        with pytest.raises(
            GptlabError,
            match=r"ladder\.rungs\[1\]: [\d.e+]+ training FLOPs per run, not more than "
            r"rung 0's [\d.e+]+ \(each rung must add compute",
        ):
            load_ladder(spec)
    shipped = load_ladder("configs/experiments/ladder-horizon.toml")
    assert len({r.non_embedding for r in shipped.rungs}) == 1 and len(shipped.rungs) == 4
    assert [r.tokens // shipped.rungs[0].tokens for r in shipped.rungs] == [1, 2, 4, 8]


FROZEN = {"name": "frozen", "interventions": ["lr:value=1e-7"]}  # a known strong effect: it barely trains


def test_tiny_ladder_end_to_end_report_and_rerun(small_data, tmp_path, capsys):
    """A real 2-rung ladder whose variant is built to lose: lr 1e-7 leaves it near its initial loss (~9.3 nats)
    at both rungs while the baseline learns, a little in rung 0's 4 steps, much more in rung 1's 12 steps
    (measured here: Δ +0.08 then +1.75, per-rung SEs 0.03 and 0.08). So Δ grows with scale (slope t ~19, p ~0.01)
    and the backtest, which can only carry rung 0's Δ forward (offset model), misses rung 1's by far more than
    its interval (error ~1.7, interval half-width ~0.2): unreliable. Rungs this short are above the unigram
    model (uninformative): keep_uninformative keeps them in the fits this test is about."""
    spec = write_ladder(
        tmp_path,
        small_data,
        {"bootstrap": 50, "tokens": [8 * 32 * 4, 8 * 32 * 12], "keep_uninformative": True},
        variants=[{"name": "baseline"}, FROZEN],
    )
    assert main(["ladder", str(spec), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "rung-0" in printed and "rung-1" in printed and "non-embedding span" in printed
    assert "estimated" in printed and "target target.toml: 163,009,536 params" in printed
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    # frozen sets the lr (acts on the horizon, the batch and the width): a target of the largest rung's shape
    # is one this screen judges, so the backtest below is reported
    base = tomllib.loads((tmp_path / "base.toml").read_text())
    base["model"].update(RUNGS[1])
    (tmp_path / "target.toml").write_text(tomli_w.dumps(base))
    out = tmp_path / "out"
    assert main(["ladder", str(spec), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ladder lad: 2 rungs, 8 runs, 0 already done, 8 to run" in printed
    for k in (0, 1):
        with sqlite3.connect(out / f"rung-{k}" / "results.sqlite") as c:
            assert c.execute("select count(*) from runs").fetchone()[0] == 4
        assert (out / f"rung-{k}" / "report.md").is_file() and (out / "specs" / f"rung-{k}.toml").is_file()
    md = (out / "report.md").read_text()
    assert "## Backtest" in md and "frozen: fit on 1 rung(s), predicted Δ" in md
    assert "Δ at target" in md and "offset" in md
    assert "![frozen](plots/ladder-frozen.png)" in md
    png = out / "plots" / "ladder-frozen.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Backtest" in html
    res = json.loads((out / "ladder.json").read_text())
    (v,) = res["variants"]
    r0, r1 = v["per_rung"]
    assert v["variant"] == "frozen" and 0 < r0["diff"] < r1["diff"] - 0.5 and r1["ci_low"] > 0
    assert v["trend"]["word"] == "grows" and v["trend"]["tested"] and v["trend"]["slope"] > 0
    assert v["fit"] == "offset" and v["target_delta"] > 0
    bt = v["backtest"]
    assert bt["reliable"] is False and bt["predicted"] == pytest.approx(r0["diff"], abs=1e-6)
    assert bt["measured"] == pytest.approx(r1["diff"]) and bt["measured"] > bt["interval"][1] + 0.5
    row = next(x for x in md.splitlines() if x.startswith("| frozen |"))
    assert row.split(" | ")[3] == "grows" and row.endswith("| **unreliable** |")
    assert "> **unreliable**: frozen" in md
    # the rungs' measured FLOPs grow and the target is far beyond them
    assert v["per_rung"][0]["compute"] < v["per_rung"][1]["compute"] < 1e18

    # a rerun trains nothing and rewrites the same verdicts
    mtimes = {p: p.stat().st_mtime for p in out.glob("rung-*/runs/*/final.json")}
    assert len(mtimes) == 8
    assert main(["ladder", str(spec), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "8 runs, 8 already done, 0 to run" in printed and printed.count(", 0 to run") == 3
    assert {p: p.stat().st_mtime for p in out.glob("rung-*/runs/*/final.json")} == mtimes
    assert json.loads((out / "ladder.json").read_text())["variants"][0]["target_delta"] == v["target_delta"]
    # runs recorded with another config than the ladder now gives them are not analysed (e.g. a variant left out
    # by --only after the rungs' settings changed)
    assert {k: [len(x) for x in r] for k, r in collect(load_ladder(spec), out).items()} == {
        "baseline": [2, 2],
        "frozen": [2, 2],
    }
    changed = collect(load_ladder(spec, parse_overrides(["train.weight_decay=0.5"])), out)
    assert {k: [len(x) for x in r] for k, r in changed.items()} == {"baseline": [0, 0], "frozen": [0, 0]}


def record(lad, out, losses):
    """Constructed results, recorded as the runner records them: losses[variant][k] are the final test losses of
    rung k's seeds (in the rung's seed order), each run with the config hash the ladder expects and the rung's
    FLOPs, in out/rung-K/results.sqlite."""
    from gptlab.experiments.results import DB_NAME, ResultsDB

    for r in lad.rungs:
        (out / r.name).mkdir(parents=True, exist_ok=True)
        with ResultsDB(out / r.name / DB_NAME) as db:
            for v in r.spec.variants:
                for s, loss in zip(r.spec.seeds, losses[v.name][r.index], strict=True):
                    db.record_run(
                        {
                            "run_id": r.spec.run_id(v.name, s),
                            "experiment": r.spec.name,
                            "variant": v.name,
                            "seed": s,
                            "config_hash": r.spec.resolve(v, s, lad.extra).hash,
                            "flops": r.flops,
                            "tokens": r.tokens,
                            "test_loss": loss,
                        }
                    )


def shifted(base, deltas, noise=(-0.01, 0.01, 0.0)):
    """Per rung: the baseline's losses + that rung's Δ, with another seed-to-seed scatter of the same size."""
    return [[b + d + e for b, e in zip(bs, noise, strict=True)] for bs, d in zip(base, deltas, strict=True)]


def test_ladder_words_on_constructed_results(small_data, tmp_path):
    """Results built to give each outcome (3 seeds, seed SD 0.01, Δ in hundredths): a constant Δ is flat and its
    backtest reliable; a Δ that grows, shrinks or flips between the rungs gets that word, and the backtest from
    the smaller rung (a constant Δ: the offset model) misses the largest one's: unreliable."""
    names = {"steady": (-0.05, -0.05), "bigger": (-0.05, -0.20), "smaller": (-0.20, -0.05), "flipped": (-0.10, 0.10)}
    spec = write_ladder(
        tmp_path,
        small_data,
        {"bootstrap": 100},
        seeds=(1, 2, 3),
        variants=[{"name": "baseline"}] + [{"name": n} for n in names],
    )
    lad = load_ladder(spec)
    base = [[5.01, 5.00, 4.99], [4.51, 4.50, 4.49]]
    out = tmp_path / "out"
    record(lad, out, {"baseline": base, **{n: shifted(base, d) for n, d in names.items()}})
    res = write_ladder_report(lad, out)
    head, body = res["summary"]
    cells = {row[0]: dict(zip(head, row, strict=True)) for row in body}
    assert {n: (c["trend"], c["backtest"]) for n, c in cells.items()} == {
        "steady": ("flat", "reliable"),
        "bigger": ("grows", "**unreliable**"),
        "smaller": ("shrinks", "**unreliable**"),
        "flipped": ("flips", "**unreliable**"),
    }
    e = {x["variant"]: x for x in res["analysis"]["variants"]}
    assert e["bigger"]["backtest"].predicted == pytest.approx(-0.05, abs=1e-6)
    assert e["bigger"]["backtest"].measured == pytest.approx(-0.20, abs=1e-6)
    assert e["steady"]["backtest"].low < -0.05 < e["steady"]["backtest"].high
    md = (out / "report.md").read_text()
    assert "> **unreliable**: bigger, smaller, flipped" in md


def test_one_seed_rung_claims_no_noise_estimate(small_data, tmp_path):
    """seeds = [[1, 2], [3]]: the one-seed rung's Δ is shown with the note and without CI or p; the trend is
    untested and there is neither a target interval nor a backtest interval or verdict (the bootstrap cannot
    resample one seed: an interval would take that rung's Δ as exact)."""
    spec = write_ladder(tmp_path, small_data, {"bootstrap": 50, "seeds": [[1, 2], [3]]})
    lad = load_ladder(spec)
    out = tmp_path / "out"
    record(lad, out, {"baseline": [[5.00, 5.02], [4.50]], "no_dropout": [[4.95, 4.97], [4.40]]})
    res = write_ladder_report(lad, out)
    (e,) = res["analysis"]["variants"]
    r0, r1 = e["per_rung"]
    assert r0["note"] == "" and r0["ci_low"] < r0["diff"] < r0["ci_high"]
    assert r1["note"] == "1 seed: no noise estimate" and r1["diff"] == pytest.approx(-0.10)
    assert all(math.isnan(r1[k]) for k in ("ci_low", "ci_high", "p"))
    bt, ex = e["backtest"], e["extrapolation"]
    assert bt.reliable is None and math.isnan(bt.low) and math.isnan(bt.high) and bt.note == r1["note"]
    assert bt.predicted == pytest.approx(-0.05) and bt.measured == pytest.approx(-0.10)
    assert math.isnan(ex.low) and ex.note == r1["note"]
    # the fit weights rung-1's single runs by the pooled seed SD of rung 0's groups (the same 0.0141 here):
    # each of the 6 runs counts equally, δ = (4 runs at -0.05 + 2 at -0.10 per group pair) -> -0.2/3
    assert ex.delta == pytest.approx(-0.2 / 3, abs=1e-4)
    head, (row,) = res["summary"]
    cell = dict(zip(head, row, strict=True))
    assert cell["trend"] == "flat (untested)" and cell["backtest"] == "not tested (1 seed: no noise estimate)"
    assert cell["95% PI"] == "— (1 seed: no noise estimate)"
    md = (out / "report.md").read_text()
    rung1 = next(x for x in md.splitlines() if x.startswith("| rung-1 | ") and "4.5000" in x)
    assert rung1.endswith("| -0.1000 | — | — | 1 seed: no noise estimate |")
    assert "no interval of the measured Δ (1 seed: no noise estimate): not tested" in md
    assert (
        "- no_dropout: rung-1: 1 seed: no noise estimate (no CI or p at that rung, no interval at the target, "
        "the backtest not tested)." in md
    )
    j = json.loads((out / "ladder.json").read_text())["variants"][0]
    assert j["backtest"]["reliable"] is None and j["backtest"]["interval"] == [None, None]
    assert j["target_interval"] == [None, None] and j["target_note"] == "1 seed: no noise estimate"


def test_ladder_verb_checks_its_options(capsys):
    from gptlab.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["ladder", "configs/experiments/ladder-cpu.toml", "--bootstrap", "5"])
    assert e.value.code == 2 and "argument --bootstrap: must be in [20, 100000], got 5" in capsys.readouterr().err
    assert main(["ladder", "configs/experiments/nope.toml", "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_shipped_ladders_resolve():
    cpu = load_ladder("configs/experiments/ladder-cpu.toml")
    assert [v.name for v in cpu.spec.variants] == ["baseline", "grad_clip", "no_dropout", "qkv_bias", "muon", "rope"]
    assert len(cpu.rungs) >= 3 and cpu.span >= 10 and all(len(r.spec.seeds) >= 3 for r in cpu.rungs)
    gpu = load_ladder("configs/experiments/ladder-gpu.toml")
    assert gpu.span >= 10 and 100e6 < gpu.rungs[-1].params < 130e6
    assert gpu.target_flops == pytest.approx(2.785e18, rel=1e-3)
    # tokens_per_param = 20: 20 tokens per non-embedding parameter, rounded up to whole optimizer steps
    r = gpu.rungs[0]
    assert 20 * r.non_embedding <= r.tokens < 20 * r.non_embedding + 96 * 1024


def test_paired_ladder_says_which_seeds_it_left_out(small_data, tmp_path):
    """design = "paired": a rung where the variant lost a seed is compared on the seeds both have (pairing.py's
    rule, the experiment report's too), and the report's warnings and ladder.json say which run was left out."""
    import tomllib

    spec = write_ladder(tmp_path, small_data, {"bootstrap": 50}, seeds=(1, 2, 3))
    doc = tomllib.loads(spec.read_text())
    spec.write_text(tomli_w.dumps(dict(doc, design="paired")))
    lad = load_ladder(spec)
    out = tmp_path / "out"
    base = [[5.01, 5.00, 4.99], [4.51, 4.50, 4.49]]
    record(lad, out, {"baseline": base, "no_dropout": shifted(base, (-0.05, -0.05))})
    with sqlite3.connect(out / "rung-1" / "results.sqlite") as c:
        c.execute("DELETE FROM runs WHERE variant = 'no_dropout' AND seed = 3")
    res = write_ladder_report(lad, out)
    (e,) = res["analysis"]["variants"]
    assert [(x["n_baseline"], x["n_variant"]) for x in e["per_rung"]] == [(3, 3), (2, 2)]
    note = "left out of the pairing: baseline seed 3 (no variant run with the same seed)"
    assert f"- no_dropout: rung-1: {note}." in (out / "report.md").read_text()
    assert json.loads((out / "ladder.json").read_text())["variants"][0]["unpaired"] == [
        {"rung": "rung-1", "note": note}
    ]


def unigram_of(lad):
    from gptlab.experiments.analysis.regime import unigram_baseline

    cfg = lad.rungs[0].spec.resolved_config(lad.spec.variants[0], lad.spec.seeds[0])
    return unigram_baseline(cfg.data.dir, corpus_vocab=cfg.data.vocab == "corpus")


@pytest.mark.parametrize("keep", [False, True])
def test_uninformative_rung_is_marked_and_left_out_of_the_fits(small_data, tmp_path, keep):
    """Three rungs, the smallest's baseline 0.05 nats above the unigram model: it is marked uninformative in the
    regime table and ladder.json, and the fits (trend, backtest) use the two others, unless keep_uninformative."""
    rungs = RUNGS + [{"n_layers": 2, "emb_dim": 64, "n_heads": 2}]
    spec = write_ladder(
        tmp_path,
        small_data,
        {"bootstrap": 50, "rungs": rungs, "tokens": [256, 256, 256], "keep_uninformative": keep},
        seeds=(1, 2, 3),
    )
    lad = load_ladder(spec)
    u = unigram_of(lad)
    base = [[u + 0.05 + e for e in (0.01, 0.0, -0.01)], [u - 0.5, u - 0.51, u - 0.49], [u - 1.0, u - 1.01, u - 0.99]]
    out = tmp_path / "out"
    record(lad, out, {"baseline": base, "no_dropout": shifted(base, (0.3, -0.05, -0.05))})
    res = write_ladder_report(lad, out)
    an = res["analysis"]
    assert an["uninformative"] == [0]
    (e,) = an["variants"]
    assert [x["rung"] for x in e["per_rung"]] == [0, 1, 2]  # every rung's Δ is still shown
    assert e["fit_rungs"] == ([0, 1, 2] if keep else [1, 2])
    assert e["backtest"].measured == pytest.approx(-0.05, abs=1e-6)
    # left out, the backtest from rung 1 predicts rung 2's Δ; kept, the Δ of +0.3 at rung 0 pulls it off
    assert (e["backtest"].predicted == pytest.approx(-0.05, abs=1e-6)) is not keep
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| baseline test loss"))
    assert "uninformative: rung-0" in row
    left_out = "Uninformative rungs left out of the trend, extrapolation, backtest and rank agreement: rung-0"
    assert (left_out in md) is not keep
    js = json.loads((out / "ladder.json").read_text())
    assert [r["regime"]["informative"] for r in js["rungs"]] == [False, True, True]
    assert js["fitted"] == (["rung-0", "rung-1", "rung-2"] if keep else ["rung-1", "rung-2"])


def test_keep_uninformative_must_be_a_boolean(small_data, tmp_path):
    spec = write_ladder(tmp_path, small_data, {"keep_uninformative": "yes"})
    with pytest.raises(GptlabError, match=r"ladder\.keep_uninformative: expected true or false, got 'yes'"):
        load_ladder(spec)


def test_horizon_variant_far_from_the_target_is_not_judged(small_data, tmp_path):
    """The target trains ~10^5 x the rungs' steps: lr_schedule (acts on the training horizon) gets its measured Δ
    and "not judged by this screen", no Δ at the target and no backtest word, in the verdict table, the text and
    ladder.json; rope (acts on nothing) is judged as before."""
    variants = [
        {"name": "baseline"},
        {"name": "lr_schedule", "interventions": ["lr_schedule"]},
        {"name": "rope", "interventions": ["rope"]},
    ]
    spec = write_ladder(tmp_path, small_data, {"bootstrap": 50}, seeds=(1, 2, 3), variants=variants)
    lad = load_ladder(spec)
    base = [[5.01, 5.00, 4.99], [4.51, 4.50, 4.49]]
    out = tmp_path / "out"
    same = shifted(base, (-0.1, -0.1))
    record(lad, out, {"baseline": base, "lr_schedule": same, "rope": same})
    res = write_ladder_report(lad, out)
    head, body = res["summary"]
    cells = {row[0]: dict(zip(head, row, strict=True)) for row in body}
    steps = lad.rungs[-1].tokens // (8 * 32)
    why = f"not judged by this screen: acts on the training horizon (screen {steps} steps, target 30,518)"
    assert cells["lr_schedule"]["backtest"] == why
    assert cells["lr_schedule"]["Δ largest rung"] == "-0.1000"
    assert cells["lr_schedule"]["Δ at target"] == cells["lr_schedule"]["95% PI"] == "—"
    assert cells["rope"]["backtest"] == "reliable" and cells["rope"]["Δ at target"] == "-0.1000"
    md = (out / "report.md").read_text()
    assert f"**{why}**: no Δ at the target." in md
    js = {v["variant"]: v for v in json.loads((out / "ladder.json").read_text())["variants"]}
    assert js["lr_schedule"]["not_judged"] == why[len("not judged by this screen: ") :]
    assert js["lr_schedule"]["target_delta"] is None and js["lr_schedule"]["backtest"] is None
    assert js["rope"]["not_judged"] is None and js["rope"]["backtest"]["reliable"] is True


@pytest.mark.parametrize(
    "deltas, tau, rule",
    [
        ({"a": (-0.30, -0.30), "b": (-0.10, -0.10), "c": (0.10, 0.10)}, 1.0, "the largest rung's ranking"),
        ({"a": (-0.30, 0.10), "b": (-0.10, -0.10), "c": (0.10, -0.30)}, -1.0, "the largest rung's ranking"),
    ],
)
def test_rank_agreement_between_rungs(small_data, tmp_path, deltas, tau, rule):
    """Three variants whose order by Δ holds between the rungs (τ = 1, interval above 0: decide by the largest
    rung) or reverses (τ = -1; every backtest misses: still the largest rung, a provisional ranking)."""
    variants = [{"name": "baseline"}] + [{"name": n} for n in deltas]
    spec = write_ladder(tmp_path, small_data, {"bootstrap": 50}, seeds=(1, 2, 3), variants=variants)
    lad = load_ladder(spec)
    base = [[5.01, 5.00, 4.99], [4.51, 4.50, 4.49]]
    out = tmp_path / "out"
    record(lad, out, {"baseline": base, **{n: shifted(base, d) for n, d in deltas.items()}})
    res = write_ladder_report(lad, out)
    (a,) = res["analysis"]["rank"]["agreements"]
    assert a.tau == pytest.approx(tau)
    assert (a.low > 0) is (tau > 0)
    js = json.loads((out / "ladder.json").read_text())
    assert js["rank_agreement"][0]["tau"] == pytest.approx(tau)
    assert js["decision_rule"]["rule"] == rule
    md = (out / "report.md").read_text()
    assert f"rung-0 → rung-1: Kendall's τ = {tau:+.2f}" in md
    assert f"Decide by **{rule}**" in md
    assert ("the ranking holds" in md) is (tau > 0)
