"""Runs beyond one fixed matrix: a tuned experiment (the sweep, each variant's chosen value, then the matrix at
the chosen values) and the sequential rounds of --until-decided (seeds added to the undecided variants until
each is decided or has --max-seeds). Each phase is a spec handed to the pipeline (pipeline.py), which plans,
checks and runs it. Progress lines go to `logging`."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.pipeline import Pipeline
from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.matrix import SeqOptions
from gptlab.io import atomic_write_json

log = logging.getLogger(__name__)


def run_tuned(spec: Spec, pipe: Pipeline, notes: list[str]) -> list[str]:
    """A spec with tune: the matrix at the base config's value and the sweep (one queue), each variant's value
    chosen (sweep.json), then the matrix of every variant at its chosen value. Returns the failed run ids."""
    from gptlab.experiments.analysis import tuning

    base = tuning.base_values(spec, list(pipe.planned.values()))  # the spec's runs, as planned
    sweep = tuning.sweep_spec(spec, base)
    failures = pipe.run(replace(spec, variants=spec.variants + sweep.variants), notes)
    if failures:
        return failures
    chosen = choose(spec, pipe, base)
    tuned = tuning.tuned_spec(spec, chosen["best"], base)
    failures = pipe.run(tuned)
    if not failures:
        chosen["tuned_runs"] = {
            tuned.run_id(t.name, s): v.name
            for v, t in zip(spec.variants, tuned.variants, strict=True)
            for s in (t.seeds or spec.seeds)
        }
        atomic_write_json(pipe.folder / tuning.SWEEP_FILE, chosen)
    return failures


def choose(spec: Spec, pipe: Pipeline, base: dict[str, float]) -> dict:
    """Each variant's tuned value (among the grid and its value in `base`) from the sweep runs recorded in the
    pipeline's database, written to sweep.json."""
    from gptlab.experiments.analysis import tuning

    chosen = tuning.choose(spec, {r["run_id"]: r["val_loss"] for r in pipe.db.runs()}, base)
    atomic_write_json(pipe.folder / tuning.SWEEP_FILE, chosen)
    return chosen


def run_rounds(spec: Spec, pipe: Pipeline, o: SeqOptions) -> tuple[list[str], set[str]]:
    """The spec's seeds are run: look at each undecided variant (sequential.py), then add the next round's seeds
    to the undecided variants and the baseline and run them through the pipeline, until every variant is decided
    or has max_seeds.
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
        losses = _test_losses(pipe.db, spec, seeds)
        seq.update(losses, {g: len(s) for g, s in seeds.items()}, round_no)
        log.info(seq.round_line())
        atomic_write_json(pipe.folder / "sequential.json", seq.to_json(len(spec.seeds)))
        new = next_seeds(seeds, seq.undecided(), spec.baseline, o.per_round, o.max_seeds)
        if not new:
            break
        for g, more in new.items():
            seeds[g] = seeds[g] + more
        ext = replace(spec, variants=[replace(v, seeds=seeds[v.name]) for v in spec.variants])
        failures = pipe.run(ext)
        if failures:
            return failures, {ext.run_id(v.name, s) for v, s in ext.matrix()}
        round_no += 1
    verdicts = ", ".join(f"{v} {seq.decision.get(v, 'undecided')}" for v in compared)
    log.info(
        f"{seq.to_json(len(spec.seeds))['design']} (alpha {spec.alpha:g} / {len(o.family)} per variant): "
        f"{verdicts} "
        f"-> {pipe.folder / 'sequential.json'}"
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
