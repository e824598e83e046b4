"""gptlab.experiments.report on a synthetic experiment with known answers."""

from __future__ import annotations

import math
import re
from html import unescape
from pathlib import Path

import pytest

from gptlab import GptlabError
from gptlab.experiments.report import build_rows, format_table, write_report
from gptlab.experiments.results import ResultsDB

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
                "p (Holm)", "Hedges' g", "verdict", "MDE", "seeds needed (estimate)", "tokens/s", "judge score", "published"):
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


# ---- Yardsticks: the seed's 3.692 / 3.578 and GPT-2 small's 3.500 beside ours -------------------------------
REPO = Path(__file__).resolve().parents[1]
FINEWEB_SOURCES = [{"hf_dataset": "HuggingFaceFW/fineweb", "config": "sample-10BT", "split": "train",
                    "revision": "0" * 40, "streaming": True}]


def _experiment_with_run_dirs(exp: Path, config: str, set_: list[str], data_meta, relative: bool = False) -> Path:
    """Runs as `gptlab experiment` leaves them: a run directory with the resolved config.toml and meta.json."""
    import json

    from gptlab.config import load_config, save_config

    cfg = load_config(REPO / config, set_)
    losses = {"baseline": [3.712, 3.705, 3.719], "best_stack": [3.591, 3.597, 3.588]}
    with ResultsDB(exp / "results.sqlite") as db:
        for variant, vals in losses.items():
            for seed, loss in enumerate(vals):
                rid = f"{variant}-s{seed}"
                run_dir = exp / "runs" / rid
                run_dir.mkdir(parents=True)
                save_config(cfg, run_dir / "config.toml")
                (run_dir / "meta.json").write_text(json.dumps({"data_meta": data_meta}))
                db.record_run(dict(run_id=rid, experiment="yard", variant=variant, seed=seed, tokens=1000,
                                   run_dir=f"elsewhere/runs/{rid}" if relative else str(run_dir),
                                   test_loss=loss, val_loss=loss), [dict(step=0, tokens=0, train_loss=10.9),
                                                                    dict(step=1, tokens=1000, train_loss=loss)])
    return exp


@pytest.fixture
def plotted_lines(monkeypatch):
    """Labels of the horizontal lines drawn on the test-loss plot of the next write_report."""
    import gptlab.experiments.report.plots as plots

    figs = []
    real = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: figs.append(fig) or real(fig))

    def lines() -> list[str]:
        test_loss = next(f for f in figs if f.axes and f.axes[0].get_title() == "Final test loss per variant")
        return [ln.get_label() for ln in test_loss.axes[0].get_lines()]

    return lines


def test_yardsticks_comparable_on_the_seeds_test_set(tmp_path, plotted_lines):
    from gptlab.experiments.yardsticks import GPT2_SMALL, SEED_BASELINE, SEED_BEST_STACK

    assert (SEED_BASELINE, SEED_BEST_STACK, GPT2_SMALL) == (3.692, 3.578, 3.500)
    exp = _experiment_with_run_dirs(tmp_path, "configs/seed/baseline.toml", [], FINEWEB_SOURCES, relative=True)
    res = write_report(exp)
    yard = res["yardsticks"]
    assert yard["comparable"] and yard["reasons"] == []
    md = Path(res["markdown"]).read_text()
    part = md.split("## Yardsticks", 1)[1].split("\n## ", 1)[0]
    assert part.lstrip().startswith("Comparable: every run was scored on the seed's test set spec")
    for row in ("| seed baseline | 3.692 |", "| seed best stack | 3.578 |", "| OpenAI GPT-2 small | 3.500 |",
                "| ours: baseline (baseline, n=3) | 3.712 |", "| ours: best_stack (lowest mean, n=3) | 3.592 |"):
        assert row in part
    # one scale, worst at the top; and the gaps in words
    order = [ln.split("|")[1].strip() for ln in part.splitlines()
             if ln.startswith("| ") and not ln.startswith("| model |")]
    assert order == ["ours: baseline (baseline, n=3)", "seed baseline", "ours: best_stack (lowest mean, n=3)",
                     "seed best stack", "OpenAI GPT-2 small"]
    assert "0.092 above OpenAI GPT-2 small (3.500)" in part and "0.100 below seed baseline (3.692)" in part
    labels = plotted_lines()
    assert {"seed baseline 3.692", "seed best stack 3.578", "OpenAI GPT-2 small 3.500"} <= set(labels)
    html = Path(res["html"]).read_text()
    assert "<h2>Yardsticks</h2>" in html and re.search(r"<td>OpenAI GPT-2 small</td>\s*<td>3.500</td>", html)
    assert "dotted = the seed's published yardsticks" in unescape(html)


