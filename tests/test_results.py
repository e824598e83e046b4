"""gptlab.experiments.results: the real SQLite file, one-transaction writes, parallel writers, bad files."""

from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from gptlab import GptlabError
from gptlab.experiments.results import ResultsDB


def _row(run_id: str, **kw) -> dict:
    row = dict(
        run_id=run_id,
        experiment="exp",
        variant="baseline",
        seed=0,
        interventions=[],
        run_dir=f"runs/{run_id}",
        config_hash="abc",
        git_commit="deadbeef",
        params=1000,
        tokens=4096,
        flops=1e12,
        train_loss=4.1,
        val_loss=4.2,
        test_loss=4.25,
        wall_time=12.5,
        tokens_per_s=327.7,
    )
    row.update(kw)
    return row


def _metrics(n: int, offset: float = 0.0) -> list[dict]:
    return [
        dict(
            step=i,
            tokens=i * 128,
            train_loss=10.0 - i * 0.01 + offset,
            val_loss=(9.0 - i * 0.01) if i % 10 == 0 else None,
            lr=1e-3,
        )
        for i in range(n)
    ]


def test_schema_wal_and_roundtrip(tmp_path: Path):
    path = tmp_path / "exp" / "results.sqlite"
    with ResultsDB(path) as db:
        db.record_run(_row("r1", interventions=["grad_clip", "qkv_bias"]), _metrics(5))
        db.record_run(_row("r2", experiment="other", variant="no_dropout", seed=1), [])
    assert path.is_file()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "metrics", "judge_scores"} <= tables
    con.close()

    with ResultsDB(path, create=False) as db:  # reopen: data persisted
        assert db.run_ids() == {"r1", "r2"}
        (r1,) = db.runs("exp")
        assert r1["interventions"] == ["grad_clip", "qkv_bias"]
        assert r1["test_loss"] == 4.25 and r1["params"] == 1000 and r1["finished"] > 0
        assert [r["run_id"] for r in db.runs()] == ["r1", "r2"]
        ms = db.metrics("r1")
        assert [m["step"] for m in ms] == [0, 1, 2, 3, 4]
        assert ms[0]["val_loss"] == 9.0 and ms[1]["val_loss"] is None and ms[2]["tokens"] == 256


def test_rerecording_replaces_not_duplicates(tmp_path: Path):
    path = tmp_path / "results.sqlite"
    with ResultsDB(path) as db:
        db.record_run(_row("r1", test_loss=4.0), _metrics(50))
        db.record_run(_row("r1", test_loss=3.9), _metrics(20, offset=1.0))
        assert len(db.runs()) == 1
        assert db.runs()[0]["test_loss"] == 3.9
        ms = db.metrics("r1")
        assert len(ms) == 20
        assert ms[0]["train_loss"] == 11.0
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 20
    con.close()


class _FailingMetricsConnection:
    """Wraps a sqlite3 connection; the metrics insert blows up half-way through record_run."""

    def __init__(self, con):
        self._con = con

    def execute(self, *a):
        return self._con.execute(*a)

    def executemany(self, sql, rows):
        raise RuntimeError("simulated crash while writing metrics")


def test_failed_write_leaves_old_version_intact(tmp_path: Path):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        db.record_run(_row("r1", test_loss=4.0), _metrics(10))
        real = db._con
        db._con = _FailingMetricsConnection(real)
        with pytest.raises(RuntimeError):
            db.record_run(_row("r1", test_loss=1.0), _metrics(3))
        with pytest.raises(RuntimeError):
            db.record_run(_row("r2"), _metrics(3))
        db._con = real
        assert db.run_ids() == {"r1"}
        assert db.runs()[0]["test_loss"] == 4.0  # neither the row nor the metrics changed
        assert len(db.metrics("r1")) == 10
        assert db.metrics("r2") == []


def test_nan_loss_stored_as_null_and_unknown_fields_rejected(tmp_path: Path):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        db.record_run(_row("r1", test_loss=float("nan")), [dict(step=0, train_loss=float("nan"), extra="ignored")])
        assert db.runs()[0]["test_loss"] is None
        assert db.metrics("r1") == [dict(step=0, tokens=None, train_loss=None, val_loss=None, lr=None)]
        with pytest.raises(GptlabError, match="unknown field.*test_los"):
            db.record_run(_row("r2", test_los=3.0), [])
        with pytest.raises(GptlabError, match="run_id"):
            db.record_run({"variant": "x"}, [])
        with pytest.raises(GptlabError, match="step"):
            db.record_run(_row("r3"), [dict(tokens=5)])
        assert db.run_ids() == {"r1"}


def test_judge_scores(tmp_path: Path):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        db.record_run(_row("r1"), [])
        items = [dict(item=i, instruction=f"q{i}", response=f"a{i}", score=s) for i, s in enumerate([4, 2, None])]
        db.record_judge("r1", "judge-a", items)
        db.record_judge("r2", "judge-a", [dict(item=0, instruction="q", response="a", score=None)])
        assert db.judge_summary() == {"r1": pytest.approx(3.0)}  # NULL = unparsed, left out; r2 has none parsed
        db.record_judge("r1", "judge-a", items[:1])  # re-judging replaces this judge's items
        db.record_judge("r1", "judge-b", [dict(item=0, instruction="q", response="a", score=2.0)])
        assert db.judge_summary() == {"r1": pytest.approx(3.0)}
        assert db.judge_summary("judge-a") == {"r1": pytest.approx(4.0)}
        assert len(db.judge_items("r1")) == 2


def _writer(path: str, prefix: str, n_runs: int, barrier) -> None:
    barrier.wait()
    with ResultsDB(path) as db:
        for i in range(n_runs):
            db.record_run(_row(f"{prefix}{i}", variant=prefix, seed=i), _metrics(100))


def test_two_processes_write_concurrently(tmp_path: Path):
    path = str(tmp_path / "results.sqlite")
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, p, 25, barrier)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with ResultsDB(path) as db:
        assert db.run_ids() == {f"a{i}" for i in range(25)} | {f"b{i}" for i in range(25)}
        assert all(len(db.metrics(r)) == 100 for r in ("a0", "a24", "b0", "b24"))
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 50 * 100
    con.close()


def test_not_a_database_file(tmp_path: Path):
    bad = tmp_path / "results.sqlite"
    bad.write_text("this is a text file, not SQLite\n" * 100)
    with pytest.raises(GptlabError, match="results.sqlite"):
        ResultsDB(bad)
    assert bad.read_text().startswith("this is a text file")  # left untouched
    with pytest.raises(GptlabError, match="no results database"):
        ResultsDB(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(GptlabError, match="folder"):
        ResultsDB(tmp_path)


def test_newer_schema_refused(tmp_path: Path):
    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 7")
    con.close()
    with pytest.raises(GptlabError, match="version 7"):
        ResultsDB(path)


def test_finite_values_roundtrip(tmp_path: Path):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        db.record_run(_row("r1", flops=float("inf")), [])
        assert math.isinf(db.runs()[0]["flops"])
