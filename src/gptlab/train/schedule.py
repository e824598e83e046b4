"""The learning-rate schedule: a multiplier on each parameter group's base lr at every optimizer step."""

from __future__ import annotations

import math

import torch

from gptlab.config import RunConfig


def lr_factor(
    step: int, total: int, cfg: RunConfig, warmup_steps: int | None = None, anchor: tuple[int, float] | None = None
) -> float:
    """Multiplier on the base lr at optimizer step `step` (0-based) of `total`: linear warmup over
    `warmup_frac`, then constant, linear or cosine decay to `min_lr_frac`.

    A run continued with another length (`gptlab train --resume --continue-with train.tokens=...`) keeps the
    warmup it started with (`warmup_steps`) and from `anchor` = (step a, factor f) on decays from f, the factor the
    old plan had reached at a, to min_lr_frac over the new plan's remaining steps: the lr goes on from where it
    was instead of jumping to the new plan's value at that step."""
    t = cfg.train
    warm = int(round(t.warmup_frac * total)) if warmup_steps is None else warmup_steps
    if step < warm:
        return (step + 1) / warm
    if t.schedule == "constant":
        return 1.0
    if anchor is not None and step >= anchor[0]:
        start, top = anchor
        progress = min(1.0, (step - start) / max(1, total - start - 1))
        if t.schedule == "linear":
            return top - (top - t.min_lr_frac) * progress
        return t.min_lr_frac + (top - t.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))
    progress = min(1.0, (step - warm) / max(1, total - warm - 1))
    if t.schedule == "linear":
        return 1.0 - (1.0 - t.min_lr_frac) * progress
    return t.min_lr_frac + (1.0 - t.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(opts: list[torch.optim.Optimizer], factor: float) -> None:
    for o in opts:
        for g in o.param_groups:
            g["lr"] = g["base_lr"] * factor
