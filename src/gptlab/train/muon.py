"""Muon under DDP without repeating the Newton-Schulz iterations on every rank.

torch.optim.Muon orthogonalises every hidden matrix's update on every rank, although DDP has made the gradients,
and so the momentum buffers, identical everywhere. `ShardedNewtonSchulzMuon` keeps torch's state and arithmetic
(the same momentum buffers, replicated, so checkpoints are unchanged), but rank i % world alone runs the
Newton-Schulz iterations of the i-th matrix and broadcasts the bf16 result, which every rank then applies as torch's
Muon does. With W ranks each does ~1/W of the iterations (modded-nanogpt splits them the same way). One process
uses torch.optim.Muon itself."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.optim import _muon


def owner(index: int, world: int) -> int:
    """The rank that orthogonalises the index-th matrix of a group."""
    return index % world


class ShardedNewtonSchulzMuon(torch.optim.Muon):
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = dist.get_rank(), dist.get_world_size()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            updates, pending = [], []
            for i, (grad, buf) in enumerate(zip(grads, bufs, strict=True)):
                buf.lerp_(grad, 1 - group["momentum"])  # as torch's Muon, on every rank (replicated state)
                update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                src = owner(i, world)
                if src == rank:
                    out = _muon._zeropower_via_newtonschulz(
                        update, group["ns_coefficients"], group["ns_steps"], group["eps"]
                    ).contiguous()
                else:
                    out = torch.empty(update.shape, dtype=torch.bfloat16, device=update.device)
                pending.append(dist.broadcast(out, src=src, async_op=True))
                updates.append(out)
            for work in pending:
                work.wait()
            lr, wd = _muon._to_scalar(group["lr"]), group["weight_decay"]
            for param, update in zip(params, updates, strict=True):
                param.mul_(1 - lr * wd)
                param.add_(update, alpha=-_muon._adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss
