"""The report's words: the verdict of each variant in a plain sentence, the Rules part, the warnings that
qualify the comparison, and the Yardsticks part (ours beside the seed's published losses). The numbers come from
analysis/compare.py's rows and are written by format.py; Markdown and HTML are render.py's business."""

from __future__ import annotations

from gptlab.experiments.analysis import stats as st
from gptlab.experiments.analysis.yardsticks import YARDSTICKS
from gptlab.experiments.report.format import finite, fmt, fmt_ci, p_is


def verdict_rules(
    baseline: str,
    alpha: float,
    equivalence_margin: float | None = None,
    design: str = "independent",
    n_comparisons: int | None = None,
) -> list[str]:
    """The report's "Rules" part: each rule stats.verdict and compare apply, in Markdown, written from the
    same words, parameters and constants the code uses (one string per rule, the verdict words in bold)."""
    tost_level = f"{1 - 2 * alpha:.0%}"
    m = "the" if n_comparisons is None else f"the {n_comparisons}"
    power = f"{st.POWER:.0%}"
    test = (
        "a paired t-test on the per-seed differences (variant − baseline, runs matched by seed: each pair "
        "shares its init and data seed)"
        if design == "paired"
        else "Welch's t-test (two independent groups of seeds, unequal spread allowed)"
    )
    n_is = "the number of seed pairs" if design == "paired" else "the smaller of the two groups' seed counts"
    sd = "the SD of the per-seed differences" if design == "paired" else "the pooled SD of the baseline and the variant"
    g_df = "n − 1" if design == "paired" else "n₁ + n₂ − 2"
    rules = [
        f"Design: **{design}**. Every variant is compared with the baseline **{baseline}** by {test}; Δ = variant "
        f"mean − baseline mean (negative = lower loss); p is two-sided.",
        f"**{st.BASELINE}**: the variant every other one is compared with.",
        f"**{st.NEEDS_SEEDS}**: the variant or the baseline has fewer than 2 seeds with a finite test loss"
        + (" (paired: fewer than 2 seed pairs)" if design == "paired" else "")
        + "; no comparison is made.",
        f"**{st.BETTER}** / **{st.WORSE}**: the Holm-adjusted p < {alpha} over {m} comparisons of this experiment "
        f"(every variant against the baseline), with Δ < 0 / Δ > 0.",
        f"**{st.suggestive_word(-1.0)}** / **{st.suggestive_word(1.0)}**: the unadjusted p < {alpha} but the "
        f"Holm-adjusted p is not: a lead to rerun with more seeds, not a result.",
    ]
    if equivalence_margin is not None:
        rules.append(
            f"**{st.equivalent_word(equivalence_margin)}**: not significant by the two rules above, and "
            f"both one-sided tests of TOST at {alpha} reject a difference of ±{equivalence_margin:g} nats "
            f"or more ({'paired' if design == 'paired' else 'Welch'}), i.e. the {tost_level} CI of Δ lies "
            f"inside ±{equivalence_margin:g}."
        )
    else:
        rules.append(
            "No equivalence margin was set (`equivalence_margin` in the experiment spec, in nats), so no "
            "variant can be called equivalent."
        )
    rules += [
        f"**{st.within_noise_word('N')}**: none of the above; N is {n_is}. It does not show that the variant has "
        f"no effect, only that any effect is too small to see at N seeds.",
        f"**MDE** (minimum detectable effect): the |Δ| that a two-sided t-test at {alpha} would detect {power} of "
        f"the time at the current n, using {sd} (noncentral t).",
        f"**seeds needed (estimate)**: seeds per variant{' (pairs)' if design == 'paired' else ''} for {power} "
        f"power at {alpha} if the true effect were the observed Hedges' g (bias-corrected, df = {g_df}) with the "
        f"SD taken at its upper one-sided {st.SD_UPPER_CONFIDENCE:.0%} chi-square bound, i.e. "
        f"|g|·√(χ²_{1 - st.SD_UPPER_CONFIDENCE:.1f}(df)/df), so the estimate is not optimistic; "
        f"none when Δ is 0, more than {st.SEEDS_NEEDED_CAP} shown as >{st.SEEDS_NEEDED_CAP}.",
    ]
    return rules


