"""Training: the loop, optimizers, schedule, checkpoints, distributed setup, metrics and FLOP accounting."""

from gptlab.train.trainer import (RunLock, autocast_ctx, build_optimizers, evaluate_loss, forward_backward,
                                  latest_checkpoint, load_model_weights, load_run_model, lr_factor, resolve_device,
                                  resolve_precision, to_device, train)

__all__ = ["train", "evaluate_loss", "load_run_model", "lr_factor", "build_optimizers", "forward_backward",
           "latest_checkpoint", "load_model_weights", "RunLock", "resolve_device", "resolve_precision",
           "autocast_ctx", "to_device"]
