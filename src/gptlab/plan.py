"""`gptlab plan`: what a config costs before you launch it — parameters, FLOPs, tokens, wall time and price at
an assumed MFU, memory per GPU and the gradient-accumulation steps for the global batch.

Memory model (`memory_bytes`, per GPU, DDP, AdamW, fp32 master weights; the peak at the start of backward):
  state        weights 4 B + grads 4 B + Adam moments 8 B per parameter (FSDP divides these by the number of GPUs).
               Exact with gradient accumulation (the grads of earlier micro-steps are live); with one micro-step
               per optimizer step `zero_grad(set_to_none=True)` has freed them, so it over-counts by 4 B/param.
  casts        16-bit autocast only: the bf16/fp16 copies of the matmul weights that autocast makes and the graph
               keeps for backward, 2 B per matmul parameter (not sharded by FSDP).
  activations  per layer and token, with e = 2 B (16-bit autocast) or 4 B (fp32), the residual stream r = 4 B
               (fp32 under autocast too) and m = dropout-mask bytes (0 without dropout, 1 on CUDA, e on CPU,
               where dropout multiplies by a noise tensor of the input's dtype):
                 (2r + 14e + 2m) * d      the LayerNorm inputs, the q/k/v/out-proj/MLP inputs, q, k, v, the
                                          4d GELU input and output, two dropout masks; + e*d for the attention
                                          output a fused kernel (flash / efficient SDPA) also saves.
               With 16-bit and m = 1 this is Korthikanti et al. (2022, table 2)'s 34*s*b*d plus their
               un-modelled fp32 LayerNorm inputs and saved attention output. Fused SDPA stores no s x s
               matrix; the math path (CPU with dropout, or attn_impl="explicit") adds (2e + m) * a * s^2 * b
               per layer (softmax output, dropout output and mask); on CPU the math SDPA computes in fp32 even
               under autocast, so there q, k, v take 4 B each and the s x s term is 12 B. Outside the layers:
               (r + e + m) * s * b * d (embedding dropout mask, final-norm input, out-head input). Activation
               checkpointing keeps the r-byte block inputs plus one block's activations.
  logits       b * s * V * 12 B: the log-softmax output autograd saves (4 B) and, at the peak in backward, its
               gradient and the logits' fp32 gradient (4 B each). The training step (train.forward_backward)
               drops the logits and their fp32 copy before backward; holding on to them would add 4 B (fp32)
               or 6 B (16-bit).
The CPU fp32 and CPU bf16-autocast terms were checked against measured peaks with benchmarks/memory.py (see
benchmarks/results/memory_cpu.txt); the CUDA terms (1-byte masks, fused attention) follow from the same saved
tensors but have not been measured on a GPU yet (`python benchmarks/memory.py --device cuda`). SwiGLU MLPs are
counted as the 4x GELU MLP.
A FLOP budget ("two days on an RTX 3090") converts to tokens with tokens = FLOPs / FLOPs-per-token.
"""

from __future__ import annotations

import math

from gptlab.config import RunConfig
from gptlab.train.flops import flops_per_token, peak_of, token_budget

GPU_MEMORY_GIB = {
    "A100": 40,
    "A100-80": 80,
    "H100": 80,
    "H200": 141,
    "RTX3090": 24,
    "RTX4090": 24,
    "L4": 24,
    "A10G": 24,
}
PRICE_PER_GPU_HOUR = {
    "A100": 1.3,
    "A100-80": 1.8,
    "H100": 2.5,
    "H200": 3.5,
    "RTX3090": 0.3,
    "RTX4090": 0.5,
    "L4": 0.6,
    "A10G": 1.0,
}  # rough on-demand cloud prices (USD), override with --price


