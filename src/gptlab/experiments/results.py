"""The experiment's results database: `results.sqlite` in the experiment folder.

Plain stdlib sqlite3 in WAL mode with a busy timeout, so several training processes can record
finished runs into the same file at once. Every write is one transaction: a crash leaves either
the whole run (row + metrics) or nothing, and re-recording a run_id replaces it.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gptlab import GptlabError

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"
BUSY_TIMEOUT_S = 60.0

RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "experiment",
    "variant",
    "seed",
    "interventions",
    "run_dir",
    "config_hash",
    "git_commit",
    "params",
    "tokens",
    "flops",
    "train_loss",
    "val_loss",
    "test_loss",
    "wall_time",
    "tokens_per_s",
    "finished",
)
METRIC_COLUMNS: tuple[str, ...] = ("run_id", "step", "tokens", "train_loss", "val_loss", "lr")
JUDGE_COLUMNS: tuple[str, ...] = ("run_id", "item", "instruction", "response", "score", "judge_model")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    run_id TEXT PRIMARY KEY, experiment TEXT, variant TEXT, seed INTEGER, interventions TEXT,
    run_dir TEXT, config_hash TEXT, git_commit TEXT, params INTEGER, tokens INTEGER, flops REAL,
    train_loss REAL, val_loss REAL, test_loss REAL, wall_time REAL, tokens_per_s REAL, finished REAL);
CREATE TABLE IF NOT EXISTS metrics(
    run_id TEXT, step INTEGER, tokens INTEGER, train_loss REAL, val_loss REAL, lr REAL,
    PRIMARY KEY(run_id, step));
CREATE TABLE IF NOT EXISTS judge_scores(
    run_id TEXT, item INTEGER, instruction TEXT, response TEXT, score REAL, judge_model TEXT,
    PRIMARY KEY(run_id, item, judge_model));
CREATE INDEX IF NOT EXISTS runs_experiment_variant ON runs(experiment, variant);
"""


def _float_or_none(v: Any) -> float | None:
    """SQLite turns NaN into NULL anyway; do it explicitly so reads are predictable."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


_INT_COLS = {"seed", "params", "tokens", "step", "item"}
_REAL_COLS = {"flops", "train_loss", "val_loss", "test_loss", "wall_time", "tokens_per_s", "finished", "lr", "score"}


def _coerce(col: str, v: Any) -> Any:
    if col in _INT_COLS:
        return _int_or_none(v)
    if col in _REAL_COLS:
        return _float_or_none(v)
    if col == "interventions":
        if v is None:
            return json.dumps([])
        if isinstance(v, str):
            try:
                json.loads(v)
            except json.JSONDecodeError:
                return json.dumps([v])  # a single intervention name given as a bare string
            return v
        return json.dumps(list(v))
    return None if v is None else str(v)


def damaged(path: str | Path, e: sqlite3.Error) -> GptlabError:
    """One line for a results database SQLite cannot use (overwritten, truncated, not SQLite at all)."""
    return GptlabError(
        f"{path}: not a usable gptlab results database (SQLite said: {e}); move it aside and re-run "
        "`gptlab experiment`: finished runs are recorded again from their run folders' final.json "
        "without training"
    )


def _one_line(method):
    """A public method of ResultsDB: an SQLite error there (a damaged page, a disk I/O error) is one line naming
    the file. SQLite reports a damaged page only when a query reaches it, so opening the file is not enough."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise damaged(self.path, e) from None

    return wrapper