def verdict_sentence(r: dict, baseline: str, alpha: float = 0.05) -> str:
    """One plain-words sentence per variant (Markdown: the variant's name in **bold**)."""
    v = r["variant"]
    if r["verdict"] == st.BASELINE:
        return f"**{v}** is the baseline: mean test loss {fmt(r['mean'], '.4f')} over {r['n']} seed(s)" + (
            f" (95% CI {fmt_ci(r['ci_low'], r['ci_high'])})." if finite(r["ci_low"]) else "."
        )
    if r["verdict"] == st.NEEDS_SEEDS:
        unit = "seed pair(s)" if r.get("design") == "paired" else "seed(s) with a finite test loss"
        n = r["n_compared"] if r.get("design") == "paired" and r.get("n_compared") is not None else r["n"]
        delta = (
            f" Δ = {fmt(r['diff'], '+.4f')} from {r['n_compared']} "
            f"{'seed pair' if r.get('design') == 'paired' else 'seed'}{'' if r['n_compared'] == 1 else 's'}: "
            f"no noise estimate, so no CI, p or verdict."
            if finite(r.get("diff")) and r.get("n_compared")
            else ""
        )
        return (
            f"**{v}**: cannot judge yet: it has {n} {unit}; a comparison needs at least 2 for both it and "
            f"the baseline, so run more seeds.{delta}"
        )
    ci = f"{1 - alpha:.0%} CI of the difference {fmt_ci(r['diff_ci_low'], r['diff_ci_high'], '+.4f')}"
    mde_text = (
        f" With these seeds the design detects a difference of about {fmt(r['mde'], '.4f')} "
        f"{st.POWER:.0%} of the time (MDE)."
        if finite(r.get("mde"))
        else ""
    )
    margin = r.get("equivalence_margin")
    inside = (
        f" Its {1 - 2 * alpha:.0%} CI {fmt_ci(r['tost_ci_low'], r['tost_ci_high'], '+.4f')} lies inside "
        f"±{margin:g}, so the difference is smaller than the equivalence margin."
        if r.get("equivalent") and margin is not None
        else ""
    )
    word = "lower" if finite(r["diff"]) and r["diff"] < 0 else "higher"
    if r["verdict"] in (st.BETTER, st.WORSE):
        return (
            f"**{v}**: {r['verdict']}: its test loss is {abs(r['diff']):.4f} {word} than {baseline}'s "
            f"({ci}, {p_is(r['p'])}, {p_is(r['p_holm']).replace('p ', 'Holm-adjusted p ', 1)} over "
            f"{r['n_comparisons']} comparison(s)).{inside}"
        )
    if r["verdict"].startswith("suggestive"):
        return (
            f"**{v}**: {r['verdict']}: its test loss is {abs(r['diff']):.4f} {word} than {baseline}'s "
            f"({ci}, {p_is(r['p'])}), but after the Holm correction for the {r['n_comparisons']} variants "
            f"compared, {p_is(r['p_holm']).replace('p ', 'adjusted p ', 1)} (not below {alpha}): treat it as "
            f"a lead and rerun with more seeds.{inside}"
        )
    if r["verdict"].startswith("equivalent"):
        return (
            f"**{v}**: {r['verdict']}: the difference to {baseline} is {fmt(r['diff'], '+.4f')}; its "
            f"{1 - 2 * alpha:.0%} CI {fmt_ci(r['tost_ci_low'], r['tost_ci_high'], '+.4f')} lies inside "
            f"±{margin:g} nats (TOST {p_is(r['tost_p'])}), so any effect is smaller than the margin."
        )
    need = r["seeds_needed"]
    need_text = f"more than {str(need)[1:]}" if isinstance(need, str) else f"about {need}"
    s = (
        f"**{v}**: {r['verdict']}: the difference to {baseline} is {fmt(r['diff'], '+.4f')} "
        f"({ci}, {p_is(r['p'])}), which is not distinguishable from seed-to-seed noise.{mde_text}"
    )
    if need is not None:
        s += (
            f" If the true effect were as large as observed (Hedges' g = {abs(r['hedges_g']):.2f}), detecting it "
            f"{st.POWER:.0%} of the time would take {need_text} seeds per variant (an estimate, with the SD at its "
            f"upper {st.SD_UPPER_CONFIDENCE:.0%} bound)."
        )
    return s


