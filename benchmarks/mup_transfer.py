"""Does the best learning rate transfer across widths under muP? An lr grid at two widths, with and without `mup`.

Every cell is a real `gptlab.train.train` run (AdamW, linear warmup 5% then cosine to 10%, no dropout, no weight
decay) of a 2-layer, 4-head model on the bundled Shakespeare (the first `--docs` passages, corpus vocabulary),
context 64, `--batch` sequences a step, `--steps` steps; the number is its final validation loss (`--eval-batches` val
batches). Widths: emb_dim `--widths` (d_head grows with the width: 4 heads throughout). muP's base width is the
narrowest, so at the narrowest width the two parametrisations differ only in the attention scale (1/d_head vs
1/sqrt(d_head)). For each (parametrisation, width) the best lr is the one with the lowest val loss averaged over the
seeds.

    python benchmarks/mup_transfer.py                                     # the committed run
    python benchmarks/mup_transfer.py --seeds 0 --steps 60 --lrs 1e-3,1e-2   # a quick look
    python benchmarks/mup_transfer.py --out benchmarks/results/mup_transfer_cpu.txt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.config import load_config
from gptlab.data.prepare import prepare
from gptlab.io import atomic_write_text
from gptlab.train import train

T = 64


def run_cell(
    data: str,
    tmp: Path,
    width: int,
    lr: float,
    mup: bool,
    seed: int,
    steps: int,
    batch: int,
    base: int,
    eval_batches: int,
) -> float:
    sets = {
        "model.preset": "nano",
        "model.emb_dim": width,
        "model.n_heads": 4,
        "model.n_layers": 2,
        "model.context_length": T,
        "model.drop_rate": 0.0,
        "data.dir": data,
        "data.source": "",
        "data.vocab": "corpus",
        "data.data_seed": 0,
        "train.seed": seed,
        "train.lr": lr,
        "train.weight_decay": 0.0,
        "train.schedule": "cosine",
        "train.warmup_frac": 0.05,
        "train.min_lr_frac": 0.1,
        "train.micro_batch_size": batch,
        "train.global_batch_size": batch,
        "train.tokens": steps * batch * T,
        "train.eval_interval": 0,
        "train.eval_batches": eval_batches,
        "train.checkpoint_interval": 0,
        "train.keep_checkpoints": 1,
        "train.progress": False,
        "train.log_interval": steps,
        "train.device": "cpu",
        "eval.batches": 1,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    overrides.append("interventions=" + json.dumps([f"mup:base_width={base}"] if mup else []))
    cfg = load_config(None, overrides)
    name = f"{'mup' if mup else 'sp'}-w{width}-lr{lr:g}-s{seed}"
    final = train(cfg, tmp / name)
    return float(final["val_loss"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="64,256")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3,1e-2,3e-2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    ap.add_argument("--docs", type=int, default=40, help="bundled passages to prepare (default 40, ~200k tokens)")
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--out", default="", help="also write the report here")
    a = ap.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")]
    lrs = [float(x) for x in a.lrs.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    base = min(widths)
    lines = [
        f"# gptlab muP lr-transfer benchmark  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"# torch {torch.__version__}  python {platform.python_version()}  cpu, {torch.get_num_threads()} threads, "
        f"fp32",
        f"# cmd: benchmarks/mup_transfer.py {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"# load average at start (other processes share this machine): {os.getloadavg()[0]:.2f}",
        f"# model: 2 layers, 4 heads, context {T}, batch {a.batch}, {a.steps} steps; AdamW, warmup 5% + cosine "
        f"to 10%, no dropout, no weight decay; muP base width {base}",
        f"# data: bundled Shakespeare, first {a.docs} passages, corpus vocabulary; final val loss on "
        f"{a.eval_batches} val batches",
    ]
    t0 = time.time()
    res: dict[tuple[bool, int, float], list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = str(tmp / "data")
        prepare(["bundled"], data, max_docs=a.docs, progress=False, workers=1)
        for seed in seeds:  # seeds outermost: a partial run still covers every cell
            for mup in (False, True):
                for w in widths:
                    for lr in lrs:
                        v = run_cell(data, tmp, w, lr, mup, seed, a.steps, a.batch, base, a.eval_batches)
                        res.setdefault((mup, w, lr), []).append(v)
                        print(
                            f"mup={mup} width={w} lr={lr:g} seed={seed}: val {v:.4f}  ({time.time() - t0:.0f} s)",
                            flush=True,
                        )
    lines.append(f"# wall time {time.time() - t0:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    lines.append("")
    lines.append("final val loss, mean over seeds (min..max); * = the best lr of its row")
    head = f"{'param':<6}{'width':>6}  " + "".join(f"{lr:>20g}" for lr in lrs)
    lines.append(head)
    best = {}
    for mup in (False, True):
        for w in widths:
            means = [statistics.fmean(res[mup, w, lr]) for lr in lrs]
            k = min(range(len(lrs)), key=means.__getitem__)
            best[mup, w] = lrs[k]
            cells = []
            for i, lr in enumerate(lrs):
                vs = res[mup, w, lr]
                cells.append(f"{means[i]:.3f}{'*' if i == k else ' '}({min(vs):.2f}..{max(vs):.2f})")
            lines.append(f"{'muP' if mup else 'SP':<6}{w:>6}  " + "".join(f"{c:>20}" for c in cells))
    lines.append("")
    for mup in (False, True):
        b = [best[mup, w] for w in widths]
        moved = "stays put" if len(set(b)) == 1 else "moves"
        lines.append(
            f"best lr {'muP' if mup else 'SP '}: "
            + ", ".join(f"width {w}: {x:g}" for w, x in zip(widths, b, strict=True))
            + f"  -> {moved}"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        atomic_write_text(a.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
