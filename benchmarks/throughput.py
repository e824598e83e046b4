"""Training throughput (tokens/s, and MFU on a GPU) of gptlab configs, measured on this machine.

    python benchmarks/throughput.py                              # tiny-cpu and gpt2-small on CPU
    python benchmarks/throughput.py --configs gpt2-small --batch 16 --compile   # on a GPU

Each config: the model and AdamW exactly as `gptlab train` builds them (corpus vocabulary where the config
asks for it), `--warmup` untimed steps, then `--steps` timed optimizer steps of one micro-batch each.
Not a test: numbers depend on the machine. Record results in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from gptlab.config import load_config
from gptlab.data.vocab import resolve_corpus_vocab
from gptlab.model import GPTModel, count_params
from gptlab.train import (
    build_optimizers,
    forward_backward,
    resolve_device,
    resolve_precision,
)
from gptlab.train.flops import device_peak_flops, flops_per_token, mfu

CONFIGS = {"tiny-cpu": "configs/tiny-cpu.toml", "gpt2-small": "configs/gpt2-small-baseline.toml"}


def bench(name: str, batch: int | None, steps: int, warmup: int, compile_: bool, device: str) -> dict:
    cfg = load_config(CONFIGS[name], [f"train.device={device!r}".replace("'", '"')])
    resolve_corpus_vocab(cfg)
    dev = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    B = batch or (cfg.train.micro_batch_size if dev.type == "cuda" or name == "tiny-cpu" else 1)
    T = cfg.model.context_length
    torch.manual_seed(0)
    model = GPTModel(cfg.model).to(dev)
    opts = build_optimizers(model, cfg, dev)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randint(0, cfg.model.vocab_size, (B, T), device=dev)

    def step():
        forward_backward(step_model, x, x, precision, dev)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = B * T * steps / dt
    out = {
        "config": name,
        "device": str(dev),
        "precision": precision,
        "params": count_params(model),
        "batch": B,
        "context": T,
        "tokens_per_s": tps,
        "flops_per_token": flops_per_token(cfg.model),
        "achieved_tflops": flops_per_token(cfg.model) * tps / 1e12,
    }
    u = mfu(cfg.model, tps, device_peak_flops(dev))
    if u is not None:
        out["mfu"] = u
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, help="micro-batch (default: the config's; 1 for gpt2-small on CPU)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    for name in a.configs:
        r = bench(name, a.batch, a.steps, a.warmup, a.compile, a.device)
        extra = f"  MFU {r['mfu']:.1%}  peak mem {r['peak_mem_gib']:.1f} GiB" if "mfu" in r else ""
        print(
            f"{r['config']:<11} {r['device']:<7} {r['precision']:<5} params {r['params']:>12,}  "
            f"batch {r['batch']:>3} x {r['context']:<5} {r['tokens_per_s']:>10,.0f} tokens/s  "
            f"{r['achieved_tflops']:.3f} TFLOP/s{extra}"
        )


if __name__ == "__main__":
    main()
