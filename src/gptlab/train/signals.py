"""Preemption. SLURM (`--signal=USR1@N`), a cloud's spot reclaim and `kill` send SIGTERM or SIGUSR1 some time
before a job is killed. While a run trains, either signal only sets a flag; the loop finishes the step it is on,
all ranks agree to stop at the same step, a checkpoint is written, RUN_DIR/preempted.json says so, and the
process exits with EXIT_PREEMPTED (75, EX_TEMPFAIL) so a scheduler knows to start it again: `--resume` then
continues bit for bit. Under torchrun the launcher's own exit code says only "a worker failed", so schedulers read
preempted.json, which the next start of the run removes."""

from __future__ import annotations

import signal
import threading

import torch

from gptlab.train.distributed import Dist

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER = "preempted.json"


class SignalCatcher:
    """`with` it: its `signals` go to `self._handle` (in the main thread; elsewhere nothing is caught) and the
    previous handlers come back on exit. Preemption here and the experiment runner's StopSignals are its two uses."""

    signals: tuple[signal.Signals, ...] = ()

    def __enter__(self):
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError


class Preemption(SignalCatcher):
    """`with Preemption() as p:` catches SIGTERM/SIGUSR1 (in the main thread; elsewhere it catches nothing) and
    restores the previous handlers on exit; `p.requested(dist_)` is True on every rank once any rank got one."""

    signals = SIGNALS

    def __init__(self):
        self.signal: str | None = None

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    def requested(self, dist_: Dist, device: torch.device) -> bool:
        if not dist_.enabled:
            return self.signal is not None
        flag = torch.tensor([1.0 if self.signal else 0.0], device=device)
        return dist_.all_reduce_sum(flag).item() > 0
