"""The experiment report: which variants really differ from the baseline, in tables, plots and words.

`write_report(exp_dir)` reads `exp_dir/results.sqlite` and writes, atomically, `report.md`,
a standalone `report.html` (plots embedded) and `plots/{loss_curves,test_loss,delta}.png`.
Every report has a "Yardsticks" part: the seed's baseline (3.692) and best stack (3.578) and OpenAI's GPT-2
small (3.500) beside our numbers, and whether the runs' test set is the seed's (see yardsticks.py).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import io
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gptlab import GptlabError
from gptlab.experiments import stats as st
from gptlab.experiments.results import DB_NAME, ResultsDB
from gptlab.experiments.yardsticks import (
    YARDSTICKS,
    Yardstick,
    comparability,
    run_test_set,
)
from gptlab.io import atomic_write_bytes, atomic_write_text

PLOT_NAMES = ("loss_curves.png", "test_loss.png", "delta.png")
DASH = "—"

# ============================================================================================
# Rows: one dict per variant
# ============================================================================================


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _clean(x: Any) -> Any:
    """nan/inf floats -> None so rows are JSON-friendly."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _mean(xs: Iterable[float | None]) -> float | None:
    v = [float(x) for x in xs if _finite(x)]
    return float(np.mean(v)) if v else None


def build_rows(runs: list[dict], baseline: str, judge: dict[str, float] | None = None,
               reference: dict[str, float] | None = None, alpha: float = 0.05) -> list[dict]:
    """Per-variant statistics vs the baseline, sorted baseline first then by mean test loss."""
    judge = judge or {}
    reference = reference or {}
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[str(r.get("variant") or "")].append(r)
    if baseline not in groups:
        raise GptlabError(f"baseline variant {baseline!r} has no runs; variants present: {', '.join(sorted(groups))}")

    def losses(rs: list[dict]) -> list[float]:
        return [float(r["test_loss"]) for r in rs if _finite(r.get("test_loss"))]

    base_vals = losses(groups[baseline])
    rows = []
    for variant, rs in groups.items():
        vals = losses(rs)
        s = st.summarize(vals)
        interventions: list[str] = []
        for r in rs:
            for it in r.get("interventions") or []:
                if it not in interventions:
                    interventions.append(it)
        judged = [judge[r["run_id"]] for r in rs if r["run_id"] in judge]
        row: dict[str, Any] = dict(
            variant=variant,
            interventions=interventions,
            n=s["n"],
            n_runs=len(rs),
            n_excluded=len(rs) - s["n"],
            seeds=sorted(r.get("seed") for r in rs if r.get("seed") is not None),
            run_ids=[r["run_id"] for r in rs],
            test_losses=vals,
            mean=s["mean"], std=s["std"], sem=s["sem"], ci_low=s["ci_low"], ci_high=s["ci_high"],
            diff=None, diff_ci_low=None, diff_ci_high=None, t=None, df=None, p=None, p_holm=None,
            cohen_d=None, hedges_g=None, seeds_needed=None,
            verdict="baseline" if variant == baseline else "needs >= 2 seeds",
            tokens=_mean(r.get("tokens") for r in rs),
            tokens_per_s=_mean(r.get("tokens_per_s") for r in rs),
            judge=float(np.mean(judged)) if judged else None,
            n_judged=len(judged),
            published=float(reference[variant]) if variant in reference and _finite(reference[variant]) else None,
        )
        if variant != baseline:
            c = st.compare(base_vals, vals, alpha=alpha)
            row.update(diff=c["diff"], diff_ci_low=c["ci_low"], diff_ci_high=c["ci_high"], t=c["t"], df=c["df"],
                       p=c["p"], cohen_d=c["cohen_d"], hedges_g=c["hedges_g"], seeds_needed=c["seeds_needed"],
                       verdict=c["verdict"])
        rows.append({k: _clean(v) for k, v in row.items()})

    others = [r for r in rows if r["variant"] != baseline]
    for r, ph in zip(others, st.holm([r["p"] for r in others])):
        r["p_holm"] = _clean(ph)
    for r in rows:
        r["holm_significant"] = None if r["p_holm"] is None else bool(r["p_holm"] < alpha)

    def key(r: dict) -> tuple:
        m = r["mean"]
        return (r["variant"] != baseline, m is None, m if m is not None else 0.0, r["variant"])

    rows.sort(key=key)
    return rows


