"""What a run reports while it trains: metrics.jsonl rows (train loss averaged over the log interval, lr of each
optimizer, gradient norm, tokens/s, MFU, val loss, events) written by rank 0 and passed on to the loggers of
train.loggers (loggers.py), and a tqdm progress bar with tokens/s and ETA."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gptlab.io import append_jsonl, atomic_write_text, read_jsonl

SPIKE_WINDOW, SPIKE_FACTOR = 50, 1.5  # a step loss above 1.5x the median of the last 50 is flagged "loss_spike"


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


class TrainLog:
    """metrics.jsonl and the progress bar of one run. Every rank may call it; only the main rank writes."""

    def __init__(
        self,
        path: Path,
        main: bool,
        interval: int,
        step_tokens: int,
        total_steps: int,
        start_step: int,
        mfu: Callable[[float], float | None],
        desc: str,
        progress: bool,
    ):
        self.path, self.main, self.interval, self.step_tokens = path, main, interval, step_tokens
        self.total_steps, self.mfu = total_steps, mfu
        self.bar = progress_bar(total_steps, start_step, desc, main and progress)
        self.recent: list[float] = []  # the last SPIKE_WINDOW step losses
        self.window: list[float] = []  # step losses since the last row
        self.t0, self.tokens = time.time(), 0
        self.loggers: list = []  # loggers.open_loggers: each gets every row's numbers as it is written

    def keep_until(self, step: int) -> int:
        """Drop rows logged after `step` (the checkpoint a resumed run continues from); return the last step
        logged before (what the earlier process of the run got to)."""
        if not self.main:
            return 0
        old = read_jsonl(self.path)
        rows = [r for r in old if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        return max([r.get("step", 0) for r in old] + [step])

    def _write(self, row: dict) -> None:
        append_jsonl(self.path, row)
        if self.loggers:
            from gptlab.train.loggers import scalars

            values = scalars(row)
            for lg in self.loggers:
                lg.log(row["step"], values)

    def val_loss(self, step: int, loss: float) -> None:
        if self.main:
            self._write({"step": step, "tokens": step * self.step_tokens, "val_loss": loss})

    def skipped(self, step: int, reason: str, lr_scale: float) -> None:
        if self.main:
            self._write({"step": step, "event": "skipped_batch", "reason": reason, "lr_scale": lr_scale})

    def train_step(self, done: int, loss: float, lrs: dict[str, float], grad_norm: float, tokens: int) -> None:
        """`lrs`: each optimizer's lr ({"lr": ..., "lr_muon": ...}, Trainer.lrs). `tokens`: processed by all ranks
        in this step (fewer than step_tokens during seq_len_warmup); tokens/s and MFU count these."""
        if not self.main:
            return
        self.recent = (self.recent + [loss])[-SPIKE_WINDOW:]
        self.window.append(loss)
        self.tokens += tokens
        if done % self.interval == 0 or done == self.total_steps:
            self._row(done, loss, lrs, grad_norm)
        if self.bar:
            self.bar.update(1)

    def _row(self, done: int, loss: float, lrs: dict[str, float], grad_norm: float) -> None:
        dt = time.time() - self.t0
        tps = self.tokens / dt if dt > 0 else 0.0
        row = {
            "step": done,
            "tokens": done * self.step_tokens,
            "train_loss": float(np.mean(self.window)),
            **lrs,
            "grad_norm": grad_norm,
            "tokens_per_s": tps,
        }
        u = self.mfu(tps)
        if u is not None:
            row["mfu"] = u
        if len(self.recent) > 10 and loss > SPIKE_FACTOR * float(np.median(self.recent[:-1])):
            row["event"] = "loss_spike"
        self._write(row)
        self.t0, self.tokens, self.window = time.time(), 0, []
        if self.bar:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", lr=f"{lrs['lr']:.2e}")

    def rows(self) -> list[dict]:
        return read_jsonl(self.path) if self.main else []

    def close(self) -> None:
        if self.bar:
            self.bar.close()

    def close_loggers(self, ok: bool) -> None:
        from gptlab.train.loggers import close_all

        close_all(self.loggers, ok)
        self.loggers = []


def median_tokens_per_s(rows: list[dict]) -> float | None:
    """Median logged throughput (the first window, with warm-up, is dropped when there are others)."""
    tps = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    if len(tps) > 1:
        tps = tps[1:]
    return float(np.median(tps)) if tps else None
