"""Every number of the reports as a plain string: one dash for what is missing or not finite, one way to write a
p-value, a confidence interval, a number in a sentence. The experiment report (rows.py, tables.py, plots.py), the
ladder report (ladder.py) and the leaderboard all write their numbers with these."""

from __future__ import annotations

from typing import Any

from gptlab.experiments.analysis.pairing import finite

DASH = "—"

__all__ = ["DASH", "finite", "fmt", "fmt_ci", "fmt_p", "p_is"]


def fmt(x: Any, spec: str, dash: str = DASH) -> str:
    """x in format `spec`, or `dash` when it is missing or not finite."""
    return dash if not finite(x) else format(x, spec)


def fmt_p(p: Any, dash: str = DASH) -> str:
    """A p-value to 4 decimals, '<0.0001' below that."""
    if not finite(p):
        return dash
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def p_is(p: Any) -> str:
    """'p = 0.0213' or 'p < 0.0001' for sentences."""
    f = fmt_p(p)
    return f"p {f[0]} {f[1:]}" if f.startswith("<") else f"p = {f}"


def fmt_ci(lo: Any, hi: Any, spec: str = ".4f", dash: str = DASH) -> str:
    """'[lo, hi]' in format `spec`, or `dash` unless both ends are finite."""
    if not (finite(lo) and finite(hi)):
        return dash
    return f"[{format(lo, spec)}, {format(hi, spec)}]"
