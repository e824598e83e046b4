"""The report's three figures as PNG bytes: loss curves per variant, final test loss per variant (with the
published yardsticks when the test set is the seed's), and each variant's difference to the baseline.
Figures are matplotlib Figure objects on an Agg canvas: no pyplot global state."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from gptlab.experiments.analysis.yardsticks import Yardstick
from gptlab.experiments.report.format import finite, p_is


def new_figure(w: float, h: float):
    """A w x h inch matplotlib Figure on the Agg canvas (no display needed), constrained layout, the reports' dpi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig) -> bytes:
    """The figure as PNG bytes."""
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
    """Per-run (x, y) curves -> (grid, mean, lo, hi) with each run interpolated inside its own range."""
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
    return grid, mean, lo, hi


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
    fig = new_figure(12, 5.2)
    axes = fig.subplots(1, 2)
    for ax, ykey, name in ((axes[0], "train_loss", "train loss"), (axes[1], "val_loss", "validation loss")):
        _draw_loss_axis(ax, metrics, order, colors, ykey, name, use_tokens)
    by_variant: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            by_variant.setdefault(lab, h)
    labels = [v for v in order if v in by_variant]
    if labels:
        counts = {v: len(metrics.get(v, [])) for v in labels}
        texts = [f"{v} (n={counts[v]} seed{'' if counts[v] == 1 else 's'})" for v in labels]
        ncol = max(1, min(len(texts), 5, 150 // (max(len(t) for t in texts) + 8)))  # ~150 chars fit across
        fig.legend(
            [by_variant[v] for v in labels],
            texts,
            loc="outside lower center",
            ncol=ncol,
            frameon=False,
            fontsize=9 if len(texts) > 6 else 10,
        )
    fig.suptitle("Loss curves per variant", fontsize=12)
    return png(fig)


def _draw_loss_axis(
    ax,
    metrics: dict[str, list[list[dict]]],
    order: list[str],
    colors: dict[str, Any],
    ykey: str,
    name: str,
    use_tokens: bool,
) -> None:
    """One panel of the loss curves: each variant's mean over seeds (train smoothed when long) with its band,
    the y-axis zoomed on the last 75% of training when the early losses would squash the rest."""
    xkey, xlabel = ("tokens", "tokens seen") if use_tokens else ("step", "step")
    tail_vals, tail_lows, any_line = [], [], False
    n_points = 0
    for v in order:
        curves = []
        for ms in metrics.get(v, []):
            pts = [(m[xkey], m[ykey]) for m in ms if m.get(xkey) is not None and finite(m.get(ykey))]
            if pts:
                a = np.asarray(pts, dtype=float)
                curves.append((a[:, 0], a[:, 1]))
        agg = _aggregate(curves)
        if agg is None:
            continue
        grid, mean, lo, hi = agg
        n_points = max(n_points, grid.size)
        window = max(1, grid.size // 100) if (ykey == "train_loss" and grid.size > 300) else 1
        mean, lo, hi = _smooth(mean, window), _smooth(lo, window), _smooth(hi, window)
        is_base = v == order[0]
        ax.plot(grid, mean, color=colors[v], lw=1.8 if is_base else 1.4, label=v, zorder=4 if is_base else 3)
        if len(curves) > 1:
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
        return
    ymax = ax.get_ylim()[1]
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


_YARDSTICK_STYLE = {
    "seed baseline": ("#8d6e63", ":"),
    "seed best stack": ("#6a1b9a", ":"),
    "OpenAI GPT-2 small": ("#00838f", "-."),
}


def plot_test_loss(
    rows: list[dict], baseline: str, colors: dict[str, Any], yardsticks: Iterable[Yardstick] = ()
) -> bytes:
    """Final test loss per variant: one dot per seed, mean with 95% CI, baseline mean as a line, and the
    published yardsticks as labelled horizontal lines (pass them only when the test set is the seed's)."""
    n = len(rows)
    fig = new_figure(min(14.0, max(6.5, 1.1 * n + 2.5)), 5.0)
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
            ax.scatter(
                i + jitter - 0.08,
                vals,
                s=22,
                color=colors[r["variant"]],
                alpha=0.55,
                lw=0,
                label=_once("one seed"),
                zorder=2,
            )
        if r["mean"] is not None:
            if r["ci_low"] is not None:
                ax.errorbar(
                    [i + 0.18],
                    [r["mean"]],
                    yerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]],
                    fmt="o",
                    color=colors[r["variant"]],
                    ms=7,
                    capsize=5,
                    lw=1.8,
                    zorder=3,
                    label=_once("mean ± 95% CI"),
                )
            else:
                ax.plot(
                    [i + 0.18],
                    [r["mean"]],
                    "o",
                    color=colors[r["variant"]],
                    ms=7,
                    zorder=3,
                    label=_once("mean (one seed: no CI)"),
                )
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
    return png(fig)


_VERDICT_COLORS = {"better": "#1a7f37", "worse": "#c62828", "suggestive": "#9a6700", "equivalent": "#0969da"}


def plot_delta(rows: list[dict], baseline: str) -> bytes:
    """Δ test loss vs baseline with its CI per variant (the rows' level, 1 - alpha), zero line; colour = verdict."""
    others = [r for r in rows if r["variant"] != baseline]
    m = len(others)
    fig = new_figure(9, max(2.8, 0.55 * m + 1.8))
    ax = fig.subplots()
    shown = [r for r in others if r["diff"] is not None]
    if not shown:
        ax.text(
            0.5,
            0.5,
            "no variant with a test loss to compare against the baseline",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
        ax.set_axis_off()
        ax.set_title(f"Difference in test loss vs {baseline}", fontsize=12)
        return png(fig)
    ys = np.arange(m)[::-1]
    seen = set()
    for y, r in zip(ys, others, strict=True):
        if r["diff"] is None:
            continue
        verdict = r["verdict"]
        kind = next((k for k in _VERDICT_COLORS if verdict.startswith(k)), None)
        key = (
            verdict
            if verdict in ("better", "worse")
            else kind or ("too few seeds (no CI)" if verdict.startswith("needs") else "within noise")
        )
        color = _VERDICT_COLORS.get(kind, "#757575")
        label = key if key not in seen else "_nolegend_"
        seen.add(key)
        if r["diff_ci_low"] is not None:
            ax.errorbar(
                [r["diff"]],
                [y],
                xerr=[[r["diff"] - r["diff_ci_low"]], [r["diff_ci_high"] - r["diff"]]],
                fmt="o",
                color=color,
                ms=7,
                capsize=5,
                lw=1.8,
                label=label,
            )
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
    for y, r in zip(ys, others, strict=True):
        if r["diff"] is None:
            continue
        note = p_is(r["p"]).replace(" ", "") if r["p"] is not None else r["verdict"]
        ax.annotate(note, xy=(hi + 0.04 * span, y), va="center", fontsize=8.5, color="#444444")
    level = shown[0].get("diff_ci_level") or 0.95
    ax.set_xlabel(f"Δ test loss = variant − {baseline}   (negative = better)   with {100 * level:.3g}% CI")
    ax.set_title(f"Difference in final test loss vs {baseline}", fontsize=12)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    return png(fig)


def report_plots(
    metrics: dict[str, list[list[dict]]], rows: list[dict], baseline: str, yardsticks: Iterable[Yardstick] = ()
) -> dict[str, bytes]:
    """The report's figures by file name, variants in the rows' order; `metrics` maps each variant to its
    runs' per-step metrics, `yardsticks` are drawn on the test-loss plot."""
    order = [r["variant"] for r in rows]
    colors = _colors(order, baseline)
    return {
        "loss_curves.png": plot_loss_curves(metrics, order, colors),
        "test_loss.png": plot_test_loss(rows, baseline, colors, yardsticks),
        "delta.png": plot_delta(rows, baseline),
    }
