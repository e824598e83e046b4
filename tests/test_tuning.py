"""Tuned baselines (experiments/tuning.py): a sweep picks each variant's value of a setting on validation loss, and
the experiment compares every variant at its chosen value beside the comparison at the base config's value."""

import json
import logging
import math
import sqlite3
import tomllib
import zlib

import pytest
import tomli_w
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.cli import main
from gptlab.config import parse_overrides
from gptlab.experiments.analysis.tuning import base_values, choose, parse_grid, sweep_spec, tuned_spec
from gptlab.experiments.run.runner import run_experiment, run_sweep
from gptlab.experiments.specs.experiment import load_spec
from gptlab.experiments.specs.matrix import plan_matrix


def _spec(tmp_path, data, lr=1e-5, tuned=True, **extra):
    base = parse_overrides(tiny_overrides(data, **{"train.lr": lr, "train.tokens": 8 * 32 * 6}))
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    d = {
        "name": "t",
        "base": "base.toml",
        "seeds": [1, 2],
        "baseline": "baseline",
        "variants": [{"name": "baseline"}, {"name": "no_dropout", "interventions": ["no_dropout"]}],
    }
    if tuned:
        d.update(tune="lr", tune_grid=[2e-3, 4e-3], tune_seeds=[1001])
    d.update(extra)
    p = tmp_path / "exp.toml"
    p.write_text(tomli_w.dumps(d))
    return p


def test_log_grid_and_bad_grids():
    assert parse_grid("1e-3:8e-3:4") == [0.001, 0.002, 0.004, 0.008]
    assert parse_grid("3e-4,1e-3") == [3e-4, 1e-3]
    for bad in ("8e-3:1e-3:4", "1e-3:8e-3:1", "a,b", "1e-3:2e-3"):
        with pytest.raises(GptlabError, match="--grid: expected"):
            parse_grid(bad)


def test_tune_settings_are_checked_before_anything_runs(small_data, tmp_path):
    for extra, msg in [
        ({"tune": "train.nope"}, "train.nope is not a number setting"),
        ({"tune": "model.n_layers"}, "is not a number setting"),
        ({"tune_grid": [2e-3]}, "at least 2 distinct values"),
        ({"tune_grid": [2e-3, -1.0]}, r"train.lr=-1, variant baseline.*train.lr"),
        ({"tune_seeds": []}, "tune_seeds: expected a non-empty list"),
    ]:
        with pytest.raises(GptlabError, match=msg):
            load_spec(_spec(tmp_path, small_data, **extra))


def test_choice_uses_validation_loss_marks_edges_and_reuses_base_runs(small_data, tmp_path):
    spec = load_spec(_spec(tmp_path, small_data, lr=2e-3, tune_grid=[1e-3, 4e-3]))
    base = base_values(spec, plan_matrix(spec, {}))
    assert base == {"baseline": 2e-3, "no_dropout": 2e-3}
    sweep = sweep_spec(spec, base)
    assert [v.name for v in sweep.variants] == [
        "baseline@lr=0.001",
        "baseline@lr=0.002",
        "baseline@lr=0.004",
        "no_dropout@lr=0.001",
        "no_dropout@lr=0.002",
        "no_dropout@lr=0.004",
    ]
    val = {
        "baseline@lr=0.001-s1001": 5.0,
        "baseline@lr=0.002-s1001": 4.0,
        "baseline@lr=0.004-s1001": 4.5,
        "no_dropout@lr=0.001-s1001": 5.0,
        "no_dropout@lr=0.002-s1001": math.nan,
        "no_dropout@lr=0.004-s1001": 4.2,
    }
    c = choose(spec, val, base)
    assert c["best"] == {"baseline": 0.002, "no_dropout": 0.004}
    assert c["val_loss"]["no_dropout"] == {"0.001": 5.0, "0.002": None, "0.004": 4.2}  # diverged: never chosen
    assert c["at_edge"] == ["no_dropout"]
    tuned = tuned_spec(spec, c["best"], base)
    # the baseline's chosen value is its base value: its runs at the baseline's lr are reused
    assert [(v.name, v.overrides) for v in tuned.variants] == [
        ("baseline", {}),
        ("no_dropout@lr=0.004", {"train": {"lr": 0.004}}),
    ]
    with pytest.raises(GptlabError, match="no_dropout at train.lr=0.004 has no finished run"):
        choose(spec, {k: v for k, v in val.items() if k != "no_dropout@lr=0.004-s1001"}, base)


def test_base_value_is_what_the_untuned_runs_train_with_set_included(small_data, tmp_path):
    """--set train.lr=3e-3 trains the plain variants at 3e-3: that is their base value in the sweep (a candidate
    beside the grid) and, when chosen, their plain runs are the tuned ones. It was read from the spec alone
    (2e-3), so the sweep tried 2e-3 and a variant choosing it was then trained at the --set value."""
    spec = load_spec(_spec(tmp_path, small_data, lr=2e-3, tune_grid=[1e-3, 4e-3]))
    base = base_values(spec, plan_matrix(spec, parse_overrides(["train.lr=3e-3"])))
    assert base == {"baseline": 3e-3, "no_dropout": 3e-3}
    names = [v.name for v in sweep_spec(spec, base).variants]
    assert "baseline@lr=0.003" in names and "baseline@lr=0.002" not in names
    val = {f"{n}-s1001": (4.0 if "0.003" in n else 5.0) for n in names}
    c = choose(spec, val, base)
    assert c["best"] == c["base"] == {"baseline": 3e-3, "no_dropout": 3e-3}
    assert [v.name for v in tuned_spec(spec, c["best"], base).variants] == ["baseline", "no_dropout"]


