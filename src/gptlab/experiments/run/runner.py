"""Running an experiment: `gptlab experiment` (run_experiment) and `gptlab sweep` (run_sweep). Top-down: the
spec is read (specs/experiment.py) and its matrix planned, every run's config resolved once (specs/matrix.py;
a dry run prints the plan, specs/plan.py); the experiment folder is opened as one pipeline (pipeline.py: held
by one runner, session.py), through which every phase's runs are planned, checked against the ones recorded
(changes.py) and run (matrix.py): the spec's matrix, or a tuned experiment's sweep and tuned matrix, then the
sequential rounds where the options say so (rounds.py); the report is written at the end. Both return an Outcome,
which the CLI prints and turns into an exit status; a stop signal raises Stopped (stops.py) once the runs in
flight have ended.

An experiment folder holds spec.toml (the spec as run, --set overrides merged in; written once the recorded runs
are known to match it), configs/RUN_ID.toml (what each run was started with), runs/RUN_ID/ (its run directory),
runs/RUN_ID.log (its output), results.sqlite and the report. The report covers the spec's runs only (rows of
removed variants stay recorded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import read_toml
from gptlab.experiments.run.changes import spec_text
from gptlab.experiments.run.pipeline import open_pipeline
from gptlab.experiments.run.rounds import choose, run_rounds, run_tuned
from gptlab.experiments.run.session import RunOptions
from gptlab.experiments.specs.experiment import Spec, load_spec
from gptlab.experiments.specs.matrix import (
    PlannedRun,
    SeqOptions,
    first_seeds,
    keep_only,
    plan_matrix,
    plan_runs,
    sequential_options,
)
from gptlab.io import atomic_write_text


@dataclass
class Outcome:
    """What `gptlab experiment`, `sweep` or `ladder` ended with (a stop signal raises Stopped instead)."""

    folder: Path | None = None  # the experiment (or ladder) folder; None for a dry run
    summary: str = ""  # what the verb prints at the end: tables, yardsticks, where the report is; a dry run's plan
    failures: list[str] = field(default_factory=list)  # the run ids that failed (re-run to retry them)
    report: dict | None = None  # write_report's result, when the report was written
    report_error: str | None = None  # why the report could not be written
    parts: list[Outcome] = field(default_factory=list)  # a ladder's rungs, each an experiment

    def problems(self) -> list[str]:
        """One line each for the user's stderr: a rung's problems, the report not written, the failed runs."""
        lines = [line for p in self.parts for line in p.problems()]
        if self.report_error is not None:
            lines.append(f"report not written: {self.report_error}")
        elif self.failures:
            lines.append(
                f"{len(self.failures)} run(s) failed: {', '.join(self.failures)} (logs in {self.folder / 'runs'}); "
                f"re-run to retry"
            )
        return lines

    @property
    def ok(self) -> bool:
        """No run failed and the report was written (every rung's too)."""
        return not self.problems()


def plan_experiment(
    spec_path: str,
    until_decided: bool = False,
    max_seeds: int | None = None,
    seeds_per_round: int | None = None,
    first_look: int | None = None,
    **options,
) -> Outcome:
    """`gptlab experiment --dry-run`: the plan of `spec_path`'s matrix (specs/plan.py: every run, its steps, FLOPs
    and time), a tuned experiment's sweep and the sequential design's looks, as the Outcome's summary. Nothing is
    written. `options`: RunOptions' fields (only `overrides` and `only` matter here)."""
    from gptlab.experiments.specs.plan import dry_run_lines

    opts = RunOptions(**options)
    spec, seq_opts, planned, _ = _planned(spec_path, opts, until_decided, max_seeds, seeds_per_round, first_look)
    lines = dry_run_lines(spec, planned)
    if spec.tune:
        from gptlab.experiments.analysis.tuning import base_values, sweep_spec

        t, n = spec.tune, len(sweep_spec(spec, base_values(spec, planned)).matrix())
        lines.append(
            f"tune {t.param}: a sweep of {n} more runs (every variant at {', '.join(map(str, t.grid))} and "
            f"its base value, seeds {', '.join(map(str, t.seeds))}), then up to {len(planned)} runs "
            f"of the variants at their chosen values"
        )
    if seq_opts:
        from gptlab.experiments.analysis.sequential import design_line

        lines.append(design_line(spec, seq_opts))
    return Outcome(summary="\n".join(lines))


def run_experiment(
    spec_path: str,
    until_decided: bool = False,
    max_seeds: int | None = None,
    seeds_per_round: int | None = None,
    first_look: int | None = None,
    **options,
) -> Outcome:
    """Run the matrix of `spec_path` (plan_experiment only plans it); what it ended with. Progress goes to
    `logging`. `options`: RunOptions' fields (session.py).

    `backend`: "local" (scheduler/local.py: `gpus_per_run` splits the visible GPUs into slots, one run per slot;
    otherwise `parallel` runs at a time of `procs_per_run` processes each) or "slurm" (`backend_options`:
    SlurmBackend's keyword arguments). A finished (or started) run whose config is not what the spec now resolves
    to stops everything before any run starts (GptlabError), unless `rerun_changed`: then it is redone (its row
    forgotten, its run folder moved aside to runs/RUN_ID.stale-N).

    `until_decided`: after the spec's seeds, add `seeds_per_round` seeds at a time to the variants not yet decided
    (and the baseline) until each is decided or has `max_seeds` (sequential.py; state in sequential.json);
    `first_look`: the first look at the first `first_look` of the spec's (and each variant's) seeds.

    `force`: write into an experiment folder holding files gptlab did not write (io.claim_dir); without it such
    a folder is refused."""
    opts = RunOptions(**options)
    spec, seq_opts, planned, spec_runs = _planned(
        spec_path, opts, until_decided, max_seeds, seeds_per_round, first_look
    )
    if spec.tune and seq_opts:
        raise GptlabError("--until-decided: not with tune (a tuned experiment runs its fixed seeds)")
    outcome = Outcome()
    with open_pipeline(spec, planned, opts) as pipe:
        outcome.folder = pipe.folder
        notes = pipe.check(spec)
        # only now: spec.toml describes every recorded run of the spec (the --set overrides included)
        atomic_write_text(outcome.folder / "spec.toml", spec_text(spec, opts.extra))
        outcome.failures = run_tuned(spec, pipe, notes) if spec.tune else pipe.run(spec, notes)
        if seq_opts and not outcome.failures:
            outcome.failures, seq_runs = run_rounds(spec, pipe, seq_opts)
            spec_runs |= seq_runs
        pipe.db.close()
        _report(spec, outcome.folder, spec_runs, outcome)
    return outcome


def _planned(
    spec_path: str,
    opts: RunOptions,
    until_decided: bool,
    max_seeds: int | None,
    seeds_per_round: int | None,
    first_look: int | None,
) -> tuple[Spec, SeqOptions | None, list[PlannedRun], set[str]]:
    """The spec read, --until-decided's options checked against it (with --first-look, the spec cut to its first
    seeds) and its matrix planned (--only, --set), every run's config resolved once (specs/matrix.py); and the run
    ids of the spec's whole matrix, which the report covers. The options and the run ids are taken before --only
    drops variants."""
    spec = load_spec(spec_path, check_configs=False)  # plan_matrix resolves every run's config, once
    seq_opts = sequential_options(spec, until_decided, max_seeds, seeds_per_round, first_look)
    if first_look is not None:
        spec = first_seeds(spec, first_look)
    spec_runs = {spec.run_id(v.name, s) for v, s in spec.matrix()}
    return spec, seq_opts, plan_matrix(spec, opts.extra, opts.only), spec_runs


def run_sweep(
    spec_path: str,
    param: str | None = None,
    grid: list[float] | None = None,
    seeds: list[int] | None = None,
    **options,
) -> Outcome:
    """`gptlab sweep`: train every variant of the spec at every value of the grid on the sweep's seeds (the
    spec's tune / tune_grid / tune_seeds, or `param`, `grid`, `seeds` instead), record the runs in the
    experiment's results.sqlite and write sweep.json with each variant's chosen value; the Outcome's summary is
    the table. `options`: RunOptions' fields (session.py). A later `gptlab experiment` of a spec with the same
    tune settings reuses these runs."""
    from gptlab.experiments.analysis import tuning
    from gptlab.experiments.report.tables import text_table
    from gptlab.experiments.specs.experiment import read_tune

    opts = RunOptions(**options)
    spec = load_spec(spec_path)
    if opts.only:
        keep_only(spec, opts.only)
    if param is None and grid is None and seeds is None and spec.tune is None:
        raise GptlabError(f"{spec_path}: no tune settings; give --param and --grid (or tune and tune_grid in the spec)")
    spec.tune = read_tune(
        spec,
        read_toml(spec.path),
        "sweep",
        param=param or (spec.tune.param if spec.tune else None),
        grid=grid,
        seeds=seeds if seeds is not None else (spec.tune.seeds if spec.tune else None),
    )
    base = tuning.base_values(spec, plan_matrix(spec, opts.extra))  # each variant's untuned value
    sweep = tuning.sweep_spec(spec, base)
    planned = plan_runs(sweep, opts.extra)
    outcome = Outcome()
    with open_pipeline(spec, planned, opts) as pipe:
        outcome.folder = pipe.folder
        outcome.failures = pipe.run(sweep)
        chosen = None if outcome.failures else choose(spec, pipe, base)
    if chosen is not None:
        lines = [text_table(*tuning.format_sweep(chosen)), *tuning.sweep_notes(chosen)]
        outcome.summary = "\n".join([*lines, f"sweep: {outcome.folder / tuning.SWEEP_FILE}"])
    return outcome


def _report(spec: Spec, exp_dir: Path, run_ids: set[str], outcome: Outcome) -> None:
    """Write the report of the spec's runs `run_ids` (rows of variants or seeds since removed from the spec stay
    in the database, out of the report); its verdict table, yardsticks and paths become the outcome's summary,
    or the reason it could not be written its report_error."""
    from gptlab.experiments.report import format_table, write_report, yardstick_summary

    refs = {v.name: v.reference for v in spec.variants if v.reference is not None}
    try:
        res = write_report(
            exp_dir,
            baseline=spec.baseline,
            experiment=spec.name,
            reference=refs or None,
            title=spec.name,
            run_ids=run_ids,
            equivalence_margin=spec.equivalence_margin,
            design=spec.design,
            tuned=spec.tune is not None,
            alpha=spec.alpha,
            target=spec.target,
        )
    except GptlabError as e:
        outcome.report_error = str(e)
        return
    outcome.report = res
    lines = []
    if res.get("tuned"):
        lines.append(f"at the base config's {spec.tune.param}:")
    lines.append(format_table(res["rows"], style="text"))
    if res.get("tuned"):
        lines.append(f"each variant at its best {spec.tune.param} (chosen on validation loss, sweep.json):")
        lines.append(format_table(res["tuned"]["rows"], style="text"))
    lines.append(yardstick_summary(res["yardsticks"]))
    lines.append(f"report: {res['markdown']}  {res['html']}")
    outcome.summary = "\n".join(lines)
