"""Adaptive seeds: a group-sequential design, so that an experiment may look at its results after every round of
seeds and stop the variants already decided without inflating the false-positive rate.

Design (Jennison & Turnbull, "Group Sequential Methods with Applications to Clinical Trials", 2000, ch. 7 and 19):

- Each variant is compared with the baseline on the final test losses by the design's test, the report's
  (stats.design_test): Welch's t-test in the "independent" design; in the "paired" design the paired t-test on
  the per-seed differences (the seeds both the variant and the baseline have, matched by seed number).
- Error spending: Lan & DeMets (1983) O'Brien-Fleming-type, two-sided,
  alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t)), t = information fraction. For a two-sample comparison the
  information is 1 / (1/n_variant + 1/n_baseline), so t = that / (max_seeds / 2) (= n / max_seeds when both
  groups have n seeds; paired: n pairs, t = n / max_seeds); a look with both groups at max_seeds is the final
  one (t = 1, the rest of alpha spent).
  Because the boundaries come from a spending function, looks may fall anywhere: each variant's boundaries are
  computed from the information fractions of the looks it actually had.
- Boundaries: the standard recursive numerical integration (Armitage, McPherson & Rowe 1969; J&T ch. 19) of the
  canonical joint distribution of Z_1..Z_K (Brownian motion with independent increments), Simpson's rule on a
  grid of 24 points per standard deviation of the smallest increment (at most 2001 nodes, reached past ~50 looks):
  published boundaries (ldbounds, gsDesign) are reproduced to 2e-4, and a Monte Carlo run of the Brownian motion
  crosses them with probability alpha (tests/test_sequential.py).
- Small df: the boundary c_k at look k is turned into its nominal two-sided tail probability
  p_k = 2 (1 - Phi(c_k)); the variant crosses when the test's p-value (t distribution at that look's df:
  Welch-Satterthwaite, or n - 1 pairs) is <= p_k, i.e. |T| >= t_df^{-1}(1 - p_k / 2) ("significance level approach",
  J&T sec. 3.8). The simulations in tests/test_sequential.py measure its family-wise error rate.
- Several variants: Bonferroni, each variant's design spends alpha / m (m = the variants compared with the
  baseline). Every variant shares the baseline's seeds, so the comparisons are correlated; Bonferroni holds under
  any dependence and keeps each variant's design independent of when the others stop, while a Holm step-down on
  the spent alpha needs recycled alpha re-spent on already-run looks (Maurer & Bretz 2013) and is easy to get
  wrong. The price: a little conservatism when several variants are compared.
- A variant is decided when it crosses (better: lower loss; worse: higher loss) or when both groups reach
  max_seeds: then the final look's boundary gives the verdict ("within noise" if it does not cross). No futility
  stop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as _st

from gptlab.experiments.analysis import stats
from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.matrix import SeqOptions

DESIGN = "group-sequential, O'Brien-Fleming spending"
TESTS = {"independent": "Welch's t-test", "paired": "paired t-test on the per-seed differences"}


def method(design: str = "independent") -> str:
    return (
        "Lan-DeMets O'Brien-Fleming-type alpha spending, boundaries by recursive numerical integration; "
        f"{TESTS[design]} p-value against each look's nominal p; Bonferroni (alpha / variants) across variants"
    )


_POINTS_PER_SD = 24
_MAX_GRID = 2001


def obf_spending(t, alpha: float):
    """Cumulative two-sided alpha spent by information fraction t: 2 - 2 Phi(z_{alpha/2} / sqrt(t))."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        out = 2.0 * _st.norm.sf(_st.norm.isf(alpha / 2.0) / np.sqrt(t))
    return out if out.ndim else float(out)


