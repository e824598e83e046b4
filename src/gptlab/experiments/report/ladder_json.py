"""ladder.json: what the ladder report says, for programs (report/ladder.py writes it beside report.md)."""

from __future__ import annotations

import math

from gptlab.experiments.report.confirm import confirmation_json
from gptlab.experiments.specs.ladder import Ladder


def ladder_json(lad: Ladder, an: dict) -> dict:
    """The ladder, its rungs and each variant's analysis (analysis/ladder.analyse) as plain JSON: numbers that
    are not finite become null; "unpaired" lists, per rung, the runs the pairing by seed left out."""

    def num(x):
        return None if x is None or not math.isfinite(x) else float(x)

    out = {
        "name": lad.name,
        "target": {
            "config": str(lad.target_config),
            "params": lad.target_params,
            "tokens": lad.target_tokens,
            "flops": lad.target_flops,
        },
        "rungs": [
            {
                "name": r.name,
                "model": r.model,
                "non_embedding_params": r.non_embedding,
                "params": r.params,
                "tokens": r.tokens,
                "flops": r.flops,
            }
            for r in lad.rungs
        ],
        "level": an["level"],
        "variants": [],
        "confirmation": confirmation_json(an.get("confirmation")),
    }
    for e in an["variants"]:
        if e.get("missing"):
            out["variants"].append({"variant": e["variant"], "missing": True, "unpaired": _unpaired(lad, e)})
            continue
        ex, bt = e["extrapolation"], e["backtest"]
        out["variants"].append(
            {
                "variant": e["variant"],
                "unpaired": _unpaired(lad, e),
                "per_rung": [{k: (num(v) if isinstance(v, float) else v) for k, v in x.items()} for x in e["per_rung"]],
                "trend": {k: (num(v) if isinstance(v, float) else v) for k, v in e["trend"].items()},
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
