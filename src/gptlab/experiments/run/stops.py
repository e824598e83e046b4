"""Stops and the runner's lock. SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 to the runner (how SLURM, systemd, `timeout`
and `docker stop` end a job) is passed on to every run in flight (Backend.stop), no new run starts, and the runner
waits until they have ended (a trainer writes its checkpoint and preempted.json first); then Stopped is raised,
whose exit_code the CLI exits with: 75 (EXIT_PREEMPTED) after SIGTERM or SIGUSR1, 130 after SIGINT. Re-running
the same command resumes the partial runs from those checkpoints. A second stop signal while the runner waits
(a run that does not end: hung in a collective, stopped, or slow to write its checkpoint) kills the local runs in
flight (Backend.kill: SIGKILL to each run's process group); they resume from their last periodic checkpoint
instead. SLURM jobs were cancelled at the first signal and SLURM kills them itself after its KillWait.

One runner at a time per folder: an flock on EXP/runner.lock (ExperimentLock) stops a second one with one line
naming the folder and the other runner's pid; `--status` and `gptlab report` only read and take no lock."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
from pathlib import Path

from gptlab import GptlabError
from gptlab.train.rundir import NO_LOCKS
from gptlab.train.signals import EXIT_PREEMPTED, SignalCatcher

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
LOCK_FILE = "runner.lock"


class Stopped(BaseException):
    """A stop signal reached the runner; raised once no run of it is in flight any more. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """130 after SIGINT (Ctrl-C), EXIT_PREEMPTED (75: start me again) after SIGTERM or SIGUSR1."""
        return 130 if self.signum == signal.SIGINT else EXIT_PREEMPTED

    def line(self) -> str:
        return (
            f"stopped by {signal.Signals(self.signum).name}: finished runs are recorded, stopped ones resume "
            f"from their checkpoints; re-run the same command to continue"
        )


class StopSignals(SignalCatcher):
    """`with StopSignals(defer) as stops:` catches SIGTERM, SIGINT and SIGUSR1 (in the main thread; elsewhere it
    catches nothing) and restores the previous handlers on exit. `defer=False`: raise Stopped at once (nothing is
    in flight to wait for); `defer=True` (the run loop): only note the first signal in `stops.signum`, for the loop
    to pass on to its runs and wait for them, and count every signal in `stops.count` (a second one: kill them).
    Nested, the inner one decides while it is open."""

    signals = STOP_SIGNALS

    def __init__(self, defer: bool = False):
        self.defer = defer
        self.signum: int | None = None
        self.count = 0  # stop signals caught

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if not self.defer:
            raise Stopped(self.signum)


class ExperimentLock:
    """An exclusive flock on EXP/runner.lock, the run directory's lock (train/rundir.py) for an experiment folder:
    a second runner on the folder gets one line naming it and the first runner's pid. The runs a runner starts
    inherit the lock (`fd`, see LocalBackend.pass_fds), so a folder whose runner was killed stays locked until its
    last trainer has written its checkpoint and exited; a new runner on this host waits for that instead of
    failing, since the pid in the lock file is then no longer alive."""

    def __init__(self, folder: Path, what: str = "experiment folder"):
        self.path, self.what = folder / LOCK_FILE, what
        self.fd: int | None = None
        self.locked = False

    def acquire(self) -> ExperimentLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locked = True
        except BlockingIOError:
            other = os.read(self.fd, 200).decode(errors="replace").split()
            pid = other[0] if other else "?"
            if len(other) == 2 and other[1] == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                log.warning(
                    f"{self.path.parent}: waiting for the runs of a stopped runner (pid {pid}) to write their "
                    f"checkpoints and exit"
                )
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                self.locked = True
            else:
                os.close(self.fd)
                self.fd = None
                where = "" if len(other) < 2 or other[1] == socket.gethostname() else f" on {other[1]}"
                raise GptlabError(
                    f"{self.path.parent}: {self.what} is in use by another runner (pid {pid}{where}); "
                    f"`--status` shows its progress"
                ) from None
        except OSError as e:
            if e.errno not in NO_LOCKS:
                raise
            log.warning(
                f"{self.path}: this filesystem has no file locks ({e.strerror}); nothing stops "
                f"a second runner from using the {self.what}"
            )
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return self

    def release(self) -> None:
        """Close the runner's descriptor; no LOCK_UN, which would unlock the runs that share the lock too: the
        lock ends when the last process holding it has closed it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd, self.locked = None, False

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