def _simpson(lo: float, hi: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and Simpson weights on [lo, hi], spacing at most h (an even number of intervals)."""
    n = max(2, int(math.ceil((hi - lo) / h)))
    n = min(n + n % 2, _MAX_GRID - 1)
    x = np.linspace(lo, hi, n + 1)
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (hi - lo) / (3.0 * n)


def _check_info(info: Sequence[float]) -> np.ndarray:
    t = np.asarray(info, dtype=float)
    if t.ndim != 1 or t.size == 0 or not (np.all(t > 0) and np.all(t <= 1 + 1e-12) and np.all(np.diff(t) > 0)):
        raise ValueError(f"information fractions must increase within (0, 1], got {list(info)}")
    return np.minimum(t, 1.0)


def _looks(info: np.ndarray, bounds: np.ndarray | None, alpha: float, drift: float, spending=obf_spending):
    """The recursion. On the B-value scale W(t) = Z sqrt(t) ~ Brownian motion with drift `drift` (= theta *
    sqrt(I_max)); at each look the continuation density is propagated by convolution with the increment's normal
    kernel. With `bounds` None, find each look's |Z| boundary so that the look spends alpha(t_k) - alpha(t_k-1);
    otherwise use `bounds`. Returns (boundaries, P(cross upward at k), P(cross downward at k))."""
    sd_min = math.sqrt(min(np.min(np.diff(np.concatenate([[0.0], info]))), info[0]))
    h = sd_min / _POINTS_PER_SD
    spent = spending(info, alpha) if bounds is None else None
    out_b, up, down = np.empty(info.size), np.zeros(info.size), np.zeros(info.size)
    u = w = f = None  # grid, weights and continuation density of the previous look
    prev_t, prev_spent = 0.0, 0.0
    for k, t in enumerate(info):
        dt, s = t - prev_t, math.sqrt(t)
        if k == 0:

            def tails(c):
                return _st.norm.sf(c - drift * s), _st.norm.cdf(-c - drift * s)  # noqa: B023 - used in this look only
        else:
            sd = math.sqrt(dt)
            mass = f * w

            def tails(c):
                hi = (c * s - u - drift * dt) / sd  # noqa: B023 - tails is used in this look only
                lo = (-c * s - u - drift * dt) / sd  # noqa: B023 - likewise
                return float(mass @ _st.norm.sf(hi)), float(mass @ _st.norm.cdf(lo))  # noqa: B023 - likewise

        if bounds is not None:
            c = float(bounds[k])
        else:
            target = float(spent[k]) - prev_spent
            if target <= 0:
                c = math.inf
            else:
                c = optimize.brentq(
                    lambda c: sum(tails(c)) - target,  # noqa: B023 - brentq calls it right here
                    0.0,
                    60.0,
                    xtol=1e-10,
                    rtol=1e-12,
                )
            prev_spent = float(spent[k])
        out_b[k] = c
        up[k], down[k] = tails(c) if math.isfinite(c) else (0.0, 0.0)
        # the continuation region's density at this look, on a grid covering where it is not negligible
        mean = drift * t
        lo_x, hi_x = max(-c * s, mean - 10 * s), min(c * s, mean + 10 * s)
        if k == info.size - 1 or lo_x >= hi_x:
            break
        x, wx = _simpson(lo_x, hi_x, h)
        if k == 0:
            f_new = _st.norm.pdf((x - drift * t) / s) / s
        else:
            z = (x[:, None] - u[None, :] - drift * dt) / math.sqrt(dt)
            f_new = (np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi * dt)) @ mass
        u, w, f, prev_t = x, wx, f_new, t
    return out_b, up, down


def boundaries(info: Sequence[float], alpha: float, spending=obf_spending) -> np.ndarray:
    """The |Z| boundary at each look (information fractions `info`, increasing, the last <= 1) of the two-sided
    design of size `alpha` whose cumulative alpha spent (both sides together) is `spending(t, alpha)`; a look that
    spends nothing gets inf."""
    if spending is obf_spending:
        return np.array(_obf_boundaries(tuple(float(t) for t in info), float(alpha)))
    return _looks(_check_info(info), None, alpha, 0.0, spending)[0]


@functools.lru_cache(maxsize=256)
def _obf_boundaries(info: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """Cached: every variant of a round shares its looks (and a round recomputes the earlier looks' boundaries)."""
    return tuple(_looks(_check_info(info), None, alpha, 0.0)[0])


def nominal_p(bounds) -> np.ndarray:
    """Each boundary's two-sided tail probability: a look crosses when its p-value is <= this."""
    return 2.0 * _st.norm.sf(np.asarray(bounds, dtype=float))


def crossing_probability(info: Sequence[float], bounds: Sequence[float], drift: float = 0.0) -> float:
    """P(|Z_k| >= bounds[k] at some look) for Z with drift `drift` = delta / sigma * sqrt(max_seeds / 2) at t = 1
    (for a z-test; the power of the design for a standardised effect delta / sigma)."""
    _, up, down = _looks(_check_info(info), np.asarray(bounds, dtype=float), 0.0, drift)
    return float(up.sum() + down.sum())


def info_fraction(n_variant: int, n_baseline: int, max_seeds: int) -> float:
    """Information of a two-sample comparison, 1 / (1/n_v + 1/n_b), as a fraction of that with max_seeds each."""
    if n_variant >= max_seeds and n_baseline >= max_seeds:
        return 1.0
    return min(1.0, (1.0 / (1.0 / n_variant + 1.0 / n_baseline)) / (max_seeds / 2.0))


def look_test(baseline, variant, design: str = "independent") -> tuple:
    """The design's test (stats.design_test) along the last axis: (diff = mean(variant) - mean(baseline), t, df,
    two-sided p), the report's numbers (identical values: t = 0 or +-inf, p = 1 or 0). Paired: the i-th values
    of the two groups are a pair."""
    r = stats.design_test(design)(baseline, variant)
    return r["diff"], r["t"], r["df"], r["p"]


def schedule(n_first: int, per_round: int, max_seeds: int) -> list[int]:
    """Seeds per group at each planned look: n_first, + per_round each round, up to max_seeds (looks with fewer
    than 2 seeds are not looks: no t-test)."""
    ns, n = [], n_first
    while True:
        n = min(n, max_seeds)
        if n >= 2:
            ns.append(n)
        if n >= max_seeds:
            return ns
        n += per_round


def simulate(
    baseline: np.ndarray,
    variants: np.ndarray,
    looks: Sequence[int],
    alpha: float,
    adjust: bool = True,
    design: str = "independent",
) -> tuple[np.ndarray, np.ndarray]:
    """Run the design on simulated experiments, vectorised. `baseline` (sims, max_seeds), `variants`
    (sims, m, max_seeds) losses; at look k every undecided variant and the baseline have their first looks[k]
    seeds (paired design: the j-th seeds of the baseline and a variant are a pair). Returns (verdict (sims, m):
    -1 better, +1 worse, 0 within noise; look index where decided). With `adjust` False: the naive rule,
    p < alpha at every look, no correction at all."""
    m = variants.shape[1]
    max_seeds = looks[-1]
    info = [info_fraction(n, n, max_seeds) for n in looks]
    p_k = nominal_p(boundaries(info, alpha / m)) if adjust else np.full(len(looks), alpha)
    verdict = np.zeros(variants.shape[:2], dtype=int)
    at = np.full(variants.shape[:2], len(looks) - 1)
    open_ = np.ones(variants.shape[:2], dtype=bool)
    for k, n in enumerate(looks):
        diff, _, _, p = look_test(baseline[:, None, :n], variants[:, :, :n], design)
        cross = open_ & ((p <= p_k[k]) if adjust else (p < alpha))
        verdict[cross] = np.where(diff[cross] < 0, -1, 1)
        at[cross] = k
        open_ &= ~cross
    return verdict, at


@dataclass
class Look:
    look: int
    round: int
    n_variant: int
    n_baseline: int
    info: float
    alpha_spent: float  # cumulative, of this variant's alpha
    z_boundary: float
    nominal_p: float
    diff: float
    t: float
    df: float
    p: float
    final: bool
    crossed: bool


@dataclass
class Sequential:
    """The state of an experiment run until decided: each variant's looks and decision. `update` takes a look
    at every undecided variant from the test losses recorded so far."""

    baseline: str
    variants: list[str]  # compared with the baseline (the Bonferroni family)
    max_seeds: int
    seeds_per_round: int
    alpha: float = 0.05
    family: int | None = None  # variants in the Bonferroni family (default: len(variants))
    design: str = "independent"  # the experiment's design: its test (stats.design_test) at every look
    looks: dict[str, list[Look]] = field(default_factory=dict)
    decision: dict[str, str] = field(default_factory=dict)  # "better" / "worse" / "within noise"
    rounds: list[dict] = field(default_factory=list)

    @property
    def alpha_per_variant(self) -> float:
        return self.alpha / max(1, self.family or len(self.variants))

    def undecided(self) -> list[str]:
        return [v for v in self.variants if v not in self.decision]

    def update(
        self, losses: dict[str, Sequence[float] | Mapping[int, float]], planned: dict[str, int], round_no: int
    ) -> None:
        """One round's look: `losses` the finite test losses of each group, as {seed: loss} (a plain sequence
        counts as seeds 0, 1, ...), `planned` the seeds each group has in the matrix (a group at max_seeds, its
        baseline too, has its final look even if a run diverged). Paired design: only the seeds both the
        variant and the baseline have are compared, as pairs."""
        base_by = _by_seed(losses.get(self.baseline, []))
        looked = self.undecided()
        for v in looked:
            var_by = _by_seed(losses.get(v, []))
            if self.design == "paired":
                both = sorted(set(base_by) & set(var_by))
                base = np.array([base_by[s] for s in both], dtype=float)
                x = np.array([var_by[s] for s in both], dtype=float)
            else:
                base = np.array(list(base_by.values()), dtype=float)
                x = np.array(list(var_by.values()), dtype=float)
            if x.size < 2 or base.size < 2:
                continue
            final = planned.get(v, 0) >= self.max_seeds and planned.get(self.baseline, 0) >= self.max_seeds
            t = 1.0 if final else info_fraction(x.size, base.size, self.max_seeds)
            hist = self.looks.setdefault(v, [])
            if hist and t <= hist[-1].info:
                continue  # no new information for it this round
            info = [lk.info for lk in hist] + [t]
            c = float(boundaries(info, self.alpha_per_variant)[-1])
            p_k = float(nominal_p(c))
            diff, tt, df, p = (float(a) for a in look_test(base, x, self.design))
            crossed = p <= p_k
            hist.append(
                Look(
                    len(hist) + 1,
                    round_no,
                    int(x.size),
                    int(base.size),
                    t,
                    float(obf_spending(t, self.alpha_per_variant)),
                    c,
                    p_k,
                    diff,
                    tt,
                    df,
                    p,
                    final,
                    crossed,
                )
            )
            if crossed:
                self.decision[v] = "better" if diff < 0 else "worse"
            elif final:
                self.decision[v] = "within noise"
        self.rounds.append(
            {
                "round": round_no,
                "seeds": dict(planned),
                "looked": looked,
                "decided": [v for v in looked if v in self.decision],
            }
        )

    def round_line(self) -> str:
        """The last round: "round 2: 3 seeds each; decided: grad_clip (better, look 2), undecided: qkv_bias"."""
        r = self.rounds[-1]
        ns = sorted({r["seeds"][g] for g in [self.baseline, *r["looked"]] if g in r["seeds"]})
        each = f"{ns[0]} seeds each" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds"
        decided = [
            f"{v} ({self.decision[v]}, look {self.looks[v][-1].look})" for v in self.variants if v in self.decision
        ]
        return (
            f"round {r['round']}: {each}; decided: {', '.join(decided) or '-'}, "
            f"undecided: {', '.join(self.undecided()) or '-'}"
        )

    def planned_looks(self, n_first: int) -> list[int]:
        return schedule(n_first, self.seeds_per_round, self.max_seeds)

    def to_json(self, n_first: int) -> dict:
        looks = self.planned_looks(n_first)
        return {
            "design": f"{DESIGN}, {len(looks)} looks",
            "method": method(self.design),
            "experiment_design": self.design,
            "test": TESTS[self.design],
            "alpha": self.alpha,
            "alpha_per_variant": self.alpha_per_variant,
            "family": self.family or len(self.variants),
            "baseline": self.baseline,
            "variants_compared": list(self.variants),
            "max_seeds": self.max_seeds,
            "seeds_per_round": self.seeds_per_round,
            "planned_looks_seeds": looks,
            "rounds": self.rounds,
            "variants": {
                v: {
                    "decision": self.decision.get(v, "undecided"),
                    "looks": [_finite(vars(lk)) for lk in self.looks.get(v, [])],
                }
                for v in self.variants
            },
        }


def _by_seed(losses) -> dict:
    return dict(losses) if isinstance(losses, Mapping) else dict(enumerate(np.asarray(losses, dtype=float).tolist()))


def _finite(d: dict) -> dict:
    """JSON has no inf/nan: such numbers become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def next_seeds(
    planned: dict[str, list[int]], undecided: list[str], baseline: str, per_round: int, max_seeds: int
) -> dict[str, list[int]]:
    """The next round's new seeds per group: each undecided variant gets per_round more (capped at max_seeds),
    the baseline as many as the largest undecided variant will have; the seed numbers continue after the largest
    used in the matrix, the same numbers for every group. Empty when nothing is undecided."""
    if not undecided:
        return {}
    need = {v: max(0, min(max_seeds, len(planned[v]) + per_round) - len(planned[v])) for v in undecided}
    target = max(len(planned[v]) + need[v] for v in undecided)
    need[baseline] = max(0, target - len(planned[baseline]))
    top = max(s for seeds in planned.values() for s in seeds)
    fresh = list(range(top + 1, top + 1 + max(need.values())))
    return {g: fresh[:k] for g, k in need.items() if k}


def design_line(spec: Spec, o: SeqOptions) -> str:
    """--until-decided's line of the dry run: the looks and each look's p threshold."""
    looks = schedule(len(spec.seeds), o.per_round, o.max_seeds)
    alpha = spec.alpha / len(o.family)
    ps = nominal_p(boundaries([info_fraction(n, n, o.max_seeds) for n in looks], alpha))
    return (
        f"until decided: {DESIGN}, {len(looks)} looks at {', '.join(map(str, looks))} seeds; "
        f"alpha {spec.alpha:g} / "
        f"{len(o.family)} variant(s); a variant is decided at a look when its p <= "
        f"{', '.join(f'{p:.2g}' for p in ps)}"
    )
