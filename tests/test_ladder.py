"""`gptlab ladder`: the [ladder] table's checks, the rung plans, and a real tiny 2-rung ladder end to end."""

import json
import sqlite3

import pytest
import tomli_w
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.cli import main
from gptlab.config import parse_overrides
from gptlab.experiments.ladder import collect, load_ladder, run_ladder

RUNGS = [{"n_layers": 1, "emb_dim": 16, "n_heads": 2}, {"n_layers": 1, "emb_dim": 64, "n_heads": 2}]


def write_ladder(tmp_path, data, ladder=None, seeds=(1, 2), variants=None, drop=()):
    base = parse_overrides(tiny_overrides(data, **{"train.checkpoint_interval": 100, "train.eval_interval": 100}))
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    (tmp_path / "target.toml").write_text(tomli_w.dumps({"model": {"preset": "gpt2-small"},
                                                         "train": {"tokens": 1_000_000_000}}))
    lad = {"rungs": RUNGS, "tokens": [8 * 32 * 4, 8 * 32 * 6], "target": {"config": "target.toml"}}
    lad.update(ladder or {})
    for k in drop:
        lad.pop(k, None)
    spec = {"name": "lad", "base": "base.toml", "seeds": list(seeds), "baseline": "baseline",
            "variants": variants or [{"name": "baseline"}, {"name": "no_dropout", "interventions": ["no_dropout"]}],
            "ladder": lad}
    if "ladder" in drop:
        del spec["ladder"]
    p = tmp_path / "ladder.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


@pytest.mark.parametrize("ladder, drop, match", [
    ({}, ("ladder",), r"missing \[ladder\] table"),
    ({"rung": []}, (), r"ladder\.rung: unknown key \(did you mean 'rungs'\?\)"),
    ({"rungs": [RUNGS[0]]}, (), r"ladder\.rungs: expected a list of at least 2 tables"),
    ({"rungs": [RUNGS[0], {"n_layer": 2}]}, (), r"ladder\.rungs\[1\]\.n_layer: not a model setting \(did you mean "
                                                r"'n_layers'\?\)"),
    ({"tokens_per_param": 20}, (), r"exactly one token rule of tokens_per_param, tokens, flops, got "
                                   r"tokens_per_param, tokens"),
    ({}, ("tokens",), r"exactly one token rule .* got none"),
    ({"tokens": [1000]}, (), r"ladder\.tokens: expected a list of 2 positive numbers \(one per rung\)"),
    ({"tokens": [1000, -5]}, (), r"ladder\.tokens: expected a list of 2 positive numbers"),
    ({"tokens_per_param": -1}, ("tokens",), r"ladder\.tokens_per_param: expected a positive number"),
    ({"flops": "many"}, ("tokens",), r"ladder\.flops: expected a list of 2"),
    ({"tokens_per_param": 1e305}, ("tokens",), r"ladder\.tokens_per_param: gives inf training tokens at rung 0"),
    ({"tokens_per_param": 1e-9}, ("tokens",), r"ladder\.tokens_per_param: gives [\d.e-]+ training tokens at rung 0; "
                                              r"expected at least 1"),
    ({"flops": [1, 1e12]}, ("tokens",), r"ladder\.flops\[0\]: 1 FLOPs is less than one token"),
    ({"seeds": [[1, 2]]}, (), r"ladder\.seeds: expected one seed list per rung \(2\), got 1"),
    ({"seeds": [1, 1]}, (), r"seeds: duplicate seeds"),
    ({"bootstrap": 5}, (), r"ladder\.bootstrap: expected an integer from 20 to 100000, got 5"),
    ({}, ("target",), r"ladder\.target: expected a table \{ config"),
    ({"target": {"config": "nope.toml"}}, (), r"ladder\.target\.config: nope\.toml not found"),
    ({"target": {"config": "target.toml", "tokens": 0}}, (), r"ladder\.target\.tokens: expected a positive"),
    ({"target": {"config": "target.toml", "flops": 1}}, (), r"ladder\.target\.flops: unknown key"),
    ({"rungs": list(reversed(RUNGS))}, (), r"ladder\.rungs\[1\]: 3,\d+ non-embedding parameters, not more than "
                                           r"rung 0's 49,\d+ \(list the rungs smallest first\)"),
    ({"rungs": [RUNGS[0], {"n_layers": 1, "emb_dim": 64, "n_heads": 3}]}, (), r"ladder\.rungs\[1\]: .*n_heads"),
])
def test_bad_ladder_fields_are_one_line_errors(small_data, tmp_path, ladder, drop, match):
    spec = write_ladder(tmp_path, small_data, ladder, drop=drop)
    with pytest.raises(GptlabError, match=match) as e:
        load_ladder(spec)
    assert "\n" not in str(e.value) and str(spec) in str(e.value)


