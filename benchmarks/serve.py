"""`gptlab serve` throughput under concurrent clients: dynamic batching (--max-batch 8) vs one request at a time
(--max-batch 1), side by side in one run.

    python benchmarks/serve.py                          # nano model, 16 clients, 128 requests x 48 tokens, 3 rounds
    python benchmarks/serve.py --clients 16 --requests 256 --max-tokens 32 --rounds 5 --max-batch 8 16

A random-init run of the nano preset (2 layers, 64-dim, context 64) is written to a temporary directory, with
the <|endoftext|> row of its output layer zeroed (its logit is 0, never the argmax), so every greedy request runs
to exactly max_tokens. One `gptlab serve` process per setting (the real CLI, `--device cpu`, OMP_NUM_THREADS =
--threads) is started once; rounds then run the settings in turn against their servers (an idle server costs
nothing), so the machine's load weighs on each alike, and the medians are reported. A round: --clients threads
in this process send --requests completions (prompts of 2-12 tokens, temperature 0) over HTTP (urllib: a new
connection per request) and the wall time from the first send to the last answer is measured.
completion tokens/s = the usage.completion_tokens of all answers / wall time; rows/batch = the mean number of
requests per decoded batch over the timed rounds (from the server's /health). Each line also says whether the
setting's answers equal the first setting's (greedy answers must not depend on the batch they land in).
Not a test: numbers depend on the machine. Record results in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import gptlab
from gptlab.config import PRESETS, ModelConfig, RunConfig, save_config
from gptlab.data.tokenizer import EOT_ID
from gptlab.model import GPTModel

WORDS = "the cat sat on a mat and then it ran far away from home".split()


def write_run(run_dir: Path, seed: int) -> Path:
    from safetensors.torch import save_model

    cfg = ModelConfig(**PRESETS["nano"])
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    with torch.no_grad():
        model.out_head.weight[EOT_ID].zero_()
    save_config(RunConfig(name=run_dir.name, model=cfg), run_dir / "config.toml")
    ck = run_dir / "checkpoints" / "step_0000000"
    ck.mkdir(parents=True)
    save_model(model, str(ck / "model.safetensors"))
    (run_dir / "checkpoints" / "latest").write_text("step_0000000\n")
    return run_dir


class Server:
    """`gptlab serve RUN --port 0 --max-batch N` as a child process."""

    def __init__(self, run: Path, max_batch: int, threads: int, batch_wait_ms: float):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(Path(gptlab.__file__).parents[1]))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from gptlab.cli import main; raise SystemExit(main())",
                "serve",
                str(run),
                "--port",
                "0",
                "--device",
                "cpu",
                "--max-batch",
                str(max_batch),
                "--batch-wait-ms",
                str(batch_wait_ms),
                "--max-tokens-limit",
                "4096",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:
            if m := re.search(r"at (http://\S+)/v1", line):
                self.url = m.group(1)
                break
        else:
            raise SystemExit(f"the server (--max-batch {max_batch}) did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def complete(url: str, prompt: str, max_tokens: int) -> dict:
    req = urllib.request.Request(
        url + "/v1/completions",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode(),
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def batches(url: str) -> dict[int, int]:
    """The server's count of decoded batches by their number of rows (/health)."""
    with urllib.request.urlopen(url + "/health", timeout=60) as r:
        return {int(k): v for k, v in json.loads(r.read())["batches"].items()}


def one_round(url: str, prompts: list[str], max_tokens: int, clients: int) -> tuple[float, int, str]:
    """(wall seconds, completion tokens, sha256 of the answers in order)."""
    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        answers = list(pool.map(lambda p: complete(url, p, max_tokens), prompts))
        wall = time.perf_counter() - t0
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    digest = hashlib.sha256("\x00".join(a["choices"][0]["text"] for a in answers).encode()).hexdigest()[:16]
    return wall, tokens, digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8, 1], help="settings compared (first = reference)")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server process")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"# {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, {a.threads} torch thread(s) "
        f"per server; load average before: {' '.join(f'{x:.2f}' for x in load) if load else 'n/a'}"
    )
    print(
        f"# nano model (random init), {a.clients} concurrent clients, {a.requests} requests x {a.max_tokens} "
        f"tokens (greedy), {a.rounds} rounds, --batch-wait-ms {a.batch_wait_ms:g}"
    )
    rng = torch.Generator().manual_seed(a.seed)
    prompts = [
        " ".join(WORDS[int(j)] for j in torch.randint(len(WORDS), (int(n),), generator=rng))
        for n in torch.randint(2, 13, (a.requests,), generator=rng)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "nano-serve-bench", a.seed)
        servers = {mb: Server(run, mb, a.threads, a.batch_wait_ms) for mb in a.max_batch}
        try:
            for s in servers.values():  # warm up: the first requests pay for lazy initialisation
                one_round(s.url, prompts[: a.clients], 4, a.clients)
            results: dict[int, list[tuple[float, int, str]]] = {mb: [] for mb in servers}
            before = {mb: batches(s.url) for mb, s in servers.items()}
            for r in range(a.rounds):
                for mb, s in servers.items():
                    results[mb].append(one_round(s.url, prompts, a.max_tokens, a.clients))
                    wall, tokens, _ = results[mb][-1]
                    print(
                        f"  round {r + 1} --max-batch {mb:<3} {wall:7.2f} s  {tokens / wall:8.1f} tok/s  "
                        f"{len(prompts) / wall:6.2f} req/s",
                        flush=True,
                    )
            rows = {}
            for mb, s in servers.items():
                after = batches(s.url)
                grown = {k: after.get(k, 0) - before[mb].get(k, 0) for k in after}
                rows[mb] = sum(k * v for k, v in grown.items()) / max(1, sum(grown.values()))
        finally:
            for s in servers.values():
                s.close()
    ref = a.max_batch[0]
    med = {mb: statistics.median(w for w, _, _ in rs) for mb, rs in results.items()}
    print(
        f"{'setting':<16} {'wall s':>8} {'compl. tok/s':>13} {'req/s':>7} {'vs ' + f'--max-batch {ref}':>18} "
        f"{'same answers':>13} {'rows/batch':>11}"
    )
    for mb, rs in results.items():
        tokens, digest = rs[0][1], rs[0][2]
        same = all(d == results[ref][0][2] for _, _, d in rs)
        print(
            f"--max-batch {mb:<4} {med[mb]:8.2f} {tokens / med[mb]:13.1f} {len(prompts) / med[mb]:7.2f} "
            f"{med[ref] / med[mb]:17.2f}x {'yes' if same else 'NO':>13} {rows[mb]:11.2f}  (answers sha256 "
            f"{digest})"
        )
    for mb in a.max_batch[1:]:
        print(f"dynamic batching (--max-batch {ref}) / --max-batch {mb}: {med[mb] / med[ref]:.2f}x the throughput")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in load) if load else 'n/a'}")


if __name__ == "__main__":
    main()