# ============================================================================================
# Formatting
# ============================================================================================


def _f(x: Any, spec: str) -> str:
    return DASH if not _finite(x) else format(x, spec)


def _fmt_p(p: Any) -> str:
    if not _finite(p):
        return DASH
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _p_is(p: Any) -> str:
    """'p = 0.0213' or 'p < 0.0001' for sentences."""
    f = _fmt_p(p)
    return f"p {f[0]} {f[1:]}" if f.startswith("<") else f"p = {f}"


def _fmt_ci(lo: Any, hi: Any, spec: str = ".4f") -> str:
    if not (_finite(lo) and _finite(hi)):
        return DASH
    return f"[{format(lo, spec)}, {format(hi, spec)}]"


def _fmt_seeds(s: Any) -> str:
    return DASH if s is None else str(s)


def _columns(rows: list[dict]) -> list[tuple[str, Any]]:
    """(header, cell function) pairs; optional columns only where some row has a value."""
    cols: list[tuple[str, Any]] = [
        ("variant", lambda r: r["variant"]),
        ("n seeds", lambda r: str(r["n"]) + (f" (+{r['n_excluded']} excl.)" if r.get("n_excluded") else "")),
        ("mean test loss", lambda r: _f(r["mean"], ".4f")),
        ("95% CI", lambda r: _fmt_ci(r["ci_low"], r["ci_high"])),
        ("Δ vs baseline", lambda r: _f(r["diff"], "+.4f")),
        ("95% CI of Δ", lambda r: _fmt_ci(r["diff_ci_low"], r["diff_ci_high"], "+.4f")),
        ("p (Welch)", lambda r: _fmt_p(r["p"])),
        ("p (Holm)", lambda r: _fmt_p(r["p_holm"])),
        ("Hedges' g", lambda r: _f(r["hedges_g"], "+.2f")),
        ("verdict", lambda r: r["verdict"]),
        ("seeds needed", lambda r: _fmt_seeds(r["seeds_needed"])),
    ]
    if any(r.get("tokens_per_s") is not None for r in rows):
        cols.append(("tokens/s", lambda r: _f(r.get("tokens_per_s"), ",.0f")))
    if any(r.get("judge") is not None for r in rows):
        cols.append(("judge score", lambda r: _f(r.get("judge"), ".2f")))
    if any(r.get("published") is not None for r in rows):
        cols.append(("published", lambda r: _f(r.get("published"), "g")))
    return cols


def _cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = _columns(rows)
    return [h for h, _ in cols], [[str(fn(r)) for _, fn in cols] for r in rows]


def format_table(rows: list[dict], style: str = "markdown") -> str:
    """The verdict table as a markdown table (style="markdown") or aligned plain text ("text")."""
    headers, body = _cells(rows)
    if style == "markdown":
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
        return "\n".join(lines)
    if style == "text":
        widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(headers)]
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(c) for c in body])
    raise ValueError(f"unknown table style {style!r} (use 'markdown' or 'text')")


def verdict_sentence(r: dict, baseline: str, alpha: float = 0.05) -> str:
    """One plain-words sentence per variant."""
    v = r["variant"]
    if r["verdict"] == "baseline":
        return (f"**{v}** is the baseline: mean test loss {_f(r['mean'], '.4f')} over {r['n']} seed(s)"
                + (f" (95% CI {_fmt_ci(r['ci_low'], r['ci_high'])})." if _finite(r["ci_low"]) else "."))
    if r["verdict"].startswith("needs"):
        return (f"**{v}**: cannot judge yet: it has {r['n']} seed(s) with a finite test loss; a comparison needs "
                f"at least 2 for both it and the baseline, so run more seeds.")
    ci = f"95% CI of the difference {_fmt_ci(r['diff_ci_low'], r['diff_ci_high'], '+.4f')}"
    if r["verdict"] in ("better", "worse"):
        word = "lower" if r["verdict"] == "better" else "higher"
        s = (f"**{v}**: {r['verdict']}: its test loss is {abs(r['diff']):.4f} {word} than {baseline}'s "
             f"({ci}, {_p_is(r['p'])}).")
        if r.get("holm_significant") is False:
            s += (f" But after the Holm correction for the several variants compared, "
                  f"{_p_is(r['p_holm']).replace('p ', 'adjusted p ', 1)} (not below {alpha}): treat this one as tentative and rerun with more seeds.")
        return s
    need = r["seeds_needed"]
    need_text = f"more than {str(need)[1:]}" if isinstance(need, str) else f"about {need}"
    s = (f"**{v}**: {r['verdict']}: the difference to {baseline} is {_f(r['diff'], '+.4f')} "
         f"({ci}, {_p_is(r['p'])}), which is not distinguishable from seed-to-seed noise.")
    if need is not None:
        s += (f" If the true effect were as large as observed (|d| = {abs(r['cohen_d']):.2f}), detecting it 80% of "
              f"the time would take {need_text} seeds per variant.")
    return s