class ResultsDB:
    """`with ResultsDB(exp_dir / "results.sqlite") as db: db.record_run(row, metrics)`.

    `create=False` refuses to create a missing file (for readers such as the report).
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise GptlabError(f"{self.path} is a folder, expected a results database file")
        if not self.path.exists():
            if not create:
                raise GptlabError(f"no results database at {self.path} (no finished runs recorded yet?)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise GptlabError(f"cannot open results database {self.path}: {e}") from None
        self._con.row_factory = sqlite3.Row
        try:
            self._init_retrying()
        except sqlite3.DatabaseError as e:
            self._con.close()
            raise damaged(self.path, e) from None
        except BaseException:
            self._con.close()
            raise

    # ------------------------------------------------------------------ setup
    def _init_retrying(self) -> None:
        """_init, retried while another process holds the file: switching a new file to WAL needs an exclusive
        lock, and SQLite answers "database is locked" there at once instead of waiting out busy_timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.01
        while True:
            try:
                return self._init()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(0.5, delay * 2)

    def _init(self) -> None:
        c = self._con
        c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # This read fails with "file is not a database" for a non-SQLite file.
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise GptlabError(
                f"{self.path} has results schema version {version}; this gptlab understands up to "
                f"{SCHEMA_VERSION} (upgrade gptlab)"
            )
        mode = c.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA synchronous = FULL")
        c.execute("PRAGMA foreign_keys = OFF")
        if version < SCHEMA_VERSION:
            with self._transaction():
                # (executescript would COMMIT mid-way; run the statements one by one instead)
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        else:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"runs", "metrics", "judge_scores"} - tables
            if missing:
                raise GptlabError(f"{self.path} is missing table(s) {', '.join(sorted(missing))}")

    class _Tx:
        def __init__(self, con: sqlite3.Connection) -> None:
            self.con = con

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so two
            # writers never deadlock upgrading read locks.
            try:
                self.con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise GptlabError(f"results database busy or unwritable ({e}); another process may hold it") from None
            return self.con

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.con.execute("COMMIT")
            else:
                self.con.execute("ROLLBACK")

    def _transaction(self) -> ResultsDB._Tx:
        return ResultsDB._Tx(self._con)

    # ------------------------------------------------------------------ writes
    @_one_line
    def record_run(self, row: dict, metrics: Iterable[dict] = ()) -> None:
        """Insert or replace one finished run and its per-step metrics, atomically.

        `row` keys must be columns of `runs` (run_id required); `interventions` may be a list.
        Metric dicts need `step`; their other keys among tokens/train_loss/val_loss/lr are stored
        and anything else in them is ignored. Old metrics of the same run_id are replaced.
        """
        if not isinstance(row, dict) or not row.get("run_id"):
            raise GptlabError("record_run needs a row dict with a non-empty 'run_id'")
        unknown = sorted(set(row) - set(RUN_COLUMNS))
        if unknown:
            raise GptlabError(
                f"record_run: unknown field(s) {', '.join(unknown)} for run {row['run_id']} "
                f"(valid: {', '.join(RUN_COLUMNS)})"
            )
        full = {col: row.get(col) for col in RUN_COLUMNS}
        if full["finished"] is None:
            full["finished"] = time.time()
        values = [_coerce(col, full[col]) for col in RUN_COLUMNS]
        run_id = values[0]
        mrows = []
        for i, m in enumerate(metrics):
            if "step" not in m or m["step"] is None:
                raise GptlabError(f"record_run: metrics entry {i} of run {run_id} has no 'step'")
            mrows.append([run_id] + [_coerce(col, m.get(col)) for col in METRIC_COLUMNS[1:]])
        placeholders = ", ".join("?" for _ in RUN_COLUMNS)
        mplace = ", ".join("?" for _ in METRIC_COLUMNS)
        with self._transaction() as c:
            c.execute(f"INSERT OR REPLACE INTO runs({', '.join(RUN_COLUMNS)}) VALUES ({placeholders})", values)
            c.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            c.executemany(f"INSERT OR REPLACE INTO metrics({', '.join(METRIC_COLUMNS)}) VALUES ({mplace})", mrows)

    @_one_line
    def forget(self, run_ids: list[str]) -> None:
        """Remove these runs' rows (the run, its metrics, its judge scores) in one transaction."""
        marks = ", ".join("?" for _ in run_ids)
        with self._transaction() as c:
            for table in ("runs", "metrics", "judge_scores"):
                c.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", [str(r) for r in run_ids])

    @_one_line
    def record_judge(self, run_id: str, judge_model: str, items: Iterable[dict]) -> None:
        """Replace this (run, judge model)'s scores with `items` (dicts: item, instruction, response,
        score; score None = the judge's answer could not be parsed), in one transaction."""
        rows = []
        for i, it in enumerate(items):
            item = it.get("item", i)
            rows.append(
                (
                    str(run_id),
                    int(item),
                    _coerce("instruction", it.get("instruction")),
                    _coerce("response", it.get("response")),
                    _float_or_none(it.get("score")),
                    str(judge_model),
                )
            )
        with self._transaction() as c:
            c.execute("DELETE FROM judge_scores WHERE run_id = ? AND judge_model = ?", (str(run_id), str(judge_model)))
            c.executemany(
                f"INSERT OR REPLACE INTO judge_scores({', '.join(JUDGE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)", rows
            )

    # ------------------------------------------------------------------ reads
    @_one_line
    def runs(self, experiment: str | None = None) -> list[dict]:
        """Run rows as dicts (interventions decoded to a list), ordered by variant, seed, run_id."""
        q = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        args: tuple = ()
        if experiment is not None:
            q += " WHERE experiment = ?"
            args = (experiment,)
        q += " ORDER BY variant, seed, run_id"
        out = []
        for r in self._con.execute(q, args):
            d = dict(r)
            try:
                d["interventions"] = json.loads(d["interventions"]) if d["interventions"] else []
            except json.JSONDecodeError:
                d["interventions"] = [d["interventions"]]
            out.append(d)
        return out

    @_one_line
    def run_ids(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT run_id FROM runs")}

    @_one_line
    def metrics(self, run_id: str) -> list[dict]:
        q = f"SELECT {', '.join(METRIC_COLUMNS[1:])} FROM metrics WHERE run_id = ? ORDER BY step"
        return [dict(r) for r in self._con.execute(q, (run_id,))]

    @_one_line
    def judge_items(self, run_id: str, judge_model: str | None = None) -> list[dict]:
        q = f"SELECT {', '.join(JUDGE_COLUMNS)} FROM judge_scores WHERE run_id = ?"
        args: tuple = (run_id,)
        if judge_model is not None:
            q += " AND judge_model = ?"
            args += (judge_model,)
        return [dict(r) for r in self._con.execute(q + " ORDER BY judge_model, item", args)]

    @_one_line
    def judge_summary(self, judge_model: str | None = None) -> dict[str, float]:
        """{run_id: mean parsed score} over all judge models (or one); unparsed (NULL) scores are
        left out, and runs with no parsed score at all are absent."""
        q = "SELECT run_id, AVG(score) FROM judge_scores WHERE score IS NOT NULL"
        args: tuple = ()
        if judge_model is not None:
            q += " AND judge_model = ?"
            args = (judge_model,)
        return {r[0]: float(r[1]) for r in self._con.execute(q + " GROUP BY run_id", args)}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        con = getattr(self, "_con", None)
        if con is not None:
            con.close()
            self._con = None  # type: ignore[assignment]

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def record_judge_scores(db_path: str | Path, scores: dict[tuple[str, str], Iterable[dict]]) -> None:
    """The one way into a results database from outside experiments/ (the judge): for each (run_id, judge_model),
    replace its per-item scores with the given ones (dicts: item, instruction, response, score)."""
    with ResultsDB(db_path) as db:
        for (run_id, judge_model), items in scores.items():
            db.record_judge(run_id, judge_model, items)
