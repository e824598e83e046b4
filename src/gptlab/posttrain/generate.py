"""Sampling: temperature, top-k, EOS stop; the book's generate() with a KV-free loop (models here are small)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptlab.data.tokenizer import EOT_ID, decode, encode
from gptlab.model import GPTModel


@torch.no_grad()
def generate_ids(model: GPTModel, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, eos_id: int | None = EOT_ID, generator: torch.Generator | None = None
                 ) -> Iterator[int]:
    """Yield new token ids one by one (for streaming). idx: (1, T) prompt ids."""
    ctx = model.cfg.context_length
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -ctx:])[:, -1, :].float()
        if top_k:
            v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
        if temperature and temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        else:
            nxt = logits.argmax(dim=-1, keepdim=True)
        tok = int(nxt.item())
        if eos_id is not None and tok == eos_id:
            return
        yield tok
        idx = torch.cat([idx, nxt.to(idx.device)], dim=1)


def generate_text(model: GPTModel, prompt: str, max_new_tokens: int = 50, temperature: float = 1.0,
                  top_k: int | None = None, seed: int | None = None, vocab_map=None) -> str:
    """Continue `prompt`. With a corpus vocabulary (vocab.VocabMap) ids are mapped in and out."""
    device = next(model.parameters()).device
    idx = torch.tensor([encode(prompt) or [EOT_ID]], dtype=torch.long)
    eos = EOT_ID
    if vocab_map is not None:
        idx = vocab_map.to_compact(idx)
        eos = int(vocab_map.lut[EOT_ID])
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    out = list(generate_ids(model, idx.to(device), max_new_tokens, temperature, top_k, eos_id=eos, generator=gen))
    return decode(vocab_map.to_gpt2(out) if vocab_map is not None else out)
