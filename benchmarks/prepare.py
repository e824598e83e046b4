"""Data-pipeline speed: tokenisation MB/s of gptlab's prepare path vs a plain single-threaded
`enc.encode_ordinary` loop, and the loader's tokens/s (training batches and evaluation batches).

Target (issue "Scale and speed"): none stated for prepare; report MB/s and the ratio. For the loader the useful
yardstick is the consumer: the tokens/s gpt2-small (context 1024) needs to reach 45% MFU on one H100 (computed
from gptlab.train.flops), printed as "loader headroom" (loader tokens/s / that rate; > 1 means the loader keeps up on
one process).

Tokenisation, on the same documents held in memory (the bundled Shakespeare corpus cut into passages exactly as
`gptlab prepare bundled` cuts it, or --source), side by side in one run; each round runs every method once, in
a rotating order (a busy patch of a shared CPU hits all of them), and the median round is reported:

  plain     for doc in docs: enc.encode_ordinary(doc)                  (one thread, nothing else)
  gptlab    prepare's tokenisation stage: _encode_batch over _batches on --workers threads (_ordered_map);
            also makes the uint16 array with EOT and the sha256 split key of every document
  gptlab-1  the same on one thread (what the threading buys, separately from the extra work)
  tiktoken  enc.encode_ordinary_batch(docs, num_threads=--workers)   (reference: tiktoken's own batching)
  prepare   end to end: prepare(source, tmpdir) = read + strip + tokenise + split + write shards (fsync) + meta

MB/s counts UTF-8 bytes of the documents (the same bytes for every method). The ratio printed is
gptlab / plain (and prepare / plain). "CPU s" is the process CPU time of the method (all threads): above the
wall time means the threads really ran in parallel; equal to it means only one core was free. Every method's
token ids are checked equal to the plain loop's.

Loader: SequenceSampler.batch_at (the training order, --micro-batch x --context per call, crossing epochs) and
eval_batches (sequential windows) over the train split of the folder `prepare` just wrote (a temp dir).

    python benchmarks/prepare.py                          # bundled corpus, workers = os.cpu_count()
    python benchmarks/prepare.py --rounds 7 --workers 2 --context 1024 --micro-batch 16
    python benchmarks/prepare.py --source /path/to/corpus.jsonl --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def _mb(nbytes: float) -> float:
    return nbytes / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="bundled", help="what `gptlab prepare` reads (default: bundled Shakespeare)")
    ap.add_argument("--workers", type=int, default=0, help="tokeniser threads (0 = os.cpu_count(), prepare's default)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs every method once)")
    ap.add_argument("--context", type=int, default=1024, help="loader: sequence length")
    ap.add_argument("--micro-batch", type=int, default=16, help="loader: sequences per batch")
    ap.add_argument("--loader-steps", type=int, default=300, help="loader: batch_at calls per round")
    a = ap.parse_args(argv)

    import tiktoken

    from gptlab.config import PRESETS, ModelConfig
    from gptlab.data import SequenceSampler, TokenDataset, eval_batches, prepare
    from gptlab.data.prepare import _batches, _encode_batch, _ordered_map
    from gptlab.data.sources import iter_documents
    from gptlab.data.tokenizer import get_tokenizer
    from gptlab.train.flops import PEAK_FLOPS, flops_per_token

    workers = a.workers or os.cpu_count() or 1
    print(f"# gptlab data-pipeline benchmark  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"# torch {torch.__version__}  tiktoken {tiktoken.__version__}  numpy {np.__version__}  "
        f"python {platform.python_version()}"
    )
    print(f"# machine: {os.cpu_count()} CPU cores ({platform.machine()}), tokeniser workers {workers}")
    print(f"# cmd: {' '.join(sys.argv)}")
    print(f"# load average at start (other processes share this machine): {os.getloadavg()[0]:.2f}")

    enc = get_tokenizer()
    docs = [d for d in iter_documents(a.source) if isinstance(d, str)]
    if not docs:
        ap.error(f"--source {a.source}: no text documents (a .bin source is already tokenised)")
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"# source {a.source!r}: {len(docs)} documents, {_mb(nbytes):.2f} MB of UTF-8 text")

    ref: list[list[int]] = []

    def plain():
        return [enc.encode_ordinary(d) for d in docs]

    def gptlab_path(w, ids=False):
        def run():
            out = []
            for batch in _ordered_map(_encode_batch, _batches((d, 0) for d in docs), w):
                out += batch
            if ids:  # the check, not timed: drop the EOT to compare with plain
                return [toks[:-1].tolist() for toks, _key, _n in out]
            return out

        return run

    def tk_batch():
        return enc.encode_ordinary_batch(docs, num_threads=workers)

    tmp = tempfile.TemporaryDirectory(prefix="gptlab-bench-prepare-")
    out_dir = os.path.join(tmp.name, "data")
    source_bytes = [0]

    def end_to_end():
        meta = prepare(a.source, out_dir, workers=a.workers, progress=False)
        source_bytes[0] = sum(s["bytes"] for s in meta["sources"])
        return None

    methods = {
        "plain": plain,
        "gptlab": gptlab_path(workers),
        "gptlab-1": gptlab_path(1),
        "tiktoken": tk_batch,
        "prepare": end_to_end,
    }
    # warm-up (tokeniser caches, page cache) and correctness: every method's ids equal the plain loop's
    ref = plain()
    checks = {"gptlab": gptlab_path(workers, True), "gptlab-1": gptlab_path(1, True), "tiktoken": tk_batch}
    for name, fn in checks.items():
        got = fn()
        assert got == ref, f"{name}: token ids differ from the plain encode_ordinary loop"
    end_to_end()
    n_tokens = sum(map(len, ref))
    print(f"# {n_tokens:,} tokens; gptlab, gptlab-1 and tiktoken ids checked identical to the plain loop's")

    times = {k: [] for k in methods}
    cpu = {k: [] for k in methods}
    names = list(methods)
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n## tokenisation: median of {a.rounds} rounds (rotating order)")
    print("| method | median wall s | CPU s (all threads) | MB/s | tokens/s | vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        mbps = _mb(nbytes) / med[name]
        print(
            f"| {name} | {med[name]:.3f} | {med_cpu[name]:.3f} | {mbps:.1f} | {n_tokens / med[name]:,.0f} | "
            f"{med['plain'] / med[name]:.2f}x |"
        )
    print(
        f"ratio gptlab/plain (tokenisation stage, {workers} threads): {med['plain'] / med['gptlab']:.2f}x   "
        f"prepare end to end/plain: {med['plain'] / med['prepare']:.2f}x   "
        f"(source files {_mb(source_bytes[0]):.2f} MB)"
    )

    # ---------------------------------------------------------------- loader
    ds = TokenDataset(out_dir, "train")
    T, B = a.context, a.micro_batch
    sampler = SequenceSampler(ds, T, 1234)
    print(f"\n## loader: train split {len(ds):,} tokens = {len(sampler)} windows of {T}; batches of {B} x {T}")
    tl_train, tl_eval = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for step in range(a.loader_steps):  # crosses epochs when loader_steps * B > windows
            x, y = sampler.batch_at(step, 0, 0, 1, B, B)
        tl_train.append(a.loader_steps * B * T / (time.perf_counter() - t0))
        t0, n = time.perf_counter(), 0
        for x, _y in eval_batches(ds, T, B):
            n += x.numel()
        tl_eval.append(n / (time.perf_counter() - t0))
    tr, ev = statistics.median(tl_train), statistics.median(tl_eval)
    m = ModelConfig(**PRESETS["gpt2-small"])
    need = 0.45 * PEAK_FLOPS["H100"] / flops_per_token(m)
    print(
        f"SequenceSampler.batch_at: {tr:,.0f} tokens/s ({tr / (B * T):,.0f} batches/s; median of {a.rounds} rounds "
        f"of {a.loader_steps} batches)"
    )
    print(f"eval_batches:             {ev:,.0f} tokens/s (median of {a.rounds} passes over the split)")
    print(
        f"consumer: gpt2-small ctx {m.context_length} at 45% MFU on one H100 needs {need:,.0f} tokens/s "
        f"({flops_per_token(m):.3e} FLOPs/token)"
    )
    print(f"loader headroom (tokens/s / needed): batch_at {tr / need:.1f}x, eval_batches {ev / need:.1f}x")
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
