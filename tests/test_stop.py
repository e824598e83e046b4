"""Stops reach every process: SIGTERM/SIGUSR1 or SIGINT to `gptlab experiment` (or `ladder`, `sweep`) is passed on
to its training children, which checkpoint; the runner exits 75 (130 after SIGINT) leaving no process behind, and a
re-run ends with the weights of a run never stopped. A killed runner's children get SIGTERM from the kernel. One
runner per experiment folder. Real subprocesses throughout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from conftest import tiny_overrides
from safetensors.torch import load_file

from gptlab.config import load_config, parse_overrides
from gptlab.train import latest_checkpoint, train
from gptlab.train.signals import EXIT_PREEMPTED, MARKER

pytest_plugins = ["conftest_slurm"]  # the slurm_cluster fixture (a real one-node cluster), for the SLURM stop

STEPS = 100  # long enough that a signal arrives mid-run on a loaded machine too; a step takes milliseconds idle


def _spec(tmp_path, data, variants=("baseline", "no_dropout"), ladder=None) -> Path:
    over = {"train.tokens": 8 * 32 * STEPS, "train.checkpoint_interval": 0, "train.eval_interval": 0}
    base = parse_overrides(tiny_overrides(data, **over))  # a checkpoint only at the end and at a stop
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    spec = {
        "name": "t",
        "base": "base.toml",
        "seeds": [1],
        "baseline": "baseline",
        "variants": [{"name": v, "interventions": [] if v == "baseline" else [v]} for v in variants],
    }
    if ladder:
        spec["ladder"] = ladder
    p = tmp_path / "exp.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


def _start(*args, verb="experiment", log=None):
    return subprocess.Popen(
        [sys.executable, "-m", "gptlab", verb, *map(str, args), "--quiet"],
        stdout=log or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _trained_a_step(run_dir: Path, proc) -> None:
    """Wait until the run has logged a training step (the runner still running)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        m = run_dir / "metrics.jsonl"
        if m.exists() and any("train_loss" in r for r in m.read_text().splitlines()):
            return
        time.sleep(0.005)
    raise AssertionError(
        f"{run_dir.name} logged no step while the runner ran (exit {proc.poll()}): "
        f"{proc.stdout.read() if proc.stdout else ''}"
    )