@pytest.mark.parametrize("config, set_, data_meta, expect", [
    ("configs/tiny-cpu.toml", [], [{"path": "bundled:shksprdata/texts/hamlet_gut.txt"}],
     ["eval.split = 'test' (seed: 'val')", "eval.offset = 0 (seed: 50,000,000)", "eval.batches = 0 (seed: 3,200)",
      "model.context_length = 64 (seed: 1,024)", "data.vocab = 'corpus' (seed: 'gpt2')",
      "data: data/shakespeare (not FineWeb)"]),
    ("configs/seed/baseline.toml", ["data.dir=data/owt"], [{"path": "/data/openwebtext/train.bin"}],
     ["data: data/owt (not FineWeb)"]),
    ("configs/seed/baseline.toml", ["eval.batches=3199"], FINEWEB_SOURCES, ["eval.batches = 3,199 (seed: 3,200)"]),
])
def test_yardsticks_different_test_set_is_orientation_only(tmp_path, plotted_lines, config, set_, data_meta, expect):
    res = write_report(_experiment_with_run_dirs(tmp_path, config, set_, data_meta))
    yard = res["yardsticks"]
    assert not yard["comparable"] and yard["gaps"] == ""
    for e in expect:
        assert e in yard["reasons"]
    md = Path(res["markdown"]).read_text()
    part = md.split("## Yardsticks", 1)[1].split("\n## ", 1)[0]
    assert "Not comparable: these runs were scored on a different test set" in part and "orientation only" in part
    for row in ("| seed baseline | 3.692 |", "| seed best stack | 3.578 |", "| OpenAI GPT-2 small | 3.500 |"):
        assert row in part
    assert "above" not in part.split("|", 1)[0]  # no gap sentence to tempt a comparison
    assert not any(lab.startswith(("seed ", "OpenAI")) for lab in plotted_lines())  # no reference lines
    assert "orientation only" in Path(res["html"]).read_text()


def test_yardsticks_unrecorded_test_set_is_not_comparable(report):
    """Runs without a run directory (the synthetic fixture): the test set is unknown, so orientation only."""
    _, res = report
    yard = res["yardsticks"]
    assert not yard["comparable"] and "test set not recorded for 16 run(s)" in yard["reasons"][0]
    md = Path(res["markdown"]).read_text()
    assert "## Yardsticks" in md and "| OpenAI GPT-2 small | 3.500 |" in md and "orientation only" in md
    from gptlab.experiments.report import yardstick_summary

    text = yardstick_summary(yard)
    assert text.startswith("yardsticks (different test set, orientation only): seed baseline 3.692, seed best "
                           "stack 3.578, OpenAI GPT-2 small 3.500")


def test_html_is_the_markdown_converted(report):
    """report.html has the sections of report.md, in its order, and colours the verdict cells by verdict."""
    _, res = report
    md = Path(res["markdown"]).read_text()
    html = Path(res["html"]).read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == re.findall(r"<h2>(.+?)</h2>", html)
    assert re.findall(r"^# (.+)$", md, re.M) == re.findall(r"<h1>(.+?)</h1>", html) == ["Results: synthetic"]
    for verdict, css in (("baseline", "baseline"), ("better", "better"), ("worse", "worse"),
                         ("within noise at n=4", "noise")):
        assert f'<td class="{css}">{verdict}</td>' in html
    assert html.count("<td class=") == 4  # the verdict column only
