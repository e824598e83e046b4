"""gptlab.experiments.report on a synthetic experiment with known answers."""

from __future__ import annotations

import math
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest

from gptlab import GptlabError
from gptlab.experiments.report import build_rows, format_table, write_report
from gptlab.experiments.report.rows import verdict_sentence
from gptlab.experiments.report.tables import verdict_table
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
        metrics.append(
            dict(step=s, tokens=s * 2048, train_loss=loss - 0.03, val_loss=loss if s % 10 == 0 else None, lr=1e-3)
        )
    db.record_run(
        dict(
            run_id=run_id,
            experiment="synthetic",
            variant=variant,
            seed=seed,
            interventions=[] if variant == "baseline" else [variant],
            tokens=steps * 2048,
            test_loss=final,
            val_loss=final - 0.01,
            train_loss=final - 0.05,
            tokens_per_s=1000.0 + seed,
            git_commit="abc123",
        ),
        metrics,
    )
    if judge:
        db.record_judge(
            run_id, "judge-1", [dict(item=i, instruction="q", response="a", score=3.0 + (i % 2)) for i in range(4)]
        )


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
    for col in (
        "variant",
        "n seeds",
        "mean test loss",
        "95% CI",
        "Δ vs baseline",
        "95% CI of Δ",
        "p (Welch)",
        "p (Holm)",
        "Hedges' g",
        "verdict",
        "MDE",
        "seeds needed (estimate)",
        "tokens/s",
        "judge score",
        "published",
    ):
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
    runs += [
        dict(run_id="d0", variant="diverged", seed=0, test_loss=None),
        dict(run_id="d1", variant="diverged", seed=1, test_loss=float("inf")),
        dict(run_id="d2", variant="diverged", seed=2, test_loss=4.0),
    ]
    rows = {r["variant"]: r for r in build_rows(runs, "baseline")}
    assert rows["one_seed"]["verdict"] == "needs >= 2 seeds" and rows["one_seed"]["p"] is None
    assert rows["diverged"]["n"] == 1 and rows["diverged"]["n_excluded"] == 2
    text = format_table(list(rows.values()), style="text")
    assert "needs >= 2 seeds" in text and "(+2 excl.)" in text
    # one seed: the numbers that exist (mean, Δ) and the note; no interval, p, effect size, MDE or seeds needed
    head, body = verdict_table(list(rows.values()))
    one = dict(zip(head, next(b for b in body if b[0] == "one_seed"), strict=True))
    assert (one["mean test loss"], one["Δ vs baseline"], one["verdict"]) == ("3.5000", "-0.5100", "needs >= 2 seeds")
    assert {
        one[k]
        for k in ("95% CI", "95% CI of Δ", "p (Welch)", "p (Holm)", "Hedges' g", "MDE", "seeds needed (estimate)")
    } == {"—"}
    assert verdict_sentence(rows["one_seed"], "baseline").endswith(
        "run more seeds. Δ = -0.5100 from 1 seed: no noise estimate, so no CI, p or verdict."
    )


# ---- Yardsticks: the seed's 3.692 / 3.578 and GPT-2 small's 3.500 beside ours -------------------------------
REPO = Path(__file__).resolve().parents[1]
FINEWEB_SOURCES = [
    {
        "hf_dataset": "HuggingFaceFW/fineweb",
        "config": "sample-10BT",
        "split": "train",
        "revision": "0" * 40,
        "streaming": True,
    }
]


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
                db.record_run(
                    dict(
                        run_id=rid,
                        experiment="yard",
                        variant=variant,
                        seed=seed,
                        tokens=1000,
                        run_dir=f"elsewhere/runs/{rid}" if relative else str(run_dir),
                        test_loss=loss,
                        val_loss=loss,
                    ),
                    [dict(step=0, tokens=0, train_loss=10.9), dict(step=1, tokens=1000, train_loss=loss)],
                )
    return exp


