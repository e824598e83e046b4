"""The SLURM backend against a real one-node cluster (slurmctld, slurmd, munged; real sbatch/squeue), and --status."""

import importlib.util
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.config import parse_overrides
from gptlab.experiments.run.runner import run_experiment
from gptlab.experiments.run.scheduler.base import RunJob
from gptlab.experiments.run.scheduler.slurm import _TrainTask, load_jobs
from gptlab.experiments.run.status import experiment_status, format_status

pytest.importorskip("submitit")
pytest_plugins = ["conftest_slurm"]  # the slurm_cluster fixture


def write_spec(tmp_path, data, seeds=(1, 2), tokens=8 * 32 * 6, variants=None, **extra):
    base = parse_overrides(tiny_overrides(data, **{"train.tokens": tokens, "train.checkpoint_interval": 2, **extra}))
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    spec = {
        "name": "t",
        "base": "base.toml",
        "seeds": list(seeds),
        "baseline": "baseline",
        "variants": variants
        or [{"name": "baseline", "interventions": []}, {"name": "no_dropout", "interventions": ["no_dropout"]}],
    }
    p = tmp_path / "exp.toml"
    p.write_text(tomli_w.dumps(spec))
    return p


def losses(exp_dir):
    with sqlite3.connect(exp_dir / "results.sqlite") as c:
        return dict(c.execute("select run_id, test_loss from runs order by run_id").fetchall())


def slurm_options(partition, **kw):
    return {"partition": partition, "procs_per_node": 1, "time_min": 10, "poll_s": 0.5, **kw}


def test_matrix_on_slurm_lands_in_sqlite_with_the_local_losses(small_data, slurm_cluster, tmp_path, capsys, caplog):
    spec = write_spec(tmp_path, small_data)
    t0 = time.time()
    # 2 at a time = one thread each, as in the SLURM jobs (one core each): same arithmetic, same bits
    assert run_experiment(str(spec), out=str(tmp_path / "local"), quiet=True, parallel=2).ok
    t_local = time.time() - t0
    t0 = time.time()
    assert run_experiment(
        str(spec),
        out=str(tmp_path / "slurm"),
        quiet=True,
        backend="slurm",
        backend_options=slurm_options(slurm_cluster),
    ).ok
    t_slurm = time.time() - t0
    with capsys.disabled():
        print(f"\n2x2 matrix: local backend (2 at a time) {t_local:.1f}s, SLURM backend {t_slurm:.1f}s")
    local, slurm = losses(tmp_path / "local"), losses(tmp_path / "slurm")
    assert list(slurm) == ["baseline-s1", "baseline-s2", "no_dropout-s1", "no_dropout-s2"]
    assert slurm == local  # bit-identical test losses
    jobs = load_jobs(tmp_path / "slurm")
    assert sorted(jobs) == list(slurm) and len({j["job_id"] for j in jobs.values()}) == 4
    log = (tmp_path / "slurm/runs/baseline-s1.log").read_text()
    assert f"[slurm job {jobs['baseline-s1']['job_id']}" in log and "exit 0" in log
    # --status: every run done, with its job id and the last line of its log
    rows = experiment_status(str(spec), out=str(tmp_path / "slurm"))
    assert [r["state"] for r in rows] == ["done"] * 4
    assert [r["job_id"] for r in rows] == [jobs[r["run_id"]]["job_id"] for r in rows]
    assert all("exit 0" in r["log"] for r in rows)
    r = subprocess.run(
        [sys.executable, "-m", "gptlab", "experiment", str(spec), "--out", str(tmp_path / "slurm"), "--status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "4 done" in r.stdout and jobs["no_dropout-s2"]["job_id"] in r.stdout, r.stdout
    # a re-run submits nothing
    caplog.set_level(logging.INFO, logger="gptlab")
    assert run_experiment(
        str(spec),
        out=str(tmp_path / "slurm"),
        quiet=True,
        backend="slurm",
        backend_options=slurm_options(slurm_cluster),
    ).ok
    assert "0 to run" in caplog.text and load_jobs(tmp_path / "slurm") == jobs


def test_sbatch_refusal_is_one_line_naming_the_option(small_data, slurm_cluster, tmp_path):
    spec = write_spec(tmp_path, small_data, seeds=(1,))
    with pytest.raises(GptlabError, match=r"sbatch refused the job for baseline-s1: .*partition") as e:
        run_experiment(
            str(spec),
            out=str(tmp_path / "x"),
            quiet=True,
            backend="slurm",
            backend_options=slurm_options("no-such-partition"),
        )
    assert "\n" not in str(e.value)
    with pytest.raises(GptlabError, match=r"--nodes-per-run: expected an integer >= 1, got 0"):
        run_experiment(
            str(spec),
            out=str(tmp_path / "x"),
            quiet=True,
            backend="slurm",
            backend_options=slurm_options(slurm_cluster, nodes_per_run=0),
        )


def test_status_of_local_runs(small_data, tmp_path):
    spec = write_spec(tmp_path, small_data, seeds=(1,))
    out = tmp_path / "exp"
    rows = experiment_status(str(spec), out=str(out))
    assert [(r["run_id"], r["state"], r["job_id"]) for r in rows] == [
        ("baseline-s1", "pending", None),
        ("no_dropout-s1", "pending", None),
    ]
    assert run_experiment(str(spec), out=str(out), quiet=True, only=["baseline"]).ok
    (out / "runs/no_dropout-s1.log").write_text("Traceback ...\nRuntimeError: out of memory\n")  # started, died
    rows = experiment_status(str(spec), out=str(out))
    assert [r["state"] for r in rows] == ["done", "failed"]
    assert rows[1]["log"] == "RuntimeError: out of memory"
    text = format_status(rows)
    assert "1 done, 1 failed" in text and "out of memory" in text
    # a local training process working on a run folder: running
    cfg = out / "configs/baseline-s1.toml"
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "gptlab",
            "train",
            "--config",
            str(cfg),
            "--run-dir",
            str(out / "runs/no_dropout-s1"),
        ]
    )
    try:
        deadline = time.time() + 20
        while experiment_status(str(spec), out=str(out))[1]["state"] != "running" and time.time() < deadline:
            time.sleep(0.2)
        assert experiment_status(str(spec), out=str(out))[1]["state"] == "running"
    finally:
        p.kill()
        p.wait()


