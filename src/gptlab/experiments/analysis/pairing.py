"""The one rule for pairing runs by seed (the paired design: each variant run shares its init and data seed with
one baseline run), used by the experiment report (compare.build_rows) and the ladder (ladder.analyse).

A seed is paired when the baseline and the variant each have exactly one run with it and both runs have a finite
test loss. Every other run is left out of the pairing, never silently and never as an error that stops the report:
`Pairing.left_out` names each left-out seed, whose it is and why, and `Pairing.note()` says it in one line for the
report's warnings. Pairing on the common seeds keeps what the data can say (a variant that lost one seed to a
failed run is still compared on the rest) while the reader sees which seeds the comparison rests on."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# why a run is left out of the pairing
NO_SEED = "no seed recorded"
NO_TWIN = "no {other} run with the same seed"
REPEATED = "recorded more than once: which run to pair is ambiguous"
TWIN_REPEATED = "the {other} has that seed more than once"
NOT_FINITE = "test loss missing or not finite"
TWIN_NOT_FINITE = "the {other}'s run of that seed has no finite test loss"


def finite(x: Any) -> bool:
    """x is a usable number: an int or float that is neither nan nor infinite (None and strings are not)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class Pairing:
    """The baseline's and the variant's runs paired by seed: base[i] and var[i] share seeds[i] (ascending)."""

    seeds: list[Any]
    base: list[dict]
    var: list[dict]
    left_out: list[tuple[str, Any, str]] = field(default_factory=list)  # (whose: "baseline"/"variant", seed, why)

    def note(self) -> str:
        """'' when every run is paired, else one line: 'left out of the pairing: variant seed 4 (no baseline run
        with the same seed); baseline seeds 3, 5 (no variant run with the same seed)'."""
        if not self.left_out:
            return ""
        groups: dict[tuple[str, str], list[Any]] = {}
        for whose, seed, why in self.left_out:
            groups.setdefault((whose, why), []).append(seed)
        parts = []
        for (whose, why), seeds in groups.items():
            shown = [str(s) for s in seeds if s is not None]
            if not shown:  # runs without a seed
                parts.append(f"{len(seeds)} {whose} run(s) ({why})")
                continue
            word = "seed" if len(shown) == 1 else "seeds"
            parts.append(f"{whose} {word} {', '.join(shown)} ({why})")
        return "left out of the pairing: " + "; ".join(parts)


def pair_by_seed(base_runs: list[dict], var_runs: list[dict], loss: str = "test_loss") -> Pairing:
    """Pair the baseline's and the variant's runs (dicts with "seed" and `loss`) by seed, by the module's rule."""
    sides = {"baseline": base_runs, "variant": var_runs}
    counts = {whose: Counter(r.get("seed") for r in runs) for whose, runs in sides.items()}
    by_seed = {whose: {r.get("seed"): r for r in runs} for whose, runs in sides.items()}
    left_out: list[tuple[str, Any, str]] = []
    paired = []
    for whose, other in (("baseline", "variant"), ("variant", "baseline")):
        seeds = sorted(counts[whose], key=lambda s: (s is None, s if s is not None else 0))
        for s in seeds:
            if s is None:
                left_out += [(whose, None, NO_SEED)] * counts[whose][s]
            elif counts[whose][s] > 1:
                left_out.append((whose, s, REPEATED))
            elif s not in counts[other]:
                left_out.append((whose, s, NO_TWIN.format(other=other)))
            elif counts[other][s] > 1:
                left_out.append((whose, s, TWIN_REPEATED.format(other=other)))
            elif not finite(by_seed[whose][s].get(loss)):
                left_out.append((whose, s, NOT_FINITE))
            elif not finite(by_seed[other][s].get(loss)):
                left_out.append((whose, s, TWIN_NOT_FINITE.format(other=other)))
            elif whose == "baseline":
                paired.append(s)
    return Pairing(
        seeds=paired,
        base=[by_seed["baseline"][s] for s in paired],
        var=[by_seed["variant"][s] for s in paired],
        left_out=left_out,
    )
