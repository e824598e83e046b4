"""`gptlab ladder SPEC`: every rung of a ladder run through the experiment runner, then the ladder report."""

from __future__ import annotations

import logging
from pathlib import Path

import tomli_w

from gptlab.config import parse_overrides
from gptlab.experiments.analysis.ladder import done_counts
from gptlab.experiments.report.confirm import write_confirmation_spec
from gptlab.experiments.report.ladder import format_summary, write_ladder_report
from gptlab.experiments.run.runner import Outcome, run_experiment
from gptlab.experiments.run.session import experiment_session
from gptlab.experiments.specs.confirm import confirm_settings
from gptlab.experiments.specs.ladder import load_ladder
from gptlab.experiments.specs.plan import ladder_dry_run_lines
from gptlab.io import atomic_write_text, claim_dir, confined

log = logging.getLogger(__name__)


def run_ladder(
    spec_path: str,
    out: str | None = None,
    dry_run: bool = False,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    bootstrap: int | None = None,
    emit_confirmation: str | None = None,
    **run_options,
) -> Outcome:
    """Run (or with dry_run, only plan) every rung of the ladder through the experiment runner, then write the
    ladder report (and with emit_confirmation, the confirmation spec at the target). Each rung's summary goes to
    `logging` as the rung ends; the Outcome holds the rungs' outcomes (`parts`) and the ladder's summary. A stop
    signal raises Stopped (between rungs, or from a rung's runner once its runs have ended), and the ladder report
    is then not written."""
    extra = parse_overrides(overrides or [])
    lad = load_ladder(spec_path, extra)
    confirm_settings(lad)  # a mistyped [ladder.confirm] stops the ladder here, not after its runs
    if bootstrap is not None:
        lad.bootstrap = bootstrap
    if dry_run:
        return Outcome(summary="\n".join(ladder_dry_run_lines(lad, extra)))
    exp_dir = Path(out) if out else confined("experiments", lad.name, f"{lad.path}: name")
    what, force = ("--out" if out else "ladder folder"), run_options.get("force", False)

    def claim(folder: Path) -> None:
        claim_dir(folder, LADDER_DIR, what, force, _written_before)

    keep = None if not only else set(only) | {lad.spec.baseline}  # --only: these variants and the baseline
    outcome = Outcome(exp_dir)
    # one ladder runner per folder (each rung's runner also locks its rung's folder); a stop signal between rungs
    # ends the ladder, one during a rung is passed on to its runs by the rung's runner (matrix.py)
    with experiment_session(exp_dir, claim, "ladder folder", subdirs=()) as session:
        done = done_counts(lad, session.folder, keep)
        total = sum(sum(keep is None or v.name in keep for v, _ in r.spec.matrix()) for r in lad.rungs)
        log.info(
            f"ladder {lad.name}: {len(lad.rungs)} rungs, {total} runs, {sum(done)} already done, "
            f"{total - sum(done)} to run -> {exp_dir}"
        )
        for r in lad.rungs:
            spec_file = exp_dir / "specs" / f"{r.name}.toml"
            atomic_write_text(
                spec_file, f"# rung {r.index} of {lad.path} (written by `gptlab ladder`)\n" + tomli_w.dumps(r.table)
            )
            rung = run_experiment(
                str(spec_file), out=str(exp_dir / r.name), overrides=overrides, only=only, **run_options
            )
            if rung.summary:
                log.info(rung.summary)
            outcome.parts.append(rung)
        res = write_ladder_report(lad, exp_dir)
        emitted = write_confirmation_spec(lad, res["analysis"], emit_confirmation, force) if emit_confirmation else None
    outcome.report = res
    outcome.summary = f"{format_summary(res)}\nladder report: {res['markdown']}  {res['html']}"
    if emitted is not None:
        outcome.summary += f"\nconfirmation spec: {emitted}"
    return outcome


LADDER_DIR = "ladder"  # the kind of folder `ladder` writes (io.claim_dir)


def _written_before(p: Path) -> bool:
    """A ladder folder of an earlier gptlab (no owner file): specs/rung-K.toml and a rung-K folder."""
    return any((p / "specs").glob("rung-*.toml")) and any(q.is_dir() for q in p.glob("rung-*"))
