"""FLOPs per token, MFU and token budgets.

Training FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6 * N_matmul + 12 * L * d * T,
where N_matmul counts the weights that take part in matrix multiplies (every Linear including out_head,
not the embedding lookups) and the second term is attention's QK^T and AV over a context of T.

MFU = FLOPs/token x tokens/s / peak FLOP/s. Peaks: PEAK_FLOPS holds GPU datasheet numbers (dense bf16 tensor
cores), looked up by device name (`gpu_peak`, `device_peak_flops`). A CPU has no such table entry: its peak is
"CPU measured", `measure_cpu_peak()`, the best rate of a large matmul timed on this machine with torch's threads
(fp32 by default), so CPU MFU means "fraction of what this CPU's BLAS achieves on one big GEMM right now"; on a
shared machine it falls with the other processes' load.
"""

from __future__ import annotations

import math
import re

from gptlab import GptlabError
from gptlab.config import ModelConfig

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets (without sparsity), by the names
# `gptlab plan --gpu-type` takes.
PEAK_FLOPS: dict[str, float] = {
    "A100": 312e12,
    "H100": 989e12,  # SXM
    "H100-PCIE": 756e12,
    "H100-NVL": 835e12,
    "H200": 989e12,  # SXM (and GH200)
    "H200-NVL": 835e12,
    "H800": 989e12,  # SXM
    "H800-PCIE": 756e12,
    "B200": 2250e12,
    "RTX3090": 71e12,  # GA102 dense fp16/bf16 with fp32 accumulate
    "RTX4090": 165e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 125e12,
}

# torch.cuda.get_device_name() -> PEAK_FLOPS key; the first pattern that matches wins, so form factors come before
# the plain name ("NVIDIA H100 PCIe" is not an SXM part) and whole words are matched ("L40S" is not an "L4").
_GPU_NAMES: list[tuple[str, str]] = [
    (r"\bH100\b.*\bPCIE\b", "H100-PCIE"),
    (r"\bH100\b.*\bNVL\b", "H100-NVL"),
    (r"\bH100\b", "H100"),
    (r"\bG?H200\b.*\bNVL\b", "H200-NVL"),
    (r"\bG?H200\b", "H200"),
    (r"\bH800\b.*\bPCIE\b", "H800-PCIE"),
    (r"\bH800\b", "H800"),
    (r"\bB200\b", "B200"),
    (r"\bA100\b", "A100"),
    (r"\bA10G\b", "A10G"),
    (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"\bRTX\s*4090\b", "RTX4090"),
    (r"\bRTX\s*3090\b", "RTX3090"),
]


def matmul_params(cfg: ModelConfig) -> int:
    d, L, V = cfg.emb_dim, cfg.n_layers, cfg.vocab_size
    attn = 4 * d * d
    if cfg.mlp == "swiglu":
        hidden = int(8 * d / 3 + 7) // 8 * 8
        mlp = 3 * d * hidden
    else:
        mlp = 8 * d * d
    return L * (attn + mlp) + d * V  # + out_head


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training (forward + backward) FLOPs per token."""
    T = seq_len or cfg.context_length
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.emb_dim * T


def tokens_for_flops(cfg: ModelConfig, flops: float) -> int:
    return int(flops // flops_per_token(cfg))


def token_budget(cfg, n_params: int) -> int:
    """Training tokens of a RunConfig: train.tokens if set, else train.flops / FLOPs-per-token if set,
    else train.tokens_per_param x parameters (the seed's ~20 tokens per parameter)."""
    t = cfg.train
    if t.tokens:
        return t.tokens
    if t.flops:
        return tokens_for_flops(cfg.model, t.flops)
    return int(t.tokens_per_param * n_params)


def planned_steps(cfg, n_params: int) -> int:
    """Optimizer steps a RunConfig trains: its token budget in whole steps (rounded up), at least one."""
    step_tokens = cfg.train.global_batch_size * cfg.model.context_length
    return max(1, math.ceil(token_budget(cfg, n_params) / step_tokens))


def gpu_key(name: str) -> str | None:
    """The PEAK_FLOPS key of a CUDA device name (e.g. "NVIDIA H100 PCIe" -> "H100-PCIE"), or None if unknown."""
    upper = name.upper().replace("-", " ").replace("_", " ")
    return next((key for pattern, key in _GPU_NAMES if re.search(pattern, upper)), None)


def peak_of(gpu_type: str) -> float:
    """The peak of a `--gpu-type`: a PEAK_FLOPS key, a memory variant such as "A100-80", or a device name."""
    key = gpu_type.upper().replace(" ", "")
    found = key if key in PEAK_FLOPS else gpu_key(gpu_type)
    if found is None:
        raise GptlabError(f"--gpu-type: unknown '{gpu_type}'; choose from {', '.join(PEAK_FLOPS)}")
    return PEAK_FLOPS[found]


def gpu_peak(name: str) -> float | None:
    key = gpu_key(name)
    return PEAK_FLOPS[key] if key else None


def device_peak_flops(device) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device by name, or None (CPU: see measure_cpu_peak)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    return gpu_peak(torch.cuda.get_device_name(device))


def measure_cpu_peak(n: int = 2048, dtype=None, repeats: int = 5) -> float:
    """ "CPU measured" peak FLOP/s: the best of `repeats` timed n x n @ n x n matmuls (2 n^3 FLOPs each) in `dtype`
    (default torch.float32) on the CPU, after one untimed warm-up, with torch's current thread count. Takes about
    a second for n = 2048 on two cores. Not a datasheet number: what the BLAS achieves here, now."""
    import time

    import torch

    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def mfu(cfg: ModelConfig, tokens_per_s: float, peak: float | None, seq_len: int | None = None) -> float | None:
    if not peak:
        return None
    return flops_per_token(cfg, seq_len) * tokens_per_s / peak
