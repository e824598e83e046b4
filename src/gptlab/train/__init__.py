"""Training: `train` (pretraining, pretrain.py) and the `Trainer` it shares with fine-tuning (trainer.py), built
from optim.py (optimizers), schedule.py (lr), checkpoint.py (one format, one writer), distributed.py (process group,
device, precision), evaluate.py (held-out loss), metrics.py (metrics.jsonl, progress bar), loggers.py (TensorBoard,
W&B, Trackio), rundir.py (lock, config, environment) and flops.py (FLOPs, MFU, token budgets).

The names below are loaded on first use (PEP 562): `from gptlab.train import latest_checkpoint` loads
checkpoint.py and what it needs, not the pretraining loop (pretrain.py) or the loggers, so serving and generation
stay light. `import gptlab.train.checkpoint` runs this file first, which therefore imports nothing itself."""

from __future__ import annotations

import importlib

_HOME = {  # name -> the submodule that defines it
    "train": "pretrain",
    "Trainer": "trainer",
    "forward_backward": "trainer",
    "evaluate_loss": "evaluate",
    "load_run_model": "checkpoint",
    "load_checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "load_model_weights": "checkpoint",
    "lr_factor": "schedule",
    "build_optimizers": "optim",
    "make_optimizers": "optim",
    "OptimSettings": "optim",
    "RunLock": "rundir",
    "Dist": "distributed",
    "resolve_device": "distributed",
    "resolve_precision": "distributed",
    "autocast_ctx": "distributed",
    "to_device": "distributed",
}

__all__ = list(_HOME)


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'gptlab.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
