"""The experiment folder and one runner's hold on it: which folder (experiment_dir; one holding files gptlab
did not write is refused: check_experiment_dir, claim_experiment_dir), the backend that runs its runs
(make_backend), and the setup `gptlab experiment`, `sweep` and `ladder` share (experiment_session): stop
signals caught, the folder claimed as gptlab's and created, locked (ExperimentLock; the runs inherit the
lock), the data prepared and the results database opened (Session.open_results), and on the way out the
database closed and the lock released. A stop signal while it is open raises Stopped, which reaches the
caller (the CLI exits with its exit_code)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import parse_overrides
from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.scheduler import Backend, LocalBackend
from gptlab.experiments.run.stops import ExperimentLock, StopSignals
from gptlab.experiments.specs.experiment import Spec
from gptlab.io import check_dir, claim_dir, confined


@dataclass(frozen=True)
class RunOptions:
    """Where an experiment's runs go and how they are scheduled: the options `gptlab experiment`, `sweep` and
    `ladder` share (cli/experiments.py builds them from the command line)."""

    out: str | None = None  # the experiment folder (default: experiments/NAME)
    parallel: int | None = None  # local backend: runs at a time
    overrides: list[str] | None = None  # --set KEY=VALUE, merged into every run's config
    quiet: bool = False  # no progress bar while the data is prepared
    only: list[str] | None = None  # these variants (and the baseline) only
    procs_per_run: int | None = None  # local backend: processes per run (torchrun)
    gpus_per_run: int | None = None  # local backend: the visible GPUs split into slots of this many
    rerun_changed: bool = False  # redo a recorded run whose config the spec now changes, instead of stopping
    backend: str = "local"  # local or slurm
    backend_options: dict | None = None  # slurm: SlurmBackend's keyword arguments
    force: bool = False  # write into a folder holding files gptlab did not write

    @property
    def extra(self) -> dict:
        """--set as a table (config.parse_overrides)."""
        return parse_overrides(self.overrides or [])


@dataclass
class Session:
    """An open experiment (or ladder) folder: its lock, its backend and, once opened, its results database."""

    folder: Path
    lock: ExperimentLock
    backend: Backend | None = None
    db: ResultsDB | None = None

    def open_results(self, cfg, quiet: bool) -> ResultsDB:
        """The data of `cfg` (the matrix's first planned run's config) prepared (once, before any run starts: runs
        in parallel must not race to prepare it) and the folder's results database, closed when the session
        ends."""
        prepare_data(cfg, quiet)
        self.db = ResultsDB(self.folder / "results.sqlite")
        return self.db


@contextlib.contextmanager
def experiment_session(
    folder: Path,
    claim: Callable[[Path], object] | None = None,
    what: str = "experiment folder",
    backend: Backend | None = None,
    subdirs: tuple[str, ...] = ("runs", "configs"),
) -> Iterator[Session]:
    """`with experiment_session(folder, ...) as s:` catches the stop signals (StopSignals: Stopped is raised at
    once, the run loop defers it until its runs have ended), claims `folder` (`claim`, default: as an
    experiment folder that experiment_dir already checked), creates it and its `subdirs`, takes its lock
    (a second runner is refused with one line naming `what`) and hands the lock on to `backend`'s runs. On
    the way out, whatever happened, the results database is closed and the lock released."""
    session = Session(folder, ExperimentLock(folder, what), backend)
    try:
        with StopSignals():
            (claim or _claim_experiment)(folder)
            for d in (folder, *(folder / s for s in subdirs)):
                d.mkdir(parents=True, exist_ok=True)
            session.lock.acquire()
            if backend is not None and session.lock.fd is not None and hasattr(backend, "pass_fds"):
                backend.pass_fds = (session.lock.fd,)
            yield session
    finally:
        if session.db is not None:
            session.db.close()
        session.lock.release()


def _claim_experiment(folder: Path) -> None:
    claim_experiment_dir(folder, str(folder), force=True)


def experiment_dir(spec: Spec, out: str | None, force: bool) -> Path:
    """The experiment folder: experiments/NAME (the name confined to experiments/) or --out; refused when it
    holds files gptlab did not write, unless `force`. Nothing is created yet (experiment_session claims it)."""
    return check_experiment_dir(
        Path(out) if out else confined("experiments", spec.name, f"{spec.path}: name"),
        "--out" if out else "experiment folder",
        force,
    )


def make_backend(
    name: str, exp_dir: Path, parallel: int | None, procs_per_run: int | None, gpus_per_run: int | None, options: dict
) -> Backend:
    if name == "local":
        return LocalBackend(parallel, procs_per_run=procs_per_run, gpus_per_run=gpus_per_run)
    if name == "slurm":
        from gptlab.experiments.run.scheduler.slurm import SlurmBackend

        return SlurmBackend(exp_dir, **options)
    raise GptlabError(f"--backend: expected local or slurm, got '{name}'")


def prepare_data(cfg, quiet: bool) -> None:
    if (Path(cfg.data.dir) / "meta.json").exists():
        return
    if not cfg.data.source:
        raise GptlabError(f"data.dir: {cfg.data.dir} has no meta.json; run `gptlab prepare` first")
    from gptlab.data.prepare import prepare

    prepare([s.strip() for s in cfg.data.source.split(",")], cfg.data.dir, progress=not quiet)


EXPERIMENT_DIR = "experiment"  # the kind of folder `experiment` and `sweep` write (io.claim_dir)


def _experiment_written_before(p: Path) -> bool:
    """A folder of an earlier gptlab (no owner file) counts as an experiment folder when it holds results.sqlite,
    runs/ and configs/."""
    return (p / "results.sqlite").is_file() and (p / "runs").is_dir() and (p / "configs").is_dir()


def check_experiment_dir(path: Path, what: str, force: bool = False) -> Path:
    """claim_experiment_dir's refusal alone: nothing is created (so a later refusal leaves no folder behind)."""
    return check_dir(path, EXPERIMENT_DIR, what, force, _experiment_written_before)


def claim_experiment_dir(path: Path, what: str, force: bool = False) -> Path:
    """The experiment folder `path`, created and marked as gptlab's; refused (one line naming `what`) when it is
    a file, or a folder holding files gptlab did not write, unless `force` (_experiment_written_before: a folder
    of an earlier gptlab)."""
    return claim_dir(path, EXPERIMENT_DIR, what, force, _experiment_written_before)
