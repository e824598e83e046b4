"""The run loop: each run of a matrix not yet recorded is a `gptlab train --resume` started by a backend
(scheduler/), resumable (finished runs skipped, partial ones resumed from their checkpoints, never duplicated),
and every result recorded in `results.sqlite` by this process alone as it finishes. Progress lines go to
`logging` (the CLI shows them on stdout)."""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.scheduler import Backend, RunJob, State
from gptlab.experiments.run.stops import Stopped, StopSignals
from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.matrix import PlannedRun
from gptlab.io import atomic_write_text, read_json
from gptlab.train.signals import EXIT_PREEMPTED, MARKER

log = logging.getLogger(__name__)


@dataclass
class _Running:
    """A run in flight on the backend."""

    job: RunJob
    handle: object
    planned: PlannedRun
    started: float


def run_matrix(
    spec: Spec,
    planned: list[PlannedRun],
    exp_dir: Path,
    db: ResultsDB,
    backend: Backend,
    notes: list[str] | None = None,
) -> list[str]:
    """Run every run of `spec`'s planned matrix (specs/matrix.py) not yet in `db` on `backend`, recording each
    success as it finishes; return the failed run ids. A stop signal (StopSignals) is passed on to the runs in
    flight; once they have ended (the finished ones recorded), Stopped is raised."""
    done = db.run_ids()
    todo = [p for p in planned if p.run_id not in done]
    log.info(
        f"experiment {spec.name}: {len(planned)} runs, {len(planned) - len(todo)} already done, "
        f"{len(todo)} to run ({backend.describe()}) -> {exp_dir}"
    )
    for note in notes or []:
        log.info(note)
    queue, running, failures = list(todo), [], []
    t_start, n_done = time.time(), 0

    def finished(run: _Running, stopped_by: int | None = None) -> None:
        nonlocal n_done
        running.remove(run)
        n_done += 1
        counter = f"[{n_done}/{len(todo)}] {run.job.run_id:<30}"
        if backend.state(run.handle) == State.DONE and (run.job.run_dir / "final.json").exists():
            row = record(db, spec, run.planned, run.job.run_dir)
            eta = (time.time() - t_start) / n_done * (len(todo) - n_done)
            log.info(
                f"{counter} test {row['test_loss']:.4f}  val {row['val_loss']:.4f}  "
                f"{time.time() - run.started:6.1f}s  ETA {eta / 60:.1f} min"
            )
        elif stopped_by is not None:
            log.info(f"{counter} stopped ({signal.Signals(stopped_by).name}): {_stopped_how(run, backend)}")
        else:
            try:  # a SLURM job cancelled before it started wrote no log
                tail = run.job.log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            except OSError as e:
                tail = [f"no log ({run.job.log}: {e.strerror})"]
            failures.append(run.job.run_id)
            log.info(f"{counter} FAILED (exit {backend.exit_code(run.handle)}): {tail[0]}")

    with StopSignals(defer=True) as stops:
        while queue or running:
            while queue and backend.free_slots() > 0 and stops.signum is None:
                p = queue.pop(0)
                job = write_job(p, exp_dir)
                running.append(_Running(job, backend.start(job), p, time.time()))
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
                    log.info(
                        f"{'':>{len(str(len(todo))) * 2 + 3}} {run.job.run_id:<30} preempted (exit "
                        f"{EXIT_PREEMPTED}): requeued, resumes from its checkpoint"
                    )
                    continue
                finished(run)
        if stops.signum is None:
            return failures
        # stopped: pass it on, start nothing more, wait for every run in flight to end (checkpoint first); a second
        # stop signal meanwhile kills them (a run that does not end: hung, stopped, slow to checkpoint)
        backend.stop([r.handle for r in running], stops.signum)
        killed = False
        while running:
            time.sleep(0.2)
            if stops.count > 1 and not killed:
                killed = True
                log.info(f"second stop signal: {backend.kill([r.handle for r in running])}")
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


def write_job(p: PlannedRun, exp_dir: Path) -> RunJob:
    """Write the planned run's config (its raw table); the job that trains it (`gptlab train --resume`, output
    appended to its log)."""
    rid = p.run_id
    cfg_path = exp_dir / "configs" / f"{rid}.toml"
    atomic_write_text(cfg_path, tomli_w.dumps(p.raw))
    return RunJob(rid, cfg_path, exp_dir / "runs" / rid, exp_dir / "runs" / f"{rid}.log")


def record(db: ResultsDB, spec: Spec, p: PlannedRun, run_dir: Path) -> dict:
    """Record a finished run of `spec` (final.json, meta.json and its per-step metrics) in `db`; return the row."""
    final = read_json(run_dir / "final.json", "delete it and re-run to score the finished run again")
    meta = read_json(run_dir / "meta.json")
    row = {
        "run_id": p.run_id,
        "experiment": spec.name,
        "variant": p.variant.name,
        "seed": p.seed,
        "interventions": json.dumps(p.variant.interventions),
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
