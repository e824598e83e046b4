"""Model FLOPs utilisation of a gptlab training step at the largest micro-batch that fits.

Target (issue "Scale and speed"): >= 45% MFU on one H100 for gpt2-small at context 1024 with torch.compile, bf16
autocast and fused AdamW (the defaults on CUDA here).

What it does, on one device:
  1. builds the model and optimizer exactly as `gptlab train` does (GPTModel, build_optimizers = fused AdamW on
     CUDA and CPU) from --preset (default gpt2-small) or --config, at the model's context length;
  2. finds the largest micro-batch that fits, unless --micro-batch is given: full training steps (forward,
     backward, clip_grad_norm_, AdamW step) at 1, 2, 4, ... until one runs out of memory (torch.OutOfMemoryError
     on CUDA; on CPU the allocator's "can't allocate memory" error under an address-space limit of
     --cpu-mem-limit-gib, so the search cannot take the machine's RAM), then a binary search between the last
     size that fit and the first that did not. The search runs eager (--search-compiled to search the compiled
     model, at the cost of recompiles); the compiled step is then run at that size and the size halved while it
     still runs out of memory;
  3. times --steps training steps after --warmup untimed ones (compilation happens there), synchronising the
     device around the timed region, and prints tokens/s and MFU = flops_per_token(model, T) x tokens/s / peak.
     Peak: CUDA, gptlab.train.flops.PEAK_FLOPS by device name (datasheet dense bf16; --peak-tflops to override);
     CPU, gptlab.train.flops.measure_cpu_peak() in the step's dtype ("CPU measured", a timed 2048^3 matmul), the
     better of one measurement just before and one just after the timed steps (other processes on a shared CPU
     lower it; the MFU is relative to what this CPU achieved on one big GEMM during the run).

    python benchmarks/mfu.py                                          # gpt2-small, ctx 1024, compile + bf16 on CUDA
    python benchmarks/mfu.py --micro-batch 32 --steps 20 --json mfu_h100.json
    python benchmarks/mfu.py --preset nano --device cpu --no-compile --steps 10    # CPU smoke run
    python benchmarks/mfu.py --config configs/gpt2-small-baseline.toml --search-compiled
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch


def is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )  # CPU allocator (RuntimeError)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class Bench:
    def __init__(self, a):
        from gptlab.config import load_config
        from gptlab.model import GPTModel, count_params
        from gptlab.train import build_optimizers, resolve_device, resolve_precision

        extra = {"train": {"device": a.device}}
        if a.precision:
            extra["train"]["precision"] = a.precision
        if not a.config:
            extra["model"] = {"preset": a.preset}
        if a.dropout is not None:
            extra.setdefault("model", {})["drop_rate"] = a.dropout
        self.cfg = cfg = load_config(a.config, extra=extra)
        from gptlab.data.vocab import resolve_corpus_vocab

        resolve_corpus_vocab(cfg)  # data.vocab = "corpus" with prepared data: the smaller output layer, as train
        self.dev = dev = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, dev)
        self.cuda = dev.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(0)
        self.model = GPTModel(cfg.model).to(dev)
        self.model.train()
        self.params = count_params(self.model)
        self.opts = build_optimizers(self.model, cfg, dev)
        self.compiled = None
        self.T = cfg.model.context_length
        self.V = cfg.model.vocab_size

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def step(self, model, x, y):
        """gptlab's training step: train.forward_backward (the loss inside the model, compiled with it)."""
        from gptlab.train import forward_backward

        loss = forward_backward(model, x, y, self.precision, self.dev)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"), foreach=True)
        for o in self.opts:
            o.step()
            o.zero_grad(set_to_none=True)
        return loss

    def batch(self, b):
        g = torch.Generator().manual_seed(b)
        x = torch.randint(0, self.V, (b, self.T + 1), generator=g)
        return x[:, :-1].contiguous().to(self.dev), x[:, 1:].contiguous().to(self.dev)

    def get_compiled(self):
        if self.compiled is None:
            self.compiled = torch.compile(self.model)
        return self.compiled

    def fits(self, b: int, compiled: bool, steps: int = 2) -> bool:
        """Run `steps` full training steps at micro-batch b; False if the device ran out of memory."""
        ok = True
        try:
            x, y = self.batch(b)
            model = self.get_compiled() if compiled else self.model
            for _ in range(steps):
                self.step(model, x, y)
            self.sync()
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
            ok = False
        x = y = None
        self.release()
        return ok

    def release(self) -> None:
        """Free what a failed (out-of-memory) or finished probe left: gradients, garbage, the CUDA cache."""
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def search(self, compiled: bool, start: int, cap: int, log) -> int:
        lo, hi, b = 0, None, start
        while b <= cap:
            ok = self.fits(b, compiled)
            log(f"  micro-batch {b:>5}: {'fits' if ok else 'out of memory'}")
            if not ok:
                hi = b
                break
            lo, b = b, b * 2
        if hi is None:
            log(f"  stopped at --max-micro-batch {cap}")
            return lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok = self.fits(mid, compiled)
            log(f"  micro-batch {mid:>5}: {'fits' if ok else 'out of memory'}")
            lo, hi = (mid, hi) if ok else (lo, mid)
        return lo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2-small", help="model preset (ignored with --config)")
    ap.add_argument("--config", help="a gptlab TOML config instead of --preset (its model and optimizer settings)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument(
        "--precision",
        help="auto | bf16 | fp16 | fp32 (default: the config's; preset: auto = bf16 on CUDA, fp32 on CPU)",
    )
    ap.add_argument("--dropout", type=float, help="model.drop_rate (default: the config's / preset's, 0.1)")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on CUDA yes, on CPU no)",
    )
    ap.add_argument("--micro-batch", type=int, help="fixed micro-batch: skip the search")
    ap.add_argument("--max-micro-batch", type=int, default=1024, help="search cap")
    ap.add_argument("--search-compiled", action="store_true", help="search with the compiled model (recompiles)")
    ap.add_argument(
        "--cpu-mem-limit-gib",
        type=float,
        default=2.0,
        help="CPU only: address-space headroom (GiB) allowed during the search (RLIMIT_AS)",
    )
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--peak-tflops", type=float, help="override the peak (TFLOP/s) the MFU is relative to")
    ap.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    a = ap.parse_args(argv)

    from gptlab.train.flops import device_peak_flops, flops_per_token, measure_cpu_peak

    t_start = time.perf_counter()
    bench = Bench(a)
    dev, cfg = bench.dev, bench.cfg
    compile_ = bench.cuda if a.compile is None else a.compile
    dev_name = torch.cuda.get_device_name(dev) if bench.cuda else (platform.processor() or platform.machine())
    if not bench.cuda:
        try:
            with open("/proc/cpuinfo") as f:
                dev_name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), dev_name)
        except OSError:
            pass
    print(f"# gptlab MFU benchmark  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# torch {torch.__version__}  CUDA {torch.version.cuda}  python {platform.python_version()}")
    print(
        f"# device {dev} ({dev_name})"
        + ("" if bench.cuda else f", {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores")
    )
    print(f"# cmd: {' '.join(sys.argv)}")
    if not bench.cuda:
        print(f"# load average at start (other processes share this machine): {os.getloadavg()[0]:.2f}")
    m = cfg.model
    print(
        f"# model {a.config or a.preset}: {bench.params:,} params, {m.n_layers} layers, d {m.emb_dim}, "
        f"context {bench.T}, dropout {m.drop_rate}; precision {bench.precision}; compile {compile_}; "
        f"optimizer {type(bench.opts[0]).__name__}(fused={bench.opts[0].defaults.get('fused')})"
    )

    def log(s):
        print(s, flush=True)

    searched = a.micro_batch is None
    if searched:
        limit = None
        if not bench.cuda:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = (soft, hard)
            cap_bytes = _vm_size() + int(a.cpu_mem_limit_gib * 2**30)
            resource.setrlimit(
                resource.RLIMIT_AS, (cap_bytes if hard == resource.RLIM_INFINITY else min(cap_bytes, hard), hard)
            )
            log(f"## search (CPU, address space capped at +{a.cpu_mem_limit_gib:g} GiB over the current process)")
        else:
            gib = torch.cuda.get_device_properties(dev).total_memory / 2**30
            log(f"## search ({'compiled' if compile_ and a.search_compiled else 'eager'}, {gib:.1f} GiB device)")
        t0 = time.perf_counter()
        try:
            b = bench.search(compile_ and a.search_compiled, 1, a.max_micro_batch, log)
        finally:
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, limit)
        log(f"  largest micro-batch that fits: {b}  ({time.perf_counter() - t0:.0f} s)")
        if b == 0:
            print("micro-batch 1 does not fit: nothing to measure")
            return 1
    else:
        b = a.micro_batch

    x, y = bench.batch(b)
    model = bench.get_compiled() if compile_ else bench.model
    while True:  # the compiled step at the searched size; halve while it runs out of memory
        try:
            t0 = time.perf_counter()
            for _ in range(a.warmup):
                bench.step(model, x, y)
            bench.sync()
            warm_s = time.perf_counter() - t0
            break
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            if not (is_oom(e) and searched and b > 1):
                raise
        b //= 2
        log(f"  out of memory in the timed configuration: halving to micro-batch {b}")
        x = y = None
        bench.release()
        x, y = bench.batch(b)
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    cpu_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(bench.precision, torch.float32)
    cpu_peaks = [] if bench.cuda or a.peak_tflops else [measure_cpu_peak(dtype=cpu_dtype)]
    times = []
    bench.sync()
    t_all = time.perf_counter()
    for _ in range(a.steps):
        t0 = time.perf_counter()
        bench.step(model, x, y)
        bench.sync()
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    tokens = b * bench.T
    tps = tokens * a.steps / total
    fpt = flops_per_token(m, bench.T)
    if a.peak_tflops:
        peak, peak_src = a.peak_tflops * 1e12, "--peak-tflops"
    elif bench.cuda:
        peak, peak_src = device_peak_flops(dev), f"gptlab.train.flops.PEAK_FLOPS['{dev_name}'] (datasheet dense bf16)"
    else:
        cpu_peaks.append(measure_cpu_peak(dtype=cpu_dtype))
        peak = max(cpu_peaks)
        peak_src = (
            f"CPU measured: best of gptlab.train.flops.measure_cpu_peak({str(cpu_dtype).replace('torch.', '')}) "
            f"just before and after the timed steps: {' / '.join(f'{p / 1e12:.3f}' for p in cpu_peaks)}"
        )
    mfu = fpt * tps / peak if peak else None
    res = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": a.config or a.preset,
        "params": bench.params,
        "context": bench.T,
        "device": str(dev),
        "device_name": dev_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precision": bench.precision,
        "compile": compile_,
        "fused_adamw": bench.opts[0].defaults.get("fused"),
        "micro_batch": b,
        "micro_batch_searched": searched,
        "steps": a.steps,
        "warmup": a.warmup,
        "warmup_s": warm_s,
        "step_s_median": statistics.median(times),
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "achieved_tflops": fpt * tps / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": peak_src if peak else None,
        "mfu": mfu,
    }
    if bench.cuda:
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    print(
        f"\nmicro-batch {b} x {bench.T} = {tokens:,} tokens/step ({'searched' if searched else 'fixed'}); "
        f"{a.warmup} warm-up step(s) in {warm_s:.1f} s, then {a.steps} timed: "
        f"median {res['step_s_median']:.3f} s/step"
    )
    print(f"tokens/s        {tps:,.0f}")
    print(f"FLOPs/token     {fpt:.4e}  (gptlab.train.flops.flops_per_token, context {bench.T})")
    print(f"achieved        {res['achieved_tflops']:.3f} TFLOP/s")
    if peak:
        print(f"peak            {peak / 1e12:.3f} TFLOP/s  ({peak_src})")
        print(f"MFU             {mfu:.1%}")
    else:
        print(f"peak            unknown for '{dev_name}' (add it to PEAK_FLOPS or pass --peak-tflops); no MFU")
    if "peak_mem_gib" in res:
        print(f"peak memory     {res['peak_mem_gib']:.1f} GiB (torch.cuda.max_memory_allocated, timed steps)")
    on_target = (
        bench.cuda
        and "H100" in dev_name.upper()
        and (a.config or a.preset) == "gpt2-small"
        and bench.T == 1024
        and compile_
        and bench.precision == "bf16"
    )
    if on_target and mfu is not None:
        print(
            f"target          >= 45% MFU (gpt2-small, ctx 1024, compile, bf16, one H100): "
            f"{'met' if mfu >= 0.45 else 'NOT met'}"
        )
    else:
        print("target          >= 45% MFU applies to gpt2-small ctx 1024 compile+bf16 on one H100; not this run")
    if not bench.cuda:
        print(f"# load average at end: {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - t_start:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"# wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
