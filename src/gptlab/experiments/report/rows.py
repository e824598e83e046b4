"""The report's numbers and words: one row of statistics per variant, its verdict in a plain sentence, the
warnings that qualify the comparison, and the Yardsticks part (ours beside the seed's published losses).
Numbers become plain strings here (`fmt`, `fmt_p`, `fmt_ci`); Markdown and HTML are render.py's business."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from gptlab import GptlabError
from gptlab.experiments import stats as st
from gptlab.experiments.yardsticks import YARDSTICKS

DASH = "—"


def finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x: Any, spec: str) -> str:
    return DASH if not finite(x) else format(x, spec)


def fmt_p(p: Any) -> str:
    if not finite(p):
        return DASH
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def p_is(p: Any) -> str:
    """'p = 0.0213' or 'p < 0.0001' for sentences."""
    f = fmt_p(p)
    return f"p {f[0]} {f[1:]}" if f.startswith("<") else f"p = {f}"


def fmt_ci(lo: Any, hi: Any, spec: str = ".4f") -> str:
    if not (finite(lo) and finite(hi)):
        return DASH
    return f"[{format(lo, spec)}, {format(hi, spec)}]"


def _clean(x: Any) -> Any:
    """nan/inf floats -> None so rows are JSON-friendly."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _mean(xs: Iterable[float | None]) -> float | None:
    v = [float(x) for x in xs if finite(x)]
    return float(np.mean(v)) if v else None


def build_rows(runs: list[dict], baseline: str, judge: dict[str, float] | None = None,
               reference: dict[str, float] | None = None, alpha: float = 0.05) -> list[dict]:
    """Per-variant statistics vs the baseline, sorted baseline first then by mean test loss."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[str(r.get("variant") or "")].append(r)
    if baseline not in groups:
        raise GptlabError(f"baseline variant {baseline!r} has no runs; variants present: {', '.join(sorted(groups))}")
    base_vals = _test_losses(groups[baseline])
    rows = [_row(variant, rs, baseline, base_vals, judge or {}, reference or {}, alpha)
            for variant, rs in groups.items()]
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


def _test_losses(rs: list[dict]) -> list[float]:
    return [float(r["test_loss"]) for r in rs if finite(r.get("test_loss"))]


def _row(variant: str, rs: list[dict], baseline: str, base_vals: list[float], judge: dict[str, float],
         reference: dict[str, float], alpha: float) -> dict:
    """One variant's row: its runs summarized, and compared with the baseline's test losses."""
    vals = _test_losses(rs)
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
        published=float(reference[variant]) if variant in reference and finite(reference[variant]) else None,
    )
    if variant != baseline:
        c = st.compare(base_vals, vals, alpha=alpha)
        row.update(diff=c["diff"], diff_ci_low=c["ci_low"], diff_ci_high=c["ci_high"], t=c["t"], df=c["df"],
                   p=c["p"], cohen_d=c["cohen_d"], hedges_g=c["hedges_g"], seeds_needed=c["seeds_needed"],
                   verdict=c["verdict"])
    return {k: _clean(v) for k, v in row.items()}


def verdict_sentence(r: dict, baseline: str, alpha: float = 0.05) -> str:
    """One plain-words sentence per variant (Markdown: the variant's name in **bold**)."""
    v = r["variant"]
    if r["verdict"] == "baseline":
        return (f"**{v}** is the baseline: mean test loss {fmt(r['mean'], '.4f')} over {r['n']} seed(s)"
                + (f" (95% CI {fmt_ci(r['ci_low'], r['ci_high'])})." if finite(r["ci_low"]) else "."))
    if r["verdict"].startswith("needs"):
        return (f"**{v}**: cannot judge yet: it has {r['n']} seed(s) with a finite test loss; a comparison needs "
                f"at least 2 for both it and the baseline, so run more seeds.")
    ci = f"95% CI of the difference {fmt_ci(r['diff_ci_low'], r['diff_ci_high'], '+.4f')}"
    if r["verdict"] in ("better", "worse"):
        word = "lower" if r["verdict"] == "better" else "higher"
        s = (f"**{v}**: {r['verdict']}: its test loss is {abs(r['diff']):.4f} {word} than {baseline}'s "
             f"({ci}, {p_is(r['p'])}).")
        if r.get("holm_significant") is False:
            s += (f" But after the Holm correction for the several variants compared, "
                  f"{p_is(r['p_holm']).replace('p ', 'adjusted p ', 1)} (not below {alpha}): treat this one as "
                  f"tentative and rerun with more seeds.")
        return s
    need = r["seeds_needed"]
    need_text = f"more than {str(need)[1:]}" if isinstance(need, str) else f"about {need}"
    s = (f"**{v}**: {r['verdict']}: the difference to {baseline} is {fmt(r['diff'], '+.4f')} "
         f"({ci}, {p_is(r['p'])}), which is not distinguishable from seed-to-seed noise.")
    if need is not None:
        s += (f" If the true effect were as large as observed (|d| = {abs(r['cohen_d']):.2f}), detecting it 80% of "
              f"the time would take {need_text} seeds per variant.")
    return s


def report_warnings(runs: list[dict], rows: list[dict], baseline: str) -> list[str]:
    """What makes the comparison less clean than it looks: left-out runs, repeated seeds, a thin baseline,
    unequal token budgets, runs from several commits."""
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


def yardstick_part(rows: list[dict], baseline: str, comp: dict) -> dict:
    """The Yardsticks part: ours (baseline and best mean) beside the seed's published numbers; `comp` is
    yardsticks.comparability() of the runs' test sets."""
    ours = []
    with_mean = [r for r in rows if r["mean"] is not None]
    base = next((r for r in with_mean if r["variant"] == baseline), None)
    best = min(with_mean, key=lambda r: r["mean"], default=None)
    if base is not None:
        ours.append((f"ours: {baseline} (baseline, n={base['n']})", base["mean"], "this experiment, mean over seeds"))
    if best is not None and best is not base:
        ours.append((f"ours: {best['variant']} (lowest mean, n={best['n']})", best["mean"],
                     "this experiment, mean over seeds"))
    body = ours + [(y.name, y.loss, y.note) for y in YARDSTICKS]
    if comp["comparable"]:
        body.sort(key=lambda x: -x[1])  # one scale: worst at the top
    gaps = ""
    if comp["comparable"] and best is not None:
        parts = [f"{abs(best['mean'] - y.loss):.3f} {'above' if best['mean'] > y.loss else 'below'} {y.name} "
                 f"({y.loss:.3f})" for y in YARDSTICKS]
        gaps = f"Our lowest mean ({best['variant']}, {best['mean']:.3f}) is " + ", ".join(parts) + "."
    return {"comparable": comp["comparable"], "reasons": comp["reasons"], "text": comp["text"], "gaps": gaps,
            "headers": ["model", "test loss", "what it is"],
            "table": [[name, fmt(loss, ".3f"), note] for name, loss, note in body],
            "lines": [{"name": y.name, "loss": y.loss} for y in YARDSTICKS] if comp["comparable"] else []}


def yardstick_summary(yard: dict) -> str:
    """Terminal lines for the Yardsticks part of a write_report result."""
    ys = ", ".join(f"{y.name} {y.loss:.3f}" for y in YARDSTICKS)
    head = "yardsticks (comparable): " if yard["comparable"] else "yardsticks (different test set, orientation only): "
    return head + ys + ("\n" + yard["gaps"] if yard["gaps"] else "") + (
        "" if yard["comparable"] else "\n" + "differences from the seed's test set: " + "; ".join(yard["reasons"]))
