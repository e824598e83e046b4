"""`gptlab experiment SPEC`, followed as it runs, from the CLI to results.sqlite.

A profiler on every thread records, for each call into a gptlab function while the verb runs, the chain of gptlab
files on the stack: outermost first, a file's consecutive frames one stay. Then:

- no chain enters a file again after leaving it (no callback climbs back into a file above);
- no chain calls from a file into one of a higher layer (the order of tests/test_layers.py, and inside experiments/
  specs < results < analysis < report < run);
- results.sqlite is opened by run/session.py (the runner's) and report/render.py (the report's, to read); a row is
  written by run/matrix.py alone (a finished run recorded) and deleted by run/changes.py alone (a changed run
  forgotten);
- a run's config is resolved in specs/ alone: specs/matrix.py plans the runs, and specs/experiment.py checks a
  tuned spec's variants and grid before that; nothing in run/ resolves one. The report's target model, which is
  no run, is read by report/regime.py.

Two kinds of frame are no call of the code beneath them, and start a chain of their own: a logging handler
(cli/console.py renders the library's log records while a verb runs; that is the one way up, by design) and a
finalizer (`__del__` runs wherever the garbage collector happens to run).

The imports are checked in tests/test_layers.py; this file checks the calls, callbacks included, on the real verb:
a tuned experiment (sweep, plain and tuned matrix) and one run until decided (the matrix, then a round)."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from test_layers import experiment_layer, layer_of
from test_tuning import _spec

import gptlab
from gptlab.cli import main

SRC = str(Path(gptlab.__file__).parent) + "/"
LOGGING = logging.__file__

Chain = tuple[tuple[str, str], ...]  # ((file relative to src/gptlab, qualified function name), ...), outermost first


def chain_of(frame) -> Chain:
    out = []
    while frame is not None:
        code = frame.f_code
        if code.co_filename == LOGGING:  # a handler runs for whoever logged: its chain starts below this frame
            break
        if code.co_filename.startswith(SRC):
            out.append((code.co_filename[len(SRC) :], code.co_qualname))
            if code.co_name == "__del__":
                break
        frame = frame.f_back
    return tuple(reversed(out))


def follow(fn) -> tuple[object, set[Chain]]:
    """fn()'s result and the distinct chains of its calls into gptlab, on every thread it starts."""
    chains: set[Chain] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(SRC):
            chains.add(chain_of(frame))

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return result, chains


def stays(chain: Chain) -> list[str]:
    files = [f for f, _ in chain]
    return [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]


def rank(file: str) -> tuple[int, int]:
    module = "gptlab." + file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return layer_of(module), experiment_layer(module) or 0


def climbs(chains: set[Chain]) -> list[str]:
    """A line for each chain that enters a file again after leaving it, and for each call into a higher layer."""
    wrong = set()
    for chain in chains:
        route = stays(chain)
        again = [f for i, f in enumerate(route) if f in route[:i]]
        if again:
            wrong.add(f"{' -> '.join(route)}: enters {again[0]} again")
        for a, b in zip(route, route[1:], strict=False):
            if rank(b) > rank(a):
                wrong.add(f"{' -> '.join(route)}: {a} calls {b}, a higher layer")
    return sorted(wrong)


def callers(chains: set[Chain], file: str, func: str) -> set[str]:
    """The files from which `file`'s `func` is entered (the stay before the file's own)."""
    out = set()
    for chain in chains:
        for i, (f, fn) in enumerate(chain):
            if (f, fn) == (file, func):
                route = stays(chain[: i + 1])
                out.add(route[-2] if len(route) > 1 else "")
                break
    return out


