"""`gptlab experiment SPEC --backend skypilot --emit FILE`: the task YAML SkyPilot launches.

SkyPilot itself is not in the test extra: it pins click<8.2 while huggingface_hub (test extra, via transformers)
needs click>=8.4.2, and it brings 96 packages (460 MB; a FastAPI server, Postgres and SSH clients; 7.5 minutes to
install on 2 busy cores). The file is checked against SkyPilot's documented task schema here, always. SkyPilot's
own parser reads it too where SkyPilot is there: in this Python, or in the Python that GPTLAB_SKY_PYTHON names (a
venv of its own, made once by hand: `python -m venv ~/.venvs/sky && ~/.venvs/sky/bin/pip install
skypilot==0.14.1`); otherwise that test is skipped, saying so. No test installs anything or reaches the network."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_slurm import write_spec

from gptlab import GptlabError
from gptlab.experiments.run.scheduler.skypilot import SETUP, write_task

TASK_KEYS = {
    "name",
    "workdir",
    "num_nodes",
    "resources",
    "envs",
    "secrets",
    "file_mounts",
    "setup",
    "run",
    "event_callback",
    "service",
    "config",
}  # https://docs.skypilot.co/en/latest/reference/yaml-spec.html


def emit(tmp_path, data, *extra):
    spec = write_spec(tmp_path, data)
    out = tmp_path / "sky.yaml"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptlab",
            "experiment",
            str(spec),
            "--backend",
            "skypilot",
            "--accelerator",
            "H100",
            "--gpus-per-node",
            "8",
            "--emit",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_task_yaml_follows_the_task_schema(small_data, tmp_path):
    t = yaml.safe_load(
        emit(tmp_path, small_data, "--set", "train.lr=0.001", "--set", 'data.source="bundled"').read_text()
    )
    assert set(t) <= TASK_KEYS
    assert t["name"] == "gptlab-t" and t["num_nodes"] == 1 and Path(t["workdir"]) == tmp_path
    assert t["resources"] == {"accelerators": "H100:8"}
    # setup: the README's install command (its first command, without the run)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)\n```", readme, re.S).group(1)
    assert first.startswith(SETUP + " && gptlab experiment ") and SETUP in t["setup"]
    # run: data first, then the matrix with the local backend, the whole node per run
    run = t["run"].splitlines()
    assert run[1] == ". .venv/bin/activate"
    assert run[2] == f"test -f {small_data}/meta.json || gptlab prepare bundled --out {small_data}"
    assert run[3] == (
        "gptlab experiment exp.toml --out experiments/t --backend local --gpus-per-run 8 "
        "--set train.lr=0.001 --set 'data.source=\"bundled\"'"
    )


PARSE = """import json, sys
import sky
task = sky.Task.from_yaml(sys.argv[1])
print(json.dumps({"num_nodes": task.num_nodes, "run": task.run,
                  "accelerators": [r.accelerators for r in task.resources]}))
"""


def _sky_python() -> str:
    """A Python that has SkyPilot: this one, or the one GPTLAB_SKY_PYTHON names; the test is skipped otherwise."""
    if importlib.util.find_spec("sky") is not None:
        return sys.executable
    py = os.environ.get("GPTLAB_SKY_PYTHON")
    if not py:
        pytest.skip(
            "SkyPilot is not installed here (its click pin conflicts with the test extra): set "
            "GPTLAB_SKY_PYTHON to a Python that has skypilot==0.14.1 to run its parser on the task"
        )
    r = subprocess.run([py, "-c", "import sky"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"GPTLAB_SKY_PYTHON={py} cannot import sky: {r.stderr.strip()[-500:]}"
    return py


def test_sky_parses_the_task(small_data, tmp_path):
    """SkyPilot's own parser (sky.Task.from_yaml) reads the task."""
    path = emit(tmp_path, small_data, "--set", 'data.source="bundled"')
    (tmp_path / "parse.py").write_text(PARSE)
    r = subprocess.run(
        [_sky_python(), str(tmp_path / "parse.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    task = json.loads(r.stdout.strip().splitlines()[-1])
    assert task["num_nodes"] == 1 and "gptlab experiment" in task["run"]
    assert task["accelerators"] == [{"H100": 8}]


def test_bad_options_are_one_line(small_data, tmp_path):
    spec = write_spec(tmp_path, small_data)
    with pytest.raises(GptlabError, match=r"--emit: expected a file"):
        write_task(str(spec), None)
    with pytest.raises(GptlabError, match=r"--gpus-per-run: expected a divisor of --gpus-per-node \(8\), got 3"):
        write_task(str(spec), str(tmp_path / "x.yaml"), gpus_per_run=3, workdir=tmp_path)
    with pytest.raises(GptlabError, match=r"SPEC: .* is outside the working directory"):
        write_task(str(spec), str(tmp_path / "x.yaml"), workdir=tmp_path / "elsewhere")
    with pytest.raises(GptlabError, match=r"data.dir: .* is outside the working directory .* SkyPilot syncs"):
        write_task(str(spec), str(tmp_path / "x.yaml"), workdir=tmp_path)  # no data.source: cannot prepare it
