"""Training throughput of gptlab's GPTModel vs transformers' GPT2LMHeadModel with the same configuration.

Same dims, context, vocabulary and dropout (0.1), both heads untied (HF: tie_word_embeddings=False, so the
parameter counts match up to GPT-2's always-present qkv biases), the same random batch, the same loss
(F.cross_entropy on the logits, computed outside both models), AdamW(lr 4e-4, wd 0.1), fp32 on CPU or bf16
autocast on CUDA. Ours uses F.scaled_dot_product_attention (its default); HF uses its default attention
implementation (printed). HF is called with use_cache=False (no KV cache is built while training).

Both models are built side by side and warmed up (`warmup` steps each); then `repeats` rounds of `steps` timed
steps alternate ours/HF step by step (the order flips every step, so a busy patch of a shared CPU hits both);
each round gives tokens/s from its median step time, and the median over rounds is reported.

    python benchmarks/train_step.py                                  # nano and gpt2-small
    python benchmarks/train_step.py --configs nano --steps 30 --batch 16
    python benchmarks/train_step.py --configs gpt2-small --profile   # torch.profiler top ops for one step each
    python benchmarks/train_step.py --configs nano,tiny --as-trained # each side's own training step
    python benchmarks/train_step.py --configs nano,tiny --as-trained --compile   # both compiled
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from gptlab.config import PRESETS, ModelConfig
from gptlab.model import GPTModel, count_params

# per-config defaults: (micro-batch, timed steps, warm-up steps) on CPU
CPU_DEFAULTS = {"nano": (8, 10, 3), "tiny": (8, 6, 2), "mini": (4, 3, 1), "gpt2-small": (1, 2, 1)}
CUDA_DEFAULTS = {"nano": (64, 50, 10), "tiny": (64, 50, 10), "mini": (32, 30, 5), "gpt2-small": (16, 20, 5)}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def build(kind: str, name: str, device: torch.device, drop: float, seq_len: int, fused: bool | None = None):
    """The model and its AdamW; fused by default on CUDA only (--as-trained: on both devices)."""
    p = PRESETS[name]
    if kind == "ours":
        model = GPTModel(ModelConfig(**p, drop_rate=drop))
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        conf = GPT2Config(
            vocab_size=p["vocab_size"],
            n_positions=p["context_length"],
            n_embd=p["emb_dim"],
            n_layer=p["n_layers"],
            n_head=p["n_heads"],
            resid_pdrop=drop,
            embd_pdrop=drop,
            attn_pdrop=drop,
            tie_word_embeddings=False,
        )
        model = GPT2LMHeadModel(conf)
    model.to(device).train()
    fused = device.type == "cuda" if fused is None else fused
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, fused=fused)
    return model, opt


def make_step(kind: str, model, opt, x, y, device, as_trained: bool = False):
    """One training step. Default: the same loss code (F.cross_entropy on the logits) around both models.
    as_trained: each side's own step, ours gptlab train's micro-step (train.forward_backward), HF's what its
    docs and Trainer do (labels=, the loss and the shift inside the model)."""
    ctx = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast(device_type="cpu", enabled=False)
    )
    precision = "bf16" if device.type == "cuda" else "fp32"

    def loss_backward():
        if as_trained and kind == "ours":
            from gptlab.train import forward_backward

            return forward_backward(model, x, y, precision, device)
        with ctx:
            if as_trained:
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            else:
                logits = model(x) if kind == "ours" else model(input_ids=x, use_cache=False).logits
        if not as_trained:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        return loss

    def step():
        loss = loss_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_config(name, device, batch, seq_len, steps, warmup, repeats, drop, as_trained=False, compile_=False):
    """Both models live side by side; after `warmup` steps each, `repeats` rounds of `steps` timed steps,
    alternating ours/HF step by step (the order flips every step), so a slow patch of a shared CPU hits both.
    Returns {kind: [tokens/s of each round (from its median step time)]} and model info."""
    V = PRESETS[name]["vocab_size"]
    g = torch.Generator().manual_seed(1234)
    x = torch.randint(0, V, (batch, seq_len), generator=g).to(device)
    y = torch.randint(0, V, (batch, seq_len), generator=g).to(device)
    kinds = ("ours", "hf")
    fns, info = {}, {}
    for kind in kinds:
        torch.manual_seed(0)
        # --as-trained: fused AdamW on both (gptlab's build_optimizers; Trainer's default optim for torch >= 2.8)
        model, opt = build(kind, name, device, drop, seq_len, fused=True if as_trained else None)
        if compile_:  # both compiled the same way; with --as-trained the loss is inside both models' forward
            model = torch.compile(model)
        fns[kind] = make_step(kind, model, opt, x, y, device, as_trained)
        info[kind] = {"params": count_params(model)}
        if kind == "hf":
            info[kind]["attn"] = model.config._attn_implementation
    for kind in kinds:
        for _ in range(warmup):
            fns[kind]()
    sync(device)
    tps = {k: [] for k in kinds}
    pair_ratios = []  # HF step time / our step time for adjacent steps: the most contention-robust number
    i = 0
    for r in range(repeats):
        times = {k: [] for k in kinds}
        for _ in range(steps):
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                sync(device)
                t0 = time.perf_counter()
                fns[kind]()
                sync(device)
                times[kind].append(time.perf_counter() - t0)
            pair_ratios.append(times["hf"][-1] / times["ours"][-1])
            i += 1
        for kind in kinds:
            tps[kind].append(batch * seq_len / statistics.median(times[kind]))
            print(
                f"  round {r + 1} {kind:<4} {tps[kind][-1]:>12,.0f} tokens/s  (median of {steps} step(s): "
                f"{statistics.median(times[kind]):.3f} s/step)",
                flush=True,
            )
    info["pair_ratios"] = pair_ratios
    del fns
    gc.collect()
    return tps, info


def profile_one(kind, name, device, batch, seq_len, drop, rows=15):
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model, opt = build(kind, name, device, drop, seq_len)
    V = PRESETS[name]["vocab_size"]
    x = torch.randint(0, V, (batch, seq_len)).to(device)
    y = torch.randint(0, V, (batch, seq_len)).to(device)
    step = make_step(kind, model, opt, x, y, device)
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n--- profile: {'gptlab GPTModel' if kind == 'ours' else 'HF GPT2LMHeadModel'} ({name}, one step) ---")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48))
    del model, opt
    gc.collect()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="nano,gpt2-small", help="comma-separated presets")
    ap.add_argument("--steps", type=int, help="timed steps per round (default per config)")
    ap.add_argument("--warmup", type=int, help="untimed warm-up steps per model (default per config)")
    ap.add_argument("--batch", type=int, help="micro-batch size (default per config; gpt2-small: 1 on CPU)")
    ap.add_argument("--seq-len", type=int, help="sequence length (default: the preset's context length)")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per model (median reported)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler top ops for one step each")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (warm-up includes compiling)")
    ap.add_argument(
        "--as-trained",
        action="store_true",
        help="each side's own training step (ours: gptlab's forward_backward; HF: labels= loss) with "
        "fused AdamW on both, instead of the same loss and optimizer code around both models",
    )
    a = ap.parse_args(argv)

    import transformers

    device = torch.device(
        "cuda" if (a.device == "auto" and torch.cuda.is_available()) else ("cpu" if a.device == "auto" else a.device)
    )
    if a.threads:
        torch.set_num_threads(a.threads)
    defaults = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    print(f"# gptlab train-step benchmark  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# torch {torch.__version__}  transformers {transformers.__version__}  python {platform.python_version()}")
    print(
        f"# device {device}"
        + (
            f" ({torch.cuda.get_device_name(device)}, bf16 autocast)"
            if device.type == "cuda"
            else f" ({cpu_name()}, {torch.get_num_threads()} threads, fp32)"
        )
    )
    print(f"# cmd: {' '.join(sys.argv)}" + ("  (both models torch.compile'd)" if a.compile else ""))
    print(f"# load average at start (other processes share this machine): {os.getloadavg()[0]:.2f}")
    print("# ours: GPTModel, F.scaled_dot_product_attention, untied head, no qkv bias (the book's model)")
    print("# HF:   GPT2LMHeadModel, tie_word_embeddings=False, default attention implementation, use_cache=False")
    if a.as_trained:
        print(
            f"# dropout {a.dropout} in both; --as-trained: ours gptlab.train.forward_backward, HF model(input_ids, "
            f"labels=...).loss; fused AdamW lr 4e-4 wd 0.1 on both"
        )
    else:
        print(f"# dropout {a.dropout} in both; AdamW lr 4e-4 wd 0.1; loss F.cross_entropy outside both models")
    summary = []
    for name in [c.strip() for c in a.configs.split(",") if c.strip()]:
        if name not in PRESETS:
            ap.error(f"--configs: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        b0, s0, w0 = defaults.get(name, (4, 5, 1))
        batch, steps, warmup = a.batch or b0, a.steps or s0, a.warmup if a.warmup is not None else w0
        T = a.seq_len or PRESETS[name]["context_length"]
        print(
            f"\n## {name}: batch {batch} x seq {T} = {batch * T} tokens/step, {warmup} warm-up step(s) each, "
            f"then {a.repeats} round(s) of {steps} timed step(s) each, ours/HF alternating step by step"
        )
        res, info = bench_config(name, device, batch, T, steps, warmup, a.repeats, a.dropout, a.as_trained, a.compile)
        ours, hf = statistics.median(res["ours"]), statistics.median(res["hf"])
        print(
            f"  params: ours {info['ours']['params']:,}  HF {info['hf']['params']:,} "
            f"(HF attention implementation: {info['hf']['attn']})"
        )
        pr = info["pair_ratios"]
        print(f"  median tokens/s: ours {ours:,.0f}  HF {hf:,.0f}  ratio ours/HF {ours / hf:.3f}")
        print(
            f"  per adjacent step pair, HF time / our time: median {statistics.median(pr):.3f} "
            f"(min {min(pr):.3f}, max {max(pr):.3f}, {len(pr)} pairs)"
        )
        summary.append((name, ours, hf, statistics.median(pr)))
        if a.profile:
            profile_one("ours", name, device, batch, T, a.dropout)
            profile_one("hf", name, device, batch, T, a.dropout)
    print("\n| config | ours tokens/s | HF tokens/s | ours/HF (round medians) | ours/HF (median step pair) |")
    print("|---|---:|---:|---:|---:|")
    for name, ours, hf, pr in summary:
        print(f"| {name} | {ours:,.0f} | {hf:,.0f} | {ours / hf:.3f} | {pr:.3f} |")
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
