"""`gptlab experiment SPEC --status`: where every run of the matrix stands, read without touching anything.

done: recorded in results.sqlite (or final.json written, not yet recorded); running: its SLURM job is queued or
running (squeue), or a local `gptlab train` process works on its run folder; failed: started (a log or run folder
exists) but neither done nor running (crashed, killed, or a job that ended without final.json); pending: never
started. SLURM job ids come from EXP/slurm/jobs.json; the last line of each run's log is shown, and for every run
that has logged (running, done, or stopped part way) its progress from its metrics.jsonl: the latest step of the
planned total (meta.json) and the latest train and val loss. When the runs log to TensorBoard (train.loggers), the
`tensorboard --logdir EXP/tensorboard` command that shows their curves is printed below."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import from_dict, read_toml
from gptlab.experiments.run.scheduler.slurm import (
    IN_SLURM,
    QUEUED,
    load_jobs,
    squeue_states,
)
from gptlab.experiments.specs.experiment import load_spec
from gptlab.experiments.specs.matrix import first_seeds, plan_matrix
from gptlab.train.loggers import tensorboard_dir


def experiment_status(
    spec_path: str, out: str | None = None, overrides: list[str] | None = None, first_look: int | None = None
) -> list[dict]:
    """One row per run: run_id, state, job_id (or None), slurm_state (or None), last log line. The runs are the
    spec's matrix (a tuned spec's sweep too, at the base values that `overrides`, the run's --set, give; with
    `first_look`, the run's --first-look, the first seeds only), then every other run the folder knows of
    (recorded, submitted, or with a run folder or log): the later rounds of a run `--until-decided`, a tuned
    matrix, runs of an earlier spec."""
    spec = load_spec(spec_path)
    if first_look is not None:
        spec = first_seeds(spec, first_look)
    exp_dir = Path(out or Path("experiments") / spec.name)
    recorded = _recorded(exp_dir / "results.sqlite")
    jobs = load_jobs(exp_dir)
    queue = squeue_states() if jobs else {}
    local = _local_train_run_dirs()
    rows = []
    matrix = spec.matrix()
    if spec.tune:  # the sweep's runs too (tuning.py)
        from gptlab.config import parse_overrides
        from gptlab.experiments.analysis.tuning import base_values, sweep_spec

        planned = plan_matrix(spec, parse_overrides(overrides or []))
        matrix += sweep_spec(spec, base_values(spec, planned)).matrix()
    planned_ids = [spec.run_id(v.name, seed) for v, seed in matrix]
    for rid in planned_ids + _others(exp_dir, recorded | set(jobs), planned_ids):
        run_dir, log = exp_dir / "runs" / rid, exp_dir / "runs" / f"{rid}.log"
        job_id = jobs.get(rid, {}).get("job_id")
        sstate = queue.get(job_id) if job_id else None
        if rid in recorded:
            state = "done"
        elif (run_dir / "final.json").exists():
            state = "done (not recorded yet)"
        elif sstate in QUEUED:
            state = "pending"
        elif sstate in IN_SLURM or str(run_dir.resolve()) in local:
            state = "running"
        elif job_id or log.exists() or run_dir.exists():
            state = "failed"
        else:
            state = "pending"
        rows.append(
            {
                "run_id": rid,
                "state": state,
                "job_id": job_id,
                "slurm_state": sstate,
                "log": _last_line(log),
                **progress(run_dir),
                "tensorboard": str(tensorboard_dir(exp_dir)) if _logs_to_tensorboard(exp_dir, rid) else None,
            }
        )
    return rows


def _others(exp_dir: Path, known: set[str], planned: list[str]) -> list[str]:
    """The run ids in `known` or with a folder or log in EXP/runs that are not `planned`, in name order with seeds
    in numeric order (a changed run moved aside, RID.stale-N, is no run)."""
    runs = exp_dir / "runs"
    found = set(known)
    if runs.is_dir():
        found |= {p.name.removesuffix(".log") for p in runs.iterdir() if p.is_dir() or p.suffix == ".log"}
    others = {r for r in found - set(planned) if ".stale-" not in r}

    def order(rid: str) -> tuple[str, int, str]:
        name, _, seed = rid.rpartition("-s")
        return (name, int(seed), "") if seed.isdigit() else (rid, 0, rid)

    return sorted(others, key=order)


def progress(run_dir: Path) -> dict:
    """{"step", "total_steps", "train_loss", "val_loss"} of a run folder from its metrics.jsonl and meta.json (None
    where not logged yet). Only the file's end is read unless the latest val loss lies further back."""
    path = run_dir / "metrics.jsonl"
    rows = _tail_rows(path, 1 << 16)
    if not any("val_loss" in r for r in rows):
        rows = _tail_rows(path, None)
    train = [r for r in rows if "train_loss" in r]
    val = [r for r in rows if "val_loss" in r]
    steps = [r["step"] for r in (train or val)]
    total = None
    try:
        total = json.loads((run_dir / "meta.json").read_text()).get("total_steps")
    except (OSError, ValueError):
        pass
    return {
        "step": max(steps) if steps else None,
        "total_steps": total,
        "train_loss": train[-1]["train_loss"] if train else None,
        "val_loss": val[-1]["val_loss"] if val else None,
    }


