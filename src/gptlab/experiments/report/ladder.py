"""A ladder's report: report.md, report.html, plots/ladder-VARIANT.png and ladder.json in the ladder folder."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from gptlab import GptlabError
from gptlab.experiments.analysis import scaling
from gptlab.experiments.analysis.ladder import analyse, done_counts
from gptlab.experiments.analysis.regime import INFORMATIVE_MARGIN
from gptlab.experiments.report.confirm import confirm_section
from gptlab.experiments.report.format import DASH, fmt, fmt_ci
from gptlab.experiments.report.ladder_json import ladder_json
from gptlab.experiments.report.ladder_plot import plot_variant
from gptlab.experiments.report.regime import load_target, regime_table
from gptlab.experiments.specs.ladder import MIN_SPAN, Ladder


def _label(e: dict) -> str:
    if e.get("not_judged"):
        return f"not judged by this screen: {e['not_judged']}"
    if e.get("unfitted"):
        return "no informative rung to fit"
    if e.get("reliable") is False:
        return "**unreliable**"
    if e.get("reliable") is True:
        return "reliable"
    bt = e.get("backtest")
    return f"not tested ({bt.note})" if bt is not None and bt.note else "not tested"


def _trend_word(t: dict) -> str:
    return t["word"] if t.get("tested") or t["word"] == "flips" else f"{t['word']} (untested)"


def format_summary(res: dict) -> str:
    """The summary table as aligned text (the terminal)."""
    from gptlab.experiments.report.tables import text_table

    return text_table(*res["summary"])


def _summary_table(lad: Ladder, an: dict) -> tuple[list[str], list[list[str]]]:
    lv = f"{an['level']:.0%}"
    head = [
        "variant",
        "Δ smallest rung",
        "Δ largest rung",
        "trend",
        "slope /decade (p)",
        "fit",
        "Δ at target",
        f"{lv} PI",
        "backtest predicted",
        "measured",
        "error",
        f"{lv} PI of measured",
        "backtest",
    ]
    body = []
    for e in an["variants"]:
        if e.get("missing"):
            body.append([e["variant"]] + [DASH] * 11 + ["no runs"])
            continue
        pr = e["per_rung"]
        if e.get("unfitted"):
            measured = [fmt(pr[0]["diff"], "+.4f"), fmt(pr[-1]["diff"], "+.4f")]
            body.append([e["variant"], *measured] + [DASH] * 9 + [_label(e)])
            continue
        t, ex, bt = e["trend"], e["extrapolation"], e["backtest"]
        if e["not_judged"]:  # the measured Δ and its trend; nothing at the target, no backtest word
            ex, bt = None, None
        body.append(
            [
                e["variant"],
                fmt(pr[0]["diff"], "+.4f"),
                fmt(pr[-1]["diff"], "+.4f"),
                _trend_word(t),
                f"{fmt(t['slope'], '+.4f')} ({fmt(t['p'], '.3g')})",
                ex.fit.model if ex and ex.fit else DASH,
                fmt(ex.delta, "+.4f") if ex else DASH,
                DASH if not ex else fmt_ci(ex.low, ex.high, "+.4f") if not ex.note else f"— ({ex.note})",
                fmt(bt.predicted, "+.4f") if bt else DASH,
                fmt(bt.measured, "+.4f") if bt else DASH,
                fmt(bt.error, "+.4f") if bt else DASH,
                fmt_ci(bt.low, bt.high, "+.4f") if bt else DASH,
                _label(e),
            ]
        )
    return head, body


def _rung_table(lad: Ladder, exp_dir: Path) -> tuple[list[str], list[list[str]]]:
    done = done_counts(lad, exp_dir)
    head = ["rung", "model", "non-emb params", "params", "tokens/run", "FLOPs/run (baseline)", "runs done"]
    body = [
        [
            r.name,
            r.describe(),
            f"{r.non_embedding:,}",
            f"{r.params:,}",
            f"{r.tokens:,}",
            f"{r.flops:.3e}",
            f"{n}/{len(r.spec.matrix())}",
        ]
        for r, n in zip(lad.rungs, done, strict=True)
    ]
    return head, body


def _variant_table(e: dict, lad: Ladder) -> tuple[list[str], list[list[str]]]:
    lv = f"{1 - lad.spec.alpha:.0%}"
    head = [
        "rung",
        "FLOPs",
        "n baseline",
        "n variant",
        "mean baseline",
        "mean variant",
        "Δ",
        f"{lv} CI of Δ",
        "p (paired t)" if lad.spec.design == "paired" else "p (Welch)",
    ]
    body = [
        [
            lad.rungs[x["rung"]].name,
            f"{x['compute']:.3e}",
            str(x["n_baseline"]),
            str(x["n_variant"]),
            fmt(x["mean_baseline"], ".4f"),
            fmt(x["mean_variant"], ".4f"),
            fmt(x["diff"], "+.4f"),
            fmt_ci(x["ci_low"], x["ci_high"], "+.4f"),
            fmt(x["p"], ".3g"),
        ]
        for x in e["per_rung"]
    ]
    if any(x["note"] for x in e["per_rung"]):
        head.append("note")
        for row, x in zip(body, e["per_rung"], strict=True):
            row.append(x["note"] or DASH)
    return head, body


def _rules(lad: Ladder, an: dict) -> list[str]:
    lv = f"{an['level']:.0%}"
    spec = lad.spec
    test = "paired t-test on per-seed differences" if spec.design == "paired" else "Welch's t-test"
    return [
        f"Δ = variant − baseline final test loss (nats/token; negative = the variant helps), at each rung by "
        f"{test} with its {lv} CI (the experiment's design and alpha = {spec.alpha:g}).",
        scaling.TREND_RULE.replace("alpha", f"alpha = {spec.alpha:g}"),
        f"Fits of loss against training FLOPs C (what each run recorded): with at least {scaling.MIN_RUNGS_FULL} "
        f"rungs the baseline and the variant each get L(C) = E + A·C^(−α) (least squares over every run, each "
        f"weighted by 1/the seed variance of its group at its rung; a group with fewer than 2 seeds, or no "
        f"spread, takes the pooled seed variance of the groups with 2+ seeds, "
        f"0 ≤ E < min loss, A > 0, {scaling.ALPHA_BOUNDS[0]:g} ≤ α ≤ {scaling.ALPHA_BOUNDS[1]:g}); with fewer "
        f"rungs, or when that fit fails, the **offset** model: the baseline's form with one shared E, A, α and "
        f"the variant shifted by a constant δ, so its extrapolated Δ is δ at every scale (a constant-Δ "
        f"assumption, not a finding). Column *fit* says which was used.",
        f"Δ at target: the fit's Δ at the target's compute ({lad.target_flops:.3e} FLOPs: "
        f"{lad.target_config.name}, {lad.target_tokens:.3g} tokens). Its {lv} prediction interval: "
        f"{lad.bootstrap} bootstrap replicates resampling the seeds within each rung (residuals inflated by "
        f"√(n/(n−1))), refitted, percentiles. It covers seed noise only, not the error of the functional form "
        f"far beyond the data.",
        f"Backtest: the same fit on every rung but the largest predicts the largest rung's Δ; its {lv} interval "
        f"for the *measured* Δ adds the bootstrap variation of the fit and of the largest rung's own Δ. A "
        f"variant whose measured Δ falls outside it is **unreliable**: the ladder's trend did not carry one rung "
        f"further, so its extrapolation many orders of magnitude further should not be trusted either. "
        f"*reliable* only says the one-rung backtest passed.",
        f"Seed noise needs seeds: at a rung where the baseline or the variant has fewer than 2 seeds"
        f"{' (pairs)' if spec.design == 'paired' else ''}, Δ is shown without CI or p, with the note "
        f'"1 seed: no noise estimate"; the trend is then untested, and the {lv} PI at the target and the '
        f"backtest's interval are not computed (the bootstrap cannot resample that rung, so they would treat its "
        f"Δ as exact): the point values are shown and the backtest is *not tested*, neither reliable nor "
        f"unreliable.",
    ]


def _warnings(lad: Ladder, an: dict) -> list[str]:
    out = []
    if lad.span < MIN_SPAN:
        out.append(
            f"The rungs span {lad.span:.1f}x in non-embedding parameters (less than {MIN_SPAN:g}x): "
            f"trends and extrapolations rest on a narrow range."
        )
    if len(lad.rungs) < scaling.MIN_RUNGS_FULL:
        out.append(
            f"{len(lad.rungs)} rungs: every variant uses the offset model (constant Δ with scale); "
            f"{scaling.MIN_RUNGS_FULL}+ rungs give each variant its own curve."
        )
    c_max = max((x["compute"] for e in an["variants"] for x in e["per_rung"]), default=lad.rungs[-1].flops)
    out.append(
        f"The target's compute is {lad.target_flops / c_max:.3g}x the largest rung's: the extrapolation "
        f"assumes the fitted form holds over that range."
    )
    for e in an["variants"]:
        thin = [(lad.rungs[x["rung"]].name, x["note"]) for x in e["per_rung"] if x["note"]]
        if thin:
            out.append(
                f"{e['variant']}: "
                + "; ".join(f"{name}: {note}" for name, note in thin)
                + " (no CI or p at that rung, no interval at the target, the backtest not tested)."
            )
        for k, note in e.get("unpaired", []):
            out.append(f"{e['variant']}: {lad.rungs[k].name}: {note}.")
        ex = e.get("extrapolation")
        if ex is not None and ex.failed:
            out.append(
                f"{e['variant']}: {ex.failed} of {lad.bootstrap} bootstrap refits failed (left out of the interval)."
            )
    return out


def write_ladder_report(lad: Ladder, exp_dir: str | Path) -> dict:
    """report.md (ladder.md.j2), report.html (plots embedded), plots/ladder-VARIANT.png and ladder.json in exp_dir,
    atomically."""
    from gptlab.experiments.report.render import render_html, render_markdown
    from gptlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    exp_dir = Path(exp_dir)
    target = load_target(lad.target_config, lad.target_tokens)
    an = analyse(lad, exp_dir, target.regime)
    if all(e.get("missing") for e in an["variants"]):
        raise GptlabError(f"{exp_dir}: no rung has finished runs of both the baseline and a variant yet")
    pngs = {}
    for e in an["variants"]:
        if not e.get("missing") and not e.get("unfitted"):  # unfitted: no informative rung, nothing to plot
            title = f"Δ with scale: {_trend_word(e['trend'])}; " if "trend" in e else ""
            pngs[_plot_name(e)] = plot_variant(lad, e, lad.spec.baseline, an["level"], title + _label(e).strip("*"))
    for name, data in pngs.items():
        atomic_write_bytes(exp_dir / "plots" / name, data)
    summary = _summary_table(lad, an)
    title = f"Scale ladder: {lad.name}"
    md_text = render_markdown(
        "ladder.md.j2",
        title=title,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        source=lad.path,
        n_rungs=len(lad.rungs),
        exp_dir=exp_dir,
        summary=summary,
        unreliable=[e["variant"] for e in an["variants"] if e.get("reliable") is False],
        rungs=_rung_table(lad, exp_dir),
        target=f"Target: `{lad.target_config.name}`, {lad.target_params:,} params, {lad.target_tokens:.4g} tokens, "
        f"{lad.target_flops:.3e} training FLOPs.",
        warnings=_warnings(lad, an),
        regime=regime_table([(r.name, g) for r, g in zip(lad.rungs, an["regimes"], strict=True)], target.regime),
        regime_lines=[target.note, *_fit_lines(lad, an)],
        rank=_rank_lines(lad, an),
        backtests=[_backtest_line(lad, an, e) for e in an["variants"]],
        variants=[_variant_part(lad, an, e) for e in an["variants"]],
        rules=_rules(lad, an),
        confirm=confirm_section(lad, an),  # also sets an["confirmation"] (ladder.json, --emit-confirmation)
    )
    md_path, html_path = exp_dir / "report.md", exp_dir / "report.html"
    atomic_write_text(md_path, md_text)
    atomic_write_text(html_path, render_html(md_text, title, pngs))
    atomic_write_json(exp_dir / "ladder.json", ladder_json(lad, an, target))
    return {
        "markdown": str(md_path),
        "html": str(html_path),
        "plots": [str(exp_dir / "plots" / n) for n in pngs],
        "summary": summary,
        "analysis": an,
    }


def _plot_name(e: dict) -> str:
    return "ladder-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in e["variant"]) + ".png"


def _fit_lines(lad: Ladder, an: dict) -> list[str]:
    """The line saying which rungs are uninformative and whether the fits leave them out."""
    if not an["uninformative"]:
        return []
    names = ", ".join(lad.rungs[k].name for k in an["uninformative"])
    if lad.keep_uninformative:
        return [f"Uninformative rungs kept in the fits (keep_uninformative = true): {names}."]
    return [
        f"Uninformative rungs left out of the trend, extrapolation, backtest and rank agreement: {names} "
        f"(baseline not {INFORMATIVE_MARGIN:g} nats below the unigram model; keep_uninformative = true keeps them)."
    ]


def _rank_lines(lad: Ladder, an: dict) -> list[str]:
    """τ between consecutive fitted rungs, then the decision rule the report recommends with its reason."""
    out = [
        f"{lad.rungs[a.lower].name} → {lad.rungs[a.lower + 1].name}: Kendall's τ = {fmt(a.tau, '+.2f')}, "
        f"{an['level']:.0%} bootstrap interval {fmt_ci(a.low, a.high, '+.2f')} ({len(a.variants)} variants)"
        for a in an["rank"]["agreements"]
    ]
    rule, reason = an["rank"]["rule"]
    return out + [f"Decide by **{rule}**: {reason}."]


def _backtest_line(lad: Ladder, an: dict, e: dict) -> str:
    bt = e.get("backtest")
    if e.get("not_judged"):
        return f"{e['variant']}: {_label(e)}"
    if bt is None:
        return f"{e['variant']}: not run (needs 2 rungs with runs of both)"
    where = (
        f"no interval of the measured Δ ({bt.note})"
        if bt.note
        else f"{an['level']:.0%} interval of the measured Δ {fmt_ci(bt.low, bt.high, '+.4f')}"
    )
    return (
        f"{e['variant']}: fit on {len(e['fit_rungs']) - 1} rung(s), predicted Δ {fmt(bt.predicted, '+.4f')} at "
        f"{lad.rungs[e['fit_rungs'][-1]].name}, measured {fmt(bt.measured, '+.4f')}, error {fmt(bt.error, '+.4f')}, "
        f"{where}: {_label(e)}"
    )


def _variant_part(lad: Ladder, an: dict, e: dict) -> dict:
    """A variant's part of the report: its per-rung table, the trend sentence, its fit and its plot."""
    if e.get("missing"):
        return {"name": e["variant"], "missing": True}
    if e.get("unfitted"):
        return {
            "name": e["variant"],
            "missing": False,
            "table": _variant_table(e, lad),
            "trend": _label(e) + ".",
            "fit": None,
            "plot": None,
        }
    ex, t = e["extrapolation"], e["trend"]
    fit = ex.fit
    trend = (
        f"Trend: **{_trend_word(t)}** (slope {fmt(t['slope'], '+.4f')} per decade of compute, "
        f"SE {fmt(t['slope_se'], '.4f')}, p {fmt(t['p'], '.3g')}, df {fmt(t['df'], '.3g')})."
    )
    if e["not_judged"]:
        trend += f" **{_label(e)}**: no Δ at the target."
    else:
        trend += (
            f" Δ at target: {fmt(ex.delta, '+.4f')}, "
            + (f"no PI ({ex.note})" if ex.note else f"{an['level']:.0%} PI {fmt_ci(ex.low, ex.high, '+.4f')}")
            + f" ({fit.model if fit else 'no'} fit). Backtest: {_label(e)}."
        )
    fit_line = None
    if fit is not None:
        fit_line = (
            f"Fit: baseline L = {fit.base.E:.4f} + {fit.base.A:.4g}·(C/{fit.base.c0:.3g})^(−{fit.base.alpha:.4g})"
            f" ({fit.base.form}); variant L = {fit.var.E:.4f} + {fit.var.A:.4g}·(C/{fit.var.c0:.3g})"
            f"^(−{fit.var.alpha:.4g}) ({fit.var.form})"
            + (f"; δ = {fit.delta:+.4f}" if fit.delta is not None else "")
            + (f"; {fit.note}" if fit.note else "")
            + "."
        )
    return {
        "name": e["variant"],
        "missing": False,
        "table": _variant_table(e, lad),
        "trend": trend,
        "fit": fit_line,
        "plot": _plot_name(e),
    }