def test_token_rules_and_seeds_per_rung(small_data, tmp_path):
    lad = load_ladder(write_ladder(tmp_path, small_data, {"tokens_per_param": 2, "seeds": [[1, 2, 3], [4, 5]]},
                                   drop=("tokens",)))
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


def test_tiny_ladder_end_to_end_report_and_rerun(small_data, tmp_path, capsys):
    spec = write_ladder(tmp_path, small_data, {"bootstrap": 50})
    assert main(["ladder", str(spec), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "rung-0" in printed and "rung-1" in printed and "non-embedding span" in printed
    assert "estimated" in printed and "target target.toml: 163,009,536 params" in printed
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    out = tmp_path / "out"
    assert run_ladder(str(spec), out=str(out), quiet=True) == 0
    printed = capsys.readouterr().out
    assert "ladder lad: 2 rungs, 8 runs, 0 already done, 8 to run" in printed
    for k in (0, 1):
        with sqlite3.connect(out / f"rung-{k}" / "results.sqlite") as c:
            assert c.execute("select count(*) from runs").fetchone()[0] == 4
        assert (out / f"rung-{k}" / "report.md").is_file() and (out / "specs" / f"rung-{k}.toml").is_file()
    md = (out / "report.md").read_text()
    assert "## Backtest" in md and "no_dropout: fit on 1 rung(s), predicted Δ" in md
    assert any(f"| {w} |" in md for w in ("grows", "shrinks", "flips", "flat"))
    assert "Δ at target" in md and "offset" in md and "unreliable" in md  # the rule's explanation at least
    assert "![no_dropout](plots/ladder-no_dropout.png)" in md
    png = out / "plots" / "ladder-no_dropout.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Backtest" in html
    res = json.loads((out / "ladder.json").read_text())
    (v,) = res["variants"]
    assert v["variant"] == "no_dropout" and v["trend"]["word"] in ("grows", "shrinks", "flips", "flat")
    assert v["fit"] == "offset" and v["target_delta"] is not None
    assert v["backtest"]["reliable"] in (True, False)
    # the rungs' measured FLOPs grow and the target is far beyond them
    assert v["per_rung"][0]["compute"] < v["per_rung"][1]["compute"] < 1e18

    # a rerun trains nothing and rewrites the same verdicts
    mtimes = {p: p.stat().st_mtime for p in out.glob("rung-*/runs/*/final.json")}
    assert len(mtimes) == 8
    assert run_ladder(str(spec), out=str(out), quiet=True) == 0
    printed = capsys.readouterr().out
    assert "8 runs, 8 already done, 0 to run" in printed and printed.count(", 0 to run") == 3
    assert {p: p.stat().st_mtime for p in out.glob("rung-*/runs/*/final.json")} == mtimes
    assert json.loads((out / "ladder.json").read_text())["variants"][0]["target_delta"] == v["target_delta"]
    # runs recorded with another config than the ladder now gives them are not analysed (e.g. a variant left out
    # by --only after the rungs' settings changed)
    assert {k: [len(x) for x in r] for k, r in collect(load_ladder(spec), out).items()} == \
        {"baseline": [2, 2], "no_dropout": [2, 2]}
    changed = collect(load_ladder(spec, parse_overrides(["train.lr=0.5"])), out)
    assert {k: [len(x) for x in r] for k, r in changed.items()} == {"baseline": [0, 0], "no_dropout": [0, 0]}


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