def report_warnings(runs: list[dict], rows: list[dict], baseline: str) -> list[str]:
    """What makes the comparison less clean than it looks: left-out runs, repeated seeds, seeds left out of the
    pairing (paired design), a thin baseline, unequal token budgets, runs from several commits."""
    out = []
    for r in rows:
        if r["n_excluded"]:
            out.append(
                f"{r['variant']}: {r['n_excluded']} run(s) left out because their test loss is missing or not "
                f"finite (diverged?)."
            )
        seeds = r["seeds"]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            out.append(
                f"{r['variant']}: seed(s) {', '.join(map(str, dup))} recorded more than once; those runs are "
                f"not independent samples."
            )
        if r.get("unpaired"):
            out.append(f"{r['variant']}: {r['unpaired']}.")
    base = next(r for r in rows if r["variant"] == baseline)
    if base["n"] < 2:
        out.append(f"the baseline has {base['n']} seed(s) with a finite test loss; no comparison is possible below 2.")
    for r in rows:
        if r is base or base["tokens"] is None or r["tokens"] is None or base["tokens"] == 0:
            continue
        if abs(r["tokens"] / base["tokens"] - 1) > 0.01:
            out.append(
                f"{r['variant']} trained on {r['tokens']:,.0f} tokens on average vs {base['tokens']:,.0f} for "
                f"{baseline}: the comparison mixes the intervention with a different training budget."
            )
    commits = {r.get("git_commit") for r in runs if r.get("git_commit")}
    if len(commits) > 1:
        out.append(
            f"runs come from {len(commits)} different git commits; code changes between runs can masquerade as effects."
        )
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
        ours.append(
            (f"ours: {best['variant']} (lowest mean, n={best['n']})", best["mean"], "this experiment, mean over seeds")
        )
    body = ours + [(y.name, y.loss, y.note) for y in YARDSTICKS]
    if comp["comparable"]:
        body.sort(key=lambda x: -x[1])  # one scale: worst at the top
    gaps = ""
    if comp["comparable"] and best is not None:
        parts = [
            f"{abs(best['mean'] - y.loss):.3f} {'above' if best['mean'] > y.loss else 'below'} {y.name} ({y.loss:.3f})"
            for y in YARDSTICKS
        ]
        gaps = f"Our lowest mean ({best['variant']}, {best['mean']:.3f}) is " + ", ".join(parts) + "."
    return {
        "comparable": comp["comparable"],
        "reasons": comp["reasons"],
        "text": comp["text"],
        "gaps": gaps,
        "headers": ["model", "test loss", "what it is"],
        "table": [[name, fmt(loss, ".3f"), note] for name, loss, note in body],
        "lines": [{"name": y.name, "loss": y.loss} for y in YARDSTICKS] if comp["comparable"] else [],
    }


def yardstick_summary(yard: dict) -> str:
    """Terminal lines for the Yardsticks part of a write_report result."""
    ys = ", ".join(f"{y.name} {y.loss:.3f}" for y in YARDSTICKS)
    head = "yardsticks (comparable): " if yard["comparable"] else "yardsticks (different test set, orientation only): "
    return (
        head
        + ys
        + ("\n" + yard["gaps"] if yard["gaps"] else "")
        + ("" if yard["comparable"] else "\n" + "differences from the seed's test set: " + "; ".join(yard["reasons"]))
    )
