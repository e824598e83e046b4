"""gptlab.report on a synthetic experiment with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gptlab import GptlabError
from gptlab.report import build_rows, format_table, write_report
from gptlab.results import ResultsDB

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Final test losses per seed, built so the answer is known:
#   grad_clip  ~0.10 lower than baseline with the same small spread -> "better"
#   no_dropout ~0.10 higher                                         -> "worse"
#   qkv_bias   same mean as baseline, same spread                   -> "within noise at n=4"
TEST_LOSS = {
    "baseline": [4.000, 4.012, 3.991, 4.005],
    "grad_clip": [3.902, 3.895, 3.910, 3.899],
    "no_dropout": [4.101, 4.093, 4.110, 4.104],
    "qkv_bias": [4.010, 3.994, 4.003, 3.998],
}


def _record(db: ResultsDB, variant: str, seed: int, final: float, steps: int = 60, judge: bool = False) -> None:
    run_id = f"{variant}-s{seed}"
    metrics = []
    for s in range(steps + 1):
        loss = final + (10.8 - final) * math.exp(-s / 8.0) + 0.02 * math.sin(s + seed)
        metrics.append(dict(step=s, tokens=s * 2048, train_loss=loss - 0.03,
                            val_loss=loss if s % 10 == 0 else None, lr=1e-3))
    db.record_run(dict(run_id=run_id, experiment="synthetic", variant=variant, seed=seed,
                       interventions=[] if variant == "baseline" else [variant], tokens=steps * 2048,
                       test_loss=final, val_loss=final - 0.01, train_loss=final - 0.05,
                       tokens_per_s=1000.0 + seed, git_commit="abc123"), metrics)
    if judge:
        db.record_judge(run_id, "judge-1", [dict(item=i, instruction="q", response="a", score=3.0 + (i % 2))
                                             for i in range(4)])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    exp = tmp_path_factory.mktemp("exp")
    with ResultsDB(exp / "results.sqlite") as db:
        for variant, losses in TEST_LOSS.items():
            for seed, loss in enumerate(losses):
                _record(db, variant, seed, loss, judge=variant in ("baseline", "grad_clip"))
    res = write_report(exp, reference={"baseline": 3.95, "grad_clip": 3.91})
    return exp, res


def test_files_exist_and_pngs_valid(report):
    exp, res = report
    assert Path(res["markdown"]) == exp / "report.md" and Path(res["html"]) == exp / "report.html"
    assert sorted(Path(p).name for p in res["plots"]) == ["delta.png", "loss_curves.png", "test_loss.png"]
    for p in res["plots"]:
        data = Path(p).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 5 * 1024
        assert Path(p).parent == exp / "plots"
    assert not list(exp.glob(".*.tmp")) and not list((exp / "plots").glob(".*.tmp"))  # atomic writes cleaned up


def test_verdicts_match_construction(report):
    _, res = report
    rows = {r["variant"]: r for r in res["rows"]}
    assert rows["baseline"]["verdict"] == "baseline"
    assert rows["grad_clip"]["verdict"] == "better"
    assert rows["no_dropout"]["verdict"] == "worse"
    assert rows["qkv_bias"]["verdict"] == "within noise at n=4"
    assert rows["grad_clip"]["diff"] == pytest.approx(sum(TEST_LOSS["grad_clip"]) / 4 - sum(TEST_LOSS["baseline"]) / 4)
    assert rows["grad_clip"]["diff_ci_high"] < 0 < rows["no_dropout"]["diff_ci_low"]
    assert rows["qkv_bias"]["diff_ci_low"] < 0 < rows["qkv_bias"]["diff_ci_high"]
    assert rows["grad_clip"]["p_holm"] >= rows["grad_clip"]["p"]
    assert rows["grad_clip"]["judge"] == pytest.approx(3.5) and rows["qkv_bias"]["judge"] is None
    assert rows["grad_clip"]["published"] == 3.91 and rows["no_dropout"]["published"] is None
    assert rows["baseline"]["n"] == 4 and rows["baseline"]["tokens_per_s"] == pytest.approx(1001.5)
    # Sorted: baseline first, then by mean test loss.
    assert [r["variant"] for r in res["rows"]] == ["baseline", "grad_clip", "qkv_bias", "no_dropout"]


def test_markdown_table(report):
    exp, res = report
    table = res["table"]
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for col in ("variant", "n seeds", "mean test loss", "95% CI", "Δ vs baseline", "95% CI of Δ", "p (Welch)",
                "p (Holm)", "Hedges' g", "verdict", "seeds needed", "tokens/s", "judge score", "published"):
        assert col in header
    assert lines[1].startswith("|---")
    assert lines[2].startswith("| baseline |")
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["baseline", "grad_clip", "qkv_bias", "no_dropout"]
    md = Path(res["markdown"]).read_text()
    assert table in md
    assert "How to read this" in md and "Holm" in md and "1 in 20" in md
    for name in ("loss_curves", "test_loss", "delta"):
        assert f"plots/{name}.png" in md


def test_html_standalone(report):
    _, res = report
    html = Path(res["html"]).read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count('src="data:image/png;base64,') == 3
    assert 'src="plots/' not in html  # nothing linked from outside the file
    for word in ("better", "worse", "within noise at n=4", "How to read this", "p (Holm)"):
        assert word in html
    assert "<style>" in html


def test_format_table_text(report):
    _, res = report
    text = format_table(res["rows"], style="text")
    lines = text.splitlines()
    assert lines[0].startswith("variant") and lines[2].startswith("baseline")
    assert "within noise at n=4" in text and "|" not in text
    with pytest.raises(ValueError):
        format_table(res["rows"], style="latex")


def test_missing_baseline_names_folder_and_variants(tmp_path: Path):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        _record(db, "grad_clip", 0, 3.9, steps=3)
        _record(db, "qkv_bias", 0, 4.0, steps=3)
    with pytest.raises(GptlabError) as e:
        write_report(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "grad_clip" in msg and "qkv_bias" in msg and "baseline" in msg
    assert "\n" not in msg


def test_empty_or_missing_db(tmp_path: Path):
    with pytest.raises(GptlabError, match="results.sqlite"):
        write_report(tmp_path)  # no database at all
    ResultsDB(tmp_path / "results.sqlite").close()
    with pytest.raises(GptlabError, match="no finished runs"):
        write_report(tmp_path)


def test_rows_small_n_and_diverged_runs():
    runs = [dict(run_id=f"b{i}", variant="baseline", seed=i, test_loss=4.0 + 0.01 * i) for i in range(3)]
    runs += [dict(run_id="v0", variant="one_seed", seed=0, test_loss=3.5)]
    runs += [dict(run_id="d0", variant="diverged", seed=0, test_loss=None),
             dict(run_id="d1", variant="diverged", seed=1, test_loss=float("inf")),
             dict(run_id="d2", variant="diverged", seed=2, test_loss=4.0)]
    rows = {r["variant"]: r for r in build_rows(runs, "baseline")}
    assert rows["one_seed"]["verdict"] == "needs >= 2 seeds" and rows["one_seed"]["p"] is None
    assert rows["diverged"]["n"] == 1 and rows["diverged"]["n_excluded"] == 2
    text = format_table(list(rows.values()), style="text")
    assert "needs >= 2 seeds" in text and "(+2 excl.)" in text
