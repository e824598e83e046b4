"""train.loggers: TensorBoard, W&B (offline) and Trackio (local) get exactly what metrics.jsonl has, read back with
each tool's own reader; experiments group their runs; a resume duplicates no step; bad names and missing packages
are one-line errors; `gptlab experiment --status` shows progress. Nothing here touches the network or ~. A test skips,
naming the package, only when a logger package it uses is not installed; those that need none always run."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.config import load_config, parse_overrides
from gptlab.experiments.run.runner import run_experiment
from gptlab.experiments.run.status import experiment_status, format_status
from gptlab.io import read_jsonl
from gptlab.train import train

ALL = "tensorboard,wandb,trackio"


def need(*packages: str) -> None:
    """Skip the calling test, naming the package, unless every logger package it needs is installed."""
    for name in packages:
        pytest.importorskip(name, reason=f"{name} is not installed (pip install 'gptlab[{name}]')")


def offline_env(tmp_path: Path) -> dict:
    """W&B offline and Trackio local, every file of theirs under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        TRACKIO_DIR=str(tmp_path / "trackio"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")]),
    )
    return env


def gptlab_train(tmp_path, data, run_dir, *extra, resume=False, stop_after=None, **over):
    args = [sys.executable, "-m", "gptlab", "train", "--run-dir", str(run_dir), "--quiet"]
    for o in tiny_overrides(data, **over):
        args += ["--set", o]
    args += list(extra) + (["--resume"] if resume else []) + (["--stop-after", str(stop_after)] if stop_after else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=offline_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def jsonl_values(run_dir: Path) -> dict[tuple[int, str], float]:
    """{(step, key): value} of every number metrics.jsonl holds but the step and tokens (step x tokens per step)."""
    out = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        for k, v in r.items():
            if k not in ("step", "tokens") and isinstance(v, (int, float)) and not isinstance(v, bool):
                assert (r["step"], k) not in out, (r["step"], k)
                out[(r["step"], k)] = float(v)
    return out


def tensorboard_values(logdir: Path) -> dict[tuple[int, str], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    out = {}
    for tag in ea.Tags()["scalars"]:
        for e in ea.Scalars(tag):
            assert (e.step, tag) not in out, f"step {e.step} of {tag} twice"
            out[(e.step, tag)] = e.value
    return out


def tensorboard_text(logdir: Path, tag: str) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    ea.Reload()
    (event,) = ea.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def wandb_records(run_dir: Path, tmp_path: Path) -> list[list[dict]]:
    """Each offline W&B run under run_dir/wandb (oldest first): its records, as `wandb leet inspect --json`
    (W&B's reader of its transaction log) prints them."""
    out = []
    for d in sorted((run_dir / "wandb").glob("offline-run-*")):
        (f,) = d.glob("run-*.wandb")
        r = subprocess.run(
            [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(f)],
            capture_output=True,
            text=True,
            timeout=120,
            env=offline_env(tmp_path),
        )
        assert r.returncode == 0, r.stderr
        out.append([json.loads(line) for line in r.stdout.splitlines() if line.strip()])
    return out


def wandb_values(records: list[dict]) -> dict[tuple[int, str], float]:
    out = {}
    for rec in records:
        if rec["type"] == "history":
            h = rec["history"]
            for k, v in h["item"].items():
                if not k.startswith("_"):
                    assert (int(h["step"]["num"]), k) not in out
                    out[(int(h["step"]["num"]), k)] = float(v)
    return out


def wandb_run(records: list[dict]) -> dict:
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    return run


def trackio_read(tmp_path: Path, project: str, what: str) -> object:
    """Trackio's own reader of its local database (in a process whose TRACKIO_DIR is tmp_path/trackio)."""
    code = f"import json; from trackio.sqlite_storage import SQLiteStorage as S; print(json.dumps({what}))"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=offline_env(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def trackio_values(logs: list[dict]) -> dict[tuple[int, str], float]:
    out = {}
    for row in logs:
        for k, v in row.items():
            if k not in ("step", "timestamp"):
                assert (row["step"], k) not in out, f"step {row['step']} of {k} twice"
                out[(row["step"], k)] = float(v)
    return out


def test_every_logger_gets_what_metrics_jsonl_has(small_data, tmp_path):
    need("tensorboard", "wandb", "trackio")
    run = tmp_path / "run"
    gptlab_train(tmp_path, small_data, run, **{"train.loggers": ALL, "train.optimizer": "muon"})
    want = jsonl_values(run)
    assert {k for _, k in want} >= {"train_loss", "val_loss", "lr", "lr_muon", "grad_norm", "tokens_per_s"}
    assert want[(12, "lr_muon")] != want[(12, "lr")]  # both optimizers' lr, each its own
    # TensorBoard (float32 scalars) under RUN_DIR/tensorboard, with the resolved config as text
    tb = tensorboard_values(run / "tensorboard")
    assert tb.keys() == want.keys()
    assert all(tb[k] == np.float32(v) for k, v in want.items())
    config_toml = (run / "config.toml").read_text()
    assert config_toml in tensorboard_text(run / "tensorboard", "config")
    # W&B, offline under RUN_DIR/wandb: the same numbers at the same steps, the resolved config, no group
    (records,) = wandb_records(run, tmp_path)
    assert wandb_values(records) == want
    meta = wandb_run(records)
    cfg = load_config(run / "config.toml")
    assert meta["display_name"] == "run" and meta["project"] == "gptlab" and not meta.get("run_group")
    assert {k: v for k, v in meta["config"]["update"].items() if k != "_wandb"} == cfg.to_dict()
    # Trackio, local: the same
    assert trackio_values(trackio_read(tmp_path, "gptlab", "S.get_logs('gptlab', 'run')")) == want
    tcfg = trackio_read(tmp_path, "gptlab", "S.get_run_config('gptlab', 'run')")
    assert {k: v for k, v in tcfg.items() if not k.startswith("_")} == cfg.to_dict()


def test_resume_duplicates_no_step(small_data, tmp_path):
    """Stopped at step 6 with checkpoints at 4 and 6, the one at 6 lost: the resume continues from 4 and logs 5 and
    6 again. TensorBoard shows the resumed values once (purge_step); W&B and Trackio keep the first values."""
    need("tensorboard", "wandb", "trackio")
    run = tmp_path / "run"
    over = {"train.loggers": ALL, "train.keep_checkpoints": 0}
    gptlab_train(tmp_path, small_data, run, stop_after=6, **over)
    first = jsonl_values(run)
    assert max(s for s, _ in first) == 6
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    r = gptlab_train(tmp_path, small_data, run, resume=True, **over)
    assert "resuming from" in r.stderr and "step_0000004" in r.stderr
    want = jsonl_values(run)
    assert sorted({s for s, k in want if k == "train_loss"}) == list(range(1, 13))
    assert want[(6, "tokens_per_s")] != first[(6, "tokens_per_s")]  # step 6 was trained (and logged) again
    tb = tensorboard_values(run / "tensorboard")  # would hold the first step 5 and 6 events too without purging
    assert tb.keys() == want.keys() and all(tb[k] == np.float32(v) for k, v in want.items())
    # W&B: two offline runs of one id, the second from step 7; Trackio: one run, each step once
    runs = wandb_records(run, tmp_path)
    assert len(runs) == 2 and wandb_run(runs[0])["run_id"] == wandb_run(runs[1])["run_id"]
    a, b = wandb_values(runs[0]), wandb_values(runs[1])
    assert max(s for s, _ in a) == 6 and min(s for s, _ in b) == 7
    tr = trackio_values(trackio_read(tmp_path, "gptlab", "S.get_logs('gptlab', 'run')"))
    for got in ({**a, **b}, tr):
        assert got.keys() == want.keys()
        assert got == {k: (first if k[0] <= 6 else want)[k] for k in want}
        # a resume that continues bit for bit: the losses of steps 5 and 6 are the same either way
        assert all(got[k] == want[k] for k in want if k[1] in ("train_loss", "val_loss", "lr", "grad_norm"))
    assert len(trackio_read(tmp_path, "gptlab", "S.get_runs('gptlab')")) == 1


def write_spec(tmp_path, data, loggers, seeds=(1, 2)):
    base = parse_overrides(tiny_overrides(data, **{"train.tokens": 8 * 32 * 6, "train.checkpoint_interval": 2}))
    base["train"]["loggers"] = loggers
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    spec = {
        "name": "grp",
        "base": "base.toml",
        "seeds": list(seeds),
        "baseline": "baseline",
        "variants": [{"name": "baseline", "interventions": []}],
    }
    p = tmp_path / "exp.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


def test_experiment_groups_its_runs(small_data, tmp_path, monkeypatch, caplog):
    need("tensorboard", "wandb", "trackio")
    for k, v in offline_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    spec = write_spec(tmp_path, small_data, ["tensorboard", "wandb", "trackio"])
    out = tmp_path / "exp"
    assert run_experiment(str(spec), out=str(out), quiet=True).ok
    ids = ["baseline-s1", "baseline-s2"]
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ids  # one curve per run
    for rid in ids:
        run = out / "runs" / rid
        assert not (run / "tensorboard").exists()
        want = jsonl_values(run)
        tb = tensorboard_values(out / "tensorboard" / rid)
        assert tb.keys() == want.keys() and all(tb[k] == np.float32(v) for k, v in want.items())
        (records,) = wandb_records(run, tmp_path)
        meta = wandb_run(records)
        assert (meta["run_group"], meta["display_name"], meta["project"]) == ("grp", rid, "gptlab")
        assert wandb_values(records) == want
        assert trackio_values(trackio_read(tmp_path, "grp", f"S.get_logs('grp', '{rid}')")) == want
    assert sorted(trackio_read(tmp_path, "grp", "S.get_runs('grp')")) == ids
    # --status: every run done at its last step, with its latest losses and the tensorboard command
    rows = experiment_status(str(spec), out=str(out))
    for r in rows:
        last = read_jsonl(out / "runs" / r["run_id"] / "metrics.jsonl")
        assert (r["state"], r["step"], r["total_steps"]) == ("done", 6, 6)
        assert r["val_loss"] == [x for x in last if "val_loss" in x][-1]["val_loss"]
    assert f"curves: tensorboard --logdir {out / 'tensorboard'}" in format_status(rows)
    # the loggers are not part of what a run is: the finished runs stand when they change
    caplog.set_level(logging.INFO, logger="gptlab")
    assert run_experiment(str(spec), out=str(out), quiet=True, overrides=["train.loggers=jsonl"]).ok
    assert "0 to run" in caplog.text


def test_status_shows_progress_of_a_partial_run(small_data, tmp_path):
    need("tensorboard")
    spec = write_spec(tmp_path, small_data, ["tensorboard"], seeds=(1, 2))
    out = tmp_path / "exp"
    rows = experiment_status(str(spec), out=str(out))
    assert [(r["step"], r["tensorboard"]) for r in rows] == [(None, None)] * 2
    # baseline-s1 started by the runner's config and stopped at step 4 of 6; baseline-s2 not started
    from gptlab.experiments.run.matrix import write_job
    from gptlab.experiments.specs.experiment import load_spec
    from gptlab.experiments.specs.matrix import plan_matrix

    s = load_spec(spec)
    (out / "runs").mkdir(parents=True)
    (out / "configs").mkdir()
    job = write_job(plan_matrix(s, {})[0], out)
    train(load_config(job.config), job.run_dir, stop_after=3)
    with open(job.run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "tokens": 1024, "train_lo')  # a row being written
    rows = experiment_status(str(spec), out=str(out))
    last = read_jsonl(job.run_dir / "metrics.jsonl")
    assert rows[0]["state"] == "failed" and rows[1]["state"] == "pending"
    assert (rows[0]["step"], rows[0]["total_steps"]) == (3, 6)
    assert rows[0]["train_loss"] == last[-1]["train_loss"] and rows[0]["val_loss"] == last[0]["val_loss"]
    assert rows[1]["step"] is None and rows[0]["tensorboard"] == str(out / "tensorboard")
    text = format_status(rows)
    assert f"3/6 train {last[-1]['train_loss']:.4f} val {last[0]['val_loss']:.4f}" in text
    assert f"curves: tensorboard --logdir {out / 'tensorboard'}" in text
    # while a training process works on it: running, with the same progress
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "gptlab",
            "train",
            "--config",
            str(job.config),
            "--run-dir",
            str(job.run_dir),
        ]
    )
    try:
        deadline = time.time() + 20
        while experiment_status(str(spec), out=str(out))[0]["state"] != "running" and time.time() < deadline:
            time.sleep(0.2)
        row = experiment_status(str(spec), out=str(out))[0]
        assert (row["state"], row["step"]) == ("running", 3)
    finally:
        p.kill()
        p.wait()


def test_unknown_logger_is_a_one_line_error_naming_the_choices(capsys):
    with pytest.raises(
        GptlabError,
        match=r"train\.loggers: expected a list of jsonl, tensorboard, wandb or "
        r"trackio, got 'tensorbord'",
    ):
        load_config(None, ["train.loggers=jsonl,tensorbord"])
    from gptlab.cli import main

    try:
        rc = main(["config", "--set", 'train.loggers=["mlflow"]'])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        "gptlab: error: <defaults>: train.loggers: expected a list of jsonl, tensorboard, "
        "wandb or trackio, got 'mlflow'"
    ]


def test_loggers_are_outside_the_config_hash(tmp_path):
    from gptlab.config import save_config
    from gptlab.train.rundir import prepare_run_dir

    a = load_config(None)
    b = load_config(None, ["train.loggers=tensorboard,wandb", "train.log_project=other"])
    assert a.train.loggers == ["jsonl"] and b.train.loggers == ["tensorboard", "wandb"]
    assert a.hash() == b.hash() != load_config(None, ["train.lr=1e-3"]).hash()
    # a resume with loggers switched on: the saved config, with the loggers asked for now
    save_config(a, tmp_path / "config.toml")
    resumed = prepare_run_dir(b, tmp_path, resume=True)
    assert (resumed.train.loggers, resumed.train.log_project) == (["tensorboard", "wandb"], "other")
    with pytest.raises(GptlabError, match="another config"):
        prepare_run_dir(load_config(None, ["train.lr=1e-3"]), tmp_path, resume=True)


def _train_in_a_subprocess(tmp_path: Path, data: str, before: str, names: list[tuple[str, str]]) -> tuple[dict, str]:
    """({run name: exit status}, stderr) of `gptlab train` with train.loggers=LOGGER for each (run name, LOGGER), in
    one process that first runs `before`."""
    over = [a for o in tiny_overrides(data) for a in ("--set", o)]
    code = (
        "import os, sys, json\n"
        "from gptlab.cli import main\n"
        "def train(name, logger):\n"
        "    try:\n"
        f"        return main(['train', '--run-dir', sys.argv[1] + '/' + name, '--quiet', *{over!r},\n"
        "                     '--set', 'train.loggers=' + logger])\n"
        "    except SystemExit as e:\n"
        "        return e.code\n"
        f"{before}\n"
        f"print(json.dumps({{name: train(name, logger) for name, logger in {names!r}}}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=offline_env(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_missing_package_is_a_one_line_error_before_training(small_data, tmp_path):
    """With the package's import failing for real (sys.modules[name] = None: whether or not it is installed),
    `gptlab train` stops before step 1."""
    names = ("tensorboard", "wandb", "trackio")
    got, stderr = _train_in_a_subprocess(
        tmp_path, small_data, f"for n in {names!r}:\n    sys.modules[n] = None", [(n, n) for n in names]
    )
    assert got == {n: 2 for n in names}, stderr
    errors = [x for x in stderr.splitlines() if "error:" in x]
    assert errors == [
        f"gptlab: error: train.loggers: {n} needs the {n} package, which is not installed: pip install 'gptlab[{n}]'"
        for n in names
    ], stderr
    assert "Traceback" not in stderr
    for n in names:
        assert not (tmp_path / n / "config.toml").exists()
        assert not (tmp_path / n / "metrics.jsonl").exists() and not (tmp_path / n / "checkpoints").exists()


def test_wandb_without_login_is_a_one_line_error_before_training(small_data, tmp_path):
    """W&B online without an API key (HOME and W&B's folders in tmp_path, no WANDB_MODE) stops before step 1."""
    need("wandb")
    got, stderr = _train_in_a_subprocess(
        tmp_path, small_data, "os.environ.pop('WANDB_MODE')\nos.environ['HOME'] = sys.argv[1]", [("online", "wandb")]
    )
    assert got == {"online": 2}, stderr
    (error,) = [x for x in stderr.splitlines() if "error:" in x]
    assert error.startswith("gptlab: error: train.loggers: wandb could not start the run (") and error.endswith(
        "log in with `wandb login`, or set WANDB_MODE=offline and upload later with `wandb sync`"
    )
    assert "Traceback" not in stderr
    assert not (tmp_path / "online" / "metrics.jsonl").exists() and not (tmp_path / "online" / "checkpoints").exists()
