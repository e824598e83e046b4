"""Does gptlab.data.prefetch.Prefetcher hide slow reads behind the training step?

A producer makes one optimizer step's micro-batches (--accum x --micro-batch rows of --context + 1 tokens, copied
out of a uint16 token array as SequenceSampler does); on a "cold cache" it sleeps --latency-ms per row first (a
page faulting in from network storage; the default 1 ms x 16 rows = 16 ms a step). The consumer is a training
step: a sleep of --compute-ms (the GPU busy; the default) or, with --compute model, a real forward/backward +
AdamW step of a tiny GPTModel on the CPU (so the thread also competes with real work for the cores and the GIL).

Three ways, each timed over --steps steps after --warmup steps, in --rounds rounds (order a, b, c each round;
a busy patch of a shared CPU hits all three); the median round is reported, as wall time / step:

  (a) warm    no latency, synchronous: make(step) then the step        (the floor)
  (b) cold    latency, synchronous                                      (what the loop does today)
  (c) cold+pf latency, Prefetcher(depth=--depth): pf.get(step) then the step

Target: (c) / (a) <= 1.10. Before timing, the prefetched batches of --steps steps are checked equal to the
synchronous ones.

    python benchmarks/loader_prefetch.py                         # sleep compute, 30 ms
    python benchmarks/loader_prefetch.py --compute model --steps 20
    python benchmarks/loader_prefetch.py --compute-ms 12         # compute shorter than the read: (c) ~ the read
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from gptlab.data.prefetch import Prefetcher


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


class Source:
    """Random windows of a token array, as SequenceSampler.batch_at reads them (row by row), with an optional
    sleep per row."""

    def __init__(self, tokens: np.ndarray, T: int, micro: int, accum: int, latency_s: float, seed: int = 0):
        self.tokens, self.T, self.micro, self.accum, self.latency_s = tokens, T, micro, accum, latency_s
        self.n = (len(tokens) - 1) // T
        self.seed = seed

    def __call__(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, step])
        out = []
        for _ in range(self.accum):
            rows = np.empty((self.micro, self.T + 1), dtype=np.int64)
            for r, j in enumerate(rng.integers(0, self.n, self.micro)):
                if self.latency_s:
                    time.sleep(self.latency_s)
                rows[r] = self.tokens[j * self.T : j * self.T + self.T + 1]
            out.append(
                (
                    torch.from_numpy(np.ascontiguousarray(rows[:, :-1])),
                    torch.from_numpy(np.ascontiguousarray(rows[:, 1:])),
                )
            )
        return out


def sleep_step(seconds: float):
    def step(batches):
        time.sleep(seconds)

    return step


def model_step(T: int, vocab: int, emb: int, layers: int):
    from gptlab.config import ModelConfig
    from gptlab.model import GPTModel
    from gptlab.train.trainer import forward_backward

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, context_length=T, emb_dim=emb, n_heads=4, n_layers=layers, drop_rate=0.0)
    model = GPTModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dev = torch.device("cpu")

    def step(batches):
        for x, y in batches:
            forward_backward(model, x, y, "fp32", dev, accum=len(batches))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def run_sync(make, train_step, steps: int, warmup: int, start: int) -> float:
    for s in range(start, start + warmup):
        train_step(make(s))
    t0 = time.perf_counter()
    for s in range(start + warmup, start + warmup + steps):
        train_step(make(s))
    return (time.perf_counter() - t0) / steps


def run_prefetched(make, train_step, steps: int, warmup: int, start: int, depth: int) -> float:
    with Prefetcher(make, start=start, depth=depth) as pf:
        for s in range(start, start + warmup):
            train_step(pf.get(s))
        t0 = time.perf_counter()
        for s in range(start + warmup, start + warmup + steps):
            train_step(pf.get(s))
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=1.0, help="simulated read latency per sequence row")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4, help="micro-batches per step (rows/step = micro x accum)")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--compute", choices=["sleep", "model"], default="sleep")
    ap.add_argument("--compute-ms", type=float, default=30.0, help="--compute sleep: the step's length")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared, oversubscribed CPU, 2 OpenMP threads made the tiny model's "
        "step 20x slower and erratic)",
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    vocab = 512
    tokens = np.random.default_rng(0).integers(0, vocab, 1_000_000, dtype=np.int64).astype(np.uint16)
    rows = args.micro_batch * args.accum
    warm = Source(tokens, args.context, args.micro_batch, args.accum, 0.0)
    cold = Source(tokens, args.context, args.micro_batch, args.accum, args.latency_ms / 1000)

    print(f"# gptlab loader-prefetch benchmark  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(
        f"# torch {torch.__version__}  numpy {np.__version__}  python {platform.python_version()}  "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"# cmd: {' '.join(['benchmarks/loader_prefetch.py', *sys.argv[1:]])}")
    print(
        f"# SHARED machine (other engineers' processes run on the same cores); /proc/loadavg at start: {load_average()}"
    )
    if args.compute == "sleep":
        train_step = sleep_step(args.compute_ms / 1000)
        what = f"time.sleep({args.compute_ms:g} ms)"
    else:
        train_step, n_params = model_step(args.context, vocab, emb=128, layers=2)
        what = (
            f"tiny GPTModel (2 layers, 128 dims, vocab {vocab}, {n_params:,} params) forward/backward over "
            f"{args.accum} micro-batches + AdamW, fp32 CPU"
        )
    print(
        f"# step: {args.accum} micro-batches x {args.micro_batch} rows x {args.context + 1} tokens = {rows} rows; "
        f"cold read: sleep {args.latency_ms:g} ms per row = {rows * args.latency_ms:g} ms/step; compute: {what}"
    )
    print(
        f"# Prefetcher depth {args.depth}; {args.warmup} warm-up + {args.steps} timed steps per way, "
        f"{args.rounds} round(s)"
    )

    # the prefetched batches are the synchronous ones
    with Prefetcher(warm, start=7, depth=args.depth) as pf:
        for s in range(7, 7 + args.steps):
            got, want = pf.get(s), warm(s)
            assert len(got) == len(want) and all(
                torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want, strict=True)
            ), f"step {s} differs"
    print(f"# check: Prefetcher batches == synchronous batches for {args.steps} steps: ok")

    res: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    start = 0
    for r in range(args.rounds):
        res["a"].append(run_sync(warm, train_step, args.steps, args.warmup, start))
        res["b"].append(run_sync(cold, train_step, args.steps, args.warmup, start))
        res["c"].append(run_prefetched(cold, train_step, args.steps, args.warmup, start, args.depth))
        print(
            f"  round {r + 1}: (a) {res['a'][-1] * 1e3:7.2f}  (b) {res['b'][-1] * 1e3:7.2f}  "
            f"(c) {res['c'][-1] * 1e3:7.2f}  ms/step"
        )
        start += args.warmup + args.steps
    a, b, c = (statistics.median(res[k]) for k in "abc")
    print()
    print("| way | ms/step (median of rounds) | vs (a) |")
    print("|---|---:|---:|")
    print(f"| (a) warm cache, synchronous | {a * 1e3:.2f} | 1.000 |")
    print(f"| (b) {args.latency_ms:g} ms/row latency, synchronous | {b * 1e3:.2f} | {b / a:.3f} |")
    print(f"| (c) {args.latency_ms:g} ms/row latency, Prefetcher | {c * 1e3:.2f} | {c / a:.3f} |")
    per_round = [rc / ra for ra, rc in zip(res["a"], res["c"], strict=True)]
    print(
        f"ratio (c)/(a) = {c / a:.3f}  (target <= 1.10: {'met' if c / a <= 1.10 else 'NOT met'}); "
        f"per round (a and c run back to back): {', '.join(f'{x:.3f}' for x in per_round)}, "
        f"median {statistics.median(per_round):.3f}"
    )
    print(f"# /proc/loadavg at end: {load_average()}")


if __name__ == "__main__":
    main()
