"""`gptlab leaderboard`: every variant of every experiment found under the given folders (or results.sqlite
files), with mean test loss, CI, difference to its own experiment's baseline, p (Welch's, or the paired t-test for a
paired design; raw and Holm-adjusted over the experiment's comparisons), the minimum detectable effect, tokens/s and the
verdict.
Variants are compared only with the baseline of the same experiment (same budget, data order and test set)."""

from __future__ import annotations

from pathlib import Path

from gptlab import GptlabError
from gptlab.experiments.specs.experiment import TUNE_MARK, report_settings


def find_databases(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(p.rglob("results.sqlite"))
        else:
            raise GptlabError(f"{p}: no such file or folder")
    if not out:
        raise GptlabError(f"no results.sqlite under {', '.join(paths)}; run `gptlab experiment` first")
    return out


def leaderboard(paths: list[str]) -> list[dict]:
    from gptlab.experiments.analysis.compare import build_rows
    from gptlab.experiments.results import ResultsDB

    rows = []
    for dbp in find_databases(paths):
        with ResultsDB(dbp, create=False) as db:
            runs = db.runs()
            judge = db.judge_summary()
        for exp in sorted({r["experiment"] for r in runs}):
            settings = report_settings(dbp.parent)
            # a tuned experiment's sweep and tuned runs (VARIANT@lr=...) are not variants of its own, nor are
            # variants since removed from its spec
            exp_runs = [
                r
                for r in runs
                if r["experiment"] == exp
                and TUNE_MARK not in str(r["variant"])
                and r["variant"] in settings.get("variants", [r["variant"]])
            ]
            baseline = settings["baseline"]
            for r in build_rows(
                exp_runs,
                baseline,
                judge,
                equivalence_margin=settings["equivalence_margin"],
                design=settings["design"],
                alpha=settings["alpha"],
            ):
                rows.append(dict(r, experiment=exp))
    return rows


def format_leaderboard(rows: list[dict], style: str = "text") -> str:
    """The leaderboard as aligned text or a Markdown table (style="markdown"); a missing number is '-'."""
    from gptlab.experiments.report.format import fmt, fmt_ci, fmt_p
    from gptlab.experiments.report.tables import markdown_table, text_table

    def f(x, spec):
        return fmt(x, spec, dash="-")

    headers = [
        "experiment",
        "variant",
        "n",
        "mean test loss",
        "95% CI",
        "Δ vs baseline",
        "p",
        "p (Holm)",
        "MDE",
        "tokens/s",
        "verdict",
    ]
    body = [
        [
            r["experiment"],
            r["variant"],
            str(r["n"]),
            f(r["mean"], ".4f"),
            fmt_ci(r["ci_low"], r["ci_high"], dash="-"),
            f(r["diff"], "+.4f"),
            fmt_p(r["p"], dash="-"),
            fmt_p(r.get("p_holm"), dash="-"),
            f(r.get("mde"), ".4f"),
            f(r.get("tokens_per_s"), ",.0f"),
            r["verdict"],
        ]
        for r in rows
    ]
    return markdown_table(headers, body) if style == "markdown" else text_table(headers, body)
