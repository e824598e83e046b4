"""The ladder report's plot of one variant: loss against compute with the fits and, for a variant the screen
judges, the extrapolation band to the target; Δ against compute with the per-rung CIs and the backtest."""

from __future__ import annotations

import math

import numpy as np

from gptlab.experiments.analysis import scaling
from gptlab.experiments.specs.ladder import Ladder


def plot_variant(lad: Ladder, e: dict, baseline: str, level: float, title: str) -> bytes:
    """Log-log loss vs FLOPs (each run, rung means, fitted curves, the extrapolation band to the target) and Δ
    vs FLOPs (per-rung CIs, the fitted Δ, its band, the target's interval, the backtest), titled `title`. A
    variant the screen does not judge (e["not_judged"]) gets no band and no point at the target."""
    from gptlab.experiments.report.plots import new_figure, png

    rungs: list[scaling.Rung] = e["data"]
    ex: scaling.Extrapolation = e["extrapolation"]
    fit, grid = ex.fit, e["grid"]
    cmax = max(r.c_base.max() for r in rungs)
    band = None if e.get("not_judged") else ex.band
    fig = new_figure(12, 4.8)
    ax, bx = fig.subplots(1, 2)
    for name, cs, ls, color, curve in (
        (baseline, [r.c_base for r in rungs], [r.base for r in rungs], "#222222", fit.base if fit else None),
        (e["variant"], [r.c_var for r in rungs], [r.var for r in rungs], "#1f77b4", fit.var if fit else None),
    ):
        for c, y in zip(cs, ls, strict=True):
            ax.scatter(c, y, s=12, color=color, alpha=0.45, lw=0)
            ax.errorbar(
                [np.mean(c)],
                [np.mean(y)],
                yerr=[[np.mean(y) - y.min()], [y.max() - np.mean(y)]],
                fmt="o",
                color=color,
                ms=5,
                capsize=3,
            )
        if curve is not None:
            ax.plot(
                grid,
                curve(grid),
                color=color,
                lw=1.4,
                ls="--" if name == baseline else "-",
                label=f"{name}: {curve.form} fit",
                zorder=3 if name == baseline else 2,
            )
    far = grid >= cmax
    if band:  # none when a rung has fewer than 2 seeds (scaling.noise_note)
        ax.fill_between(
            grid[far],
            band["var"][0][far],
            band["var"][1][far],
            color="#1f77b4",
            alpha=0.15,
            lw=0,
            label=f"{e['variant']}: {level:.0%} band",
        )
    ax.axvline(lad.target_flops, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final test loss (nats/token)")
    ax.set_title("loss vs compute (points: seeds; bars: min..max)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    pr = e["per_rung"]
    xs = [x["compute"] for x in pr]
    ys = [x["diff"] for x in pr]
    lo = [x["diff"] - x["ci_low"] if math.isfinite(x["ci_low"]) else 0 for x in pr]
    hi = [x["ci_high"] - x["diff"] if math.isfinite(x["ci_high"]) else 0 for x in pr]
    bx.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color="#1f77b4", capsize=3, label=f"Δ per rung ({level:.0%} CI)")
    if fit is not None:
        bx.plot(grid, np.broadcast_to(fit.delta_at(grid), grid.shape), color="#1f77b4", lw=1.2, label="fitted Δ")
    if band:
        bx.fill_between(grid, band["delta"][0], band["delta"][1], color="#1f77b4", alpha=0.12, lw=0)
    if math.isfinite(ex.delta) and not e.get("not_judged"):
        yerr = [[ex.delta - ex.low], [ex.high - ex.delta]] if math.isfinite(ex.low) else None
        bx.errorbar(
            [lad.target_flops],
            [ex.delta],
            yerr=yerr,
            fmt="s",
            color="#d62728",
            capsize=4,
            label=f"target ({level:.0%} PI)",
        )
    bt = e.get("backtest")
    if bt is not None and math.isfinite(bt.predicted):
        yerr = [[bt.predicted - bt.low], [bt.high - bt.predicted]] if math.isfinite(bt.low) else None
        bx.errorbar(
            [xs[-1] * 1.08],
            [bt.predicted],
            yerr=yerr,
            fmt="D",
            mfc="none",
            color="#ff7f0e",
            capsize=3,
            label="backtest prediction",
        )
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xscale("log")
    bx.set_xlabel("training FLOPs")
    bx.set_ylabel(f"Δ test loss ({e['variant']} − {baseline})")
    bx.set_title(title)
    bx.grid(True, which="both", alpha=0.25)
    bx.legend(fontsize=8)
    fig.suptitle(f"{e['variant']} vs {baseline}", fontsize=12)
    return png(fig)
