"""The local backend: each run a subprocess on this machine, its output appended to its log.

Runs are placed in slots. On a GPU machine (`gpus_per_run`) the visible GPUs are split into slots of that many
devices (`plan_slots`); a run starts in a free slot under `torchrun --standalone --nproc_per_node N` with
CUDA_VISIBLE_DEVICES set to the slot's device ids, so as many runs go at once as there are slots. On a CPU machine
(`procs_per_run`) the same path runs with `parallel` slots and no device list: N gloo processes per run.

Two runs at once never share a rendezvous port: `--standalone` binds its c10d store to port 0 (the kernel picks a
free one) and the workers reuse that store (torch's shared TCPStore), so no port is chosen before it is bound; the
backend pins TORCH_DISABLE_SHARE_RDZV_TCP_STORE=0, the one setting that would make torch pick a port by probing.
Each run's OMP/MKL threads are the cores divided by (runs at once x processes per run), at least 1.

Stops: each run starts in a session (and process group) of its own, so a Ctrl-C in the terminal reaches the runner
alone, which passes the stop on exactly once: `stop` sends SIGTERM (for the runner's SIGTERM or SIGINT: a trainer's
SIGINT would end it without a checkpoint) or SIGUSR1 to the run's process group. A single trainer checkpoints and
exits 75; torchrun relays the signal to its workers (they run in sessions of their own; SIGUSR1 is added to the
signals torchrun relays, --signals-to-handle, else it would die of it and leave its workers) and waits for them, up
to its shutdown timeout (30 s, TORCH_ELASTIC_SHUTDOWN_TIMEOUT). On Linux every run also gets
PR_SET_PDEATHSIG=SIGTERM: if the runner dies without passing a stop on (SIGKILL, the OOM killer), its runs get
SIGTERM from the kernel and checkpoint: no trainer outlives its runner. The runs inherit `pass_fds` (the experiment
folder's lock, run/stops.py)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from gptlab import GptlabError
from gptlab.experiments.run.scheduler.base import RunJob, State, train_command

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
# torchrun's default relayed signals, and SIGUSR1: a runner's SIGUSR1 reaches the workers, not torchrun's death
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def _die_with(parent: int):
    """A preexec_fn (Linux): the child gets SIGTERM when `parent` dies; if it already has, at once."""
    prctl, term = _libc.prctl, int(signal.SIGTERM)  # looked up before fork: only the call runs in the child

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, term, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def plan_slots(devices: list[str], per_run: int) -> list[list[str]]:
    """The visible GPUs `devices` split, in order, into slots of `per_run` devices (one run per slot)."""
    if per_run < 1:
        raise GptlabError(f"--gpus-per-run: expected a positive number of GPUs per run, got {per_run}")
    if not devices:
        raise GptlabError(
            "--gpus-per-run: no GPU is visible (CUDA_VISIBLE_DEVICES is empty or torch sees no CUDA "
            "device); on a CPU machine use --procs-per-run"
        )
    if len(devices) % per_run:
        raise GptlabError(
            f"--gpus-per-run: {per_run} does not divide the {len(devices)} visible GPUs ({','.join(devices)})"
        )
    return [devices[i : i + per_run] for i in range(0, len(devices), per_run)]


def visible_devices() -> list[str]:
    """The GPU ids runs may use: CUDA_VISIBLE_DEVICES if set (ids or UUIDs, as given), else 0..count-1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class _Proc:
    job: RunJob
    proc: subprocess.Popen
    slot: int


class LocalBackend:
    def __init__(
        self,
        parallel: int | None = None,
        procs_per_run: int | None = None,
        gpus_per_run: int | None = None,
        devices: list[str] | None = None,
    ):
        """`gpus_per_run`: GPU slots over `devices` (default: the visible GPUs), at most `parallel` of them used;
        else `parallel` (default 1) CPU slots of `procs_per_run` (default 1) processes each."""
        if parallel is not None and parallel < 1:
            raise GptlabError(f"--parallel: expected a positive number of runs at a time, got {parallel}")
        if gpus_per_run is not None:
            if procs_per_run is not None:
                raise GptlabError("--procs-per-run: not with --gpus-per-run (a GPU run has one process per GPU)")
            self.gpus: list[list[str]] | None = plan_slots(
                visible_devices() if devices is None else devices, gpus_per_run
            )
            self.gpus = self.gpus[: parallel or len(self.gpus)]
            self.nproc, n_slots = gpus_per_run, len(self.gpus)
        else:
            if procs_per_run is not None and procs_per_run < 1:
                raise GptlabError(f"--procs-per-run: expected a positive number of processes, got {procs_per_run}")
            self.gpus, self.nproc, n_slots = None, procs_per_run or 1, parallel or 1
        self.n_slots = n_slots
        self.threads = max(1, _cores() // (n_slots * self.nproc))  # runs at once share the cores
        self.env = dict(
            os.environ,
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
            TORCH_DISABLE_SHARE_RDZV_TCP_STORE="0",
        )
        self.running: list[_Proc] = []
        self.pass_fds: tuple[int, ...] = ()  # descriptors every run inherits (the experiment folder's lock)

    def describe(self) -> str:
        if self.gpus is not None:
            ids = " ".join(",".join(s) for s in self.gpus)
            return (
                f"{self.n_slots} slot{'s' if self.n_slots > 1 else ''} of {self.nproc} GPU"
                f"{'s' if self.nproc > 1 else ''} ({ids})"
            )
        procs = f", {self.nproc} processes each" if self.nproc > 1 else ""
        return f"{self.n_slots} at a time{procs}"

    def slot_env(self, slot: int) -> dict[str, str]:
        """The environment a run in `slot` starts with: the thread counts, and on GPUs the slot's devices."""
        if self.gpus is None:
            return self.env
        return dict(self.env, CUDA_VISIBLE_DEVICES=",".join(self.gpus[slot]))

    def _free(self) -> list[int]:
        self.running = [p for p in self.running if p.proc.poll() is None]
        taken = {p.slot for p in self.running}
        return [i for i in range(self.n_slots) if i not in taken]

    def free_slots(self) -> int:
        return len(self._free())

    def start(self, job: RunJob) -> _Proc:
        free = self._free()
        if not free:
            raise GptlabError(f"{job.run_id}: no free slot (the runner starts runs only when free_slots() > 0)")
        slot = free[0]
        with open(job.log, "a") as f:
            proc = subprocess.Popen(
                train_command(job, self.nproc, relay=TORCHRUN_SIGNALS),
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.slot_env(slot),
                start_new_session=True,
                pass_fds=self.pass_fds,
                preexec_fn=_die_with(os.getpid()) if _libc is not None else None,
            )
        p = _Proc(job, proc, slot)
        self.running.append(p)
        return p

    def state(self, handle: _Proc) -> State:
        code = handle.proc.poll()
        if code is None:
            return State.RUNNING
        return State.DONE if code == 0 else State.FAILED

    def exit_code(self, handle: _Proc) -> int | None:
        return handle.proc.poll()

    def stop(self, handles: list[_Proc], signum: int = signal.SIGTERM) -> None:
        """Pass the runner's stop signal on to each run's process group (SIGINT as SIGTERM); they end on their own
        (state() says when), after their checkpoints."""
        _signal_groups(handles, signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)

    def kill(self, handles: list[_Proc]) -> str:
        """SIGKILL to each run's process group (torchrun and its workers too): they end now, without checkpoints."""
        _signal_groups(handles, signal.SIGKILL)
        return (
            f"killing the {len(handles)} run(s) in flight (SIGKILL); each resumes from its last periodic "
            f"checkpoint, if any"
        )


def _signal_groups(handles: list[_Proc], sig: int) -> None:
    for h in handles:
        if h.proc.poll() is None:  # not reaped: its pid is still its process group's id
            try:
                os.killpg(h.proc.pid, sig)
            except ProcessLookupError:
                pass
