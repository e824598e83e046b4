"""The run directory, the unit of truth: one process at a time (an flock), never overwritten by a new run, resumed
only with the config it was started with, and described before step 1 (environment, git commit, versions)."""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from gptlab import GptlabError, __version__
from gptlab.config import RunConfig, config_changes, config_from_run, with_watching

# flock() errors of filesystems without locks (some Lustre and NFS mounts): the run goes on without a lock
NO_LOCKS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK}


class RunLock:
    """An exclusive flock on RUN_DIR/run.lock: a second process gets a clear error, never a corrupted run."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.fd = None
        self.locked = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locked = True
        except BlockingIOError:
            other = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise GptlabError(f"{self.path.parent}: run directory is in use by another process (pid {other})") from None
        except OSError as e:
            if e.errno not in NO_LOCKS:
                raise
            print(f"gptlab: warning: {self.path}: this filesystem has no file locks ({e.strerror}); nothing stops "
                  f"a second process from using the run directory", file=sys.stderr)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            if self.locked:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """New run: refuse to overwrite. Resume: use the saved config, refuse a different one (the loggers, outside
    the hash, are the ones asked for now)."""
    saved = run_dir / "config.toml"
    if not saved.exists():
        return cfg
    old = config_from_run(run_dir)
    if not resume:
        raise GptlabError(f"{run_dir}: run directory already exists; pass --resume to continue it "
                          f"or choose another --run-dir")
    if old.hash() != cfg.hash():
        raise GptlabError(f"{saved}: checkpoint is from another config (differs in {config_changes(old, cfg)})")
    return with_watching(old, cfg)


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=here).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment() -> dict:
    import numpy
    import tiktoken

    env = {"gptlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "tiktoken": tiktoken.__version__, "platform": platform.platform(),
           "git_commit": git_commit(), "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
