import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import zlib

import pytest
import tomli_w
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.cli import main
from gptlab.config import parse_overrides
from gptlab.experiments.run.runner import plan_experiment, run_experiment
from gptlab.experiments.specs.experiment import load_spec


def write_spec(tmp_path, data, seeds=(1, 2), tokens=8 * 32 * 6, variants=None):
    base = parse_overrides(tiny_overrides(data, **{"train.tokens": tokens, "train.checkpoint_interval": 2}))
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    spec = {
        "name": "t",
        "base": "base.toml",
        "seeds": list(seeds),
        "baseline": "baseline",
        "variants": variants
        or [
            {"name": "baseline", "interventions": []},
            {"name": "no_dropout", "interventions": ["no_dropout"], "reference": 3.641},
        ],
    }
    p = tmp_path / "exp.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


def rows(exp_dir):
    try:
        with sqlite3.connect(exp_dir / "results.sqlite") as c:
            return c.execute("select run_id, variant, seed, test_loss from runs order by run_id").fetchall()
    except sqlite3.OperationalError:  # the runner has created the file but not yet its tables
        return []


def test_experiment_runs_matrix_records_sqlite_and_reports(small_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gptlab")
    spec = write_spec(tmp_path, small_data)
    out = tmp_path / "exp"
    res = run_experiment(str(spec), out=str(out), quiet=True)
    assert res.ok and res.failures == [] and res.report["markdown"] == str(out / "report.md")
    r = rows(out)
    assert [x[0] for x in r] == ["baseline-s1", "baseline-s2", "no_dropout-s1", "no_dropout-s2"]
    assert all(x[3] is not None and 0 < x[3] < 12 for x in r)
    with sqlite3.connect(out / "results.sqlite") as c:
        n_metrics = c.execute("select count(*) from metrics where run_id='baseline-s1'").fetchone()[0]
        hashes = c.execute("select count(distinct config_hash) from runs").fetchone()[0]
    assert n_metrics >= 6 and hashes == 4
    for f in ["report.md", "report.html", "plots/loss_curves.png", "plots/test_loss.png"]:
        assert (out / f).exists(), f
    assert "no_dropout" in res.summary and "baseline" in res.summary
    assert res.summary.endswith(f"report: {out / 'report.md'}  {out / 'report.html'}")
    assert caplog.messages[0].startswith("experiment t: 4 runs, 0 already done, 4 to run")
    assert [m.split()[:2] for m in caplog.messages[1:]] == [[f"[{i}/4]", r[i - 1][0]] for i in range(1, 5)]
    caplog.clear()
    # same seed, same data order: the seed changes the model init only
    assert r[0][3] != r[1][3]
    # the leaderboard over this experiment folder
    from gptlab.experiments.report.leaderboard import format_leaderboard, leaderboard

    lb = leaderboard([str(out)])
    assert [r["variant"] for r in lb][0] == "baseline" and {r["variant"] for r in lb} == {"baseline", "no_dropout"}
    assert all(r["experiment"] == "t" and r["n"] == 2 for r in lb)
    assert "no_dropout" in format_leaderboard(lb) and format_leaderboard(lb, "markdown").startswith("| experiment")
    nd = next(r for r in lb if r["variant"] == "no_dropout")
    assert nd["p_holm"] == pytest.approx(nd["p"])  # one comparison: Holm leaves p as it is
    assert "p (Holm)" in format_leaderboard(lb, "markdown").splitlines()[0]
    with pytest.raises(GptlabError, match="no results.sqlite"):
        leaderboard([str(out / "runs")])
    # re-running does nothing new and keeps one row per run
    assert run_experiment(str(spec), out=str(out), quiet=True).ok
    assert "0 to run" in caplog.messages[0] and len(caplog.messages) == 1
    assert len(rows(out)) == 4


def test_killed_experiment_resumes_with_each_run_once(small_data, tmp_path):
    spec = write_spec(tmp_path, small_data, seeds=(1, 2, 3), tokens=8 * 32 * 10)
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "gptlab", "experiment", str(spec), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (out / "results.sqlite").exists() and len(rows(out)) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # runner and its training child die mid-matrix
    proc.wait()
    before = rows(out)
    assert 2 <= len(before) < 6
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = rows(out)
    assert [x[0] for x in after] == sorted(f"{v}-s{s}" for v in ("baseline", "no_dropout") for s in (1, 2, 3))
    assert {x[0]: x[3] for x in before}.items() <= {x[0]: x[3] for x in after}.items()


def test_only_subset_keeps_baseline(small_data, tmp_path):
    spec = write_spec(tmp_path, small_data)
    plan = plan_experiment(str(spec), only=["no_dropout"])
    assert plan.ok and plan.folder is None
    out = plan.summary
    assert "baseline-s1" in out and "no_dropout-s2" in out
    with pytest.raises(GptlabError, match=r"--only: unknown variant 'nope'"):
        plan_experiment(str(spec), only=["nope"])


def test_a_run_with_only_reports_every_variant_recorded(small_data, tmp_path):
    """--only runs a subset; the report still covers every variant of the spec that has runs recorded (a variant
    added to a finished experiment is run alone, and the report compares it with the others)."""
    three = [
        {"name": "baseline", "interventions": []},
        {"name": "no_dropout", "interventions": ["no_dropout"]},
        {"name": "qkv_bias", "interventions": ["qkv_bias"]},
    ]
    spec, out = write_spec(tmp_path, small_data, seeds=(1, 2), variants=three), tmp_path / "exp"
    assert run_experiment(str(spec), out=str(out), quiet=True, only=["no_dropout"]).ok
    res = run_experiment(str(spec), out=str(out), quiet=True, only=["qkv_bias"])
    assert res.ok and len(rows(out)) == 6
    assert {r["variant"] for r in res.report["rows"]} == {"baseline", "no_dropout", "qkv_bias"}


def test_dry_run_prints_matrix(small_data, tmp_path, capsys):
    from gptlab.cli import main

    spec = write_spec(tmp_path, small_data)
    plan = plan_experiment(str(spec)).summary.splitlines()
    assert plan[0].startswith("experiment t: 2 variants, 4 runs") and plan[1].startswith("run ")
    assert [line.split()[0] for line in plan[2:6]] == ["baseline-s1", "baseline-s2", "no_dropout-s1", "no_dropout-s2"]
    assert main(["experiment", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 variants, 4 runs" in out and "no_dropout-s2" in out and "3.641" in out
    assert "estimated" in out and "FLOPs" in out
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize(
    "variants,match",
    [
        ([{"name": "baseline"}, {"name": "x", "interventions": ["grad_clipp"]}], r"unknown intervention 'grad_clipp'"),
        ([{"name": "baseline", "interventions": []}, {"name": "baseline"}], r"duplicate name baseline"),
        ([{"name": "a b"}], r"variants\[0\]\.name"),
        ([{"name": "v", "interventions": []}], r"baseline: 'baseline' is not one of the variants \(v\)"),
    ],
)
def test_bad_specs(small_data, tmp_path, variants, match):
    spec = write_spec(tmp_path, small_data, variants=variants)
    with pytest.raises(GptlabError, match=match):
        load_spec(spec)


def test_shipped_experiment_specs_resolve():
    for name in ["seed-interventions", "gpt2-small-interventions"]:
        spec = load_spec(f"configs/experiments/{name}.toml")
        assert spec.baseline == "baseline" and len(spec.seeds) >= 3
    spec = load_spec("configs/experiments/seed-interventions.toml")
    assert [v.name for v in spec.variants] == ["baseline", "grad_clip", "no_dropout", "qkv_bias", "clip+nodrop+qkv"]


def run_rows(exp_dir):
    with sqlite3.connect(exp_dir / "results.sqlite") as c:
        return {r[0]: r[1:] for r in c.execute("select run_id, config_hash, test_loss, finished from runs")}


def test_changed_config_stops_then_rerun_changed_redoes_only_that_run(small_data, tmp_path, capsys):
    from gptlab.cli import main

    variants = [{"name": "baseline", "interventions": []}, {"name": "no_dropout", "interventions": ["no_dropout"]}]
    spec = write_spec(tmp_path, small_data, seeds=(1,), variants=variants)
    out = tmp_path / "exp"
    cli = ["experiment", str(spec), "--out", str(out), "--quiet"]
    assert main([*cli, "--set", "train.lr=0.002"]) == 0
    as_run = (out / "spec.toml").read_text()
    assert "lr = 0.002" in as_run  # spec.toml describes the runs: the --set overrides merged into [overrides]
    before = run_rows(out)
    # a variant's interventions change: one line naming the run and the changed fields, nothing starts
    variants[1]["interventions"] = ["no_dropout", "qkv_bias"]
    write_spec(tmp_path, small_data, seeds=(1,), variants=variants)
    capsys.readouterr()
    assert main([*cli, "--set", "train.lr=0.002"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "gptlab: error: no_dropout-s1: finished with another config (interventions ['no_dropout'] -> "
        "['no_dropout', 'qkv_bias'], model.qkv_bias False -> True); re-run with --rerun-changed to redo it"
    )
    assert run_rows(out) == before and (out / "spec.toml").read_text() == as_run
    assert not list((out / "runs").glob("*.stale-*"))
    # --rerun-changed: that run is redone (row replaced, old folder kept aside), the other one untouched
    assert main([*cli, "--set", "train.lr=0.002", "--rerun-changed"]) == 0
    printed = capsys.readouterr().out
    first, note = printed.splitlines()[:2]
    assert first.startswith("experiment t: 2 runs, 1 already done, 1 to run (1 at a time)")
    assert note.startswith("no_dropout-s1: config changed, redoing it (old run folder: ")
    after = run_rows(out)
    assert after.keys() == before.keys() and after["baseline-s1"] == before["baseline-s1"]
    assert after["no_dropout-s1"][0] != before["no_dropout-s1"][0]  # the new config's hash
    assert after["no_dropout-s1"][1] != before["no_dropout-s1"][1]  # and its own test loss
    stale = out / "runs" / "no_dropout-s1.stale-1"
    assert (stale / "final.json").exists() and (out / "runs" / "no_dropout-s1.stale-1.log").exists()
    assert json.loads((stale / "final.json").read_text())["test_loss"] == pytest.approx(before["no_dropout-s1"][1])
    with sqlite3.connect(out / "results.sqlite") as c:
        steps = [r[0] for r in c.execute("select step from metrics where run_id='no_dropout-s1' order by step")]
    assert len(steps) == len(set(steps)) >= 6  # the new run's metrics only
    # the same spec without --set: every run differs (the brief's example form), several named in one line
    assert main(cli) == 2
    assert capsys.readouterr().err.strip() == (
        "gptlab: error: baseline-s1: finished with another config (train.lr 0.002 -> 0.003); also no_dropout-s1; "
        "re-run with --rerun-changed to redo them"
    )
    # a variant removed from the spec: out of the report's table, its row kept in the database
    write_spec(tmp_path, small_data, seeds=(1,), variants=variants[:1])
    assert main([*cli, "--set", "train.lr=0.002"]) == 0
    printed = capsys.readouterr().out
    assert "0 to run" in printed and "no_dropout" not in printed
    assert "no_dropout" not in (out / "report.md").read_text()
    assert run_rows(out).keys() == {"baseline-s1", "no_dropout-s1"}


def test_changed_partial_run_is_named_before_it_fails_in_training(small_data, tmp_path, capsys):
    """A run started (killed before it finished) with another config: named up front, not a failure later."""
    spec = write_spec(tmp_path, small_data, seeds=(1,), variants=[{"name": "baseline", "interventions": []}])
    out = tmp_path / "exp"
    from gptlab.config import save_config
    from gptlab.experiments.run.session import claim_experiment_dir

    s = load_spec(spec)
    cfg = s.resolved_config(s.variants[0], 1)  # the corpus vocabulary's size in, as training writes it
    cfg.train.lr = 0.01
    claim_experiment_dir(out, "--out")  # an experiment folder gptlab made, then killed in its first run
    (out / "runs" / "baseline-s1").mkdir(parents=True)
    save_config(cfg, out / "runs" / "baseline-s1" / "config.toml")
    with pytest.raises(
        GptlabError,
        match=r"^baseline-s1: started with another config \(train.lr 0.01 -> 0.003\); "
        r"re-run with --rerun-changed to redo it$",
    ):
        run_experiment(str(spec), out=str(out), quiet=True)
    assert not (out / "configs" / "baseline-s1.toml").exists() and not (out / "spec.toml").exists()


def test_paired_design_and_margin_carry_from_the_spec_to_every_report(small_data, tmp_path, capsys):
    """design = "paired" and equivalence_margin in the spec: the runner's report, `gptlab report` re-made from the
    folder and the leaderboard all judge by them; a design the runner does not know is one line."""
    import tomllib

    from gptlab.cli import main
    from gptlab.experiments.report.leaderboard import leaderboard

    spec = write_spec(tmp_path, small_data, seeds=(1, 2, 3), tokens=8 * 32 * 3)
    d = tomllib.loads(spec.read_text())
    spec.write_text(tomli_w.dumps(dict(d, design="paired", equivalence_margin=5.0)))
    out = tmp_path / "exp"
    assert run_experiment(str(spec), out=str(out), quiet=True).ok
    first = (out / "report.md").read_text()
    assert "p (paired t)" in first and "±5" in first.split("## Rules")[1]
    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text().split("Generated")[1].split("\n", 1)[1] == first.split("Generated")[1].split(
        "\n", 1
    )[1]  # the same report, but for its time stamp
    lb = {r["variant"]: r for r in leaderboard([str(out)])}
    verdict = next(line for line in first.splitlines() if line.startswith("| no_dropout")).split("|")
    assert lb["no_dropout"]["design"] == "paired" and f" {lb['no_dropout']['verdict']} " in verdict
    spec.write_text(tomli_w.dumps(dict(d, design="crossover")))
    with pytest.raises(GptlabError, match=r'design: expected "independent" or "paired", got \'crossover\''):
        load_spec(str(spec))


def test_independent_design_gives_every_run_its_own_seed_and_paired_shares_them(small_data, tmp_path):
    """Independent (Welch): no two runs share initialisation or data order; paired: variant seed s is the
    baseline's seed s, so the per-seed differences cancel the shared seed effect."""
    spec = load_spec(write_spec(tmp_path, small_data, seeds=(1, 2, 3)))
    used = {(v.name, s): spec.resolved_config(v, s).train.seed for v, s in spec.matrix()}
    assert len(set(used.values())) == 6
    orders = {spec.resolved_config(v, s).data_order_seed() for v, s in spec.matrix()}
    assert len(orders) == 6  # data.data_seed follows each run's seed
    assert used[("baseline", 1)] == zlib.crc32(b"baseline/1") & 0x7FFFFFFF  # stable across versions and machines
    spec.design = "paired"
    assert {(v.name, s): spec.resolved_config(v, s).train.seed for v, s in spec.matrix()} == {
        (v, s): s for v in ("baseline", "no_dropout") for s in (1, 2, 3)
    }


def test_spec_alpha_is_checked_and_kept_for_gptlab_report(small_data, tmp_path):
    from gptlab.experiments.specs.experiment import report_settings

    spec = write_spec(tmp_path, small_data)
    d = tomllib.loads(spec.read_text())
    for bad in (0, 0.5, "0.05", True):
        spec.write_text(tomli_w.dumps(dict(d, alpha=bad)))
        with pytest.raises(GptlabError, match="alpha: expected a number between 0 and 0.5"):
            load_spec(spec)
    spec.write_text(tomli_w.dumps(dict(d, alpha=0.01)))
    assert load_spec(spec).alpha == 0.01
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "spec.toml").write_text(spec.read_text())
    assert report_settings(tmp_path / "exp")["alpha"] == 0.01


def test_moving_a_changed_run_aside_takes_its_log_and_tensorboard_folder(tmp_path):
    """--rerun-changed: runs/RID, runs/RID.log and tensorboard/RID all move to RID.stale-N with one N, the first
    free for all three (here 2: the TensorBoard folder of an earlier redo holds stale-1); nothing is deleted."""
    from gptlab.experiments.run.changes import move_aside

    runs, tb = tmp_path / "runs", tmp_path / "tensorboard"
    for d in (runs / "b-s1", tb / "b-s1", tb / "b-s1.stale-1"):
        d.mkdir(parents=True)
        (d / "x").write_text(d.name)
    (runs / "b-s1.log").write_text("log")
    assert move_aside(runs, "b-s1") == runs / "b-s1.stale-2"
    assert (runs / "b-s1.stale-2" / "x").read_text() == "b-s1" and (runs / "b-s1.stale-2.log").read_text() == "log"
    assert (tb / "b-s1.stale-2" / "x").read_text() == "b-s1" and (
        tb / "b-s1.stale-1" / "x"
    ).read_text() == "b-s1.stale-1"
    assert not (runs / "b-s1").exists() and not (tb / "b-s1").exists()
    assert move_aside(runs, "b-s1") is None


def test_a_failed_run_is_reported_by_the_verb_and_exits_1(small_data, tmp_path, capsys):
    """The runner returns what happened (a failed run id, the report written); `gptlab experiment` prints the
    progress lines and the table on stdout, the failure on stderr, and exits 1."""
    from gptlab.cli import main

    spec = write_spec(tmp_path, small_data, seeds=(1, 2))
    out = tmp_path / "exp"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "no_dropout-s2").write_text("not a run folder")  # its `gptlab train` fails at once
    res = run_experiment(str(spec), out=str(out), quiet=True, force=True)
    assert res.failures == ["no_dropout-s2"] and not res.ok and res.report is not None
    assert capsys.readouterr().out == ""  # the library prints nothing
    assert res.problems() == [f"1 run(s) failed: no_dropout-s2 (logs in {out / 'runs'}); re-run to retry"]
    assert main(["experiment", str(spec), "--out", str(out), "--quiet"]) == 1
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("experiment t: 4 runs, 3 already done, 1 to run")
    assert lines[1].startswith("[1/1] no_dropout-s2") and " FAILED (exit " in lines[1]
    assert lines[-1] == f"report: {out / 'report.md'}  {out / 'report.html'}"
    assert printed.err == f"1 run(s) failed: no_dropout-s2 (logs in {out / 'runs'}); re-run to retry\n"


def test_the_matrix_is_resolved_once_per_run(small_data, tmp_path, monkeypatch):
    """The runner plans the matrix once (specs/matrix.py): a dry run of 3 variants x 2 seeds resolves 6 configs,
    and its errors still name the spec file and the variant, or --set and the variant."""
    import gptlab.config

    real, wheres = gptlab.config.resolve, []

    def counting(source, **kw):
        wheres.append(kw.get("where"))
        return real(source, **kw)

    monkeypatch.setattr(gptlab.config, "resolve", counting)
    three = [{"name": "baseline"}, {"name": "no_dropout", "interventions": ["no_dropout"]}, {"name": "qkv_bias"}]
    spec = write_spec(tmp_path, small_data, variants=three)
    plan = plan_experiment(str(spec)).summary.splitlines()
    runs = [f"{v}-s{s}" for v in ("baseline", "no_dropout", "qkv_bias") for s in (1, 2)]
    assert [line.split()[0] for line in plan[2:8]] == runs
    assert len(wheres) == 6, wheres
    with pytest.raises(GptlabError, match=r"^--set \(variant baseline\): .*train\.lr"):
        plan_experiment(str(spec), overrides=["train.lr=-1"])
    bad = [*three, {"name": "x", "interventions": ["grad_clipp"]}]
    spec = write_spec(tmp_path, small_data, variants=bad)
    for only in (None, ["no_dropout"]):  # a variant --only drops is checked all the same
        with pytest.raises(GptlabError, match=rf"^{spec}: variant x: .*unknown intervention 'grad_clipp'"):
            plan_experiment(str(spec), only=only)


def test_runs_planned_before_their_data_is_prepared_get_the_corpus_vocabulary_once_it_is(small_data, tmp_path):
    """A run of data.vocab = "corpus" planned before its data exists resolves with the full vocabulary; once the
    data is prepared, planning it again (plan_runs with it known, as every phase of the pipeline does) gives it the
    config (and hash) its `gptlab train` will record; a run already planned with the corpus vocabulary is kept."""
    import shutil

    from gptlab.experiments.specs.matrix import plan_matrix, plan_runs

    later = tmp_path / "later"
    spec = load_spec(write_spec(tmp_path, str(later)), check_configs=False)
    planned = plan_matrix(spec, {})
    assert all(p.resolved.vocab is None for p in planned)
    shutil.copytree(small_data, later)  # the runner prepares it here (Session.open_results)
    ready = plan_runs(spec, {}, planned)
    for p, q in zip(planned, ready, strict=True):
        fresh = spec.resolve(p.variant, p.seed)
        assert q.resolved.vocab is not None and q.resolved.hash == fresh.hash != p.resolved.hash
        assert q.cfg.model.vocab_size == fresh.cfg.model.vocab_size < p.cfg.model.vocab_size
    again = plan_runs(spec, {}, ready)
    assert all(a is r for a, r in zip(again, ready, strict=True))  # planned once the data was there: kept


def test_a_specs_target_reaches_the_runners_report_and_gptlab_report(small_data, tmp_path, capsys):
    """`target = { config = ... }` in the spec (relative to it) is the regime table's target both when the runner
    writes the report and when `gptlab report` rewrites it from the folder's spec.toml (which holds it absolute)."""
    spec = write_spec(tmp_path, small_data, seeds=(1,), variants=[{"name": "baseline", "interventions": []}])
    (tmp_path / "target.toml").write_text((tmp_path / "base.toml").read_text())
    spec.write_text(spec.read_text() + '\n[target]\nconfig = "target.toml"\ntokens = 1e6\n')
    out = tmp_path / "exp"
    res = run_experiment(str(spec), out=str(out), quiet=True)
    line = f"Target: `{tmp_path / 'target.toml'}`, "
    assert res.ok and any(x.startswith(line) for x in res.report["regime"]["lines"])
    assert str(tmp_path / "target.toml") in (out / "spec.toml").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert line in (out / "report.md").read_text() and "gpt2-small-baseline" not in (out / "report.md").read_text()
