"""Training: `train` (pretraining, pretrain.py) and the `Trainer` it shares with fine-tuning (trainer.py), built
from optim.py (optimizers), schedule.py (lr), checkpoint.py (one format, one writer), distributed.py (process group,
device, precision), evaluate.py (held-out loss), metrics.py (metrics.jsonl, progress bar), loggers.py (TensorBoard,
W&B, Trackio), rundir.py (lock, config, environment) and flops.py (FLOPs, MFU, token budgets)."""

from gptlab.train.checkpoint import (
           latest_checkpoint,
           load_checkpoint,
           load_model_weights,
           load_run_model,
)
from gptlab.train.distributed import (
           Dist,
           autocast_ctx,
           resolve_device,
           resolve_precision,
           to_device,
)
from gptlab.train.evaluate import evaluate_loss
from gptlab.train.optim import OptimSettings, build_optimizers, make_optimizers
from gptlab.train.pretrain import train
from gptlab.train.rundir import RunLock
from gptlab.train.schedule import lr_factor
from gptlab.train.trainer import Trainer, forward_backward

__all__ = ["train", "Trainer", "forward_backward", "evaluate_loss", "load_run_model", "load_checkpoint",
           "latest_checkpoint", "load_model_weights", "lr_factor", "build_optimizers", "make_optimizers",
           "OptimSettings", "RunLock", "Dist", "resolve_device", "resolve_precision", "autocast_ctx", "to_device"]
