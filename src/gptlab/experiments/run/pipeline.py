"""One experiment folder's runs, from the planned matrix to results.sqlite. Every phase of `gptlab experiment` and
`sweep` goes through one Pipeline: the spec's matrix, a tuned experiment's sweep and then its matrix at the chosen
values (rounds.py), and each sequential round of --until-decided (rounds.py). A phase is a spec (the spec itself, or
one derived from it: the sweep, the tuned spec, the spec with a round's seeds added); `Pipeline.run` plans its runs
(specs/matrix.py; a run planned by an earlier phase is kept as it was), checks the ones not checked yet against the
runs recorded (changes.py) and runs those not recorded (matrix.py). The phases themselves plan, check and run
nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.changes import check_changed
from gptlab.experiments.run.matrix import run_matrix
from gptlab.experiments.run.scheduler import Backend
from gptlab.experiments.run.session import RunOptions, experiment_dir, experiment_session, make_backend
from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.matrix import PlannedRun, plan_runs


@dataclass
class Pipeline:
    """An open experiment folder (its lock held, its data prepared, its results database open) and every run
    planned in it so far."""

    folder: Path
    db: ResultsDB
    backend: Backend
    extra: dict  # --set, merged into every run's config
    rerun_changed: bool
    planned: dict[str, PlannedRun] = field(default_factory=dict)  # by run id
    checked: set[str] = field(default_factory=set)  # run ids the stale-run check has passed (or redone)

    def check(self, spec: Spec) -> list[str]:
        """The phase's runs planned and the ones not checked yet checked against the recorded runs (a changed
        one stops everything, or with --rerun-changed is redone: one note each); the notes."""
        return self._check(self._plan(spec))

    def run(self, spec: Spec, notes: list[str] | None = None) -> list[str]:
        """Run the phase `spec`: planned, checked (`check`), its runs not yet recorded run on the backend and
        recorded as they finish; the failed run ids. `notes` go out with the run loop's first line."""
        planned = self._plan(spec)
        notes = [*(notes or []), *self._check(planned)]
        return run_matrix(spec, planned, self.folder, self.db, self.backend, notes)

    def _plan(self, spec: Spec) -> list[PlannedRun]:
        planned = plan_runs(spec, self.extra, list(self.planned.values()))
        self.planned.update((p.run_id, p) for p in planned)
        return planned

    def _check(self, planned: list[PlannedRun]) -> list[str]:
        fresh = [p for p in planned if p.run_id not in self.checked]
        notes = check_changed(fresh, self.folder, self.db, self.rerun_changed)
        self.checked.update(p.run_id for p in fresh)
        return notes


@contextlib.contextmanager
def open_pipeline(spec: Spec, planned: list[PlannedRun], opts: RunOptions) -> Iterator[Pipeline]:
    """`with open_pipeline(...) as pipe:` the experiment folder of `spec` (session.experiment_dir: --out or
    experiments/NAME) held (session.py: stop signals caught, the folder claimed, locked), the data of the matrix
    `planned` prepared and the results database opened; on the way out the database closed and the lock
    released. The pipeline starts with `planned` known: a phase plans a run of it again only where its corpus
    vocabulary was not known before the data was prepared (plan_runs)."""
    folder = experiment_dir(spec, opts.out, opts.force)
    backend = make_backend(
        opts.backend, folder, opts.parallel, opts.procs_per_run, opts.gpus_per_run, opts.backend_options or {}
    )
    with experiment_session(folder, backend=backend) as session:
        db = session.open_results(planned[0].cfg, opts.quiet)
        yield Pipeline(folder, db, backend, opts.extra, opts.rerun_changed, {p.run_id: p for p in planned})
