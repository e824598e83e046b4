"""ladder.json: what the ladder report says, for programs (report/ladder.py writes it beside report.md)."""

from __future__ import annotations

import math

from gptlab.experiments.report.confirm import confirmation_json
from gptlab.experiments.specs.ladder import Ladder


def ladder_json(lad: Ladder, an: dict, target=None) -> dict:
    """The ladder, its rungs and each variant's analysis (analysis/ladder.analyse) as plain JSON: numbers that
    are not finite become null; "unpaired" lists, per rung, the runs the pairing by seed left out; each rung's
    "regime" (regime.Regime.row) and "informative", the target's regime (`target`: report/regime.Target),
    "fitted" (the rungs the fits use), "rank_agreement" and "decision_rule"; a variant the screen cannot judge
    has "not_judged" (the reason), no target Δ or interval and no backtest verdict."""

    def num(x):
        return None if x is None or not math.isfinite(x) else float(x)

    out = {
        "name": lad.name,
        "target": {
            "config": str(lad.target_config),
            "params": lad.target_params,
            "tokens": lad.target_tokens,
            "flops": lad.target_flops,
            "regime": None if target is None or target.regime is None else _row(target.regime, num),
        },
        "rungs": [
            {
                "name": r.name,
                "model": r.model,
                "non_embedding_params": r.non_embedding,
                "params": r.params,
                "tokens": r.tokens,
                "flops": r.flops,
                "regime": _row(g, num),
            }
            for r, g in zip(lad.rungs, an["regimes"], strict=True)
        ],
        "level": an["level"],
        "fitted": [lad.rungs[k].name for k in an["fitted"]],
        "keep_uninformative": lad.keep_uninformative,
        "rank_agreement": [
            {
                "rungs": [lad.rungs[a.lower].name, lad.rungs[a.lower + 1].name],
                "variants": a.variants,
                "tau": num(a.tau),
                "interval": [num(a.low), num(a.high)],
            }
            for a in an["rank"]["agreements"]
        ],
        "decision_rule": {"rule": an["rank"]["rule"][0], "reason": an["rank"]["rule"][1]},
        "variants": [],
        "confirmation": confirmation_json(an.get("confirmation")),
    }
    for e in an["variants"]:
        if e.get("missing"):
            out["variants"].append({"variant": e["variant"], "missing": True, "unpaired": _unpaired(lad, e)})
            continue
        if e.get("unfitted") or e["not_judged"]:
            out["variants"].append(
                {
                    "variant": e["variant"],
                    "not_judged": e["not_judged"],
                    "unfitted": bool(e.get("unfitted")),
                    "unpaired": _unpaired(lad, e),
                    "per_rung": _per_rung(e, num),
                    "trend": None if "trend" not in e else _trend(e, num),
                    "target_delta": None,
                    "target_interval": [None, None],
                    "backtest": None,
                }
            )
            continue
        ex, bt = e["extrapolation"], e["backtest"]
        out["variants"].append(
            {
                "variant": e["variant"],
                "not_judged": None,
                "unpaired": _unpaired(lad, e),
                "per_rung": _per_rung(e, num),
                "trend": _trend(e, num),
                "fit": ex.fit.model if ex.fit else None,
                "target_delta": num(ex.delta),
                "target_interval": [num(ex.low), num(ex.high)],
                "target_note": ex.note or None,
                "backtest": None
                if bt is None
                else {
                    "predicted": num(bt.predicted),
                    "measured": num(bt.measured),
                    "error": num(bt.error),
                    "interval": [num(bt.low), num(bt.high)],
                    "reliable": bt.reliable,
                    "note": bt.note or None,
                },
            }
        )
    return out


def _unpaired(lad: Ladder, e: dict) -> list[dict]:
    return [{"rung": lad.rungs[k].name, "note": note} for k, note in e.get("unpaired", [])]


def _per_rung(e: dict, num) -> list[dict]:
    return [{k: (num(v) if isinstance(v, float) else v) for k, v in x.items()} for x in e["per_rung"]]


def _trend(e: dict, num) -> dict:
    return {k: (num(v) if isinstance(v, float) else v) for k, v in e["trend"].items()}


def _row(regime, num) -> dict:
    return {k: (num(v) if isinstance(v, float) else v) for k, v in regime.row().items()}