def test_the_checks_see_a_callback_a_call_upward_and_the_callers():
    chains = {
        (("cli/experiments.py", "cmd_experiment"), ("experiments/run/runner.py", "run_experiment")),
        (
            ("experiments/run/runner.py", "run_experiment"),
            ("experiments/run/pipeline.py", "run"),
            ("experiments/run/runner.py", "on_done"),  # a callback into the runner
        ),
        (("experiments/specs/matrix.py", "plan_run"), ("experiments/run/session.py", "experiment_dir")),
        (("experiments/run/matrix.py", "record"), ("experiments/results.py", "wrapper"), ("config.py", "resolve")),
    }
    assert climbs(chains) == [
        "experiments/run/runner.py -> experiments/run/pipeline.py -> experiments/run/runner.py: enters "
        "experiments/run/runner.py again",
        "experiments/specs/matrix.py -> experiments/run/session.py: experiments/specs/matrix.py calls "
        "experiments/run/session.py, a higher layer",
    ]
    assert callers(chains, "config.py", "resolve") == {"experiments/results.py"}


def test_the_profiler_follows_a_real_call_and_starts_a_chain_at_a_handler():
    from gptlab import io
    from gptlab.cli.console import console

    def log_a_line():
        with console():
            logging.getLogger("gptlab.experiments.run.matrix").info("a line")
        return io.plain_name("abc", "name")

    result, chains = follow(log_a_line)
    assert result == "abc"
    here = {stays(c)[0] for c in chains}
    assert {"cli/console.py", "io.py"} <= here  # the handler's chain does not hang below the logging call
    assert all(len(stays(c)) == 1 for c in chains), chains


def _followed(tmp_path, data, spec_extra: dict, args: list[str], phase: tuple[str, str]) -> set[Chain]:
    spec = _spec(tmp_path, data, lr=3e-3, tuned=False, **spec_extra)  # the lr trains in a few steps
    cli = ["experiment", str(spec), "--out", str(tmp_path / "runs"), "--quiet", "--parallel", "2", *args]
    rc, chains = follow(lambda: main(cli))
    assert rc == 0
    assert (tmp_path / "runs" / "report.md").is_file()
    assert any(phase in c for c in chains), f"the run never reached {phase}"
    # the walk from the CLI to results.sqlite: one file after another, each once
    to_db = {tuple(stays(c)) for c in chains if ("experiments/results.py", "ResultsDB.record_run") in c}
    assert to_db, "no run was recorded"
    assert all(r[:3] == ("cli/__init__.py", "cli/experiments.py", "experiments/run/runner.py") for r in to_db)
    assert all(r[-3:] == ("experiments/run/pipeline.py", "experiments/run/matrix.py", "experiments/results.py")
               for r in to_db), to_db  # fmt: skip
    return chains


def _check(chains: set[Chain]) -> None:
    wrong = climbs(chains)
    assert not wrong, "\n".join(wrong)
    db = "experiments/results.py"
    assert callers(chains, db, "ResultsDB.record_run") == {"experiments/run/matrix.py"}
    assert callers(chains, db, "ResultsDB.forget") <= {"experiments/run/changes.py"}
    assert callers(chains, db, "ResultsDB.record_judge") == set()
    assert callers(chains, db, "ResultsDB.__init__") == {"experiments/run/session.py", "experiments/report/render.py"}
    resolving = callers(chains, "config.py", "resolve")
    assert "experiments/specs/matrix.py" in resolving
    specs = {"experiments/specs/matrix.py", "experiments/specs/experiment.py"}
    assert resolving <= specs | {"experiments/report/regime.py"}, resolving
    assert callers(chains, "config.py", "load_config") <= {"experiments/report/regime.py"}


def test_a_tuned_experiment_runs_from_the_cli_to_results_sqlite_without_climbing_back(small_data, tmp_path):
    tune = dict(tune="lr", tune_grid=[3e-3, 4e-3], tune_seeds=[1001])
    _check(_followed(tmp_path, small_data, tune, [], ("experiments/run/rounds.py", "run_tuned")))


def test_an_experiment_run_until_decided_runs_to_results_sqlite_without_climbing_back(small_data, tmp_path):
    seq = ["--until-decided", "--max-seeds", "4"]
    _check(_followed(tmp_path, small_data, {}, seq, ("experiments/run/rounds.py", "run_rounds")))