HOW_TO_READ = (
    "Each variant was trained with several seeds; the numbers are about the final test loss (lower is better). "
    "**Δ vs baseline** is the variant's mean minus the baseline's mean, so a negative Δ is an improvement. "
    "The **95% CI** is the range of true values compatible with these seeds: if it straddles zero, the data cannot "
    "tell the variant from the baseline. **p (Welch)** is the chance of seeing a difference at least this large if the "
    "variant truly changed nothing (Welch's t-test, which does not assume equal spread). A verdict of **better** or "
    "**worse** means p < {alpha}; **within noise at n=N** means that with N seeds the difference is no bigger than "
    "what re-running with another seed produces - it does not prove the variant has no effect, only that any effect "
    "is too small to see at this number of seeds (**seeds needed** estimates how many would be, if the observed "
    "effect is real; it is rough, because the observed effect from few seeds is itself noisy). **Hedges' g** is the "
    "difference in units of the seed-to-seed standard deviation. {m_text} **p (Holm)** is the p-value adjusted "
    "for those multiple comparisons (Holm-Bonferroni); a verdict whose Holm p is not below {alpha} is tentative."
)


def _how_to_read(n_comparisons: int, alpha: float) -> str:
    if n_comparisons > 1:
        m_text = (f"{n_comparisons} variants were compared with the baseline, so by chance alone about 1 in "
                  f"{round(1 / alpha)} no-effect variants would still get a \"better\" or \"worse\" at p < {alpha}.")
    else:
        m_text = (f"When several variants are compared, about 1 in {round(1 / alpha)} no-effect variants gets a "
                  f"\"better\" or \"worse\" at p < {alpha} by chance alone.")
    return HOW_TO_READ.format(alpha=alpha, m_text=m_text)


def _warnings(runs: list[dict], rows: list[dict], baseline: str) -> list[str]:
    out = []
    for r in rows:
        if r["n_excluded"]:
            out.append(f"{r['variant']}: {r['n_excluded']} run(s) left out because their test loss is missing or not "
                       f"finite (diverged?).")
        seeds = r["seeds"]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            out.append(f"{r['variant']}: seed(s) {', '.join(map(str, dup))} recorded more than once; those runs are "
                       f"not independent samples.")
    base = next(r for r in rows if r["variant"] == baseline)
    if base["n"] < 2:
        out.append(f"the baseline has {base['n']} seed(s) with a finite test loss; no comparison is possible below 2.")
    for r in rows:
        if r is base or base["tokens"] is None or r["tokens"] is None or base["tokens"] == 0:
            continue
        if abs(r["tokens"] / base["tokens"] - 1) > 0.01:
            out.append(f"{r['variant']} trained on {r['tokens']:,.0f} tokens on average vs {base['tokens']:,.0f} for "
                       f"{baseline}: the comparison mixes the intervention with a different training budget.")
    commits = {r.get("git_commit") for r in runs if r.get("git_commit")}
    if len(commits) > 1:
        out.append(f"runs come from {len(commits)} different git commits; code changes between runs can masquerade as "
                   f"effects.")
    return out


def _run_dir_of(exp_dir: Path, r: dict) -> Path | None:
    """The run's directory: as recorded, or exp_dir/runs/RUN_ID (a relative path recorded from another cwd)."""
    for cand in ([Path(r["run_dir"])] if r.get("run_dir") else []) + [exp_dir / "runs" / str(r["run_id"])]:
        if (cand / "config.toml").is_file():
            return cand
    return None


