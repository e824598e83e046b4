"""Runs beyond one fixed matrix: a tuned experiment (the sweep, each variant's chosen value, then the matrix at
the chosen values) and the sequential rounds of --until-decided (seeds added to the undecided variants until
each is decided or has --max-seeds). Progress lines go to `logging`."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.changes import check_changed
from gptlab.experiments.run.matrix import run_matrix
from gptlab.experiments.run.scheduler import Backend
from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.matrix import PlannedRun, SeqOptions, plan_runs
from gptlab.io import atomic_write_json

log = logging.getLogger(__name__)


def run_tuned(
    spec: Spec,
    planned: list[PlannedRun],
    extra: dict,
    exp_dir: Path,
    db: ResultsDB,
    backend: Backend,
    notes: list[str],
    rerun_changed: bool,
) -> list[str]:
    """A spec with tune: the planned matrix at the base config's value and the sweep (one queue), each variant's
    value chosen (sweep.json), then the matrix of every variant at its chosen value (the sweep and the tuned
    matrix planned as they are added). Returns the failed run ids."""
    from gptlab.experiments.analysis import tuning

    sweep = tuning.sweep_spec(spec)
    both = replace(spec, variants=spec.variants + sweep.variants)
    swept = plan_runs(sweep, extra)
    notes = notes + check_changed(swept, exp_dir, db, rerun_changed)
    failures = run_matrix(both, planned + swept, exp_dir, db, backend, notes)
    if failures:
        return failures
    chosen = choose(spec, exp_dir, db)
    tuned = tuning.tuned_spec(spec, chosen["best"])
    at_best = plan_runs(tuned, extra, planned + swept)
    failures = run_matrix(tuned, at_best, exp_dir, db, backend, check_changed(at_best, exp_dir, db, rerun_changed))
    if not failures:
        chosen["tuned_runs"] = {
            tuned.run_id(t.name, s): v.name
            for v, t in zip(spec.variants, tuned.variants, strict=True)
            for s in (t.seeds or spec.seeds)
        }
        atomic_write_json(exp_dir / tuning.SWEEP_FILE, chosen)
    return failures


def choose(spec: Spec, exp_dir: Path, db: ResultsDB) -> dict:
    """Each variant's tuned value from the sweep runs recorded in `db`, written to sweep.json."""
    from gptlab.experiments.analysis import tuning

    chosen = tuning.choose(spec, {r["run_id"]: r["val_loss"] for r in db.runs()})
    atomic_write_json(exp_dir / tuning.SWEEP_FILE, chosen)
    return chosen


def design_line(spec: Spec, o: SeqOptions) -> str:
    """--until-decided's line of the dry run: the looks and each look's p threshold."""
    from gptlab.experiments.analysis import sequential as sq

    looks = sq.schedule(len(spec.seeds), o.per_round, o.max_seeds)
    alpha = spec.alpha / len(o.family)
    ps = sq.nominal_p(sq.boundaries([sq.info_fraction(n, n, o.max_seeds) for n in looks], alpha))
    return (
        f"until decided: {sq.DESIGN}, {len(looks)} looks at {', '.join(map(str, looks))} seeds; "
        f"alpha {spec.alpha:g} / "
        f"{len(o.family)} variant(s); a variant is decided at a look when its p <= "
        f"{', '.join(f'{p:.2g}' for p in ps)}"
    )


def run_rounds(
    spec: Spec,
    planned: list[PlannedRun],
    extra: dict,
    exp_dir: Path,
    db: ResultsDB,
    backend: Backend,
    o: SeqOptions,
    rerun_changed: bool,
) -> tuple[list[str], set[str]]:
    """The spec's planned seeds are run: look at each undecided variant (sequential.py), then add the next
    round's seeds to the undecided variants and the baseline, plan them (specs/matrix.py) and run them, until
    every variant is decided or has max_seeds.
    Every look is recomputed from results.sqlite, so an interrupted experiment replays the same rounds when
    re-run. Returns (failed run ids, the run ids of every round)."""
    from gptlab.experiments.analysis.sequential import Sequential, next_seeds

    seeds = {v.name: list(v.seeds or spec.seeds) for v in spec.variants}
    compared = [n for n in o.family if n in seeds]  # --only: the others keep their share of alpha
    seq = Sequential(
        spec.baseline, compared, o.max_seeds, o.per_round, family=len(o.family), alpha=spec.alpha, design=spec.design
    )
    ext, round_no = spec, 1
    while True:
        seq.update(_test_losses(db, spec, seeds), {g: len(s) for g, s in seeds.items()}, round_no)
        log.info(seq.round_line())
        atomic_write_json(exp_dir / "sequential.json", seq.to_json(len(spec.seeds)))
        new = next_seeds(seeds, seq.undecided(), spec.baseline, o.per_round, o.max_seeds)
        if not new:
            break
        for g, more in new.items():
            seeds[g] = seeds[g] + more
        ext = replace(spec, variants=[replace(v, seeds=seeds[v.name]) for v in spec.variants])
        planned = plan_runs(ext, extra, planned)
        notes = check_changed(planned, exp_dir, db, rerun_changed)
        failures = run_matrix(ext, planned, exp_dir, db, backend, notes)
        if failures:
            return failures, {ext.run_id(v.name, s) for v, s in ext.matrix()}
        round_no += 1
    verdicts = ", ".join(f"{v} {seq.decision.get(v, 'undecided')}" for v in compared)
    log.info(
        f"{seq.to_json(len(spec.seeds))['design']} (alpha {spec.alpha:g} / {len(o.family)} per variant): "
        f"{verdicts} "
        f"-> {exp_dir / 'sequential.json'}"
    )
    return [], {ext.run_id(v.name, s) for v, s in ext.matrix()}


def _test_losses(db: ResultsDB, spec: Spec, seeds: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """Each group's recorded finite test losses for its seeds in the matrix, {seed: loss} (a diverged run has
    none; the paired design pairs by seed)."""
    rows = {r["run_id"]: r for r in db.runs()}
    out: dict[str, dict[int, float]] = {}
    for g, ss in seeds.items():
        vals = {s: rows[rid]["test_loss"] for s in ss if (rid := spec.run_id(g, s)) in rows}
        out[g] = {s: float(x) for s, x in vals.items() if x is not None and math.isfinite(x)}
    return out
