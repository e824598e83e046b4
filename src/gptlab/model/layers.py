"""Building blocks the interventions swap in: RMSNorm (computed in fp32), the norm factory and rotary position
embeddings. The book's own blocks (MultiHeadAttention, FeedForward, TransformerBlock) live in gpt.py."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig


class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm computed in fp32 and returned in the input's dtype. Under bf16/fp16 autocast the input
    arrives in 16-bit while the weight stays fp32; torch then falls back from its fused kernel (with a warning)
    and normalises in low precision. LayerNorm gets fp32 from autocast itself; this gives RMSNorm the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight, self.eps).to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, eps=1e-5, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021, RoFormer) applied to queries and keys."""

    def __init__(self, head_dim: int, context_length: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        t = torch.arange(context_length, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (T, hd/2)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:  # x: (B, H, T, hd)
        """Rotate by positions 0..T-1, or by `pos` (B, T) per row (generation with a KV cache)."""
        if pos is None:
            T = x.shape[-2]
            cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        else:
            cos, sin = self.cos[pos][:, None].to(x.dtype), self.sin[pos][:, None].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)