def _yardsticks(rows: list[dict], baseline: str, comp: dict) -> dict:
    """The Yardsticks part: ours (baseline and best mean) beside the seed's published numbers."""
    ours = []
    with_mean = [r for r in rows if r["mean"] is not None]
    base = next((r for r in with_mean if r["variant"] == baseline), None)
    best = min(with_mean, key=lambda r: r["mean"], default=None)
    if base is not None:
        ours.append((f"ours: {baseline} (baseline, n={base['n']})", base["mean"], "this experiment, mean over seeds"))
    if best is not None and best is not base:
        ours.append((f"ours: {best['variant']} (lowest mean, n={best['n']})", best["mean"],
                     "this experiment, mean over seeds"))
    theirs = [(y.name, y.loss, y.note) for y in YARDSTICKS]
    body = ours + theirs
    if comp["comparable"]:
        body.sort(key=lambda x: -x[1])  # one scale: worst at the top
    table = [[name, _f(loss, ".3f"), note] for name, loss, note in body]
    gaps = ""
    if comp["comparable"] and best is not None:
        parts = [f"{abs(best['mean'] - y.loss):.3f} {'above' if best['mean'] > y.loss else 'below'} {y.name} "
                 f"({y.loss:.3f})" for y in YARDSTICKS]
        gaps = f"Our lowest mean ({best['variant']}, {best['mean']:.3f}) is " + ", ".join(parts) + "."
    return {"comparable": comp["comparable"], "reasons": comp["reasons"], "text": comp["text"], "gaps": gaps,
            "headers": ["model", "test loss", "what it is"], "table": table,
            "lines": [{"name": y.name, "loss": y.loss} for y in YARDSTICKS] if comp["comparable"] else []}


def yardstick_summary(yard: dict) -> str:
    """Terminal lines for the Yardsticks part of a write_report result."""
    ys = ", ".join(f"{y.name} {y.loss:.3f}" for y in YARDSTICKS)
    head = "yardsticks (comparable): " if yard["comparable"] else "yardsticks (different test set, orientation only): "
    return head + ys + ("\n" + yard["gaps"] if yard["gaps"] else "") + (
        "" if yard["comparable"] else "\n" + "differences from the seed's test set: " + "; ".join(yard["reasons"]))


# ============================================================================================
# Plots (matplotlib Figure objects directly, Agg canvas: no pyplot global state)
# ============================================================================================


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _colors(variants: list[str], baseline: str) -> dict[str, Any]:
    from matplotlib import colormaps

    others = [v for v in variants if v != baseline]
    cmap = colormaps["tab10"] if len(others) <= 9 else colormaps["tab20"]
    n = 10 if len(others) <= 9 else 20
    palette = [cmap(i % n) for i in range(n) if not (n == 10 and i == 7)]  # skip tab10 grey: it reads as "none"
    out = {baseline: "#222222"}
    for i, v in enumerate(others):
        out[v] = palette[i % len(palette)]
    return out