def _procs_on(path: Path) -> list[int]:
    """Processes (from /proc) whose command line names `path`: a trainer of a run in that folder."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if str(path).encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _children(pid: int) -> list[int]:
    return [int(x) for x in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def _same(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_reaches_the_run_which_checkpoints_and_a_rerun_ends_bit_identical(small_data, tmp_path):
    spec, out = _spec(tmp_path, small_data), tmp_path / "exp"
    runner = _start(spec, "--out", out)
    _trained_a_step(out / "runs" / "baseline-s1", runner)
    runner.send_signal(signal.SIGTERM)
    printed = runner.communicate(timeout=300)[0]
    assert runner.returncode == EXIT_PREEMPTED, printed[-3000:]
    assert _procs_on(out) == []  # no trainer outlives the runner
    marker = json.loads((out / "runs" / "baseline-s1" / MARKER).read_text())
    assert marker["preempted"] == "SIGTERM" and 1 <= marker["stopped_at"] < STEPS
    assert f"stopped (SIGTERM): checkpoint at step {marker['stopped_at']}" in printed
    assert "stopped by SIGTERM" in printed.splitlines()[-1]
    assert not (out / "runs" / "no_dropout-s1").exists()  # nothing new starts once stopped
    r = subprocess.run(
        [sys.executable, "-m", "gptlab", "experiment", str(spec), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2 to run" in r.stdout
    ref = tmp_path / "ref"
    train(load_config(str(out / "configs" / "baseline-s1.toml")), ref)
    assert _same(_weights(out / "runs" / "baseline-s1"), _weights(ref))
    log = (out / "runs" / "baseline-s1.log").read_text()
    assert "preempted (SIGTERM)" in log  # the first trainer's own line, before the resumed one's


def test_sigint_stops_with_130_and_the_run_checkpoints(small_data, tmp_path):
    """Ctrl-C: the runner passes SIGTERM on (a trainer's SIGINT would lose its progress), exits 130."""
    spec, out = _spec(tmp_path, small_data, variants=("baseline",)), tmp_path / "exp"
    runner = _start(spec, "--out", out)
    _trained_a_step(out / "runs" / "baseline-s1", runner)
    runner.send_signal(signal.SIGINT)
    printed = runner.communicate(timeout=300)[0]
    assert runner.returncode == 130, printed[-3000:]
    assert _procs_on(out) == []
    assert json.loads((out / "runs" / "baseline-s1" / MARKER).read_text())["preempted"] == "SIGTERM"
    assert "stopped by SIGINT" in printed


def test_second_runner_on_a_folder_is_one_line_and_status_still_reads_it(small_data, tmp_path):
    spec, out = _spec(tmp_path, small_data, variants=("baseline",)), tmp_path / "exp"
    first = _start(spec, "--out", out)
    _trained_a_step(out / "runs" / "baseline-s1", first)
    second = subprocess.run(
        [sys.executable, "-m", "gptlab", "experiment", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"gptlab: error: {out}: experiment folder is in use by another runner "
        f"(pid {first.pid}); `--status` shows its progress"
    )
    status = subprocess.run(
        [sys.executable, "-m", "gptlab", "experiment", str(spec), "--out", str(out), "--status"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0 and "baseline-s1" in status.stdout, status.stderr
    assert not (out / "runs" / "baseline-s1" / "final.json").exists()  # the first runner's run untouched
    first.send_signal(signal.SIGUSR1)
    printed = first.communicate(timeout=300)[0]
    assert first.returncode == EXIT_PREEMPTED, printed[-3000:]
    assert json.loads((out / "runs" / "baseline-s1" / MARKER).read_text())["preempted"] == "SIGUSR1"
    assert _procs_on(out) == []


def test_killed_runner_leaves_no_trainer_and_the_next_runner_waits_for_its_checkpoint(small_data, tmp_path):
    """SIGKILL of the runner: its trainer gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and checkpoints; until
    it has exited it keeps the folder locked, and a new runner waits for it instead of failing the run."""
    spec, out = _spec(tmp_path, small_data, variants=("baseline",)), tmp_path / "exp"
    run_dir = out / "runs" / "baseline-s1"
    runner = _start(spec, "--out", out)
    _trained_a_step(run_dir, runner)
    (child,) = _children(runner.pid)
    os.kill(child, signal.SIGSTOP)  # hold it still: the kernel's SIGTERM waits until it continues
    runner.kill()
    runner.communicate(timeout=60)
    with open(tmp_path / "next.log", "w") as log:
        nxt = _start(spec, "--out", out, log=log)
        deadline = time.time() + 300
        while "waiting for the runs of a stopped runner" not in (tmp_path / "next.log").read_text():
            assert time.time() < deadline and nxt.poll() is None, (tmp_path / "next.log").read_text()
            time.sleep(0.05)
        assert child in _procs_on(out)  # stopped, not gone: the folder stays locked
        os.kill(child, signal.SIGCONT)
        assert nxt.wait(timeout=900) == 0, (tmp_path / "next.log").read_text()[-3000:]
    text = (tmp_path / "next.log").read_text()
    assert f"(pid {runner.pid})" in text and "1 to run" in text
    assert "preempted (SIGTERM)" in (out / "runs" / "baseline-s1.log").read_text()  # the killed runner's trainer
    assert (run_dir / "final.json").exists() and _procs_on(out) == []


def _pending(pid: int, sig: int) -> bool:
    """`sig` is pending for process `pid` (sent to it or to its process group, not yet handled: a stopped process)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(m & (1 << (sig - 1)) for m in masks)


def test_a_second_stop_signal_kills_a_run_that_does_not_end(small_data, tmp_path):
    """A trainer that does not end on the runner's stop (here held with SIGSTOP, as a hung one would be): the runner
    waits for it; a second SIGTERM kills it (SIGKILL to its process group), and the runner exits 75 with nothing
    left running. Without the second signal's kill the runner waited for ever."""
    spec, out = _spec(tmp_path, small_data, variants=("baseline",)), tmp_path / "exp"
    run_dir = out / "runs" / "baseline-s1"
    runner = _start(spec, "--out", out)
    try:
        _trained_a_step(run_dir, runner)
        (child,) = _children(runner.pid)
        os.kill(child, signal.SIGSTOP)
        runner.send_signal(signal.SIGTERM)
        deadline = time.time() + 120
        while not _pending(child, signal.SIGTERM):  # the runner has passed the stop on; the trainer cannot act on it
            assert time.time() < deadline and runner.poll() is None, "the runner did not pass SIGTERM on"
            time.sleep(0.01)
        time.sleep(0.5)
        assert runner.poll() is None and child in _procs_on(out)  # it waits for the run
        runner.send_signal(signal.SIGTERM)
        printed = runner.communicate(timeout=120)[0]
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in _procs_on(out):
            os.kill(pid, signal.SIGKILL)
    assert runner.returncode == EXIT_PREEMPTED, printed[-3000:]
    assert "second stop signal: killing the 1 run(s) in flight (SIGKILL)" in printed
    assert "stopped (SIGTERM): exit -9 before a checkpoint of its own" in printed
    assert _procs_on(out) == [] and not (run_dir / MARKER).exists()


def test_sigterm_to_a_ladder_stops_its_rung_and_starts_no_other(small_data, tmp_path):
    ladder = {
        "rungs": [{"n_layers": 1, "emb_dim": 16, "n_heads": 2}, {"n_layers": 1, "emb_dim": 32, "n_heads": 2}],
        "tokens": [8 * 32 * STEPS, 8 * 32 * STEPS],
        "target": {"config": "target.toml"},
    }
    (tmp_path / "target.toml").write_text(
        tomli_w.dumps({"model": {"preset": "gpt2-small"}, "train": {"tokens": 1_000_000_000}})
    )
    spec, out = _spec(tmp_path, small_data, variants=("baseline",), ladder=ladder), tmp_path / "lad"
    runner = _start(spec, "--out", out, verb="ladder")
    deadline = time.time() + 300
    while not list(out.glob("*/runs/baseline-s1")):
        assert time.time() < deadline and runner.poll() is None, runner.stdout.read()
        time.sleep(0.01)
    (rung_run,) = out.glob("*/runs/baseline-s1")
    _trained_a_step(rung_run, runner)
    runner.send_signal(signal.SIGTERM)
    printed = runner.communicate(timeout=300)[0]
    assert runner.returncode == EXIT_PREEMPTED, printed[-3000:]
    assert _procs_on(out) == []
    assert (rung_run / MARKER).exists()
    assert [p.parent.parent.name for p in out.glob("*/runs/baseline-s1")] == [rung_run.parent.parent.name]


def test_sigusr1_reaches_every_worker_of_a_torchrun_run(small_data, tmp_path):
    """A run of 2 gloo processes under torchrun: torchrun relays the runner's SIGUSR1 to its workers (which run in
    sessions of their own) instead of dying of it; both ranks stop at one step, nothing survives."""
    spec, out = _spec(tmp_path, small_data, variants=("baseline",)), tmp_path / "exp"
    runner = _start(spec, "--out", out, "--procs-per-run", 2)
    _trained_a_step(out / "runs" / "baseline-s1", runner)
    runner.send_signal(signal.SIGUSR1)
    printed = runner.communicate(timeout=300)[0]
    assert runner.returncode == EXIT_PREEMPTED, printed[-3000:]
    assert _procs_on(out) == []
    marker = json.loads((out / "runs" / "baseline-s1" / MARKER).read_text())
    assert (
        marker["preempted"] == "SIGUSR1"
        and latest_checkpoint(out / "runs" / "baseline-s1").name == f"step_{marker['stopped_at']:07d}"
    )


def test_sigterm_to_a_slurm_runner_cancels_its_job_which_checkpoints(small_data, slurm_cluster, tmp_path):
    """--backend slurm on a real one-node cluster (conftest_slurm): the runner's stop scancels its job, whose
    trainer gets SLURM's SIGTERM and checkpoints; the runner waits until SLURM has ended the job, exits 75."""
    pytest.importorskip("submitit")
    from gptlab.experiments.run.scheduler.slurm import load_jobs, squeue_states

    spec, out = _spec(tmp_path, small_data, variants=("baseline",)), tmp_path / "exp"
    runner = _start(spec, "--out", out, "--backend", "slurm", "--partition", slurm_cluster or "", "--time", 10)
    _trained_a_step(out / "runs" / "baseline-s1", runner)
    runner.send_signal(signal.SIGTERM)
    printed = runner.communicate(timeout=300)[0]
    assert runner.returncode == EXIT_PREEMPTED, printed[-3000:]
    job_id = load_jobs(out)["baseline-s1"]["job_id"]
    assert squeue_states().get(job_id) in (None, "CANCELLED")  # SLURM has ended it: nothing left running
    assert json.loads((out / "runs" / "baseline-s1" / MARKER).read_text())["preempted"] == "SIGTERM"
    assert _procs_on(out / "runs") == []
