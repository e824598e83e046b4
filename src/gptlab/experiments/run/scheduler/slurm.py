"""The SLURM backend: one sbatch job per run, submitted through submitit, each job launching torchrun on its nodes.

Head side (the runner's process): `start` submits a job (or adopts one already queued for the run, so that a
runner restarted after a crash never trains a run twice), `state` reads `squeue` (without slurmdbd `sacct` fails and
submitit says UNKNOWN) and the run folder (final.json = done). Job ids are kept in EXP/slurm/jobs.json (written
atomically) for `gptlab experiment SPEC --status`; submitit's own files (batch script, pickles, its logs) are in
EXP/slurm/JOBID/. A job writes only its run folder, its log (runs/RUN_ID.log, appended) and submitit's files; the
runner alone writes results.sqlite.

Job side (`_TrainTask`, run by submitit on every node of the allocation, one task per node): torchrun
(`--standalone` on one node; on several, a static rendezvous on the first node of SLURM_JOB_NODELIST) running
`gptlab train --resume`. SLURM's USR1 (`--signal=USR1@DELAY` before the time limit, or `scancel --signal=USR1
JOBID`) and TERM reach every process of the job step; torchrun is started with USR1 ignored so that only the
training processes act on it (checkpoint, exit 75 = gptlab.train.signals.EXIT_PREEMPTED). The task's result is
the training exit code, 75 when the run folder says preempted.json (torchrun reports its workers' 75 as 1); the
runner then calls `requeue`, which submits the run again: it resumes from its checkpoint."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab import GptlabError
from gptlab.experiments.run.scheduler.base import RunJob, State, train_command
from gptlab.io import atomic_write_text
from gptlab.train.signals import EXIT_PREEMPTED, MARKER

# squeue's job states (long form): not started yet; still in SLURM's hands (queued, running or finishing)
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED"}
IN_SLURM = QUEUED | {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "STOPPED", "SPECIAL_EXIT"}
_REQUEUE_STATES = {"PREEMPTED", "NODE_FAIL"}  # ended by the cluster, not by the run: start it again


@dataclass
class SlurmJob:
    """A run's current SLURM job (a requeue gives it a new one)."""

    job: RunJob
    job_id: str
    submitted: float = field(default_factory=time.time)


def _rendezvous_port(job_id: str) -> int:
    return 20000 + int(job_id) % 20000


class _TrainTask:
    """What a SLURM job runs on each of its nodes (pickled by submitit, so only plain values inside)."""

    def __init__(self, job: RunJob, procs_per_node: int, cpus_per_proc: int | None):
        self.job, self.procs_per_node, self.cpus_per_proc = job, procs_per_node, cpus_per_proc

    def command(self, nodes: list[str], node_rank: int, job_id: str) -> list[str]:
        if len(nodes) <= 1:
            return train_command(self.job, self.procs_per_node)
        train = train_command(self.job, 1)[1:]  # -m gptlab train ...
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(len(nodes)),
            "--node_rank",
            str(node_rank),
            "--nproc_per_node",
            str(self.procs_per_node),
            "--master_addr",
            nodes[0],
            "--master_port",
            str(_rendezvous_port(job_id)),
            *train,
        ]

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        # replace submitit's handlers (which would `scontrol requeue` at once, killing the run before its
        # checkpoint): this process waits for the training processes, which got the signal too
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, lambda s, f: None)
        cmd = self.command(env.hostnames, env.node, env.job_id)
        child_env = dict(os.environ)
        if self.cpus_per_proc:
            child_env.update(OMP_NUM_THREADS=str(self.cpus_per_proc), MKL_NUM_THREADS=str(self.cpus_per_proc))
        log = self.job.log if env.node == 0 else self.job.log.with_name(f"{self.job.run_id}.node{env.node}.log")
        with open(log, "a") as f:
            f.write(
                f"[slurm job {env.job_id} on {socket.gethostname()}, node {env.node}/{env.num_nodes}] {' '.join(cmd)}\n"
            )
            f.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=child_env,
                preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN),
            )
            while True:
                try:
                    code = proc.wait()
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                    continue
        if code != 0 and (self.job.run_dir / MARKER).exists():
            code = EXIT_PREEMPTED  # torchrun turns its workers' 75 into 1; the trainer's preempted.json says it
        with open(log, "a") as f:
            f.write(f"[slurm job {env.job_id}] exit {code}" + (" (preempted)" if code == EXIT_PREEMPTED else "") + "\n")
        return code