def test_multi_node_command_rendezvous_on_the_first_node(tmp_path):
    job = RunJob("b-s1", tmp_path / "c.toml", tmp_path / "runs/b-s1", tmp_path / "runs/b-s1.log")
    t = _TrainTask(job, procs_per_node=8, cpus_per_proc=None)
    one = t.command(["n1"], 0, "123")
    assert "--standalone" in one and one[one.index("--nproc_per_node") + 1] == "8"
    two = t.command(["n1", "n2"], 1, "123")
    assert "--standalone" not in two
    args = dict(zip(two[3:13:2], two[4:14:2], strict=True))
    assert args == {
        "--nnodes": "2",
        "--node_rank": "1",
        "--nproc_per_node": "8",
        "--master_addr": "n1",
        "--master_port": str(20000 + 123),
    }
    assert (
        two[-8:]
        == ["-m", "gptlab", "train", "--config", str(job.config), "--run-dir", str(job.run_dir), "--resume", "--quiet"][
            -8:
        ]
    )


_HAS_SIGNALS = importlib.util.find_spec("gptlab.train.signals") is not None


@pytest.mark.skipif(
    not _HAS_SIGNALS,
    reason="needs preemptible training (gptlab.train.signals: checkpoint and exit "
    "75 on SIGUSR1), not yet on this branch",
)
def test_preempted_job_is_requeued_and_resumes_bit_exactly(small_data, slurm_cluster, tmp_path):
    from safetensors.torch import load_file

    variants = [{"name": "baseline", "interventions": []}]
    spec = write_spec(
        tmp_path,
        small_data,
        seeds=(1,),
        tokens=8 * 32 * 80,
        variants=variants,
        **{"train.checkpoint_interval": 1000, "train.eval_interval": 20},
    )
    ref = tmp_path / "ref"  # uninterrupted, one thread as in the job (parallel=2 gives each run half the 2 cores)
    assert run_experiment(str(spec), out=str(ref), quiet=True, parallel=2).ok
    out = tmp_path / "slurm"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptlab",
            "experiment",
            str(spec),
            "--out",
            str(out),
            "--quiet",
            "--backend",
            "slurm",
            "--partition",
            slurm_cluster or "",
            "--time",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    metrics = out / "runs/baseline-s1/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and sum(1 for x in metrics.read_text().splitlines() if '"train_loss"' in x) >= 15:
            break
        time.sleep(0.1)
    job_id = load_jobs(out)["baseline-s1"]["job_id"]
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    stdout, _ = runner.communicate(timeout=600)
    assert runner.returncode == 0, stdout[-3000:]
    jobs = load_jobs(out)["baseline-s1"]["jobs"]
    assert len(jobs) == 2 and jobs[0] == job_id, jobs
    assert "preempted" in stdout and "requeued" in stdout
    assert losses(out) == losses(ref)

    def final_weights(exp):
        last = sorted((exp / "runs/baseline-s1/checkpoints").glob("step_*"))[-1]
        return last.name, load_file(str(last / "model.safetensors"))

    (name_a, a), (name_b, b) = final_weights(out), final_weights(ref)
    assert name_a == name_b and a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    log = (out / "runs/baseline-s1.log").read_text()
    assert f"[slurm job {job_id}] exit 75 (preempted)" in log and f"[slurm job {jobs[1]}] exit 0" in log
    assert Path(out / "slurm" / job_id).is_dir()


def test_the_sbatch_example_trains_on_the_local_cluster(small_data, slurm_cluster, tmp_path):
    """examples/slurm-2node.sbatch as a user submits it, shaped for this one-node, GPU-less cluster from the
    command line and the environment only: one node, 2 gloo processes, the tiny config; it trains to final.json,
    and the job's output lands in the submit folder (no logs/ folder needed)."""
    example = Path(__file__).parents[1] / "examples" / "slurm-2node.sbatch"
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(parse_overrides(tiny_overrides(small_data))))
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        NPROC="2",
        CONFIG=str(tmp_path / "tiny.toml"),
        RUN_DIR=str(tmp_path / "run"),
        GLOBAL_BATCH="8",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    args = [
        "sbatch",
        "--parsable",
        "--wait",
        "--nodes=1",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--time=10",
        *(["--partition", slurm_cluster] if slurm_cluster else []),
        str(example),
    ]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    job = r.stdout.strip().split(";")[0]
    out = tmp_path / f"gptlab-gpt2-small-{job}.out"
    assert r.returncode == 0, (r.stderr, out.read_text() if out.exists() else "no output file")
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 12 and "run directory:" in out.read_text()