def _tail_rows(path: Path, size: int | None) -> list[dict]:
    """The JSON rows in the last `size` bytes of `path` (all of it: None); torn or cut lines are skipped."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(0 if size is None else max(0, end - size))
        lines = f.read().decode(errors="replace").splitlines()
    if size is not None and end > size:
        lines = lines[1:]  # the first line is cut
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            out.append(row)
    return out


def _logs_to_tensorboard(exp_dir: Path, rid: str) -> bool:
    """Whether the run was started (configs/RUN_ID.toml) with tensorboard in train.loggers."""
    cfg = exp_dir / "configs" / f"{rid}.toml"
    if not cfg.is_file():
        return False
    try:
        return "tensorboard" in from_dict(read_toml(cfg), str(cfg)).train.loggers
    except GptlabError:
        return False


def _progress_text(r: dict) -> str:
    if r.get("step") is None:
        return "-"
    out = f"{r['step']}/{r['total_steps'] if r.get('total_steps') is not None else '?'}"
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if r.get(key) is not None:
            out += f" {label} {r[key]:.4f}"
    return out


def format_status(rows: list[dict]) -> str:
    w = max([len(r["run_id"]) for r in rows] + [6])
    pw = max([len(_progress_text(r)) for r in rows] + [8])
    lines = [f"{'run':<{w}}  {'state':<23}  {'job':<10}  {'progress':<{pw}}  last log line"]
    for r in rows:
        job = (r["job_id"] or "-") + (f" {r['slurm_state'][:2]}" if r["slurm_state"] else "")
        lines.append(f"{r['run_id']:<{w}}  {r['state']:<23}  {job:<10}  {_progress_text(r):<{pw}}  {r['log'][:100]}")
    counts: dict[str, int] = {}
    for r in rows:
        key = r["state"].split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    for d in dict.fromkeys(r["tensorboard"] for r in rows if r.get("tensorboard")):
        lines.append(f"curves: tensorboard --logdir {d}")
    return "\n".join(lines)


def _recorded(db: Path) -> set[str]:
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return {r[0] for r in c.execute("select run_id from runs")}
    except sqlite3.OperationalError:  # created, tables not yet
        return set()
    except sqlite3.DatabaseError as e:  # damaged or not SQLite
        from gptlab.experiments.results import damaged

        raise damaged(db, e) from None


def _last_line(log: Path) -> str:
    if not log.exists():
        return ""
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = [x for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


def _local_train_run_dirs() -> set[str]:
    """Run folders that a `gptlab train` process on this machine works on (from /proc; empty elsewhere)."""
    found = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            args = (p / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args]
        if "gptlab" in args and "train" in args and "--run-dir" in args:
            i = args.index("--run-dir") + 1
            if i < len(args):
                found.add(str(Path(cwd, args[i]).resolve()))
    return found
