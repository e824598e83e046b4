"""Preemption: SIGTERM or SIGUSR1 (SLURM's --signal, a spot reclaim) makes a run finish its step, checkpoint,
leave preempted.json and exit 75; --resume then ends with the same weights as a run never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from gptlab.config import load_config
from gptlab.train import latest_checkpoint, train
from gptlab.train.signals import EXIT_PREEMPTED, MARKER

STEPS = 120


def _over(data):
    # a checkpoint only at the end (and at the preemption): the resume can only come from the preemption's
    return tiny_overrides(
        data, **{"train.tokens": 8 * 32 * STEPS, "train.checkpoint_interval": 0, "train.eval_interval": 0}
    )


def _cmd(run_dir, over, nproc=1):
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    )
    args = [*launcher, "-m", "gptlab", "train", "--run-dir", str(run_dir), "--quiet"]
    for o in over:
        args += ["--set", o]
    return args


def _wait_for_step(run_dir: Path, proc, step: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        rows = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        if any(json.loads(r).get("step", 0) >= step and "train_loss" in r for r in rows):
            return
        time.sleep(0.005)
    raise AssertionError(f"run never reached step {step} while running (exit {proc.poll()})")


def _weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_exits_75_and_resume_is_bit_identical(sig, small_data, tmp_path):
    over = _over(small_data)
    ref = train(load_config(None, over), tmp_path / "ref")
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run, over), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run, proc, 3)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    marker = json.loads((run / MARKER).read_text())
    assert marker["preempted"] == sig.name and 3 <= marker["stopped_at"] < STEPS
    assert latest_checkpoint(run).name == f"step_{marker['stopped_at']:07d}"
    assert "preempted (" in err and "continue with --resume" in err
    r = subprocess.run(_cmd(run, over) + ["--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (run / MARKER).exists()
    final = json.loads((run / "final.json").read_text())
    assert final["test_loss"] == ref["test_loss"] and _same(_weights(run), _weights(tmp_path / "ref"))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert steps == list(range(1, STEPS + 1))  # every step logged once across the two processes


def test_one_rank_signalled_under_torchrun_stops_every_rank_at_the_same_step(small_data, tmp_path):
    """SIGUSR1 to one of two gloo workers: both ranks agree to stop, the checkpoint is whole, the resumed
    2-process run ends with the weights of an uninterrupted 2-process run."""
    over = _over(small_data) + ["model.drop_rate=0.0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(_cmd(tmp_path / "ref", over, nproc=2), capture_output=True, text=True, timeout=300, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(run, over, nproc=2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    _wait_for_step(run, proc, 3)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGUSR1)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0, err[-2000:]  # torchrun reports a worker that did not exit 0
    marker = json.loads((run / MARKER).read_text())
    assert marker["stopped_at"] < STEPS and latest_checkpoint(run).name == f"step_{marker['stopped_at']:07d}"
    r = subprocess.run(_cmd(run, over, nproc=2) + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _same(_weights(run), _weights(tmp_path / "ref"))
