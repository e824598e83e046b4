"""The stale-run check: a finished (or started) run counts only with the config the spec now gives it. Its
recorded config hash (results.sqlite) and its run folder's config.toml are checked against the spec before
anything starts; a changed one stops the experiment with one line naming the run and the fields, or with
--rerun-changed is redone (its old folder moved aside to runs/RUN_ID.stale-N, with its log and TensorBoard
folder)."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from gptlab import GptlabError
from gptlab.config import config_changes, config_from_run, deep_merge, read_toml
from gptlab.experiments.results import ResultsDB
from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.matrix import PlannedRun
from gptlab.train.loggers import tensorboard_dir


def spec_text(spec: Spec, extra: dict) -> str:
    """The spec as run: its file's text, or its table with --set merged into [overrides] and a `target.config`
    made absolute (spec.toml lives in the experiment folder, where a path relative to the spec would not hold)."""
    if not extra and spec.target is None:
        return spec.path.read_text()
    d = read_toml(spec.path)
    how = []
    if extra:
        d["overrides"] = deep_merge(d.get("overrides", {}), extra)
        how.append("--set merged into [overrides]")
    if spec.target is not None:
        d["target"]["config"] = str(spec.target[0])
        how.append("target.config made absolute")
    return f"# written by `gptlab experiment` with {' and '.join(how)}\n" + tomli_w.dumps(d)


def check_changed(planned: list[PlannedRun], exp_dir: Path, db: ResultsDB, rerun_changed: bool) -> list[str]:
    """Stop (one line) if a recorded or started run of the planned matrix has another config than the spec now
    gives it (its planned config: once the data is prepared, with the corpus vocabulary's size: plan_runs);
    with `rerun_changed`, forget those runs' rows and move their folders aside so that they are redone (one
    line each returned, for after the runner's first line)."""
    recorded = {r["run_id"]: r for r in db.runs()}
    changed: list[tuple[str, str]] = []  # (run id, "finished/started with another config (what changed)")
    for p in planned:
        rid = p.run_id
        run_dir, row = exp_dir / "runs" / rid, recorded.get(rid)
        saved = run_dir / "config.toml"
        if row is None and not saved.is_file():
            continue
        # resolved as the run's `gptlab train` resolves configs/RUN_ID.toml (the same raw table, the same
        # config.resolve; data is prepared by now, so the corpus vocabulary's size is in): the hash it records
        new = p.cfg
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
        moved = move_aside(exp_dir / "runs", rid)
        notes.append(f"{rid}: config changed, redoing it" + (f" (old run folder: {moved})" if moved else ""))
    return notes


def move_aside(runs: Path, rid: str) -> Path | None:
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