def memory_bytes(cfg: RunConfig, micro_batch: int, gpus: int = 1, fsdp: bool = False, device: str = "cuda") -> dict:
    """Peak training memory per device in bytes, by term (see the module docstring); `device` is "cuda" (what
    `gptlab plan` assumes) or "cpu" (CPU dropout and attention kernels; precision "auto" means fp32 there)."""
    m = cfg.model
    import torch

    from gptlab.model import GPTModel, count_params
    from gptlab.train.flops import matmul_params

    with torch.device("meta"):
        n = count_params(GPTModel(m))
    cpu = device != "cuda"
    precision = cfg.train.precision
    if precision == "auto":
        precision = "fp32" if cpu else "bf16"
    half = precision in ("bf16", "fp16")
    e, r = (2 if half else 4), 4
    mask = 0 if m.drop_rate <= 0 else (e if cpu else 1)
    fused_sdpa = m.attn_impl == "sdpa" and not (cpu and m.drop_rate > 0)
    s, b, d, a, L = m.context_length, micro_batch, m.emb_dim, m.n_heads, m.n_layers
    state = 16 * n / (gpus if fsdp else 1)
    casts = 2 * matmul_params(m) if half else 0
    cpu_math = cpu and m.attn_impl == "sdpa" and not fused_sdpa  # CPU math SDPA computes in fp32, even under autocast
    qkv = 3 * (4 if cpu_math else e)
    block = (2 * r + 11 * e + qkv + 2 * mask + (e if fused_sdpa else 0)) * s * b * d
    if not fused_sdpa:
        block += (12 if cpu_math else 2 * e + mask) * a * s * s * b
    outside = (r + e + mask) * s * b * d
    acts = block * L + outside
    if cfg.train.activation_checkpointing:
        acts = r * s * b * d * L + block + outside  # block inputs + one live block
    logits = 12 * b * s * m.vocab_size
    total = state + casts + acts + logits
    return {"params": n, "state": state, "casts": casts, "activations": acts, "logits": logits, "total": total}


def plan(
    cfg: RunConfig,
    gpus: int = 1,
    gpu_type: str = "H100",
    mfu: float = 0.4,
    price: float | None = None,
    fsdp: bool = False,
) -> dict:
    key = gpu_type.upper().replace(" ", "")
    peak = peak_of(gpu_type)
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
    return {
        "params": n,
        "tokens": tokens,
        "flops_per_token": fpt,
        "total_flops": total,
        "gpus": gpus,
        "gpu_type": key,
        "mfu": mfu,
        "hours": seconds / 3600,
        "cost": hourly * seconds / 3600,
        "memory_gib": mem["total"] / 2**30,
        "memory_detail": {k: v / 2**30 for k, v in mem.items() if k != "params"},
        "gpu_memory_gib": gib,
        "fits": gib is None or mem["total"] / 2**30 < 0.92 * gib,
        "grad_accum": accum,
        "grad_accum_ok": accum >= 1 and float(accum).is_integer(),
        "steps": math.ceil(tokens / (t.global_batch_size * cfg.model.context_length)),
    }


def format_plan(p: dict) -> str:
    md = p["memory_detail"]
    lines = [
        f"parameters        {p['params']:,}",
        f"tokens            {p['tokens']:,}  ({p['steps']:,} optimizer steps)",
        f"FLOPs/token       {p['flops_per_token']:.3e}   total {p['total_flops']:.3e}",
        f"wall time         {p['hours']:.2f} h on {p['gpus']}x {p['gpu_type']} at {p['mfu']:.0%} MFU",
        f"cost              ${p['cost']:,.0f} (on-demand estimate; --price to set USD per GPU-hour)",
        f"memory per GPU    {p['memory_gib']:.1f} GiB = state {md['state']:.1f} + 16-bit weight copies "
        f"{md['casts']:.1f} + activations {md['activations']:.1f} + logits {md['logits']:.1f}"
        + (f"  of {p['gpu_memory_gib']} GiB: {'fits' if p['fits'] else 'DOES NOT FIT'}" if p["gpu_memory_gib"] else ""),
        f"grad accumulation {p['grad_accum']:g} micro-steps per optimizer step"
        + (
            ""
            if p["grad_accum_ok"]
            else "  (under one: more GPUs x micro_batch_size than global_batch_size; "
            "fewer GPUs or a larger global_batch_size)"
            if p["grad_accum"] < 1
            else "  (not a whole number: change micro_batch_size or the GPU count)"
        ),
    ]
    return "\n".join(lines)
