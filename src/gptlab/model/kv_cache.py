"""A KV cache for generation: every layer's keys and values for a batch of left-padded rows, so each new token
attends to what was computed before instead of recomputing the whole context.

Rows of different lengths are left-padded to a common width; `valid` marks the real tokens. A token's position
is the number of real tokens before it in its row (so padding shifts nothing: learned positions and RoPE see
the same positions as the row alone would). A query attends to the real tokens at or before its own slot, and
to itself (so a padding query, whose output nothing reads, never has an empty softmax).

The cache never slides: `capacity` is at most the model's context_length. When a row would outgrow the
context, the caller starts a new cache over the last context_length tokens (see posttrain/generate.py): keys
and values depend on every token before them in their window, so dropping the oldest token changes them all.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of `n_layers` layers, up to `capacity` slots per row. `GPTModel.decode` fills it: `begin`
    announces the next tokens (giving their positions and the attention mask), each attention layer `store`s
    its keys and values, and `keep` drops finished rows."""

    def __init__(self, n_layers: int, capacity: int):
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.valid: torch.Tensor | None = None  # (B, length) bool: False marks left padding
        self.count: torch.Tensor | None = None  # (B,) real tokens per row
        self.start = self.length = 0  # slots [start, length) are the tokens being added
        self.pos: torch.Tensor | None = None  # (B, T) their positions
        self.mask: torch.Tensor | None = None  # (B, 1, T, length) True = may attend; None: every slot

    @property
    def full(self) -> bool:
        return self.length >= self.capacity

    def begin(self, valid: torch.Tensor) -> torch.Tensor:
        """Add T tokens per row (`valid`: (B, T) bool, False = padding); returns their positions (B, T)."""
        b, t = valid.shape
        if self.length + t > self.capacity:
            raise ValueError(f"KV cache: {self.length} + {t} tokens exceed its capacity {self.capacity}")
        before = self.count if self.count is not None else torch.zeros(b, dtype=torch.long, device=valid.device)
        self.pos = (before[:, None] + valid.cumsum(1) - 1).clamp(min=0)
        self.count = before + valid.sum(1)
        self.valid = valid if self.valid is None else torch.cat([self.valid, valid], 1)
        self.start, self.length = self.length, self.length + t
        if t == 1 and bool(self.valid.all()):
            self.mask = None
        else:
            q = torch.arange(self.start, self.length, device=valid.device)[:, None]
            k = torch.arange(self.length, device=valid.device)[None, :]
            self.mask = (((k <= q) & self.valid[:, None, :]) | (k == q))[:, None]
        return self.pos

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's keys and values (B, H, T, head_dim) for the tokens of `begin`; returns all so far."""
        if self.keys[layer] is None:
            shape = (*keys.shape[:2], self.capacity, keys.shape[3])
            self.keys[layer] = keys.new_empty(shape)
            self.values[layer] = values.new_empty(shape)
        k, v = self.keys[layer], self.values[layer]
        k[:, :, self.start : self.length] = keys
        v[:, :, self.start : self.length] = values
        return k[:, :, : self.length], v[:, :, : self.length]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices, in the order wanted), dropping the padding slots none of them uses."""
        self.valid, self.count = self.valid[rows], self.count[rows]
        first = int(self.valid.any(0).to(torch.int8).argmax())  # every row has a real token
        n = self.length - first
        for store in (self.keys, self.values):
            for i, buf in enumerate(store):
                if buf is not None:
                    kept = buf.new_empty((len(rows), *buf.shape[1:]))
                    kept[:, :, :n] = buf[rows, :, first : self.length]
                    store[i] = kept
        self.valid = self.valid[:, first:]
        self.start = self.length = n
