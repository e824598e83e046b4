"""The report's tables as (headers, body) of plain strings, and the two ways they are written out: a Markdown
table (the report template and `gptlab leaderboard --markdown`) and aligned text (the terminal)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gptlab.experiments.report.format import DASH, fmt, fmt_ci, fmt_p

Table = tuple[list[str], list[list[str]]]


def _verdict_columns(rows: list[dict]) -> list[tuple[str, Callable[[dict], Any]]]:
    """(header, cell function) pairs; optional columns only where some row has a value."""
    paired = any(r.get("design") == "paired" for r in rows)
    level = next((r["diff_ci_level"] for r in rows if r.get("diff_ci_level") is not None), 0.95)
    cols: list[tuple[str, Callable[[dict], Any]]] = [
        ("variant", lambda r: r["variant"]),
        ("n seeds", lambda r: str(r["n"]) + (f" (+{r['n_excluded']} excl.)" if r.get("n_excluded") else "")),
        ("mean test loss", lambda r: fmt(r["mean"], ".4f")),
        ("95% CI", lambda r: fmt_ci(r["ci_low"], r["ci_high"])),
        ("Δ vs baseline", lambda r: fmt(r["diff"], "+.4f")),
        (f"{level:.0%} CI of Δ", lambda r: fmt_ci(r["diff_ci_low"], r["diff_ci_high"], "+.4f")),
        ("p (paired t)" if paired else "p (Welch)", lambda r: fmt_p(r["p"])),
        ("p (Holm)", lambda r: fmt_p(r["p_holm"])),
        ("Hedges' g", lambda r: fmt(r["hedges_g"], "+.2f")),
        ("verdict", lambda r: r["verdict"]),
        ("MDE", lambda r: fmt(r.get("mde"), ".4f")),
        ("seeds needed (estimate)", lambda r: DASH if r["seeds_needed"] is None else str(r["seeds_needed"])),
    ]
    if any(r.get("tokens_per_s") is not None for r in rows):
        cols.append(("tokens/s", lambda r: fmt(r.get("tokens_per_s"), ",.0f")))
    if any(r.get("judge") is not None for r in rows):
        cols.append(("judge score", lambda r: fmt(r.get("judge"), ".2f")))
    if any(r.get("published") is not None for r in rows):
        cols.append(("published", lambda r: fmt(r.get("published"), "g")))
    for i, label in enumerate(sorted({k for r in rows for k in r.get("downstream") or {}})):
        # beside the test loss: the mean over the variant's runs of gptlab eval RUN --task NAME's result
        cols.insert(4 + i, (f"mean {label}", lambda r, k=label: fmt((r.get("downstream") or {}).get(k), ".4f")))
    return cols


def verdict_table(rows: list[dict]) -> Table:
    """One line per variant: its statistics against the baseline and its verdict."""
    cols = _verdict_columns(rows)
    return [h for h, _ in cols], [[str(cell(r)) for _, cell in cols] for r in rows]


def variants_table(rows: list[dict]) -> Table:
    return ["variant", "interventions"], [[r["variant"], ", ".join(r["interventions"]) or DASH] for r in rows]


def runs_table(runs: list[dict], order: list[str]) -> Table:
    """One line per run, grouped by variant in `order`, then by seed."""
    rank = {v: i for i, v in enumerate(order)}
    headers = ["variant", "seed", "run_id", "test loss", "val loss", "tokens", "tokens/s", "git commit"]
    extra = sorted({k for r in runs for k in r.get("downstream") or {}})  # gptlab eval RUN --task NAME
    headers[4:4] = extra
    body = []
    for r in sorted(
        runs, key=lambda r: (rank.get(str(r.get("variant") or ""), 1 << 30), r.get("seed") or 0, r["run_id"])
    ):
        down = [fmt(((r.get("downstream") or {}).get(k) or (None,))[0], ".4f") for k in extra]
        body.append(
            [
                str(r.get("variant") or ""),
                DASH if r.get("seed") is None else str(r["seed"]),
                r["run_id"],
                fmt(r.get("test_loss"), ".4f"),
                *down,
                fmt(r.get("val_loss"), ".4f"),
                fmt(r.get("tokens"), ",.0f"),
                fmt(r.get("tokens_per_s"), ",.0f"),
                (r.get("git_commit") or DASH)[:10],
            ]
        )
    return headers, body


def markdown_table(headers: list[str], body: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body])


def text_table(headers: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in body])


def format_table(rows: list[dict], style: str = "markdown") -> str:
    """The verdict table as a markdown table (style="markdown") or aligned plain text ("text")."""
    if style == "markdown":
        return markdown_table(*verdict_table(rows))
    if style == "text":
        return text_table(*verdict_table(rows))
    raise ValueError(f"unknown table style {style!r} (use 'markdown' or 'text')")
