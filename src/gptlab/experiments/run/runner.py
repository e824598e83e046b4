"""Running an experiment's matrix: each run a `gptlab train --resume` started by a backend (scheduler/),
resumable (finished runs skipped, partial ones resumed from their checkpoints, never duplicated), every result
recorded in `results.sqlite` by this process alone as it finishes, and the report written at the end.

A finished run counts only with the config the spec now gives it: its recorded config hash (results.sqlite) and
its run folder's config.toml are checked against the spec before anything starts; a changed one stops the
experiment with one line naming the run and the fields, or with --rerun-changed is redone (its old folder moved
aside to runs/RUN_ID.stale-N, with its log and TensorBoard folder). The report covers the spec's runs only (rows
of removed variants stay recorded).

An experiment folder holds spec.toml (the spec as run, --set overrides merged in; written once the recorded runs
are known to match it), configs/RUN_ID.toml (what each run was started with), runs/RUN_ID/ (its run directory),
runs/RUN_ID.log (its output), results.sqlite and the report.

One runner at a time per folder: an flock on EXP/runner.lock (ExperimentLock) stops a second one with one line
naming the folder and the other runner's pid; `--status` and `gptlab report` only read and take no lock.

Stops: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 to the runner (how SLURM, systemd, `timeout` and `docker stop` end a
job) is passed on to every run in flight (Backend.stop), no new run starts, and the runner waits until they have
ended (a trainer writes its checkpoint and preempted.json first), then exits 75 (EXIT_PREEMPTED) after SIGTERM or
SIGUSR1 and 130 after SIGINT. Re-running the same command resumes the partial runs from those checkpoints.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w

from gptlab import GptlabError
from gptlab.config import (
    config_changes,
    config_from_run,
    deep_merge,
    parse_overrides,
    read_toml,
)
from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.scheduler import Backend, LocalBackend, RunJob, State
from gptlab.experiments.spec.experiment import Spec, Variant, check_experiment_dir, claim_experiment_dir, load_spec
from gptlab.io import atomic_write_json, atomic_write_text, confined, read_json
from gptlab.train.loggers import tensorboard_dir
from gptlab.train.rundir import NO_LOCKS
from gptlab.train.signals import EXIT_PREEMPTED, MARKER, SignalCatcher

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
    to pass on to its runs and wait for them. Nested, the inner one decides while it is open."""

    signals = STOP_SIGNALS

    def __init__(self, defer: bool = False):
        self.defer = defer
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:
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
                print(
                    f"{self.path.parent}: waiting for the runs of a stopped runner (pid {pid}) to write their "
                    f"checkpoints and exit",
                    file=sys.stderr,
                    flush=True,
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
            print(
                f"gptlab: warning: {self.path}: this filesystem has no file locks ({e.strerror}); nothing stops "
                f"a second runner from using the {self.what}",
                file=sys.stderr,
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


def run_experiment(
    spec_path: str,
    out: str | None = None,
    dry_run: bool = False,
    parallel: int | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    only: list[str] | None = None,
    procs_per_run: int | None = None,
    gpus_per_run: int | None = None,
    rerun_changed: bool = False,
    backend: str = "local",
    backend_options: dict | None = None,
    until_decided: bool = False,
    max_seeds: int | None = None,
    seeds_per_round: int | None = None,
    force: bool = False,
) -> int:
    """Run (or with dry_run, only print) the matrix of `spec_path`; the exit status for the CLI.

    `backend`: "local" (scheduler/local.py: `gpus_per_run` splits the visible GPUs into slots, one run per slot;
    otherwise `parallel` runs at a time of `procs_per_run` processes each) or "slurm" (`backend_options`:
    SlurmBackend's keyword arguments). A finished (or started) run whose config is not what the spec now resolves
    to stops everything before any run starts, unless `rerun_changed`: then it is redone (its row forgotten, its
    run folder moved aside to runs/RUN_ID.stale-N).

    `until_decided`: after the spec's seeds, add `seeds_per_round` seeds at a time to the variants not yet decided
    (and the baseline) until each is decided or has `max_seeds` (sequential.py; state in sequential.json).

    `force`: write into an experiment folder holding files gptlab did not write (io.claim_dir); without it such
    a folder is refused."""
    spec = load_spec(spec_path)
    spec_runs = {spec.run_id(v.name, s) for v, s in spec.matrix()}  # what the report shows (--only included)
    seq_opts = _sequential_options(spec, until_decided, max_seeds, seeds_per_round)
    if only:
        _keep_only(spec, only)
    extra = parse_overrides(overrides or [])
    if extra:
        for v in spec.variants:
            spec.resolved_config(v, spec.seeds[0], extra, where=f"--set (variant {v.name})")
    if dry_run:
        from gptlab.experiments.spec.plan import print_dry_run

        print_dry_run(spec, extra)
        if spec.tune:
            from gptlab.experiments.analysis.tuning import sweep_spec

            t, n = spec.tune, len(sweep_spec(spec).matrix())
            print(
                f"tune {t.param}: a sweep of {n} more runs (every variant at {', '.join(map(str, t.grid))} and "
                f"its base value, seeds {', '.join(map(str, t.seeds))}), then up to {len(spec.matrix())} runs "
                f"of the variants at their chosen values"
            )
        if seq_opts:
            print(_design_line(spec, seq_opts))
        return 0
    if spec.tune and seq_opts:
        raise GptlabError("--until-decided: not with tune (a tuned experiment runs its fixed seeds)")
    exp_dir = _exp_dir(spec, out, force)
    runner_backend = _make_backend(backend, exp_dir, parallel, procs_per_run, gpus_per_run, backend_options or {})
    lock, db = ExperimentLock(exp_dir), None
    try:
        with StopSignals():
            db = _open(spec, extra, exp_dir, runner_backend, lock, quiet)
            redone = _check_changed(spec, extra, exp_dir, db, rerun_changed)
            # only now: spec.toml describes every recorded run of the spec (the --set overrides included)
            atomic_write_text(exp_dir / "spec.toml", _spec_text(spec, extra))
            if spec.tune:
                failures = _run_tuned(spec, extra, exp_dir, db, runner_backend, redone, rerun_changed)
            else:
                failures = _run_matrix(spec, extra, exp_dir, db, runner_backend, redone)
            if seq_opts and not failures:
                failures, seq_runs = _run_rounds(spec, extra, exp_dir, db, runner_backend, seq_opts, rerun_changed)
                spec_runs |= seq_runs
            db.close()
            if not _report(spec, exp_dir, spec_runs):
                return 1
    except Stopped as s:
        print(s.line(), file=sys.stderr)
        return s.exit_code
    finally:
        if db is not None:
            db.close()
        lock.release()
    if failures:
        print(
            f"{len(failures)} run(s) failed: {', '.join(failures)} (logs in {exp_dir / 'runs'}); re-run to retry",
            file=sys.stderr,
        )
        return 1
    return 0


def run_sweep(
    spec_path: str,
    param: str | None = None,
    grid: list[float] | None = None,
    seeds: list[int] | None = None,
    out: str | None = None,
    parallel: int | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    only: list[str] | None = None,
    procs_per_run: int | None = None,
    gpus_per_run: int | None = None,
    rerun_changed: bool = False,
    backend: str = "local",
    backend_options: dict | None = None,
    force: bool = False,
) -> int:
    """`gptlab sweep`: train every variant of the spec at every value of the grid on the sweep's seeds (the
    spec's tune / tune_grid / tune_seeds, or `param`, `grid`, `seeds` instead), record the runs in the
    experiment's results.sqlite, write sweep.json with each variant's chosen value and print the table. A later
    `gptlab experiment` of a spec with the same tune settings reuses these runs."""
    from gptlab.experiments.analysis import tuning
    from gptlab.experiments.report.tables import text_table
    from gptlab.experiments.spec.experiment import read_tune

    spec = load_spec(spec_path)
    if only:
        _keep_only(spec, only)
    extra = parse_overrides(overrides or [])
    if param is None and grid is None and seeds is None and spec.tune is None:
        raise GptlabError(f"{spec_path}: no tune settings; give --param and --grid (or tune and tune_grid in the spec)")
    raw = read_toml(spec.path)
    spec.tune = read_tune(
        spec,
        raw,
        "sweep",
        param=param or (spec.tune.param if spec.tune else None),
        grid=grid,
        seeds=seeds if seeds is not None else (spec.tune.seeds if spec.tune else None),
    )
    sweep = tuning.sweep_spec(spec)
    exp_dir = _exp_dir(spec, out, force)
    runner_backend = _make_backend(backend, exp_dir, parallel, procs_per_run, gpus_per_run, backend_options or {})
    lock, db = ExperimentLock(exp_dir), None
    try:
        with StopSignals():
            db = _open(spec, extra, exp_dir, runner_backend, lock, quiet)
            notes = _check_changed(sweep, extra, exp_dir, db, rerun_changed)
            failures = _run_matrix(sweep, extra, exp_dir, db, runner_backend, notes)
            chosen = None if failures else _choose(spec, exp_dir, db)
    except Stopped as s:
        print(s.line(), file=sys.stderr)
        return s.exit_code
    finally:
        if db is not None:
            db.close()
        lock.release()
    if failures:
        print(
            f"{len(failures)} run(s) failed: {', '.join(failures)} (logs in {exp_dir / 'runs'}); re-run to retry",
            file=sys.stderr,
        )
        return 1
    print(text_table(*tuning.format_sweep(chosen)))
    for note in tuning.sweep_notes(chosen):
        print(note)
    print(f"sweep: {exp_dir / tuning.SWEEP_FILE}")
    return 0


def _exp_dir(spec: Spec, out: str | None, force: bool) -> Path:
    """The experiment folder: experiments/NAME (the name confined to experiments/) or --out; refused when it
    holds files gptlab did not write, unless `force`. Nothing is created yet (_open claims it)."""
    return check_experiment_dir(
        Path(out) if out else confined("experiments", spec.name, f"{spec.path}: name"),
        "--out" if out else "experiment folder",
        force,
    )


def _open(spec: Spec, extra: dict, exp_dir: Path, backend: Backend, lock: ExperimentLock, quiet: bool) -> ResultsDB:
    """The experiment folder created and marked as gptlab's (_exp_dir checked it), with its runs/ and configs/,
    locked (its runs inherit the lock), the data prepared; its results database."""
    claim_experiment_dir(exp_dir, str(exp_dir), force=True)
    for d in (exp_dir, exp_dir / "runs", exp_dir / "configs"):
        d.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    if lock.fd is not None and hasattr(backend, "pass_fds"):
        backend.pass_fds = (lock.fd,)
    # data once, before any run starts (runs in parallel must not race to prepare it)
    _prepare_data(spec.resolved_config(spec.variants[0], spec.seeds[0], extra), quiet)
    return ResultsDB(exp_dir / "results.sqlite")


def _run_tuned(
    spec: Spec, extra: dict, exp_dir: Path, db: ResultsDB, backend: Backend, notes: list[str], rerun_changed: bool
) -> list[str]:
    """A spec with tune: the matrix at the base config's value and the sweep (one queue), each variant's value
    chosen (sweep.json), then the matrix of every variant at its chosen value. Returns the failed run ids."""
    from gptlab.experiments.analysis import tuning

    sweep = tuning.sweep_spec(spec)
    both = replace(spec, variants=spec.variants + sweep.variants)
    notes = notes + _check_changed(sweep, extra, exp_dir, db, rerun_changed)
    failures = _run_matrix(both, extra, exp_dir, db, backend, notes)
    if failures:
        return failures
    chosen = _choose(spec, exp_dir, db)
    tuned = tuning.tuned_spec(spec, chosen["best"])
    failures = _run_matrix(tuned, extra, exp_dir, db, backend, _check_changed(tuned, extra, exp_dir, db, rerun_changed))
    if not failures:
        chosen["tuned_runs"] = {
            tuned.run_id(t.name, s): v.name
            for v, t in zip(spec.variants, tuned.variants, strict=True)
            for s in (t.seeds or spec.seeds)
        }
        atomic_write_json(exp_dir / tuning.SWEEP_FILE, chosen)
    return failures


def _choose(spec: Spec, exp_dir: Path, db: ResultsDB) -> dict:
    """Each variant's tuned value from the sweep runs recorded in `db`, written to sweep.json."""
    from gptlab.experiments.analysis import tuning

    chosen = tuning.choose(spec, {r["run_id"]: r["val_loss"] for r in db.runs()})
    atomic_write_json(exp_dir / tuning.SWEEP_FILE, chosen)
    return chosen


@dataclass
class _SeqOptions:
    max_seeds: int
    per_round: int
    family: list[str]  # the variants compared with the baseline (before --only): the Bonferroni family


def _sequential_options(
    spec: Spec, until_decided: bool, max_seeds: int | None, per_round: int | None
) -> _SeqOptions | None:
    if not until_decided:
        if max_seeds is not None or per_round is not None:
            raise GptlabError("--max-seeds/--seeds-per-round: only with --until-decided")
        return None
    if max_seeds is None:
        raise GptlabError("--until-decided: needs --max-seeds K (the most seeds any variant gets)")
    most = max(len(v.seeds or spec.seeds) for v in spec.variants)
    if max_seeds < max(2, most):
        raise GptlabError(
            f"--max-seeds: {max_seeds} is below the {max(2, most)} seeds the spec already gives "
            f"a variant (at least 2: a t-test needs them)"
        )
    per_round = per_round if per_round is not None else max(2, len(spec.seeds))
    if per_round < 1:
        raise GptlabError(f"--seeds-per-round: expected at least 1, got {per_round}")
    family = [v.name for v in spec.variants if v.name != spec.baseline]
    if not family:
        raise GptlabError("--until-decided: the spec has no variant besides the baseline to decide")
    return _SeqOptions(max_seeds, per_round, family)


def _design_line(spec: Spec, o: _SeqOptions) -> str:
    from gptlab.experiments.analysis import sequential as sq

    looks = sq.schedule(len(spec.seeds), o.per_round, o.max_seeds)
    alpha = spec.alpha / len(o.family)
    ps = sq.nominal_p(sq.boundaries([sq.info_fraction(n, n, o.max_seeds) for n in looks], alpha))
    return (
        f"until decided: {sq.DESIGN}, {len(looks)} looks at {', '.join(map(str, looks))} seeds; "
        f"alpha {spec.alpha:g} / "
        f"{len(o.family)} variant(s); a variant is decided at a look when its p <= "
        f"{', '.join(f'{p:.2g}' for p in ps)}"
    )


def _run_rounds(
    spec: Spec, extra: dict, exp_dir: Path, db: ResultsDB, backend: Backend, o: _SeqOptions, rerun_changed: bool
) -> tuple[list[str], set[str]]:
    """The spec's seeds are run: look at each undecided variant (sequential.py), then add the next round's seeds
    to the undecided variants and the baseline and run them, until every variant is decided or has max_seeds.
    Every look is recomputed from results.sqlite, so an interrupted experiment replays the same rounds when
    re-run. Returns (failed run ids, the run ids of every round)."""
    from gptlab.experiments.analysis.sequential import Sequential, next_seeds

    seeds = {v.name: list(v.seeds or spec.seeds) for v in spec.variants}
    compared = [n for n in o.family if n in seeds]  # --only: the others keep their share of alpha
    seq = Sequential(
        spec.baseline, compared, o.max_seeds, o.per_round, family=len(o.family), alpha=spec.alpha, design=spec.design
    )
    ext, round_no = spec, 1
    while True:
        seq.update(_test_losses(db, spec, seeds), {g: len(s) for g, s in seeds.items()}, round_no)
        print(seq.round_line(), flush=True)
        atomic_write_json(exp_dir / "sequential.json", seq.to_json(len(spec.seeds)))
        new = next_seeds(seeds, seq.undecided(), spec.baseline, o.per_round, o.max_seeds)
        if not new:
            break
        for g, more in new.items():
            seeds[g] = seeds[g] + more
        ext = replace(spec, variants=[replace(v, seeds=seeds[v.name]) for v in spec.variants])
        notes = _check_changed(ext, extra, exp_dir, db, rerun_changed)
        failures = _run_matrix(ext, extra, exp_dir, db, backend, notes)
        if failures:
            return failures, {ext.run_id(v.name, s) for v, s in ext.matrix()}
        round_no += 1
    verdicts = ", ".join(f"{v} {seq.decision.get(v, 'undecided')}" for v in compared)
    print(
        f"{seq.to_json(len(spec.seeds))['design']} (alpha {spec.alpha:g} / {len(o.family)} per variant): "
        f"{verdicts} "
        f"-> {exp_dir / 'sequential.json'}",
        flush=True,
    )
    return [], {ext.run_id(v.name, s) for v, s in ext.matrix()}


def _test_losses(db: ResultsDB, spec: Spec, seeds: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """Each group's recorded finite test losses for its seeds in the matrix, {seed: loss} (a diverged run has
    none; the paired design pairs by seed)."""
    rows = {r["run_id"]: r for r in db.runs()}
    out: dict[str, dict[int, float]] = {}
    for g, ss in seeds.items():
        vals = {s: rows[rid]["test_loss"] for s in ss if (rid := spec.run_id(g, s)) in rows}
        out[g] = {s: float(x) for s, x in vals.items() if x is not None and math.isfinite(x)}
    return out


def _spec_text(spec: Spec, extra: dict) -> str:
    """The spec as run: its file's text, or with --set, its table with the overrides merged into [overrides]."""
    if not extra:
        return spec.path.read_text()
    d = read_toml(spec.path)
    d["overrides"] = deep_merge(d.get("overrides", {}), extra)
    return "# written by `gptlab experiment` with --set merged into [overrides]\n" + tomli_w.dumps(d)


def _check_changed(spec: Spec, extra: dict, exp_dir: Path, db: ResultsDB, rerun_changed: bool) -> list[str]:
    """Stop (one line) if a recorded or started run of the matrix has another config than the spec now gives it;
    with `rerun_changed`, forget those runs' rows and move their folders aside so that they are redone (one
    line each returned, for after the runner's first line)."""
    recorded = {r["run_id"]: r for r in db.runs()}
    changed: list[tuple[str, str]] = []  # (run id, "finished/started with another config (what changed)")
    for v, seed in spec.matrix():
        rid = spec.run_id(v.name, seed)
        run_dir, row = exp_dir / "runs" / rid, recorded.get(rid)
        saved = run_dir / "config.toml"
        if row is None and not saved.is_file():
            continue
        # resolved as the run's `gptlab train` resolves configs/RUN_ID.toml (the same raw table, the same
        # config.resolve; data is prepared by now, so the corpus vocabulary's size is in): the hash it records
        new = spec.resolved_config(v, seed, extra)
        old = config_from_run(run_dir) if saved.is_file() else None
        old_hashes = {h for h in ((row or {}).get("config_hash"), old.hash() if old else None) if h}
        if not old_hashes - {new.hash()}:
            continue
        if old is not None and old.hash() != new.hash():
            what = config_changes(old, new)
        else:
            what = f"config hash {row['config_hash']} -> {new.hash()}"
        done = row is not None or (run_dir / "final.json").exists()
        changed.append((rid, f"{'finished' if done else 'started'} with another config ({what})"))
    if not changed:
        return []
    ids = [rid for rid, _ in changed]
    if not rerun_changed:
        also = f"; also {', '.join(ids[1:])}" if len(ids) > 1 else ""
        raise GptlabError(
            f"{ids[0]}: {changed[0][1]}{also}; re-run with --rerun-changed to redo {'them' if len(ids) > 1 else 'it'}"
        )
    db.forget(ids)
    notes = []
    for rid in ids:
        moved = _move_aside(exp_dir / "runs", rid)
        notes.append(f"{rid}: config changed, redoing it" + (f" (old run folder: {moved})" if moved else ""))
    return notes


def _move_aside(runs: Path, rid: str) -> Path | None:
    """runs/RID, its log and its TensorBoard folder (EXP/tensorboard/RID) -> RID.stale-N beside them, the first N
    free for all three; nothing is deleted. The old curves stay visible in TensorBoard under RID.stale-N."""
    tb = tensorboard_dir(runs.parent)
    moves = [(runs / rid, "{}"), (runs / f"{rid}.log", "{}.log"), (tb / rid, "{}")]
    if not any(src.exists() for src, _ in moves):
        return None
    n = 1
    while any(src.with_name(pat.format(f"{rid}.stale-{n}")).exists() for src, pat in moves):
        n += 1
    for src, pat in moves:
        if src.exists():
            src.rename(src.with_name(pat.format(f"{rid}.stale-{n}")))
    return runs / f"{rid}.stale-{n}"


def _make_backend(
    name: str, exp_dir: Path, parallel: int | None, procs_per_run: int | None, gpus_per_run: int | None, options: dict
) -> Backend:
    if name == "local":
        return LocalBackend(parallel, procs_per_run=procs_per_run, gpus_per_run=gpus_per_run)
    if name == "slurm":
        from gptlab.experiments.run.scheduler.slurm import SlurmBackend

        return SlurmBackend(exp_dir, **options)
    raise GptlabError(f"--backend: expected local or slurm, got '{name}'")


def _keep_only(spec: Spec, only: list[str]) -> None:
    """--only: drop the other variants, keeping the baseline (every comparison needs it)."""
    names = [v.name for v in spec.variants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise GptlabError(f"--only: unknown variant '{unknown[0]}'; variants: {', '.join(names)}")
    keep = set(only) | {spec.baseline}
    spec.variants = [v for v in spec.variants if v.name in keep]


def _prepare_data(cfg, quiet: bool) -> None:
    if (Path(cfg.data.dir) / "meta.json").exists():
        return
    if not cfg.data.source:
        raise GptlabError(f"data.dir: {cfg.data.dir} has no meta.json; run `gptlab prepare` first")
    from gptlab.data.prepare import prepare

    prepare([s.strip() for s in cfg.data.source.split(",")], cfg.data.dir, progress=not quiet)


@dataclass
class _Running:
    """A run in flight on the backend."""

    job: RunJob
    handle: object
    variant: Variant
    seed: int
    started: float


def _run_matrix(
    spec: Spec, extra: dict, exp_dir: Path, db: ResultsDB, backend: Backend, notes: list[str] | None = None
) -> list[str]:
    """Run every run not yet in `db` on `backend`, recording each success as it finishes; return the failed run
    ids. A stop signal (StopSignals) is passed on to the runs in flight; once they have ended (the finished ones
    recorded), Stopped is raised."""
    done = db.run_ids()
    todo = [(v, s) for v, s in spec.matrix() if spec.run_id(v.name, s) not in done]
    print(
        f"experiment {spec.name}: {len(spec.matrix())} runs, {len(spec.matrix()) - len(todo)} already done, "
        f"{len(todo)} to run ({backend.describe()}) -> {exp_dir}",
        flush=True,
    )
    for note in notes or []:
        print(note, flush=True)
    queue, running, failures = list(todo), [], []
    t_start, n_done = time.time(), 0

    def finished(run: _Running, stopped_by: int | None = None) -> None:
        nonlocal n_done
        running.remove(run)
        n_done += 1
        counter = f"[{n_done}/{len(todo)}] {run.job.run_id:<30}"
        if backend.state(run.handle) == State.DONE and (run.job.run_dir / "final.json").exists():
            row = record(db, spec, run.variant, run.seed, run.job.run_dir)
            eta = (time.time() - t_start) / n_done * (len(todo) - n_done)
            print(
                f"{counter} test {row['test_loss']:.4f}  val {row['val_loss']:.4f}  "
                f"{time.time() - run.started:6.1f}s  ETA {eta / 60:.1f} min",
                flush=True,
            )
        elif stopped_by is not None:
            print(f"{counter} stopped ({signal.Signals(stopped_by).name}): {_stopped_how(run, backend)}", flush=True)
        else:
            try:  # a SLURM job cancelled before it started wrote no log
                tail = run.job.log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            except OSError as e:
                tail = [f"no log ({run.job.log}: {e.strerror})"]
            failures.append(run.job.run_id)
            print(f"{counter} FAILED (exit {backend.exit_code(run.handle)}): {tail[0]}", flush=True)

    with StopSignals(defer=True) as stops:
        while queue or running:
            while queue and backend.free_slots() > 0 and stops.signum is None:
                v, seed = queue.pop(0)
                job = _write_job(spec, v, seed, extra, exp_dir)
                running.append(_Running(job, backend.start(job), v, seed, time.time()))
            if stops.signum is not None:
                break
            time.sleep(0.2)
            for run in [r for r in running if backend.state(r.handle) in (State.DONE, State.FAILED)]:
                if (
                    backend.state(run.handle) == State.FAILED
                    and getattr(backend, "requeue_preempted", False)
                    and backend.exit_code(run.handle) == EXIT_PREEMPTED
                    and stops.signum is None
                ):
                    run.handle = backend.requeue(run.handle)  # checkpoint written: resume it in a new job
                    print(
                        f"{'':>{len(str(len(todo))) * 2 + 3}} {run.job.run_id:<30} preempted (exit "
                        f"{EXIT_PREEMPTED}): requeued, resumes from its checkpoint",
                        flush=True,
                    )
                    continue
                finished(run)
        if stops.signum is None:
            return failures
        # stopped: pass it on, start nothing more, wait for every run in flight to end (checkpoint first)
        backend.stop([r.handle for r in running], stops.signum)
        while running:
            time.sleep(0.2)
            for run in [r for r in running if backend.state(r.handle) in (State.DONE, State.FAILED)]:
                finished(run, stops.signum)
        raise Stopped(stops.signum)


def _stopped_how(run: _Running, backend: Backend) -> str:
    """What a run stopped by a signal left: the checkpoint its preempted.json names, or only its exit code."""
    try:
        step = json.loads((run.job.run_dir / MARKER).read_text())["stopped_at"]
        return f"checkpoint at step {step}, resumes from it on re-run"
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"exit {backend.exit_code(run.handle)} before a checkpoint of its own; re-run resumes from its last "
            f"checkpoint, if any"
        )


def _write_job(spec: Spec, v: Variant, seed: int, extra: dict, exp_dir: Path) -> RunJob:
    """Write the run's config; the job that trains it (`gptlab train --resume`, output appended to its log)."""
    rid = spec.run_id(v.name, seed)
    cfg_path = exp_dir / "configs" / f"{rid}.toml"
    atomic_write_text(cfg_path, tomli_w.dumps(spec.raw_config(v, seed, extra)))
    return RunJob(rid, cfg_path, exp_dir / "runs" / rid, exp_dir / "runs" / f"{rid}.log")


def record(db: ResultsDB, spec: Spec, v: Variant, seed: int, run_dir: Path) -> dict:
    """Record a finished run (final.json, meta.json and its per-step metrics) in `db`; return the row."""
    final = read_json(run_dir / "final.json", "delete it and re-run to score the finished run again")
    meta = read_json(run_dir / "meta.json")
    row = {
        "run_id": spec.run_id(v.name, seed),
        "experiment": spec.name,
        "variant": v.name,
        "seed": seed,
        "interventions": json.dumps(v.interventions),
        "run_dir": str(run_dir),
        "config_hash": meta.get("config_hash"),
        "git_commit": meta.get("environment", {}).get("git_commit"),
        "params": final["params"],
        "tokens": final["tokens"],
        "flops": final["flops"],
        "train_loss": final.get("train_loss"),
        "val_loss": final["val_loss"],
        "test_loss": final["test_loss"],
        "wall_time": final.get("wall_time"),
        "tokens_per_s": final.get("tokens_per_s"),
        "finished": time.time(),
    }
    db.record_run(row, _metrics_rows(run_dir))
    return row


def _metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl folded into one row per step (train and val losses are logged as separate records)."""
    from gptlab.io import read_jsonl

    by_step: dict[int, dict] = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        if "step" not in r or r.get("event") == "skipped_batch":
            continue
        row = by_step.setdefault(
            int(r["step"]),
            {"step": int(r["step"]), "tokens": r.get("tokens"), "train_loss": None, "val_loss": None, "lr": None},
        )
        for k in ("train_loss", "val_loss", "lr", "tokens"):
            if r.get(k) is not None:
                row[k] = r[k]
    return [by_step[k] for k in sorted(by_step)]


def _report(spec: Spec, exp_dir: Path, run_ids: set[str]) -> bool:
    """Write the report of the spec's runs `run_ids` (rows of variants or seeds since removed from the spec stay
    in the database, out of the report) and print its verdict table and yardsticks; False (said on stderr) if
    it cannot be."""
    from gptlab.experiments.report import format_table, write_report, yardstick_summary

    refs = {v.name: v.reference for v in spec.variants if v.reference is not None}
    try:
        res = write_report(
            exp_dir,
            baseline=spec.baseline,
            experiment=spec.name,
            reference=refs or None,
            title=spec.name,
            run_ids=run_ids,
            equivalence_margin=spec.equivalence_margin,
            design=spec.design,
            tuned=spec.tune is not None,
            alpha=spec.alpha,
        )
    except GptlabError as e:
        print(f"report not written: {e}", file=sys.stderr)
        return False
    if res.get("tuned"):
        print(f"at the base config's {spec.tune.param}:")
    print(format_table(res["rows"], style="text"))
    if res.get("tuned"):
        print(f"each variant at its best {spec.tune.param} (chosen on validation loss, sweep.json):")
        print(format_table(res["tuned"]["rows"], style="text"))
    print(yardstick_summary(res["yardsticks"]))
    print(f"report: {res['markdown']}  {res['html']}")
    return True
