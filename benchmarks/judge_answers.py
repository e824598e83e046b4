"""How long `gptlab judge` spends generating a run's answers (posttrain.judge.generate_answers), the part that
runs the model: N Alpaca-format instructions, a tiny model, CPU.

    python benchmarks/judge_answers.py --n 100 --max-new-tokens 256
    PYTHONPATH=/path/to/older/checkout/src python benchmarks/judge_answers.py ...   # the same on older code

The run: the nano preset (2 layers, 64-dim, 4 heads, 64-token context: tiny-cpu's model) with the full GPT-2
vocabulary, random init (seed 0), written as a run folder (config.toml + checkpoint) so generate_answers
loads it as `gptlab judge` does. The records: the 40 Alpaca-format records of tests/conftest_ft.py (the book's
prompt template, with and without input), repeated to N. A random-init model seldom says <|endoftext|>, so
nearly every answer runs to max_new_tokens and the window slides past the 64-token context (a fine-tuned model
stops earlier). Code without a `batch_size` parameter (before batching) is called without it. Prints the
seconds and a digest of the answers, so two versions can be checked to give the same answers.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest_ft import RECORDS

from gptlab.config import PRESETS, ModelConfig, RunConfig, save_config
from gptlab.model import GPTModel
from gptlab.posttrain.judge import generate_answers


def make_run(run_dir: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**PRESETS["nano"])
    run_dir.mkdir(parents=True)
    save_config(RunConfig(name=run_dir.name, model=cfg), run_dir / "config.toml")
    ck = run_dir / "checkpoints" / "step_0000000"
    ck.mkdir(parents=True)
    save_model(GPTModel(cfg), str(ck / "model.safetensors"))
    (run_dir / "checkpoints" / "latest").write_text("step_0000000\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="batch size, where the code has batching")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    records = [RECORDS[i % len(RECORDS)] for i in range(a.n)]
    kw = {"batch_size": a.batch} if "batch_size" in inspect.signature(generate_answers).parameters else {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "tiny"
        make_run(run)
        t0 = time.perf_counter()
        answers = generate_answers(run, records, max_new_tokens=a.max_new_tokens, device="cpu", **kw)
        secs = time.perf_counter() - t0
    digest = hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]
    print(
        f"judge answers: {a.n} instructions, max_new_tokens {a.max_new_tokens}, "
        f"{'batch ' + str(a.batch) if kw else 'one at a time (no batching in this code)'}, "
        f"{torch.get_num_threads()} thread(s): {secs:.1f} s  answers sha256 {digest}  "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