@pytest.fixture
def plotted_lines(monkeypatch):
    """Labels of the horizontal lines drawn on the test-loss plot of the next write_report."""
    import gptlab.experiments.report.plots as plots

    figs = []
    real = plots.png
    monkeypatch.setattr(plots, "png", lambda fig: figs.append(fig) or real(fig))

    def lines() -> list[str]:
        test_loss = next(f for f in figs if f.axes and f.axes[0].get_title() == "Final test loss per variant")
        return [ln.get_label() for ln in test_loss.axes[0].get_lines()]

    return lines


def test_yardsticks_comparable_on_the_seeds_test_set(tmp_path, plotted_lines):
    from gptlab.experiments.analysis.yardsticks import GPT2_SMALL, SEED_BASELINE, SEED_BEST_STACK

    assert (SEED_BASELINE, SEED_BEST_STACK, GPT2_SMALL) == (3.692, 3.578, 3.500)
    exp = _experiment_with_run_dirs(tmp_path, "configs/seed/baseline.toml", [], FINEWEB_SOURCES, relative=True)
    res = write_report(exp)
    yard = res["yardsticks"]
    assert yard["comparable"] and yard["reasons"] == []
    md = Path(res["markdown"]).read_text()
    part = md.split("## Yardsticks", 1)[1].split("\n## ", 1)[0]
    assert part.lstrip().startswith("Comparable: every run was scored on the seed's test set spec")
    for row in (
        "| seed baseline | 3.692 |",
        "| seed best stack | 3.578 |",
        "| OpenAI GPT-2 small | 3.500 |",
        "| ours: baseline (baseline, n=3) | 3.712 |",
        "| ours: best_stack (lowest mean, n=3) | 3.592 |",
    ):
        assert row in part
    # one scale, worst at the top; and the gaps in words
    order = [
        ln.split("|")[1].strip() for ln in part.splitlines() if ln.startswith("| ") and not ln.startswith("| model |")
    ]
    assert order == [
        "ours: baseline (baseline, n=3)",
        "seed baseline",
        "ours: best_stack (lowest mean, n=3)",
        "seed best stack",
        "OpenAI GPT-2 small",
    ]
    assert "0.092 above OpenAI GPT-2 small (3.500)" in part and "0.100 below seed baseline (3.692)" in part
    labels = plotted_lines()
    assert {"seed baseline 3.692", "seed best stack 3.578", "OpenAI GPT-2 small 3.500"} <= set(labels)
    html = Path(res["html"]).read_text()
    assert "<h2>Yardsticks</h2>" in html and re.search(r"<td>OpenAI GPT-2 small</td>\s*<td>3.500</td>", html)
    assert "dotted = the seed's published yardsticks" in unescape(html)


@pytest.mark.parametrize(
    "config, set_, data_meta, expect",
    [
        (
            "configs/tiny-cpu.toml",
            [],
            [{"path": "bundled:shksprdata/texts/hamlet_gut.txt"}],
            [
                "eval.split = 'test' (seed: 'val')",
                "eval.offset = 0 (seed: 50,000,000)",
                "eval.batches = 0 (seed: 3,200)",
                "model.context_length = 64 (seed: 1,024)",
                "data.vocab = 'corpus' (seed: 'gpt2')",
                "data: data/shakespeare (not FineWeb)",
            ],
        ),
        (
            "configs/seed/baseline.toml",
            ["data.dir=data/owt"],
            [{"path": "/data/openwebtext/train.bin"}],
            ["data: data/owt (not FineWeb)"],
        ),
        ("configs/seed/baseline.toml", ["eval.batches=3199"], FINEWEB_SOURCES, ["eval.batches = 3,199 (seed: 3,200)"]),
    ],
)
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
    assert text.startswith(
        "yardsticks (different test set, orientation only): seed baseline 3.692, seed best "
        "stack 3.578, OpenAI GPT-2 small 3.500"
    )


def test_html_is_the_markdown_converted(report):
    """report.html has the sections of report.md, in its order, and colours the verdict cells by verdict."""
    _, res = report
    md = Path(res["markdown"]).read_text()
    html = Path(res["html"]).read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == re.findall(r"<h2>(.+?)</h2>", html)
    assert re.findall(r"^# (.+)$", md, re.M) == re.findall(r"<h1>(.+?)</h1>", html) == ["Results: synthetic"]
    for verdict, css in (
        ("baseline", "baseline"),
        ("better", "better"),
        ("worse", "worse"),
        ("within noise at n=4", "noise"),
    ):
        assert f'<td class="{css}">{verdict}</td>' in html
    assert html.count("<td class=") == 4  # the verdict column only


