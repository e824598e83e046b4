"""Optimizers for pretraining and fine-tuning alike: AdamW (fused kernels on CPU and CUDA) with optional decay on
matrices only, plus Muon for the hidden matrices when asked. Every group remembers its `base_lr` for the schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab import GptlabError
from gptlab.config import RunConfig

EMBEDDINGS = {"tok_emb.weight", "pos_emb.weight"}


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)  # torch's AdamW defaults (fine-tuning uses them)
    eps: float = 1e-8
    decay_matrices_only: bool = False  # False: the book / seed, weight decay on every parameter
    muon_lr: float | None = None  # None: AdamW only; else Muon at this lr on the blocks' 2-D weights

    @classmethod
    def of(cls, cfg: RunConfig) -> "OptimSettings":
        t = cfg.train
        return cls(lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2), eps=t.eps,
                   decay_matrices_only=t.decay_matrices_only, muon_lr=t.muon_lr if t.optimizer == "muon" else None)


def make_optimizers(model: torch.nn.Module, s: OptimSettings, device: torch.device) -> list[torch.optim.Optimizer]:
    named = list(model.named_parameters())  # shared (tied) parameters appear once

    def decays(name: str, p: torch.Tensor) -> bool:
        return not s.decay_matrices_only or (p.dim() >= 2 and name not in EMBEDDINGS)

    muon_params, adam_named = [], named
    if s.muon_lr is not None:
        muon_params = [p for n, p in named if p.dim() == 2 and n.startswith("trf_blocks.")]
        ids = {id(p) for p in muon_params}
        adam_named = [(n, p) for n, p in named if id(p) not in ids]
    groups = [
        {"params": [p for n, p in adam_named if decays(n, p)], "weight_decay": s.weight_decay},
        {"params": [p for n, p in adam_named if not decays(n, p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    fused = device.type in ("cuda", "cpu")  # fused AdamW kernels exist for both (CPU: ~7x faster step)
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, eps=s.eps, fused=fused)]
    if muon_params:
        if not hasattr(torch.optim, "Muon"):
            raise GptlabError(f"train.optimizer: muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                              f"{torch.__version__}")
        opts.append(_muon_class()(muon_params, lr=s.muon_lr, weight_decay=s.weight_decay,
                                  adjust_lr_fn="match_rms_adamw"))
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def _muon_class() -> type:
    """torch.optim.Muon in one process; under a process group of several ranks (DDP: replicated gradients) the
    variant that splits the Newton-Schulz iterations over the ranks (muon.py)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from gptlab.train.muon import ShardedNewtonSchulzMuon

        return ShardedNewtonSchulzMuon
    return torch.optim.Muon


def build_optimizers(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """The optimizers a pretraining config asks for."""
    return make_optimizers(model, OptimSettings.of(cfg), device)
