"""What every backend shares: the job description, its states, and the training command line."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class RunJob:
    run_id: str
    config: Path  # configs/RUN_ID.toml: what the run is started with
    run_dir: Path  # runs/RUN_ID/: its run directory (final.json when finished)
    log: Path  # runs/RUN_ID.log: its output, appended across restarts


class State(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"  # the training command exited 0
    FAILED = "failed"


class Backend(Protocol):
    def describe(self) -> str:
        """How runs are placed, for the runner's first line (e.g. "2 at a time")."""

    def free_slots(self) -> int:
        """How many more runs can start now."""

    def start(self, job: RunJob) -> Any:
        """Start `job`; return a handle for state()/stop()."""

    def state(self, handle: Any) -> State: ...

    def exit_code(self, handle: Any) -> int | None: ...

    def stop(self, handles: list[Any], signum: int) -> None:
        """Pass the stop signal `signum` the runner got (SIGTERM, SIGINT or SIGUSR1) on to these runs, so that they
        write their checkpoints and end; returns at once, state() says when each has ended."""

    def kill(self, handles: list[Any]) -> str:
        """End these runs now, without their checkpoints (a second stop signal while the runner waits for them);
        returns at once with a line saying what it did; state() says when each has ended."""


def train_command(job: RunJob, nproc: int = 1, relay: str | None = None) -> list[str]:
    """`gptlab train --resume` on the job, under `torchrun --standalone` (a free rendezvous port of its own) when
    it runs as `nproc` processes; `relay`: the signals torchrun passes on to its workers (--signals-to-handle,
    instead of its default SIGTERM,SIGINT,SIGHUP,SIGQUIT)."""
    train = ["-m", "gptlab", "train", "--config", str(job.config), "--run-dir", str(job.run_dir), "--resume", "--quiet"]
    if nproc <= 1:
        return [sys.executable, *train]
    opts = ["--signals-to-handle", relay] if relay else []
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *opts,
        *train,
    ]