def _aggregate(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...] | None:
    """Per-run (x, y) curves -> (grid, mean, lo, hi, n) with each run interpolated inside its own range."""
    curves = [(x, y) for x, y in curves if x.size]
    if not curves:
        return None
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    stack = np.full((len(curves), grid.size), np.nan)
    for i, (x, y) in enumerate(curves):
        order = np.argsort(x)
        x, y = x[order], y[order]
        inside = (grid >= x[0]) & (grid <= x[-1])
        stack[i, inside] = np.interp(grid[inside], x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        lo = np.nanmin(stack, axis=0)
        hi = np.nanmax(stack, axis=0)
    return grid, mean, lo, hi, np.sum(np.isfinite(stack), axis=0)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    k = np.ones(window) / window
    pad = window // 2
    yp = np.concatenate([np.full(pad, y[0]), y, np.full(window - 1 - pad, y[-1])])
    return np.convolve(yp, k, mode="valid")


def plot_loss_curves(metrics: dict[str, list[list[dict]]], order: list[str], colors: dict[str, Any]) -> bytes:
    """Train and val loss vs tokens: mean over seeds with a min-max band, one colour per variant."""
    all_rows = [m for runs in metrics.values() for ms in runs for m in ms]
    use_tokens = bool(all_rows) and all(m.get("tokens") is not None for m in all_rows)
    xkey, xlabel = ("tokens", "tokens seen") if use_tokens else ("step", "step")
    fig = _new_figure(12, 5.2)
    axes = fig.subplots(1, 2)
    for ax, ykey, name in ((axes[0], "train_loss", "train loss"), (axes[1], "val_loss", "validation loss")):
        tail_vals, tail_lows, any_line = [], [], False
        n_points = 0
        for v in order:
            curves = []
            for ms in metrics.get(v, []):
                pts = [(m[xkey], m[ykey]) for m in ms if m.get(xkey) is not None and _finite(m.get(ykey))]
                if pts:
                    a = np.asarray(pts, dtype=float)
                    curves.append((a[:, 0], a[:, 1]))
            agg = _aggregate(curves)
            if agg is None:
                continue
            grid, mean, lo, hi, cnt = agg
            n_points = max(n_points, grid.size)
            window = max(1, grid.size // 100) if (ykey == "train_loss" and grid.size > 300) else 1
            mean, lo, hi = _smooth(mean, window), _smooth(lo, window), _smooth(hi, window)
            n_seeds = len(curves)
            is_base = v == order[0]
            ax.plot(grid, mean, color=colors[v], lw=1.8 if is_base else 1.4, label=v, zorder=4 if is_base else 3)
            if n_seeds > 1:
                ax.fill_between(grid, lo, hi, color=colors[v], alpha=0.15, lw=0, zorder=2)
            any_line = True
            tail = grid >= grid[0] + 0.25 * (grid[-1] - grid[0])
            if tail.any():
                tail_vals.append(np.nanmax(mean[tail]))
                tail_lows.append(np.nanmin(lo[tail]))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        title = f"{name}: mean over seeds, band = min..max"
        if ykey == "train_loss" and n_points > 300:
            title += "\n(train curve smoothed: moving average over 1% of points)"
        ax.grid(True, alpha=0.3)
        if not any_line:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ymin, ymax = ax.get_ylim()
        if tail_vals:
            top, bottom = max(tail_vals), min(tail_lows)
            span = max(top - bottom, 1e-6)
            new_top = top + 0.15 * span
            if new_top < ymax:
                ax.set_ylim(bottom - 0.08 * span, new_top)
                title += "\n(y-axis zoomed on the last 75% of training)"
        ax.set_title(title, fontsize=10)
        if use_tokens:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    by_variant: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            by_variant.setdefault(lab, h)
    labels = [v for v in order if v in by_variant]
    if labels:
        counts = {v: len(metrics.get(v, [])) for v in labels}
        texts = [f"{v} (n={counts[v]} seed{'' if counts[v] == 1 else 's'})" for v in labels]
        ncol = max(1, min(len(texts), 5, 150 // (max(len(t) for t in texts) + 8)))  # ~150 chars fit across
        fig.legend([by_variant[v] for v in labels], texts, loc="outside lower center", ncol=ncol, frameon=False,
                   fontsize=9 if len(texts) > 6 else 10)
    fig.suptitle("Loss curves per variant", fontsize=12)
    return _png(fig)


_YARDSTICK_STYLE = {"seed baseline": ("#8d6e63", ":"), "seed best stack": ("#6a1b9a", ":"),
                    "OpenAI GPT-2 small": ("#00838f", "-.")}


def plot_test_loss(rows: list[dict], baseline: str, colors: dict[str, Any],
                   yardsticks: Iterable[Yardstick] = ()) -> bytes:
    """Final test loss per variant: one dot per seed, mean with 95% CI, baseline mean as a line, and the
    published yardsticks as labelled horizontal lines (pass them only when the test set is the seed's)."""
    n = len(rows)
    fig = _new_figure(min(14.0, max(6.5, 1.1 * n + 2.5)), 5.0)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    labelled: set[str] = set()

    def _once(label: str) -> str:
        if label in labelled:
            return "_nolegend_"
        labelled.add(label)
        return label

    for i, r in enumerate(rows):
        vals = np.asarray(r["test_losses"], dtype=float)
        if vals.size:
            jitter = rng.uniform(-0.12, 0.12, vals.size) if vals.size > 1 else np.zeros(1)
            ax.scatter(i + jitter - 0.08, vals, s=22, color=colors[r["variant"]], alpha=0.55, lw=0,
                       label=_once("one seed"), zorder=2)
        if r["mean"] is not None:
            if r["ci_low"] is not None:
                ax.errorbar([i + 0.18], [r["mean"]], yerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]],
                            fmt="o", color=colors[r["variant"]], ms=7, capsize=5, lw=1.8, zorder=3,
                            label=_once("mean ± 95% CI"))
            else:
                ax.plot([i + 0.18], [r["mean"]], "o", color=colors[r["variant"]], ms=7, zorder=3,
                        label=_once("mean (one seed: no CI)"))
    base = next(r for r in rows if r["variant"] == baseline)
    if base["mean"] is not None:
        ax.axhline(base["mean"], color="#222222", ls="--", lw=1, alpha=0.8, label=f"{baseline} mean", zorder=1)
    for y in yardsticks:
        color, ls = _YARDSTICK_STYLE.get(y.name, ("#757575", ":"))
        ax.axhline(y.loss, color=color, ls=ls, lw=1.2, alpha=0.9, label=f"{y.name} {y.loss:.3f}", zorder=1)
    labels = [f"{r['variant']}\n(n={r['n']})" for r in rows]
    ax.set_xticks(range(n))
    long = max(len(r["variant"]) for r in rows) > 12 or n > 6
    ax.set_xticklabels(labels, rotation=30 if long else 0, ha="right" if long else "center", fontsize=9)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("final test loss (lower is better)")
    ax.set_title("Final test loss per variant", fontsize=12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    return _png(fig)


_VERDICT_COLORS = {"better": "#1a7f37", "worse": "#c62828"}


def plot_delta(rows: list[dict], baseline: str, alpha: float = 0.05) -> bytes:
    """Δ test loss vs baseline with 95% CI per variant, zero line; colour = verdict."""
    others = [r for r in rows if r["variant"] != baseline]
    m = len(others)
    fig = _new_figure(9, max(2.8, 0.55 * m + 1.8))
    ax = fig.subplots()
    shown = [r for r in others if r["diff"] is not None]
    if not shown:
        ax.text(0.5, 0.5, "no variant with a test loss to compare against the baseline", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        ax.set_axis_off()
        ax.set_title(f"Difference in test loss vs {baseline}", fontsize=12)
        return _png(fig)
    ys = np.arange(m)[::-1]
    seen = set()
    for y, r in zip(ys, others):
        if r["diff"] is None:
            continue
        verdict = r["verdict"]
        key = verdict if verdict in _VERDICT_COLORS else "too few seeds (no CI)" if verdict.startswith("needs") \
            else "within noise"
        color = _VERDICT_COLORS.get(verdict, "#757575")
        label = key if key not in seen else "_nolegend_"
        seen.add(key)
        if r["diff_ci_low"] is not None:
            ax.errorbar([r["diff"]], [y], xerr=[[r["diff"] - r["diff_ci_low"]], [r["diff_ci_high"] - r["diff"]]],
                        fmt="o", color=color, ms=7, capsize=5, lw=1.8, label=label)
        else:
            ax.plot([r["diff"]], [y], "o", color=color, ms=7, label=label, mfc="white")
    ax.axvline(0, color="#222222", lw=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r['variant']} (n={r['n']})" for r in others], fontsize=9)
    ax.set_ylim(-0.7, m - 0.3)
    lo = min(r["diff_ci_low"] if r["diff_ci_low"] is not None else r["diff"] for r in shown)
    hi = max(r["diff_ci_high"] if r["diff_ci_high"] is not None else r["diff"] for r in shown)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = max(hi - lo, 1e-6)
    ax.set_xlim(lo - 0.05 * span, hi + 0.45 * span)  # room on the right for the p-value notes
    for y, r in zip(ys, others):
        if r["diff"] is None:
            continue
        note = _p_is(r["p"]).replace(" ", "") if r["p"] is not None else r["verdict"]
        if r.get("holm_significant") is False and r["verdict"] in ("better", "worse"):
            note += " (not after Holm)"
        ax.annotate(note, xy=(hi + 0.04 * span, y), va="center", fontsize=8.5, color="#444444")
    ax.set_xlabel(f"Δ test loss = variant − {baseline}   (negative = better)   with 95% CI")
    ax.set_title(f"Difference in final test loss vs {baseline}", fontsize=12)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    return _png(fig)


# ============================================================================================
# Markdown and HTML
# ============================================================================================

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:1px solid #d0d7de;padding-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #eaeef2}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
.better{color:#1a7f37;font-weight:600}.worse{color:#c62828;font-weight:600}.noise{color:#57606a}
.baseline{font-weight:600}.meta{color:#57606a;font-size:.9em}.warn{background:#fff8c5;padding:.6em 1em;
border-left:4px solid #d4a72c}img{max-width:100%;height:auto;display:block;margin:1em 0}
"""


def _md_inline_to_html(s: str) -> str:
    """Escape, then turn **bold** into <strong>."""
    parts = _html.escape(s).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _verdict_class(v: str) -> str:
    return "better" if v == "better" else "worse" if v == "worse" else "baseline" if v == "baseline" else "noise"


def _html_table(headers: list[str], body: list[list[str]], verdict_col: int | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for cells in body:
        tds = []
        for j, c in enumerate(cells):
            cls = f' class="{_verdict_class(c)}"' if j == verdict_col else ""
            tds.append(f"<td{cls}>{_html.escape(c)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _runs_table(runs: list[dict], order: list[str]) -> tuple[list[str], list[list[str]]]:
    rank = {v: i for i, v in enumerate(order)}
    headers = ["variant", "seed", "run_id", "test loss", "val loss", "tokens", "tokens/s", "git commit"]
    body = []
    for r in sorted(runs, key=lambda r: (rank.get(str(r.get("variant") or ""), 1 << 30), r.get("seed") or 0,
                                         r["run_id"])):
        body.append([str(r.get("variant") or ""), DASH if r.get("seed") is None else str(r["seed"]), r["run_id"],
                     _f(r.get("test_loss"), ".4f"), _f(r.get("val_loss"), ".4f"), _f(r.get("tokens"), ",.0f"),
                     _f(r.get("tokens_per_s"), ",.0f"), (r.get("git_commit") or DASH)[:10]])
    return headers, body


def write_report(exp_dir: str | Path, baseline: str = "baseline", experiment: str | None = None,
                 reference: dict[str, float] | None = None, title: str | None = None,
                 alpha: float = 0.05) -> dict:
    """Write report.md, report.html and plots/*.png into exp_dir; return paths, the table and the rows."""
    exp_dir = Path(exp_dir)
    db_path = exp_dir / DB_NAME
    if not db_path.exists():
        raise GptlabError(f"no {DB_NAME} in {exp_dir}: no finished runs have been recorded there")
    with ResultsDB(db_path, create=False) as db:
        runs = db.runs(experiment)
        if not runs:
            what = f" for experiment {experiment!r}" if experiment is not None else ""
            present = sorted({str(r.get('experiment')) for r in db.runs()})
            extra = f" (experiments present: {', '.join(present)})" if experiment is not None and present else ""
            raise GptlabError(f"{db_path} has no finished runs{what}{extra}")
        experiments = sorted({str(r.get("experiment")) for r in runs})
        if experiment is None and len(experiments) > 1:
            raise GptlabError(f"{db_path} holds runs of several experiments ({', '.join(experiments)}); "
                              f"pick one with experiment=...")
        judge = db.judge_summary()
        test_sets = {}
        for r in runs:
            rd = _run_dir_of(exp_dir, r)
            test_sets[str(r["run_id"])] = run_test_set(rd) if rd is not None else None
        metrics: dict[str, list[list[dict]]] = defaultdict(list)
        for r in runs:
            metrics[str(r.get("variant") or "")].append(db.metrics(r["run_id"]))

    variants = sorted({str(r.get("variant") or "") for r in runs})
    if baseline not in variants:
        raise GptlabError(f"baseline variant {baseline!r} not found in {exp_dir}; variants present: "
                          f"{', '.join(variants)}")
    rows = build_rows(runs, baseline, judge=judge, reference=reference, alpha=alpha)
    order = [r["variant"] for r in rows]
    colors = _colors(order, baseline)
    yard = _yardsticks(rows, baseline, comparability(test_sets))
    exp_name = experiment or (experiments[0] if experiments and experiments[0] != "None" else exp_dir.name)
    title = title or f"Results: {exp_name}"

    plots_dir = exp_dir / "plots"
    pngs = {
        "loss_curves.png": plot_loss_curves(metrics, order, colors),
        "test_loss.png": plot_test_loss(rows, baseline, colors, YARDSTICKS if yard["comparable"] else ()),
        "delta.png": plot_delta(rows, baseline, alpha),
    }
    plot_paths = []
    for name, data in pngs.items():
        atomic_write_bytes(plots_dir / name, data)
        plot_paths.append(str(plots_dir / name))

    table = format_table(rows)
    n_cmp = len(rows) - 1
    sentences = [verdict_sentence(r, baseline, alpha) for r in rows]
    how = _how_to_read(n_cmp, alpha)
    warns = _warnings(runs, rows, baseline)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = (f"{len(runs)} finished runs, {len(rows)} variants, baseline `{baseline}`, α = {alpha}. "
            f"Source: `{db_path}`. Generated {now}.")
    interventions = [(r["variant"], ", ".join(r["interventions"]) or DASH) for r in rows]
    run_headers, run_body = _runs_table(runs, order)
    captions = {
        "loss_curves.png": "Train and validation loss per variant (mean over seeds; band = min..max over seeds).",
        "test_loss.png": "Final test loss: dots = individual seeds, marker = mean with 95% CI, dashed = baseline mean"
                         + (", dotted = the seed's published yardsticks." if yard["comparable"] else "."),
        "delta.png": "Difference to the baseline with 95% CI; intervals crossing zero are within noise.",
    }

    md = [f"# {title}", "", meta, "", "## Verdicts", "", table, "", "## In plain words", ""]
    md += [f"- {s}" for s in sentences]
    md += ["", "## Yardsticks", "", yard["text"], ""]
    if yard["gaps"]:
        md += [yard["gaps"], ""]
    md += ["| " + " | ".join(yard["headers"]) + " |", "|---|---|---|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in yard["table"]]
    md += ["", "## How to read this", "", how, ""]
    if warns:
        md += ["## Warnings", ""] + [f"- {w}" for w in warns] + [""]
    md += ["## Plots", ""]
    for name in PLOT_NAMES:
        md += [f"![{captions[name]}](plots/{name})", "", f"*{captions[name]}*", ""]
    md += ["## Variants", "", "| variant | interventions |", "|---|---|"]
    md += [f"| {v.replace('|', chr(92) + '|')} | {i} |" for v, i in interventions]
    md += ["", "## Runs", "", "| " + " | ".join(run_headers) + " |", "|" + "|".join("---" for _ in run_headers) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in run_body]
    md_text = "\n".join(md) + "\n"

    headers, body = _cells(rows)
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{_html.escape(title)}</title><style>{_CSS}</style></head><body>",
         f"<h1>{_html.escape(title)}</h1>", f'<p class="meta">{_html.escape(meta.replace("`", ""))}</p>',
         "<h2>Verdicts</h2>", _html_table(headers, body, verdict_col=headers.index("verdict")),
         "<h2>In plain words</h2><ul>"]
    h += [f"<li>{_md_inline_to_html(s)}</li>" for s in sentences]
    h += ["</ul>", "<h2>Yardsticks</h2>",
          f'<p class="{"meta" if yard["comparable"] else "warn"}">{_html.escape(yard["text"].replace("`", ""))}</p>']
    if yard["gaps"]:
        h += [f"<p>{_html.escape(yard['gaps'])}</p>"]
    h += [_html_table(yard["headers"], yard["table"])]
    h += ["<h2>How to read this</h2>", f"<p>{_md_inline_to_html(how)}</p>"]
    if warns:
        h += ['<h2>Warnings</h2><div class="warn"><ul>'] + [f"<li>{_html.escape(w)}</li>" for w in warns]
        h += ["</ul></div>"]
    h += ["<h2>Plots</h2>"]
    for name in PLOT_NAMES:
        b64 = base64.b64encode(pngs[name]).decode("ascii")
        h += [f'<figure><img alt="{_html.escape(captions[name])}" src="data:image/png;base64,{b64}">',
              f"<figcaption>{_html.escape(captions[name])}</figcaption></figure>"]
    h += ["<h2>Variants</h2>", _html_table(["variant", "interventions"], [list(x) for x in interventions])]
    h += ["<h2>Runs</h2>", _html_table(run_headers, run_body), "</body></html>"]
    html_text = "\n".join(h) + "\n"

    md_path, html_path = exp_dir / "report.md", exp_dir / "report.html"
    atomic_write_text(md_path, md_text)
    atomic_write_text(html_path, html_text)
    return {"markdown": str(md_path), "html": str(html_path), "plots": plot_paths, "table": table, "rows": rows,
            "yardsticks": yard}
