"""Held-out loss: mean cross-entropy in nats per target token, summed in float64, sharded over ranks when
distributed. Targets of -100 (prompt and padding in fine-tuning) are not counted."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from gptlab import GptlabError
from gptlab.train.distributed import Dist, autocast_ctx, to_device

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


def perplexity(loss: float) -> float:
    """exp(loss); inf past what a float holds (a diverged run's loss of 800 must not crash final.json)."""
    return float("inf") if loss > 709.0 else math.exp(loss)  # exp(nan) stays nan


@torch.no_grad()
def loss_sum(
    model,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str,
    dist_: Dist | None = None,
) -> tuple[float, int]:
    """(sum of cross-entropy over counted targets, number of counted targets), over all ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in batches:
        x, y = to_device(x, device), to_device(y, device)
        with autocast_ctx(precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
        total[0] += loss.double()
        total[1] += (y != IGNORE_INDEX).sum()
    if dist_ is not None:
        dist_.all_reduce_sum(total)
    model.train(was_training)
    return total[0].item(), int(total[1].item())


def evaluate_loss(
    model,
    dataset,
    context_length: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    offset: int = 0,
    n_batches: int = 0,
    dist_: Dist | None = None,
    vocab_map=None,
) -> float:
    """Mean cross-entropy over sequential windows of a token dataset (in the model's vocabulary)."""
    from gptlab.data.loader import eval_batches

    rank, world = (dist_.rank, dist_.world) if dist_ else (0, 1)
    batches = eval_batches(
        dataset, context_length, batch_size, offset=offset, n_batches=n_batches, rank=rank, world=world
    )
    if vocab_map is not None:
        batches = ((vocab_map.to_compact(x), vocab_map.to_compact(y)) for x, y in batches)
    total, count = loss_sum(model, batches, device, precision, dist_)
    if count == 0:
        raise GptlabError("evaluation: no tokens to evaluate (split too small for the context length)")
    return total / count
