"""Downstream results kept with a run: RUN/downstream.json, written by `gptlab eval RUN --task NAME`
(interop/lm_eval.py) and read by experiment reports. No lm-eval import here, so reports do not need it.

    {"format": 1, "results": {"TASK|limit=N|data=SHA256|task=SHA256|CHECKPOINT": {"task": ..., "acc": ...,
     "acc_stderr": ..., "acc_norm": ..., "acc_norm_stderr": ..., "n_docs": ..., "data_sha256": ...,
     "task_sha256": ..., "checkpoint": ..., ...}}}
"""

from __future__ import annotations

import json
from pathlib import Path

from gptlab import GptlabError

RESULT_FILE = "downstream.json"
FORMAT = 1


def read_results(run_dir: str | Path) -> dict[str, dict]:
    """RUN/downstream.json's entries (key -> entry); {} when there is none."""
    p = Path(run_dir) / RESULT_FILE
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        entries = data["results"]
        if not isinstance(entries, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise GptlabError(
            f"{p}: unreadable (expected JSON with a 'results' object); delete it to start afresh"
        ) from None
    return entries


def entry_key(task: str, limit: int | None, sha: str, settings: str, checkpoint: str) -> str:
    """The evaluation a result is of: task, limit, documents' sha256, task settings' sha256 (lm_eval.task_sha256),
    checkpoint (checkpoint_id)."""
    return f"{task}|limit={limit if limit is not None else 'all'}|data={sha}|task={settings}|{checkpoint}"


def store_result(run_dir: Path, key: str, entry: dict) -> None:
    """Add or replace one entry (the whole file rewritten atomically)."""
    from gptlab.io import atomic_write_json

    entries = read_results(run_dir)
    entries[key] = entry
    atomic_write_json(run_dir / RESULT_FILE, {"format": FORMAT, "results": entries})


def checkpoint_id(ck: Path) -> str:
    """Which model a result belongs to: the checkpoint's name and its weights file's size and mtime (a run
    retrained from scratch in the same folder up to the same step has new weights, so a new id)."""
    from gptlab.train.checkpoint import WEIGHTS

    try:
        st = (ck / WEIGHTS).stat()
    except OSError:
        return ck.name
    return f"{ck.name}:{st.st_size}:{st.st_mtime_ns}"


def report_columns(run_dir: str | Path | None) -> dict[str, tuple[float, str]]:
    """{"TASK acc_norm (n=N)": (acc_norm, "data sha256|task sha256")} of a run's stored results for its latest
    checkpoint (the newest entry per task and number of documents); {} without any. Never raises: a report must not
    fail on a damaged downstream.json."""
    if run_dir is None:
        return {}
    try:
        from gptlab.train import latest_checkpoint

        ck = latest_checkpoint(Path(run_dir))
        entries = read_results(run_dir)
    except (GptlabError, OSError):
        return {}
    if ck is None:
        return {}
    model = checkpoint_id(ck)
    out: dict[str, tuple[str, float, str]] = {}
    for e in entries.values():
        if not isinstance(e, dict) or e.get("checkpoint") != model or not isinstance(e.get("acc_norm"), (int, float)):
            continue  # another model's, or damaged (the report must not fail on it)
        label = f"{e.get('task')} acc_norm (n={e.get('n_docs')})"
        when = str(e.get("evaluated_at", ""))
        if label not in out or when >= out[label][0]:
            out[label] = (when, float(e["acc_norm"]), f"{e.get('data_sha256')}|{e.get('task_sha256')}")
    return {k: (v, sha) for k, (_, v, sha) in out.items()}