# ---- verdict rules: Holm, suggestive, equivalence, MDE, paired design; every word traceable to the footer -------
# Built so that each verdict word occurs once (equivalence margin 0.02 nats, alpha 0.05, 5 comparisons + 1 short):
RULES_LOSS = {
    "baseline": [4.000, 4.012, 3.991, 4.005],
    "big": [3.902, 3.895, 3.910, 3.899],  # better (Holm p < 0.05)
    "bad": [4.101, 4.093, 4.110, 4.104],  # worse
    "lead": [3.987, 3.983, 3.991, 3.989],  # raw p = 0.039, Holm p = 0.117 -> suggestive (lower)
    "same": [4.003, 3.999, 4.001, 4.002],  # 90% CI inside ±0.02 -> equivalent within ±0.02
    "noisy": [3.95, 4.06, 3.99, 4.03],  # within noise at n=4
    "one": [3.9],  # needs >= 2 seeds
}


def _rules_report(tmp_path: Path, **kw) -> tuple[dict, str]:
    with ResultsDB(tmp_path / "results.sqlite") as db:
        for variant, losses in RULES_LOSS.items():
            for seed, loss in enumerate(losses):
                _record(db, variant, seed, loss, steps=3)
    res = write_report(tmp_path, **kw)
    return res, Path(res["markdown"]).read_text()


