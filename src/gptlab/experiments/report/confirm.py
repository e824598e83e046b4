"""The ladder report's "Confirmation plan at the target" (confirm.md.j2, included by ladder.md.j2), its part of
ladder.json, and the spec `gptlab ladder --emit-confirmation` writes from it (spec/confirm.py)."""

from __future__ import annotations

import math
from pathlib import Path

from gptlab.experiments.analysis.confirm import confirm_plan, run_cost
from gptlab.experiments.report.format import DASH, fmt, fmt_ci
from gptlab.experiments.specs.confirm import confirm_settings, write_confirmation
from gptlab.experiments.specs.ladder import Ladder


def ladder_confirmation(lad: Ladder, an: dict) -> dict:
    """The plan (analysis/confirm.confirm_plan) for the ladder's analysis `an` on [ladder.confirm]'s GPUs;
    also kept in an["confirmation"] for ladder.json and --emit-confirmation."""
    from gptlab.config import load_config

    s = confirm_settings(lad)
    cfg = load_config(lad.target_config)
    cfg.train.tokens = int(lad.target_tokens)
    cfg.train.flops = 0.0
    per_run = run_cost(cfg, s.gpu, s.gpus, s.mfu, s.price)
    paired = lad.spec.design == "paired"
    plan = confirm_plan(an, an["baseline_runs"], lad.target_flops, lad.spec.alpha, paired, per_run, s.min_effect)
    an["confirmation"] = plan
    return plan


def confirm_section(lad: Ladder, an: dict) -> dict:
    """The template's context: the table, the SD line, the lines under the table."""
    plan = ladder_confirmation(lad, an)
    sd, per = plan["sd"], plan["per_run"]
    lv = f"{an['level']:.0%}"
    anchor = fmt_ci(*plan["anchor"], ".4f")
    if sd["source"] == "trend":
        sd_line = (
            f"Seed SD at the target ({lad.target_flops:.3e} FLOPs), from the trend of the baseline's SD over "
            f"{sd['rungs']} rungs (slope {fmt(sd['slope'], '+.3f')} in ln SD per decade "
            f"of compute): {fmt(sd['sd'], '.3g')}, {lv} interval {fmt_ci(sd['low'], sd['high'], '.3g')}; the "
            f"published band for GPT-2 small (124M) is {anchor}."
        )
    else:
        sd_line = (
            f"Seed SD at the target: {sd['note']}: {anchor}, planned with {fmt(sd['sd'], '.4f')}. It is the "
            f"band of GPT-2 small (124M), not a measurement of this ladder."
        )
    head = [
        "variant",
        "Δ planned for",
        "from",
        "seed SD at target",
        "ρ of paired runs (pairs)",
        "design",
        "seeds per arm (fixed)",
        "runs (fixed)",
        "sequential: max / expected runs",
        "GPU-hours (fixed)",
        "cost (fixed)",
    ]
    body = []
    for p in plan["leads"]:
        rho = f"{fmt(p['rho'], '+.2f')} ({p['pairs']})" if lad.spec.design == "paired" else "not measured"
        row = [
            p["variant"],
            fmt(p["delta"], "+.4f"),
            p["delta_source"],
            f"{fmt(sd['sd'], '.3g')} {fmt_ci(sd['low'], sd['high'], '.3g')}",
            rho,
            p["design"],
        ]
        if p.get("n_fixed"):
            seq = p["sequential"]
            row += [
                str(p["n_fixed"]),
                str(p["runs"]),
                f"{p['runs_max']} / {p['runs_expected']:.1f} (looks at {', '.join(map(str, seq['looks']))})",
                f"{p['gpu_hours']:,.1f}",
                f"${p['cost']:,.0f}",
            ]
        else:
            row += [str(p["seeds"][p["design"]])] + [DASH] * 4
        body.append(row)
    leads = {p["variant"] for p in plan["leads"]}
    others = [e["variant"] for e in an["variants"] if e["variant"] not in leads]
    notes = [
        plan["rule"] + (f" Not planned for: {', '.join(others)}." if others else ""),
        f"Per run: {per['hours']:.3g} h on {per['gpus']}x {per['gpu_type']} at {per['mfu']:.0%} MFU "
        f"({per['hours'] * per['gpus']:,.1f} GPU-hours, ${per['cost']:,.0f}), `gptlab plan`'s cost model for "
        f"{lad.target_config.name} at {lad.target_tokens:.4g} tokens; cost = runs × GPU-hours per run × price "
        f"per GPU-hour ([ladder.confirm] gpu, gpus, mfu, price).",
        "Δ planned for: the smaller gain of the screen's Δ (extrapolated when the variant is judged, else measured "
        f"at the largest rung) and [ladder.confirm] min_effect ({plan['min_effect']:g} nats; by default "
        "the seed's gradient clipping, 3.692 → 3.678): a tiny model's Δ is no estimate of the target's.",
        "Seeds per arm: power 0.8 at the ladder's alpha split over the leads (Bonferroni, as `--until-decided` "
        "does), for the seed SD above; the design is the one needing fewer seeds (paired needs ρ, which only a "
        "paired ladder measures: pooled over the rungs, each rung's losses centred on their mean). A lead's runs "
        "count its arm and the baseline's.",
        "Sequential: O'Brien-Fleming looks every R seeds up to the max seeds that keep power 0.8 "
        "(z-approximation); expected runs under the planned Δ.",
    ]
    if plan["total"]:
        t = plan["total"]
        notes.append(
            f"All leads in one experiment ({t['design']} design, the baseline with the most seeds): {t['runs']} "
            f"runs, {t['gpu_hours']:,.1f} GPU-hours, ${t['cost']:,.0f}; sequentially at most {t['runs_max']} runs "
            f"(`--until-decided --first-look {t['seeds_per_round']} --max-seeds {t['max_seeds']} "
            f"--seeds-per-round {t['seeds_per_round']}`). "
            f"`gptlab ladder SPEC --emit-confirmation PATH` writes its spec."
        )
    return {"sd_line": sd_line, "table": (head, body) if body else None, "notes": notes}


def confirmation_json(plan: dict | None) -> dict | None:
    """ladder.json's "confirmation": the plan with non-finite numbers as null."""

    def clean(x):
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return (
        None
        if plan is None
        else clean(
            {k: v for k, v in plan.items() if k != "per_run"}
            | {"per_run": {k: plan["per_run"][k] for k in ("gpu_type", "gpus", "mfu", "hours", "cost")}}
        )
    )


def write_confirmation_spec(lad: Ladder, an: dict, path: str | Path, force: bool = False) -> Path:
    """Write the confirmation spec of the plan write_ladder_report made (an["confirmation"])."""
    return write_confirmation(lad, an["confirmation"], path, force)
