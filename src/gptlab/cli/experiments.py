"""`gptlab experiment`, `sweep`, `ladder`, `leaderboard` and `report`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys

from gptlab import GptlabError
from gptlab.cli.common import (
    MAX_GPUS,
    MAX_MINUTES,
    MAX_PARALLEL,
    MAX_PER_NODE,
    MAX_SEEDS,
    SEED,
    Number,
    upto,
    verb_parser,
)


def cmd_experiment(a) -> int:
    from gptlab.experiments.run.runner import plan_experiment, run_experiment

    if a.status:
        from gptlab.experiments.run.status import experiment_status, format_status

        print(format_status(experiment_status(a.spec, out=a.out, overrides=a.set, first_look=a.first_look)))
        return 0
    if a.backend == "skypilot":
        from gptlab.experiments.run.scheduler.skypilot import write_task

        path = write_task(
            a.spec,
            a.emit,
            accelerator=a.accelerator,
            gpus_per_node=a.gpus_per_node or 8,
            gpus_per_run=a.gpus_per_run,
            out=a.out,
            overrides=a.set,
        )
        print(f"wrote {path}: sky launch -c gptlab {path}")
        return 0
    if a.emit:
        raise GptlabError("--emit: only with --backend skypilot")
    return _shown(
        plan_experiment if a.dry_run else run_experiment,
        a.spec,
        until_decided=a.until_decided,
        max_seeds=a.max_seeds,
        seeds_per_round=a.seeds_per_round,
        first_look=a.first_look,
        **_run_options(a),
    )


def _shown(run, *args, **kwargs) -> int:
    """Call a runner (run_experiment or plan_experiment, run_sweep, run_ladder; its progress lines reach the
    terminal through the console while it runs); print its summary on stdout and its problems on stderr; its exit
    status: 0, 1 for failed runs or a report not written, and after a stop signal 130 (SIGINT) or 75 (SIGTERM,
    SIGUSR1)."""
    from gptlab.experiments.run.stops import Stopped

    try:
        outcome = run(*args, **kwargs)
    except Stopped as s:
        print(s.line(), file=sys.stderr)
        return s.exit_code
    if outcome.summary:
        print(outcome.summary)
    for line in outcome.problems():
        print(line, file=sys.stderr)
    return 0 if outcome.ok else 1


def cmd_sweep(a) -> int:
    from gptlab.experiments.analysis.tuning import parse_grid
    from gptlab.experiments.run.runner import run_sweep

    seeds = None
    if a.seeds:
        try:
            seeds = [SEED(x.strip()) for x in a.seeds.split(",") if x.strip()]
        except argparse.ArgumentTypeError as e:
            raise GptlabError(f"--seeds: {e} (expected seeds like 1001,1002)") from None
        if len(seeds) > MAX_SEEDS:
            raise GptlabError(
                f"--seeds: {len(seeds)} seeds; at most {MAX_SEEDS} (each one is a run per variant and grid value)"
            )
    grid = parse_grid(a.grid) if a.grid else None
    return _shown(run_sweep, a.spec, param=a.param, grid=grid, seeds=seeds, **_run_options(a))


def _run_options(a) -> dict:
    """The options `experiment` and `sweep` share: where the runs go and how they are scheduled."""
    slurm = None
    if a.backend == "slurm":
        slurm = dict(
            partition=a.partition,
            nodes_per_run=a.nodes_per_run,
            gpus_per_node=a.gpus_per_node or 0,
            time_min=a.time,
            account=a.account,
            procs_per_node=a.procs_per_node,
        )
    return dict(
        out=a.out,
        parallel=a.parallel,
        overrides=a.set,
        quiet=a.quiet,
        only=[x.strip() for x in a.only.split(",") if x.strip()] if a.only else None,
        procs_per_run=a.procs_per_run,
        gpus_per_run=a.gpus_per_run,
        rerun_changed=a.rerun_changed,
        backend=a.backend,
        backend_options=slurm,
        force=a.force,
    )


def cmd_ladder(a) -> int:
    from gptlab.experiments.run.ladder import run_ladder
    from gptlab.experiments.specs.confirm import check_target_file

    if a.emit_confirmation:  # before the runs, not after them
        check_target_file(a.emit_confirmation, a.force)
    return _shown(
        run_ladder,
        a.spec,
        dry_run=a.dry_run,
        bootstrap=a.bootstrap,
        emit_confirmation=a.emit_confirmation,
        **_run_options(a),
    )


def cmd_leaderboard(a) -> int:
    from gptlab.experiments.report.leaderboard import format_leaderboard, leaderboard

    print(format_leaderboard(leaderboard(a.paths or ["experiments"]), "markdown" if a.markdown else "text"))
    return 0


def cmd_report(a) -> int:
    from gptlab.experiments.report import format_table, write_report, yardstick_summary
    from gptlab.experiments.specs.experiment import report_settings

    settings = report_settings(a.exp_dir)
    res = write_report(a.exp_dir, **dict(settings, baseline=a.baseline or settings["baseline"]))
    print(format_table(res["rows"], style="text"))
    print(yardstick_summary(res["yardsticks"]))
    print(f"wrote {res['markdown']} and {res['html']}")
    return 0


def register(sub) -> None:
    s = verb_parser(
        sub,
        "experiment",
        "run a matrix of variants x seeds, record results.sqlite, write the report",
        "gptlab experiment configs/experiments/seed-interventions.toml\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --dry-run\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --parallel 2\n"
        "gptlab experiment configs/experiments/gpt2-small-interventions.toml --gpus-per-run 2   "
        "# 8 GPUs: 4 runs at once\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --procs-per-run 2 --parallel 2\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --rerun-changed\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --until-decided --max-seeds 10\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --backend slurm --partition gpu "
        "--gpus-per-node 8 --time 240\n"
        "gptlab experiment configs/experiments/seed-interventions.toml --status\n"
        "gptlab experiment configs/experiments/gpt2-small-interventions.toml --backend skypilot "
        "--accelerator A100 --gpus-per-node 8 --emit sky.yaml",
    )
    s.add_argument("spec", help="experiment TOML")
    s.add_argument("--dry-run", action="store_true", help="print the matrix, tokens, FLOPs and estimated time")
    _add_run_arguments(s, backends=["local", "slurm", "skypilot"])
    # adaptive seeds (experiments/sequential.py): rounds of seeds until each variant is decided
    s.add_argument(
        "--until-decided",
        action="store_true",
        help="after the spec's seeds, add seeds in rounds to the variants not yet decided (and the "
        "baseline): group-sequential design, O'Brien-Fleming spending, alpha / variants each; "
        "state in EXPERIMENT/sequential.json",
    )
    s.add_argument(
        "--max-seeds", type=upto(MAX_SEEDS), metavar="K", help="with --until-decided: the most seeds a variant gets"
    )
    s.add_argument(
        "--seeds-per-round",
        type=upto(MAX_SEEDS),
        metavar="R",
        help="with --until-decided: seeds added per round (default: the spec's seed count, at least 2)",
    )
    s.add_argument(
        "--first-look",
        type=upto(MAX_SEEDS),
        metavar="N",
        help="with --until-decided: look first at the first N of the spec's and each variant's seeds (default: "
        "all of them), so a fixed-design spec such as --emit-confirmation's runs sequentially unedited",
    )
    s.add_argument(
        "--status",
        action="store_true",
        help="list every run (the spec's matrix and sweep, at the base values --set gives and the first seeds "
        "--first-look gives, then every other run the "
        "folder holds: later rounds of --until-decided, the tuned matrix): pending/running/done/failed, its SLURM "
        "job id, its progress (latest step of the total, latest train and val loss) and the last line of its log; with "
        "train.loggers including tensorboard, the `tensorboard --logdir` command for the curves",
    )
    s.add_argument("--accelerator", default="A100", help="skypilot: GPU type (with --gpus-per-node: A100:8)")
    s.add_argument("--emit", metavar="FILE", help="skypilot: write the task YAML here (then: sky launch FILE)")
    s.set_defaults(fn=cmd_experiment)
    s = verb_parser(
        sub,
        "sweep",
        "train every variant at every value of a grid (e.g. train.lr) and pick each "
        "variant's best value on validation loss (EXPERIMENT/sweep.json)",
        "gptlab sweep configs/experiments/seed-interventions.toml --param train.lr --grid 1e-3:8e-3:4\n"
        "gptlab sweep configs/experiments/seed-interventions.toml --param lr --grid 1e-3,2e-3,4e-3 "
        "--seeds 1001,1002\n"
        "gptlab sweep SPEC   # a spec with tune, tune_grid (and tune_seeds); `gptlab experiment SPEC` "
        "then reuses these runs",
    )
    s.add_argument("spec", help="experiment TOML")
    s.add_argument("--param", help="the number setting to tune, e.g. train.lr (default: the spec's tune)")
    s.add_argument(
        "--grid",
        help="values: 1e-3,2e-3,4e-3 or a log grid LO:HI:N (default: the spec's tune_grid); "
        "each variant's base value is tried too",
    )
    s.add_argument("--seeds", help="the sweep's seeds, e.g. 1001,1002 (default: the spec's tune_seeds, else 1001)")
    _add_run_arguments(s, backends=["local", "slurm"])
    s.set_defaults(fn=cmd_sweep)
    s = verb_parser(
        sub,
        "ladder",
        "run an experiment at several model sizes (rungs) and ask whether each variant's "
        "difference to the baseline grows, shrinks, flips or stays flat with compute, extrapolated to a "
        "target (GPT-2 small) with a bootstrap interval and a backtest",
        "gptlab ladder configs/experiments/ladder-cpu.toml --dry-run\n"
        "gptlab ladder configs/experiments/ladder-cpu.toml            # EXP/rung-K/ + EXP/report.md\n"
        "gptlab ladder configs/experiments/ladder-cpu.toml --only muon --out experiments/ladder-muon\n"
        "gptlab ladder configs/experiments/ladder-gpu.toml --gpus-per-run 1 --parallel 8",
    )
    s.add_argument("spec", help="experiment TOML with a [ladder] table (rungs, token rule, seeds, target)")
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="print the rungs: parameters, tokens, FLOPs and the estimated time; run nothing",
    )
    s.add_argument(
        "--bootstrap",
        type=Number(int, "[20, 100000]"),
        metavar="N",
        help="bootstrap replicates of the intervals (default: the spec's ladder.bootstrap, else 200)",
    )
    s.add_argument(
        "--emit-confirmation",
        metavar="PATH",
        help="after the report, write the experiment spec that confirms the leads at the target (the report's "
        "confirmation plan; GPUs from [ladder.confirm]); refuses a file it did not write unless --force",
    )
    _add_run_arguments(s, backends=["local", "slurm"])
    s.set_defaults(fn=cmd_ladder)
    s = verb_parser(
        sub,
        "leaderboard",
        "every variant of every experiment: loss, CI, delta vs its baseline, verdict",
        "gptlab leaderboard\ngptlab leaderboard experiments/modern --markdown",
    )
    s.add_argument("paths", nargs="*", help="experiment folders or results.sqlite files (default: experiments/)")
    s.add_argument("--markdown", action="store_true")
    s.set_defaults(fn=cmd_leaderboard)
    s = verb_parser(
        sub,
        "report",
        "statistics, plots and verdicts for an experiment folder",
        "gptlab report experiments/seed-interventions",
    )
    s.add_argument("exp_dir")
    s.add_argument("--baseline", help='the variant to compare with (default: the spec.toml\'s, else "baseline")')
    s.set_defaults(fn=cmd_report)


def _add_run_arguments(s, backends: list[str]) -> None:
    """Where an experiment's or sweep's runs go and how they are scheduled (scheduler/)."""
    s.add_argument(
        "--out",
        help="experiment folder (default: experiments/NAME); refused when it is a file or a "
        "folder holding files gptlab did not write there",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="write into the experiment folder even if it holds files gptlab did not write (files of the "
        "same name, e.g. report.md or spec.toml, are overwritten)",
    )
    s.add_argument(
        "--parallel",
        type=upto(MAX_PARALLEL),
        metavar="N",
        help="runs at a time (default 1; with --gpus-per-run: one per GPU slot, at most N)",
    )
    s.add_argument(
        "--gpus-per-run",
        type=upto(MAX_GPUS),
        metavar="N",
        help="split the visible GPUs (CUDA_VISIBLE_DEVICES, else all) into slots of N; each run "
        "under torchrun with N processes on its slot's GPUs, one run per slot at a time",
    )
    s.add_argument(
        "--procs-per-run",
        type=upto(MAX_GPUS),
        metavar="N",
        help="each run under torchrun with N processes without a device list (CPU: gloo); "
        "--parallel says how many runs at once",
    )
    s.add_argument(
        "--rerun-changed",
        action="store_true",
        help="redo runs whose recorded config differs from what the spec now gives them (their rows "
        "replaced, their run folders moved aside to runs/RUN_ID.stale-N); without it such runs "
        "stop the experiment before anything starts",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    s.add_argument(
        "--only", metavar="V1,V2", help="run only these variants (and the baseline); re-run later for the rest"
    )
    s.add_argument("--quiet", action="store_true")
    s.add_argument(
        "--backend",
        choices=backends,
        default="local",
        help="local: subprocesses here (--parallel); slurm: one sbatch job per run (submitit)"
        + (
            "; skypilot: write a SkyPilot task (--emit) that runs the matrix on a cloud node"
            if "skypilot" in backends
            else ""
        ),
    )
    s.add_argument("--partition", help="slurm: partition (default: the cluster's default)")
    s.add_argument("--account", help="slurm: account to charge")
    s.add_argument(
        "--nodes-per-run", type=upto(MAX_GPUS), default=1, help="slurm: nodes per run (torchrun across them)"
    )
    s.add_argument(
        "--gpus-per-node",
        type=upto(MAX_PER_NODE, 0),
        default=None,
        help="slurm: GPUs per node, one process each; skypilot: GPUs of the node (default 8)",
    )
    s.add_argument(
        "--procs-per-node",
        type=upto(MAX_PER_NODE),
        default=None,
        help="slurm without GPUs: gloo processes per node, one core each (default 1)",
    )
    s.add_argument("--time", type=upto(MAX_MINUTES), default=60, metavar="MINUTES", help="slurm: time limit per job")