class SlurmBackend:
    """Runs on SLURM: every run is submitted at once (SLURM queues them), one job per run."""

    requeue_preempted = True  # the runner calls requeue() when a run ends with EXIT_PREEMPTED

    def __init__(
        self,
        exp_dir: str | Path,
        partition: str | None = None,
        nodes_per_run: int = 1,
        gpus_per_node: int = 0,
        time_min: int = 60,
        account: str | None = None,
        procs_per_node: int | None = None,
        signal_delay_s: int = 120,
        poll_s: float = 2.0,
    ):
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise GptlabError("--backend slurm: sbatch/squeue not found on PATH (install SLURM's client commands)")
        for name, v, lo in [
            ("--nodes-per-run", nodes_per_run, 1),
            ("--gpus-per-node", gpus_per_node, 0),
            ("--time", time_min, 1),
            ("--procs-per-node", procs_per_node or 1, 1),
        ]:
            if v < lo:
                raise GptlabError(f"{name}: expected an integer >= {lo}, got {v}")
        try:
            import submitit
        except ImportError:
            raise GptlabError("--backend slurm: needs submitit (pip install -e '.[slurm]')") from None
        self.exp_dir = Path(exp_dir).absolute()
        self.folder = self.exp_dir / "slurm"
        self.jobs_file = self.folder / "jobs.json"
        self.nodes, self.gpus, self.time_min = nodes_per_run, gpus_per_node, time_min
        self.procs = procs_per_node or max(1, gpus_per_node)  # one process per GPU, else per --procs-per-node
        self.poll_s = poll_s
        self.user = getpass.getuser()
        self.executor = submitit.SlurmExecutor(folder=self.folder / "%j", python=sys.executable)
        params: dict[str, Any] = dict(
            time=time_min,
            nodes=nodes_per_run,
            ntasks_per_node=1,
            signal_delay_s=min(signal_delay_s, time_min * 30),
            stderr_to_stdout=True,
            additional_parameters={"export": "ALL", "requeue": True},
        )
        if partition:
            params["partition"] = partition
        if account:
            params["account"] = account
        if gpus_per_node:
            params["gpus_per_node"] = gpus_per_node
        else:
            params["cpus_per_task"] = self.procs  # one core per gloo process
        self.executor.update_parameters(**params)
        self.cpus_per_proc = None if gpus_per_node else 1
        self._squeue: dict[str, str] = {}
        self._squeue_at = 0.0

    def describe(self) -> str:
        what = f"{self.gpus} GPU(s)" if self.gpus else f"{self.procs} process(es)"
        return (
            f"SLURM, one job per run: {self.nodes} node(s) x {what}, {self.time_min} min, job ids in {self.jobs_file}"
        )

    def free_slots(self) -> int:
        return 1 << 30  # SLURM queues them

    # -- jobs.json: run id -> current job id and every job it had
    def _load_jobs(self) -> dict:
        return load_jobs(self.exp_dir)

    def _save_job(self, run_id: str, job_id: str) -> None:
        jobs = self._load_jobs()
        entry = jobs.setdefault(run_id, {"jobs": []})
        entry["job_id"] = job_id
        entry["jobs"] = [*entry["jobs"], job_id]
        entry["submitted"] = time.time()
        atomic_write_text(self.jobs_file, json.dumps(jobs, indent=1, sort_keys=True) + "\n")

    def start(self, job: RunJob) -> SlurmJob:
        known = self._load_jobs().get(job.run_id, {}).get("job_id")
        if known and self._job_state(known, fresh=True) in IN_SLURM:
            return SlurmJob(job, known)  # still queued or running from an earlier runner: never twice
        return self._submit(job)

    def _submit(self, job: RunJob) -> SlurmJob:
        from submitit.core.utils import FailedJobError

        task = _TrainTask(
            RunJob(job.run_id, job.config.absolute(), job.run_dir.absolute(), job.log.absolute()),
            self.procs,
            self.cpus_per_proc,
        )
        try:
            sj = self.executor.submit(task)
        except (FailedJobError, subprocess.CalledProcessError, OSError) as e:
            msg = " ".join(str(getattr(e, "stderr", None) or e).split())
            raise GptlabError(f"--backend slurm: sbatch refused the job for {job.run_id}: {msg[:300]}") from None
        self._save_job(job.run_id, sj.job_id)
        self._squeue_at = 0.0
        return SlurmJob(job, sj.job_id)

    def requeue(self, handle: SlurmJob) -> SlurmJob:
        """Submit a preempted run again (a new job; `--resume` continues from its checkpoint)."""
        return self._submit(handle.job)

    # -- state
    def _job_state(self, job_id: str, fresh: bool = False) -> str | None:
        """The job's state as squeue says it (long form), None once squeue has forgotten it."""
        if fresh or time.time() - self._squeue_at > self.poll_s:
            self._squeue = squeue_states(self.user)
            self._squeue_at = time.time()
        return self._squeue.get(job_id)

    def state(self, handle: SlurmJob) -> State:
        s = self._job_state(handle.job_id)
        if s in IN_SLURM:
            return State.PENDING if s == "PENDING" else State.RUNNING
        if s is None and time.time() - handle.submitted < 10:
            return State.PENDING  # just submitted: give squeue a moment
        if s is None or s in (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
            "PREEMPTED",
            "NODE_FAIL",
            "REVOKED",
        ):
            if self.exit_code(handle) == 0 and (handle.job.run_dir / "final.json").exists():
                return State.DONE
            return State.FAILED
        return State.RUNNING  # a state this list does not know yet: still SLURM's

    def exit_code(self, handle: SlurmJob) -> int | None:
        """The training command's exit code as the job reported it; EXIT_PREEMPTED when SLURM preempted the job or
        its node failed; None when the job left no result (killed before it could write one)."""
        if self._squeue.get(handle.job_id) in _REQUEUE_STATES:
            return EXIT_PREEMPTED
        return job_exit_code(self.folder, handle.job_id)

    def stop(self, handles: list[SlurmJob], signum: int = signal.SIGTERM) -> None:
        """The runner was stopped (any of its stop signals): scancel the runs' jobs, queued ones too (nothing is
        left running that the runner no longer watches); SLURM sends TERM to the job's processes (the run
        checkpoints, preempted.json), then KILL after its KillWait. A re-run submits them again: they resume."""
        if handles:
            subprocess.run(["scancel", *[h.job_id for h in handles]], capture_output=True, timeout=60)

    def kill(self, handles: list[SlurmJob]) -> str:
        """Nothing more to send: stop() has cancelled the jobs, and SLURM escalates a cancel itself (SIGCONT and
        SIGTERM now, SIGKILL after the cluster's KillWait); `scancel --signal=KILL` is a cancel too. The runner
        waits at most KillWait for a job that does not end."""
        return f"the {len(handles)} cancelled job(s) in flight end by SLURM's SIGKILL after its KillWait at the latest"


def squeue_states(user: str | None = None) -> dict[str, str]:
    """job id -> state (long form) for the jobs squeue still knows (ended ones for MinJobAge, 5 min by default)."""
    cmd = ["squeue", "--noheader", "--states=all", "--format=%i|%T"]
    if user:
        cmd.append(f"--user={user}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    return {line.split("|")[0].strip(): line.split("|")[1].strip() for line in out.stdout.splitlines() if "|" in line}


def job_exit_code(folder: Path, job_id: str) -> int | None:
    """The exit code a finished job's task returned (submitit's result file, written by our own job)."""
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(folder / "%j", job_id=job_id, task_id=0).result_pickle
    if not path.exists():
        return None
    try:
        outcome, result = pickle_load(path)
    except Exception:  # a half-written or foreign file: no exit code
        return None
    return int(result) if outcome == "success" and isinstance(result, int) else None


def load_jobs(exp_dir: str | Path) -> dict:
    p = Path(exp_dir) / "slurm" / "jobs.json"
    return json.loads(p.read_text()) if p.exists() else {}
