"""`gptlab ladder SPEC`: every rung of a ladder run through the experiment runner, then the ladder report."""

from __future__ import annotations

import sys
from pathlib import Path

import tomli_w

from gptlab.config import (
    parse_overrides,
)
from gptlab.experiments.analysis.ladder import done_counts
from gptlab.experiments.report.confirm import write_confirmation_spec
from gptlab.experiments.report.ladder import format_summary, write_ladder_report
from gptlab.experiments.spec.ladder import load_ladder
from gptlab.experiments.spec.plan import print_ladder_dry_run
from gptlab.io import claim_dir, confined


def run_ladder(
    spec_path: str,
    out: str | None = None,
    dry_run: bool = False,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    bootstrap: int | None = None,
    emit_confirmation: str | None = None,
    **run_options,
) -> int:
    """Run (or with dry_run, only print) every rung of the ladder through the experiment runner, then write the
    ladder report (and with emit_confirmation, the confirmation spec there). The exit status for the CLI."""
    from gptlab.experiments.run.runner import ExperimentLock, Stopped, StopSignals, run_experiment
    from gptlab.io import atomic_write_text
    from gptlab.train.signals import EXIT_PREEMPTED

    extra = parse_overrides(overrides or [])
    lad = load_ladder(spec_path, extra)
    if bootstrap is not None:
        lad.bootstrap = bootstrap
    if dry_run:
        print_ladder_dry_run(lad, extra)
        return 0
    exp_dir = claim_dir(
        Path(out) if out else confined("experiments", lad.name, f"{lad.path}: name"),
        LADDER_DIR,
        "--out" if out else "ladder folder",
        run_options.get("force", False),
        _written_before,
    )
    keep = None if not only else set(only) | {lad.spec.baseline}  # --only: these variants and the baseline
    exp_dir.mkdir(parents=True, exist_ok=True)
    # one ladder runner per folder (each rung's runner also locks its rung's folder); a stop signal between rungs
    # ends the ladder, one during a rung is passed on to its runs by the rung's runner (runner.py)
    try:
        with ExperimentLock(exp_dir, "ladder folder"), StopSignals():
            done = done_counts(lad, exp_dir, keep)
            total = sum(sum(keep is None or v.name in keep for v, _ in r.spec.matrix()) for r in lad.rungs)
            print(
                f"ladder {lad.name}: {len(lad.rungs)} rungs, {total} runs, {sum(done)} already done, "
                f"{total - sum(done)} to run -> {exp_dir}",
                flush=True,
            )
            status = 0
            for r in lad.rungs:
                spec_file = exp_dir / "specs" / f"{r.name}.toml"
                atomic_write_text(
                    spec_file, f"# rung {r.index} of {lad.path} (written by `gptlab ladder`)\n" + tomli_w.dumps(r.table)
                )
                rc = run_experiment(
                    str(spec_file), out=str(exp_dir / r.name), overrides=overrides, only=only, **run_options
                )
                if rc in (130, EXIT_PREEMPTED):  # stopped: the rung's runner said so
                    return rc
                status = status or rc
            res = write_ladder_report(lad, exp_dir)
            if emit_confirmation:
                write_confirmation_spec(lad, res["analysis"], emit_confirmation, run_options.get("force", False))
    except Stopped as s:
        print(s.line(), file=sys.stderr)
        return s.exit_code
    print(format_summary(res))
    print(f"ladder report: {res['markdown']}  {res['html']}")
    return status


LADDER_DIR = "ladder"  # the kind of folder `ladder` writes (io.claim_dir)


def _written_before(p: Path) -> bool:
    """A ladder folder of an earlier gptlab (no owner file): specs/rung-K.toml and a rung-K folder."""
    return any((p / "specs").glob("rung-*.toml")) and any(q.is_dir() for q in p.glob("rung-*"))