def test_status_lists_the_sweep_at_the_base_value_set_gives(small_data, tmp_path, capsys):
    """`--status --set train.lr=3e-3` lists the sweep runs the experiment run with that --set makes (its base
    value 0.003 beside the grid); it read the base value without --set, listing runs that never exist."""
    spec = _spec(tmp_path, small_data, lr=2e-3, tune_grid=[1e-3, 4e-3])
    cli = ["experiment", str(spec), "--out", str(tmp_path / "exp"), "--status", "--set", "train.lr=3e-3"]
    assert main(cli) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    sweep = [f"{v}@lr={x}-s1001" for v in ("baseline", "no_dropout") for x in ("0.001", "0.003", "0.004")]
    assert ids == ["baseline-s1", "baseline-s2", "no_dropout-s1", "no_dropout-s2", *sweep]


def test_sweep_then_tuned_experiment_reports_both_comparisons(small_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gptlab")
    spec = _spec(tmp_path, small_data, alpha=0.1)  # base lr 1e-5 barely trains in 6 steps; 2e-3 and 4e-3 do
    out = tmp_path / "exp"
    swept = run_sweep(str(spec), out=str(out), quiet=True)
    assert swept.ok and swept.summary.endswith(f"sweep: {out / 'sweep.json'}")
    assert "6 runs, 0 already done, 6 to run" in caplog.messages[0] and "train.lr=1e-05" in swept.summary
    caplog.clear()
    sweep = json.loads((out / "sweep.json").read_text())
    assert set(sweep["best"]) == {"baseline", "no_dropout"} and all(x in (2e-3, 4e-3) for x in sweep["best"].values())
    for name, row in sweep["val_loss"].items():
        assert row[f"{sweep['best'][name]:.6g}"] == min(row.values()) < row["1e-05"]

    tuned = run_experiment(str(spec), out=str(out), quiet=True)
    assert tuned.ok
    assert "10 runs, 6 already done, 4 to run" in caplog.messages[0]  # the sweep's runs are reused
    assert "each variant at its best train.lr" in tuned.summary
    caplog.clear()
    with sqlite3.connect(out / "results.sqlite") as c:
        ids = {r[0]: r[1] for r in c.execute("select run_id, test_loss from runs")}
    best = sweep["best"]
    tuned_ids = [f"{v}@lr={best[v]:.6g}-s{s}" for v in ("baseline", "no_dropout") for s in (1, 2)]
    assert set(tuned_ids) <= set(ids) and len(ids) == 14
    from gptlab.experiments.run.status import experiment_status  # matrix, sweep, then the tuned matrix: all 14

    listed = [r["run_id"] for r in experiment_status(str(spec), out=str(out)) if r["state"] == "done"]
    assert len(listed) == 14 and listed[-4:] == tuned_ids
    cfg = tomllib.loads((out / "runs" / tuned_ids[0] / "config.toml").read_text())
    name = tuned_ids[0].rsplit("-s", 1)[0]  # the independent design: the tuned run's own seed
    assert cfg["train"]["lr"] == best["baseline"]
    assert cfg["train"]["seed"] == zlib.crc32(f"{name}/1".encode()) & 0x7FFFFFFF
    # at its chosen lr every variant beats itself at the base lr of 1e-5
    for v in ("baseline", "no_dropout"):
        assert max(ids[f"{v}@lr={best[v]:.6g}-s{s}"] for s in (1, 2)) < min(ids[f"{v}-s{s}"] for s in (1, 2))
    md = (out / "report.md").read_text()
    assert "α = 0.1." in md and "Difference to the baseline with 90% CI" in md  # the spec's alpha
    assert "## Verdicts at the base config's train.lr" in md and "## Each variant at its best train.lr" in md
    assert f"| no_dropout (lr={best['no_dropout']:.6g}) |" in md
    assert "Each variant at its best train.lr: chosen per variant by the lowest mean final validation loss" in md
    assert "chosen at the edge of the values tried" in md
    # the leaderboard shows the spec's variants only; `gptlab report` rebuilds the same report from the folder
    from gptlab.experiments.report.leaderboard import leaderboard

    assert sorted(r["variant"] for r in leaderboard([str(out)])) == ["baseline", "no_dropout"]
    assert main(["report", str(out)]) == 0
    assert _undated((out / "report.md").read_text()) == _undated(md)
    assert run_experiment(str(spec), out=str(out), quiet=True).ok
    assert "0 to run" in caplog.text


def _undated(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if "Generated" not in line)


def test_sweep_needs_a_grid_and_refuses_until_decided(small_data, tmp_path):
    plain = _spec(tmp_path, small_data, tuned=False)
    with pytest.raises(GptlabError, match="no tune settings; give --param and --grid"):
        run_sweep(str(plain), out=str(tmp_path / "x"))
    for seeds in ([], [3, 3]):  # --seeds from the command line is checked like tune_seeds
        with pytest.raises(GptlabError, match="tune_seeds: (expected a non-empty list|duplicate seeds)"):
            run_sweep(str(plain), param="lr", grid=[1e-3, 2e-3], seeds=seeds, out=str(tmp_path / "x"))
    with pytest.raises(GptlabError, match="--until-decided: not with tune"):
        run_experiment(str(_spec(tmp_path, small_data)), out=str(tmp_path / "y"), until_decided=True, max_seeds=4)