def _verdict_cells(table_md: str) -> list[str]:
    lines = [ln for ln in table_md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index("verdict")
    return [ln.strip("|").split("|")[col].strip() for ln in lines[2:]]


def _footer(md: str) -> str:
    return md.split("\n## Rules\n", 1)[1]


def test_every_verdict_word_is_a_rule_in_the_footer(tmp_path):
    res, md = _rules_report(tmp_path, equivalence_margin=0.02)
    words = _verdict_cells(res["table"])
    assert sorted(words) == sorted(
        [
            "baseline",
            "needs >= 2 seeds",
            "better",
            "worse",
            "suggestive (lower)",
            "equivalent within ±0.02",
            "within noise at n=4",
        ]
    )
    footer = _footer(md)
    for w in words:
        # a rule names each word in bold; "n=N" stands for the number of seeds the rule defines
        assert f"**{re.sub(r'n=[0-9]+', 'n=N', w)}**" in footer, w
    assert "Holm-adjusted p < 0.05 over the 5 comparisons" in footer
    assert "90% CI of Δ lies inside ±0.02" in footer and "Welch" in footer
    assert "**MDE**" in footer and "80%" in footer and "upper one-sided 80% chi-square bound" in footer
    assert "Design: **independent**" in footer
    # and in the HTML, the rules and the colours of the new words
    html = Path(res["html"]).read_text()
    assert "<h2>Rules</h2>" in html
    assert '<td class="suggestive">suggestive (lower)</td>' in html
    assert '<td class="equivalent">equivalent within ±0.02</td>' in html


def test_rules_follow_the_parameters(tmp_path):
    """The footer is written from the parameters the verdicts used, not from fixed text."""
    res, md = _rules_report(tmp_path, alpha=0.2, design="paired")
    footer = _footer(md)
    rows = {r["variant"]: r for r in res["rows"]}
    assert "Holm-adjusted p < 0.2 over the 5 comparisons" in footer
    assert "No equivalence margin was set" in footer and "equivalent within" not in footer
    assert "Design: **paired**" in footer and "paired t-test on the per-seed differences" in footer
    assert "SD of the per-seed differences" in footer
    assert all(r["design"] == "paired" for r in rows.values())
    runs = [
        dict(run_id=f"{v}-{i}", variant=v, seed=i, test_loss=x)
        for v, xs in RULES_LOSS.items()
        for i, x in enumerate(xs)
    ]
    lead = next(r for r in build_rows(runs, "baseline", alpha=0.2) if r["variant"] == "lead")
    assert lead["verdict"] == "better"  # Holm p = 0.117: below alpha = 0.2, not below 0.05
    assert "p (paired t)" in res["table"] and "80% CI of Δ" in res["table"]  # the CI at 1 - alpha, named so
    for w in _verdict_cells(res["table"]):
        assert f"**{re.sub(r'n=[0-9]+', 'n=N', w)}**" in footer, w


def test_holm_decides_better_and_raw_p_only_suggests(tmp_path):
    """A raw p < alpha that does not survive Holm over the family reads "suggestive (lower)" (it read "better",
    with a caveat in its sentence, before the family-wise rule); alone in its family the same data read "better"."""
    runs = [
        dict(run_id=f"{v}-{i}", variant=v, seed=i, test_loss=x)
        for v, xs in RULES_LOSS.items()
        for i, x in enumerate(xs)
    ]
    rows = {r["variant"]: r for r in build_rows(runs, "baseline")}
    lead = rows["lead"]
    assert lead["p"] < 0.05 <= lead["p_holm"] and lead["verdict"] == "suggestive (lower)"
    assert lead["p_holm"] == pytest.approx(min(1.0, 3 * lead["p"]))  # 3rd smallest of 5 p-values
    assert rows["same"]["verdict"] == "within noise at n=4"  # no margin given: no equivalence word
    alone = build_rows([r for r in runs if r["variant"] in ("baseline", "lead")], "baseline")
    assert alone[1]["verdict"] == "better"
    from gptlab.experiments.report import verdict_sentence

    s = verdict_sentence(lead, "baseline")
    assert "suggestive (lower)" in s and "adjusted p = " in s and "not below 0.05" in s


def test_mde_column(tmp_path):
    from gptlab.experiments.analysis.stats import mde

    runs = [
        dict(run_id=f"{v}-{i}", variant=v, seed=i, test_loss=x)
        for v, xs in RULES_LOSS.items()
        for i, x in enumerate(xs)
    ]
    rows = {r["variant"]: r for r in build_rows(runs, "baseline")}
    b, n = RULES_LOSS["baseline"], RULES_LOSS["noisy"]
    sp = math.sqrt((np.var(b, ddof=1) + np.var(n, ddof=1)) / 2)  # equal n: the pooled SD is the mean variance
    assert rows["noisy"]["mde"] == pytest.approx(mde(sp, 4, 4))
    assert rows["noisy"]["mde"] > abs(rows["noisy"]["diff"])  # the design could not have seen this difference
    assert rows["baseline"]["mde"] is None and rows["one"]["mde"] is None
    text = format_table(list(rows.values()), style="text")
    assert "MDE" in text and f"{rows['noisy']['mde']:.4f}" in text


def test_paired_design_matches_runs_by_seed():
    from scipy import stats as sst

    base = {3: 4.01, 1: 4.00, 2: 3.99, 7: 4.03}
    var = {7: 4.02, 2: 3.985, 1: 3.992, 3: 4.004}  # every seed a little lower than its baseline twin
    runs = [dict(run_id=f"b{s}", variant="baseline", seed=s, test_loss=x) for s, x in base.items()]
    runs += [dict(run_id=f"v{s}", variant="v", seed=s, test_loss=x) for s, x in var.items()]
    paired = build_rows(runs, "baseline", design="paired")[1]
    seeds = sorted(base)
    ref = sst.ttest_rel([var[s] for s in seeds], [base[s] for s in seeds])
    assert paired["p"] == pytest.approx(ref.pvalue, rel=1e-10) and paired["t"] == pytest.approx(ref.statistic)
    assert paired["verdict"] == "better"
    assert build_rows(runs, "baseline")[1]["verdict"] == "within noise at n=4"  # unpaired, the seeds' spread hides it
    # order of the runs does not matter: pairs are made by seed
    assert build_rows(runs[::-1], "baseline", design="paired")[1]["p"] == pytest.approx(paired["p"])


def test_paired_design_errors_in_one_line():
    runs = [dict(run_id=f"b{s}", variant="baseline", seed=s, test_loss=4.0 + s / 100) for s in (1, 2, 3)]
    runs += [dict(run_id=f"v{s}", variant="wd", seed=s, test_loss=3.9 + s / 100) for s in (1, 2, 4)]
    with pytest.raises(GptlabError, match="design"):
        build_rows(runs, "baseline", design="crossover")
    with pytest.raises(GptlabError, match="equivalence_margin"):
        build_rows(runs, "baseline", equivalence_margin=-0.01)
    # a diverged baseline twin leaves that pair out, it is not an error
    runs[0]["test_loss"] = float("nan")
    runs[-1]["seed"] = 3
    row = build_rows(runs, "baseline", design="paired")[1]
    assert row["n_compared"] == 2 and row["verdict"] != "needs >= 2 seeds"
    assert row["unpaired"] == (
        "left out of the pairing: baseline seed 1 (test loss missing or not finite); "
        "variant seed 1 (the baseline's run of that seed has no finite test loss)"
    )


def test_paired_design_pairs_the_common_seeds_and_says_which_it_left_out(tmp_path):
    """A variant seed the baseline lacks (and a baseline seed the variant lacks) is left out of the pairing, and
    the report's warnings say so, instead of the whole report failing (analysis/pairing.py's rule)."""
    from scipy import stats as sst

    base = {1: 4.01, 2: 4.00, 3: 3.99}
    var = {1: 3.99, 2: 3.985, 4: 3.97}
    runs = [dict(run_id=f"b{s}", variant="baseline", seed=s, test_loss=x) for s, x in base.items()]
    runs += [dict(run_id=f"v{s}", variant="wd", seed=s, test_loss=x) for s, x in var.items()]
    row = build_rows(runs, "baseline", design="paired")[1]
    ref = sst.ttest_rel([var[1], var[2]], [base[1], base[2]])
    assert row["n_compared"] == 2 and row["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    note = (
        "left out of the pairing: baseline seed 3 (no variant run with the same seed); "
        "variant seed 4 (no baseline run with the same seed)"
    )
    assert row["unpaired"] == note
    assert build_rows(runs, "baseline")[1]["unpaired"] == ""  # the independent design pairs nothing
    with ResultsDB(tmp_path / "results.sqlite") as db:
        for variant, losses in (("baseline", base), ("wd", var)):
            for seed, loss in losses.items():
                _record(db, variant, seed, loss, steps=5)
    md = Path(write_report(tmp_path, design="paired")["markdown"]).read_text()
    assert f"> - wd: {note}." in md


def test_pairing_rule_on_repeated_and_missing_seeds():
    """One rule, on constructed runs: a seed recorded twice on one side pairs with nothing (which run is its twin
    is ambiguous), its twin on the other side is left out too, a run without a seed is left out; the rest pair in
    seed order whatever the order of the runs."""
    from gptlab.experiments.analysis.pairing import pair_by_seed

    base = [dict(seed=s, test_loss=4.0 + s) for s in (3, 1, 2, 2)] + [dict(seed=None, test_loss=4.5)]
    var = [dict(seed=s, test_loss=3.0 + s) for s in (2, 1, 3, 5)]
    p = pair_by_seed(base, var)
    assert p.seeds == [1, 3]
    assert [r["test_loss"] for r in p.base] == [5.0, 7.0] and [r["test_loss"] for r in p.var] == [4.0, 6.0]
    assert sorted(p.left_out, key=str) == sorted(
        [
            ("baseline", 2, "recorded more than once: which run to pair is ambiguous"),
            ("baseline", None, "no seed recorded"),
            ("variant", 2, "the baseline has that seed more than once"),
            ("variant", 5, "no baseline run with the same seed"),
        ],
        key=str,
    )
    assert p.note() == (
        "left out of the pairing: baseline seed 2 (recorded more than once: which run to pair is ambiguous); "
        "1 baseline run(s) (no seed recorded); variant seed 2 (the baseline has that seed more than once); "
        "variant seed 5 (no baseline run with the same seed)"
    )
    assert pair_by_seed(base[:3], var[:3]).note() == ""


def test_interval_levels_follow_alpha(tmp_path):
    """The CI of Δ is a (1 - alpha) interval: the delta plot's caption says which, not a fixed 95%."""
    with ResultsDB(tmp_path / "results.sqlite") as db:
        for variant in ("baseline", "grad_clip"):
            for seed, loss in enumerate(TEST_LOSS[variant]):
                _record(db, variant, seed, loss, steps=5)
    wide = write_report(tmp_path, alpha=0.05)
    assert "Difference to the baseline with 95% CI" in Path(wide["markdown"]).read_text()
    narrow = write_report(tmp_path, alpha=0.1)
    assert "Difference to the baseline with 90% CI" in Path(narrow["markdown"]).read_text()
    w, n = wide["rows"][1], narrow["rows"][1]
    assert n["diff_ci_high"] - n["diff_ci_low"] < w["diff_ci_high"] - w["diff_ci_low"]


def _screen_experiment(exp: Path, data: Path) -> Path:
    """A tiny experiment's runs as `gptlab experiment` leaves them: baseline, lr_schedule (acts on the training
    horizon) and rope (acts on nothing), each a run directory with its resolved config.toml."""
    from conftest import tiny_overrides

    from gptlab.config import load_config, save_config

    with ResultsDB(exp / "results.sqlite") as db:
        for variant, ivs in {"baseline": [], "lr_schedule": ["lr_schedule"], "rope": ["rope"]}.items():
            cfg = load_config(REPO / "configs/tiny-cpu.toml", tiny_overrides(data) + [f"interventions={ivs!r}"])
            for seed in (1, 2):
                rid = f"{variant}-s{seed}"
                (exp / "runs" / rid).mkdir(parents=True)
                save_config(cfg, exp / "runs" / rid / "config.toml")
                db.record_run(
                    dict(
                        run_id=rid,
                        experiment="screen",
                        variant=variant,
                        seed=seed,
                        tokens=1000,
                        test_loss=4.0 + seed / 100,
                    ),
                )
    return exp


def test_regime_table_sets_the_screen_beside_the_seeds_gpt2_small(tmp_path, small_data):
    """No target given: the seed's GPT-2 small (its published loss, 33,165 steps); lr_schedule is not judged
    (its horizon is ×1000s apart), rope is."""
    res = write_report(_screen_experiment(tmp_path, small_data))
    head, body = res["regime"]["table"]
    assert head == ["quantity", "screen (baseline)", "target", "what follows"]
    rows = {r[0]: r for r in body}
    assert rows["baseline test loss"][1:3] == ["4.0150", "3.6920"]
    assert rows["optimizer steps"][2] == "33,165"
    lines = res["regime"]["lines"]
    steps = rows["optimizer steps"][1]
    why = f"lr_schedule: not judged by this screen: acts on the training horizon (screen {steps} steps, target 33,165)."
    assert why in lines
    assert not any(x.startswith("rope:") for x in lines)
    md = (tmp_path / "report.md").read_text()
    assert "## Regime: screen beside target" in md and why in md


def test_regime_table_with_the_screen_as_its_own_target_or_none(tmp_path, small_data):
    """A target equal to the screen judges every variant; a target config that is not there leaves the screen
    column only, with one line saying so."""
    exp = _screen_experiment(tmp_path, small_data)
    same = write_report(exp, target=(exp / "runs" / "baseline-s1" / "config.toml", None))["regime"]
    assert not any("not judged" in x for x in same["lines"])
    gone = write_report(exp, target=(tmp_path / "nope.toml", None))["regime"]
    assert gone["table"][0] == ["quantity", "screen (baseline)", "what follows"]
    assert gone["lines"][0] == f"The target's config {tmp_path / 'nope.toml'} was not found: the screen column only."


def test_spec_target_is_checked_like_the_ladders(tmp_path):
    from gptlab.experiments.specs.experiment import load_spec

    (tmp_path / "s.toml").write_text(
        f'base = "{REPO / "configs/tiny-cpu.toml"}"\ntarget = {{ config = "missing.toml" }}\n'
        '[[variants]]\nname = "baseline"\n'
    )
    with pytest.raises(GptlabError, match=r"s\.toml: target\.config: missing\.toml not found"):
        load_spec(tmp_path / "s.toml")
