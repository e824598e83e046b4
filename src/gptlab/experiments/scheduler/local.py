"""The local backend: each run a subprocess on this machine, `parallel` at a time, its output appended to its log."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from gptlab.experiments.scheduler.base import RunJob, State, train_command


@dataclass
class _Proc:
    job: RunJob
    proc: subprocess.Popen


class LocalBackend:
    def __init__(self, parallel: int = 1):
        self.parallel = max(1, parallel)
        threads = max(1, (os.cpu_count() or 1) // self.parallel)  # runs at once share the cores
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.running: list[_Proc] = []

    def describe(self) -> str:
        return f"{self.parallel} at a time"

    def free_slots(self) -> int:
        self.running = [p for p in self.running if p.proc.poll() is None]
        return self.parallel - len(self.running)

    def start(self, job: RunJob) -> _Proc:
        with open(job.log, "a") as f:
            p = _Proc(job, subprocess.Popen(train_command(job), stdout=f, stderr=subprocess.STDOUT, env=self.env))
        self.running.append(p)
        return p

    def state(self, handle: _Proc) -> State:
        code = handle.proc.poll()
        if code is None:
            return State.RUNNING
        return State.DONE if code == 0 else State.FAILED

    def exit_code(self, handle: _Proc) -> int | None:
        return handle.proc.poll()

    def stop(self, handles: list[_Proc]) -> None:
        for h in handles:
            h.proc.terminate()
        for h in handles:
            h.proc.wait()
