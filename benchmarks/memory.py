"""Peak training memory per (config, micro-batch), measured, vs the formula `gptlab plan` prints
(gptlab.plan.memory_bytes).

Target (issue "Scale and speed"): no number stated; `gptlab plan`'s memory per GPU should be trustworthy, so this
prints measured / formula for every case (1.000 = exact).

Each case runs in a fresh subprocess (nothing left over from a previous case): the model and AdamW exactly as
`gptlab train` builds them (build_optimizers: fused AdamW), random token batches, and the training loop's step
(ACCUM micro-steps of gptlab.train.forward_backward, the function the training loop calls; then
clip_grad_norm_, optimizer step, zero_grad(set_to_none=True)). The first optimizer step (AdamW allocates its
moments) is a warm-up. Eager mode: torch.compile saves and frees other tensors, which neither this nor the formula
models.

  CUDA: torch.cuda.max_memory_allocated() over all `--steps` steps, minus what was allocated before the model
        (everything the caching allocator handed out: weights, grads, AdamW moments, activations, logits,
        temporaries; max_memory_reserved, which adds the allocator's cached slack, is printed too).
  CPU:  two measures, both counted from the process after `import torch` and the batches (before the model):
        measured     the highest sum of live CPU tensor-storage bytes during one more steady-state step, from
                     torch.profiler's memory timeline (profile_memory + record_shapes + with_stack), with the
                     weights and AdamW moments that exist before that step counted as live: the CPU analogue of
                     CUDA's max_memory_allocated, and what the formula models.
        RSS peak     VmHWM - VmRSS-before-the-model over steps 2..--steps (Linux /proc/self/status; VmHWM is
                     reset through /proc/self/clear_refs after the warm-up step): what the process really took
                     from the OS, so it also counts glibc heap slack, oneDNN/OpenMP scratch and thread stacks;
                     printed for honesty, not compared with the formula.

Precision: auto = what `gptlab train` uses (bf16 autocast on CUDA, fp32 on CPU). On CPU, --precision bf16 runs
CPU bf16 autocast (slow without native bf16 matmuls, but the same autocast weight copies and logits/loss chain
as on a GPU; with --dropout 0 the CPU also uses fused SDPA and has no dropout masks, as a GPU proxy).

    python benchmarks/memory.py                        # nano, tiny, mini at two micro-batches + gpt2-small b1
    python benchmarks/memory.py --cases nano:4,nano:16,tiny:4:1 --precision bf16 --dropout 0
    python benchmarks/memory.py --cases gpt2-small:8,gpt2-small:16 --device cuda --steps 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

DEFAULT_CASES = "nano:4,nano:16,tiny:4,tiny:16,mini:4,mini:8,gpt2-small:1:1"


def _status(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _run_config(preset: str, micro_batch: int, precision: str, device: str, dropout: float, attn_impl: str):
    from gptlab.config import load_config

    return load_config(
        None,
        extra={
            "model": {"preset": preset, "drop_rate": dropout, "attn_impl": attn_impl},
            "train": {
                "precision": precision,
                "device": device,
                "micro_batch_size": micro_batch,
                "global_batch_size": micro_batch,
            },
        },
    )


def tensor_peak_from_profile(prof) -> tuple[int, int]:
    """(peak, end) of live CPU tensor storage bytes over a profiled region: the memory timeline's
    PREEXISTING and CREATE add, DESTROY removes (INCREMENT_VERSION rewrites a tensor in place: no change)."""
    from torch.profiler._memory_profiler import Action

    cur = peak = 0
    for _t, action, _key, size in prof._memory_profile().timeline:
        if action in (Action.PREEXISTING, Action.CREATE):
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak, cur


def child(a) -> dict:
    """One (config, micro-batch) in this fresh process; prints one JSON line."""
    import gc

    import torch

    from gptlab.model import GPTModel, count_params
    from gptlab.train import (
        build_optimizers,
        forward_backward,
        resolve_device,
        resolve_precision,
    )

    cfg = _run_config(a.preset, a.micro_batch, a.precision, a.device, a.dropout, a.attn_impl)
    dev = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, dev)
    m = cfg.model
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, m.vocab_size, (a.micro_batch, m.context_length), generator=g).to(dev)
    y = torch.randint(0, m.vocab_size, (a.micro_batch, m.context_length), generator=g).to(dev)
    gc.collect()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base_alloc = torch.cuda.memory_allocated(dev)
    else:
        base_rss = _status("VmRSS")
    torch.manual_seed(0)
    model = GPTModel(m).to(dev)
    opts = build_optimizers(model, cfg, dev)
    model.train()

    def step():
        for _ in range(a.accum):
            forward_backward(model, x, y, precision, dev, a.accum)
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"), foreach=True)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # first step: AdamW allocates its moments
    if not cuda:
        with open("/proc/self/clear_refs", "w") as f:  # RSS peak of the steady-state steps only
            f.write("5")
    for _ in range(a.steps - 1):
        step()
    out = {
        "preset": a.preset,
        "micro_batch": a.micro_batch,
        "accum": a.accum,
        "device": str(dev),
        "precision": precision,
        "params": count_params(model),
        "steps": a.steps,
        "torch": torch.__version__,
    }
    if cuda:
        torch.cuda.synchronize()
        out["measured"] = torch.cuda.max_memory_allocated(dev) - base_alloc
        out["reserved"] = torch.cuda.max_memory_reserved(dev)
        out["gpu"] = torch.cuda.get_device_name(dev)
    else:
        out["rss_peak"] = _status("VmHWM") - base_rss
        from torch.profiler import ProfilerActivity, profile

        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            step()
        out["measured"], out["live_after_step"] = tensor_peak_from_profile(prof)
    out["seconds"] = time.perf_counter() - t0
    return out


def formula(preset, micro_batch, precision, device, dropout, attn_impl) -> dict:
    from gptlab.plan import memory_bytes

    cfg = _run_config(preset, micro_batch, precision, device, dropout, attn_impl)
    return memory_bytes(cfg, micro_batch, device="cuda" if device.startswith("cuda") else "cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cases", default=DEFAULT_CASES, help=f"comma-separated PRESET:MICRO_BATCH[:ACCUM] (default {DEFAULT_CASES})"
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32")
    ap.add_argument(
        "--steps",
        type=int,
        default=2,
        help="optimizer steps before the measurement (>= 2: the first "
        "allocates AdamW's moments and is not measured on CPU)",
    )
    ap.add_argument(
        "--accum",
        type=int,
        default=2,
        help="micro-steps per optimizer step unless a case sets it "
        "(>= 2: grads live during backward, as the formula counts)",
    )
    ap.add_argument("--dropout", type=float, default=0.1, help="model.drop_rate (the presets' book default 0.1)")
    ap.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "explicit"])
    ap.add_argument("--timeout", type=float, default=600, help="seconds per case before it is skipped")
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "MICRO_BATCH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.steps < 2 or a.accum < 1:
        ap.error("--steps must be >= 2 and --accum >= 1")
    if a.child:
        a.preset, a.micro_batch = a.child[0], int(a.child[1])
        print(json.dumps(child(a)), flush=True)
        return 0

    import torch

    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# gptlab memory benchmark  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"# torch {torch.__version__}  python {platform.python_version()}  machine: {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")
    )
    print(f"# cmd: {' '.join(sys.argv)}")
    print(
        f"# device {device}, precision {a.precision}, dropout {a.dropout}, attention {a.attn_impl}, "
        f"{a.steps} optimizer step(s) before measuring; one fresh subprocess per case"
    )
    what = (
        "torch.cuda.max_memory_allocated"
        if device.startswith("cuda")
        else "peak live CPU tensor bytes over one steady-state step (torch.profiler memory timeline)"
    )
    fdev = "cuda" if device.startswith("cuda") else "cpu"
    print(
        f"# measured = {what}; formula = gptlab.plan.memory_bytes(device={fdev!r}) (what `gptlab plan` prints is "
        f"the cuda one); MiB = 2**20 B"
    )
    print(
        "# accum 1: grads are freed between steps, so the formula's state over-counts by 4 B/param; "
        "'vs formula - 4N' compares with that removed"
    )
    M = 2**20
    rows = []
    for case in [c.strip() for c in a.cases.split(",") if c.strip()]:
        parts = case.split(":")
        preset, mb, accum = parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else a.accum
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            preset,
            str(mb),
            "--device",
            device,
            "--precision",
            a.precision,
            "--steps",
            str(a.steps),
            "--accum",
            str(accum),
            "--dropout",
            str(a.dropout),
            "--attn-impl",
            a.attn_impl,
        ]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            print(f"{case}: SKIPPED, did not finish in {a.timeout:.0f} s", flush=True)
            continue
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode or not lines:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{case}: FAILED ({err[:200]})", flush=True)
            continue
        r = json.loads(lines[-1])
        f = formula(preset, mb, a.precision, device, a.dropout, a.attn_impl)
        r["formula"] = f
        r["formula_cmp"] = f["total"] - (4 * f["params"] if accum == 1 else 0)
        r["wall"] = time.perf_counter() - t0
        rows.append(r)
        extra = (
            f"  RSS peak {r['rss_peak'] / M:8.1f} MiB"
            if "rss_peak" in r
            else f"  reserved {r['reserved'] / M:8.1f} MiB"
        )
        print(
            f"{preset}:{mb} accum {accum} {r['precision']:<5} measured {r['measured'] / M:8.1f} MiB  formula "
            f"{f['total'] / M:8.1f} MiB (state {f['state'] / M:.1f} + casts {f['casts'] / M:.1f} + acts "
            f"{f['activations'] / M:.1f} + logits {f['logits'] / M:.1f})  measured/formula "
            f"{r['measured'] / f['total']:.3f}"
            + (f" (vs formula - 4N {r['measured'] / r['formula_cmp']:.3f})" if accum == 1 else "")
            + f"{extra}  [{r['wall']:.0f} s]",
            flush=True,
        )
    if rows:
        other = "RSS peak MiB" if "rss_peak" in rows[0] else "reserved MiB"
        print(
            "\n| config | micro-batch | accum | precision | params | measured MiB | formula MiB | "
            f"measured/formula | {other} |"
        )
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            o = r.get("rss_peak", r.get("reserved", 0)) / M
            ratio = f"{r['measured'] / r['formula']['total']:.3f}"
            if r["accum"] == 1:
                ratio += f" ({r['measured'] / r['formula_cmp']:.3f} vs formula - 4N)"
            print(
                f"| {r['preset']} | {r['micro_batch']} | {r['accum']} | {r['precision']} | {r['params']:,} | "
                f"{r['measured'] / M:,.1f} | {r['formula']['total'] / M:,.1f} | {ratio} | {o:,.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
