"""`gptlab plan`: what a config costs before you launch it — parameters, FLOPs, tokens, wall time and price at
an assumed MFU, memory per GPU and the gradient-accumulation steps for the global batch.

Memory model (per GPU, DDP, AdamW, mixed precision with fp32 master weights):
  weights 4 B + grads 4 B + Adam moments 8 B per parameter (FSDP divides these by the number of GPUs),
  activations ~34 * s * b * d bytes per layer with 16-bit activations (Korthikanti et al. 2022, table 2; flash
  attention does not store the 5*a*s^2*b attention matrix), twice that in fp32,
  and the logits: b * s * V * 10 B (16-bit logits, fp32 copy for the loss, its gradient).
A FLOP budget ("two days on an RTX 3090") converts to tokens with tokens = FLOPs / FLOPs-per-token.
"""

from __future__ import annotations

import math

from .config import RunConfig
from .flops import PEAK_FLOPS, flops_per_token, token_budget

GPU_MEMORY_GIB = {"A100": 40, "A100-80": 80, "H100": 80, "H200": 141, "RTX3090": 24, "RTX4090": 24, "L4": 24,
                  "A10G": 24}
PRICE_PER_GPU_HOUR = {"A100": 1.3, "A100-80": 1.8, "H100": 2.5, "H200": 3.5, "RTX3090": 0.3, "RTX4090": 0.5,
                      "L4": 0.6, "A10G": 1.0}  # rough on-demand cloud prices (USD), override with --price


def memory_bytes(cfg: RunConfig, micro_batch: int, gpus: int = 1, fsdp: bool = False) -> dict:
    m = cfg.model
    import torch

    from .model import GPTModel, count_params

    with torch.device("meta"):
        n = count_params(GPTModel(m))
    state = 16 * n / (gpus if fsdp else 1)
    s, b, d = m.context_length, micro_batch, m.emb_dim
    act_factor = 34 if cfg.train.precision in ("bf16", "fp16", "auto") else 68
    acts = act_factor * s * b * d * m.n_layers
    if cfg.train.activation_checkpointing:
        acts = 2 * s * b * d * m.n_layers + act_factor * s * b * d  # block inputs + one live block
    logits = 10 * b * s * m.vocab_size
    return {"params": n, "state": state, "activations": acts, "logits": logits, "total": state + acts + logits}


def plan(cfg: RunConfig, gpus: int = 1, gpu_type: str = "H100", mfu: float = 0.4, price: float | None = None,
         fsdp: bool = False) -> dict:
    key = gpu_type.upper().replace(" ", "")
    if key not in PEAK_FLOPS and key.split("-")[0] not in PEAK_FLOPS:
        from . import GptlabError

        raise GptlabError(f"--gpu-type: unknown '{gpu_type}'; choose from {', '.join(GPU_MEMORY_GIB)}")
    peak = PEAK_FLOPS.get(key, PEAK_FLOPS[key.split("-")[0]])
    t = cfg.train
    mem = memory_bytes(cfg, t.micro_batch_size, gpus, fsdp)
    n = mem["params"]
    tokens = token_budget(cfg, n)
    fpt = flops_per_token(cfg.model)
    total = fpt * tokens
    seconds = total / (peak * gpus * mfu)
    per_step_seqs = t.micro_batch_size * gpus
    accum = t.global_batch_size / per_step_seqs
    hourly = (price if price is not None else PRICE_PER_GPU_HOUR.get(key, 0.0)) * gpus
    gib = GPU_MEMORY_GIB.get(key)
    return {"params": n, "tokens": tokens, "flops_per_token": fpt, "total_flops": total, "gpus": gpus,
            "gpu_type": key, "mfu": mfu, "hours": seconds / 3600, "cost": hourly * seconds / 3600,
            "memory_gib": mem["total"] / 2**30, "memory_detail": {k: v / 2**30 for k, v in mem.items() if k != "params"},
            "gpu_memory_gib": gib, "fits": gib is None or mem["total"] / 2**30 < 0.92 * gib,
            "grad_accum": accum, "grad_accum_ok": accum >= 1 and float(accum).is_integer(),
            "steps": math.ceil(tokens / (t.global_batch_size * cfg.model.context_length))}


def format_plan(p: dict) -> str:
    md = p["memory_detail"]
    lines = [
        f"parameters        {p['params']:,}",
        f"tokens            {p['tokens']:,}  ({p['steps']:,} optimizer steps)",
        f"FLOPs/token       {p['flops_per_token']:.3e}   total {p['total_flops']:.3e}",
        f"wall time         {p['hours']:.2f} h on {p['gpus']}x {p['gpu_type']} at {p['mfu']:.0%} MFU",
        f"cost              ${p['cost']:,.0f} (on-demand estimate; --price to set USD per GPU-hour)",
        f"memory per GPU    {p['memory_gib']:.1f} GiB = state {md['state']:.1f} + activations {md['activations']:.1f} "
        f"+ logits {md['logits']:.1f}" + (f"  of {p['gpu_memory_gib']} GiB: {'fits' if p['fits'] else 'DOES NOT FIT'}"
                                          if p["gpu_memory_gib"] else ""),
        f"grad accumulation {p['grad_accum']:g} micro-steps per optimizer step"
        + ("" if p["grad_accum_ok"] else "  (not a whole number: change micro_batch_size or the GPU count)"),
    ]
    return "\n".join(lines)
