"""Optimizers for pretraining and fine-tuning alike: AdamW (fused kernels on CPU and CUDA) with optional decay on
matrices only, plus Muon for the hidden matrices when asked. Every group remembers its `base_lr` for the schedule.

Under muP (a GPTModel with cfg.mup) the hidden matrices get their own AdamW groups at lr / m and weight decay x m
(m = the width multiplier), so that lr x decay, torch AdamW's decoupled shrink per step, stays as at the base width:
the mup package's MuAdamW does the same (Yang et al. 2022, table 3). Embeddings, the out_head, biases and norm gains
keep the lr."""

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
    def of(cls, cfg: RunConfig) -> OptimSettings:
        t = cfg.train
        return cls(
            lr=t.lr,
            weight_decay=t.weight_decay,
            betas=(t.beta1, t.beta2),
            eps=t.eps,
            decay_matrices_only=t.decay_matrices_only,
            muon_lr=t.muon_lr if t.optimizer == "muon" else None,
        )


def make_optimizers(model: torch.nn.Module, s: OptimSettings, device: torch.device) -> list[torch.optim.Optimizer]:
    named = list(model.named_parameters())  # shared (tied) parameters appear once

    def decays(name: str, p: torch.Tensor) -> bool:
        return not s.decay_matrices_only or (p.dim() >= 2 and name not in EMBEDDINGS)

    muon_params, adam_named = [], named
    if s.muon_lr is not None:
        muon_params = [p for n, p in named if p.dim() == 2 and n.startswith("trf_blocks.")]
        ids = {id(p) for p in muon_params}
        adam_named = [(n, p) for n, p in named if id(p) not in ids]
    hidden, m = _mup_hidden(model)
    full = [(n, p) for n, p in adam_named if id(p) not in hidden]
    groups = [
        {"params": [p for n, p in full if decays(n, p)], "weight_decay": s.weight_decay},
        {"params": [p for n, p in full if not decays(n, p)], "weight_decay": 0.0},
    ]
    if hidden:  # after the full-lr groups: param_groups[0] (the lr logged) stays at the base lr
        scaled = [(n, p) for n, p in adam_named if id(p) in hidden]
        groups += [
            {"params": [p for n, p in scaled if decays(n, p)], "weight_decay": s.weight_decay * m, "lr": s.lr / m},
            {"params": [p for n, p in scaled if not decays(n, p)], "weight_decay": 0.0, "lr": s.lr / m},
        ]
    groups = [g for g in groups if g["params"]]
    fused = device.type in ("cuda", "cpu")  # fused AdamW kernels exist for both (CPU: ~7x faster step)
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, eps=s.eps, fused=fused)]
    if muon_params:
        if not hasattr(torch.optim, "Muon"):
            raise GptlabError(
                f"train.optimizer: muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}"
            )
        opts.append(
            _muon_class()(muon_params, lr=s.muon_lr, weight_decay=s.weight_decay, adjust_lr_fn="match_rms_adamw")
        )
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def _mup_hidden(model: torch.nn.Module) -> tuple[set[int], float]:
    """(ids of the hidden matrices whose lr muP scales, m): empty unless the model is a GPTModel under muP with
    m != 1 (at the base width the groups are the standard ones)."""
    cfg = getattr(model, "cfg", None)
    if not getattr(cfg, "mup", False) or cfg.mup_width_mult() == 1.0:
        return set(), 1.0
    return {id(p) for p in model.mup_hidden_params()}, cfg.mup_width_mult()


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
