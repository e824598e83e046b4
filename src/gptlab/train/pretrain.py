"""Pretraining: `gptlab train`, one process or many under torchrun (`torchrun --nproc_per_node N -m gptlab train`).

train() holds the run directory (lock, config, meta.json), builds the model and a Trainer, and runs the loop:
the lr schedule, the global batch of each step (a function of the data order seed and the step only: train.seed
unless data.data_seed pins it, so a resumed run sees the batches it would have seen), the NaN policy, val loss every
eval_interval steps, checkpoints every checkpoint_interval steps, preemption (signals.py: SIGTERM/SIGUSR1 ->
checkpoint, preempted.json, exit 75), and at the end val and test loss in final.json.

Every checkpoint records the config it was trained under (state.json: config, config_hash, total_steps). A resume
with another config stops in one line before the run folder is touched (rundir.check_resume); one that continues
with changes (`--continue-with train.lr=...`: rundir.CONTINUABLE) applies them from the checkpoint's step on (the
optimizer's base lr is always the config's, never the one saved in the optimizer state), rewrites config.toml and
appends {step, changes} to meta.json's history. A run continued with another length keeps its warmups' lengths in
steps and decays the lr from where it was (schedule.lr_factor's anchor), recorded in state.json's schedule."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptlab import GptlabError
from gptlab.config import RunConfig
from gptlab.data.prefetch import Prefetcher
from gptlab.io import atomic_write_json, read_json
from gptlab.model import GPTModel, count_params
from gptlab.train import loggers
from gptlab.train.checkpoint import latest_checkpoint, remove_partial, resume_point
from gptlab.train.distributed import Dist, resolve_device, resolve_precision
from gptlab.train.evaluate import evaluate_loss, perplexity
from gptlab.train.flops import device_peak_flops, flops_per_token, mfu, planned_steps, token_budget
from gptlab.train.metrics import TrainLog, median_tokens_per_s
from gptlab.train.optim import OptimSettings
from gptlab.train.rundata import ensure_data, open_run_data
from gptlab.train.rundir import ResumePlan, RunLock, check_resume, record_continuation, write_run_files
from gptlab.train.schedule import lr_factor
from gptlab.train.signals import MARKER, Preemption
from gptlab.train.trainer import Trainer

log = logging.getLogger(__name__)


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    continue_with: list[str] | tuple[str, ...] = (),
    quiet: bool = False,
) -> dict:
    """Train `cfg` in `run_dir`. `stop_after`: stop (with a checkpoint) after that many optimizer steps —
    used by tests to simulate an interruption. `continue_with`: KEY=VALUE changes a resume applies from its
    checkpoint on (rundir.CONTINUABLE fields). `quiet`: no progress bars for this process, whatever
    train.progress says (the config, and so its hash and a resume's check, are untouched). Returns the final
    metrics (or progress when stopped)."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    dist_ = Dist.from_env(device)
    try:
        if dist_.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        dist_.barrier()
        with RunLock(run_dir) if dist_.main else contextlib.nullcontext():
            out = Pretraining(cfg, run_dir, resume, device, dist_, tuple(continue_with), quiet).run(stop_after)
        dist_.barrier()  # every rank past its last collective before the group is torn down (not after an error)
        return out
    finally:
        dist_.close()


@dataclass
class Progress:
    """What the loop carries from step to step and across a resume (state.json)."""

    step: int = 0
    skips: int = 0  # batches skipped for non-finite loss/gradients (nan_policy = "skip")
    lr_scale: float = 1.0  # halved at each skip
    tokens: int = 0  # trained on, all ranks: fewer than steps x global batch x context under seq_len_warmup
    flops: float = 0.0  # of those tokens, at the sequence length each step used


class Pretraining:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        resume: bool,
        device: torch.device,
        dist_: Dist,
        continue_with: tuple[str, ...] = (),
        quiet: bool = False,
    ):
        self.cfg, self.run_dir, self.resume, self.device, self.dist = cfg, run_dir, resume, device, dist_
        self.continue_with = continue_with
        self.quiet = quiet  # no progress bars, whatever train.progress says
        self.plan = ResumePlan(cfg)
        # the schedule of a run continued with another length (None: the plan's own, from warmup_frac and
        # seq_len_warmup_frac x total steps): warmups pinned in steps, and (step, factor) the decay starts from
        self.warm_steps: int | None = None
        self.seq_warm_steps: int | None = None
        self.anchor: tuple[int, float] | None = None
        self.last_checkpoint = -1  # the step of the newest checkpoint this process wrote
        self.resumed_from: tuple[Path, ...] = ()  # the checkpoint this process resumed from: never pruned

    @property
    def progress(self) -> bool:
        """Progress bars (data preparation, training): train.progress, unless this process is quiet."""
        return self.cfg.train.progress and not self.quiet

    # ---- setup ---------------------------------------------------------------------------------

    def _open_data(self) -> None:
        cfg, t, device, dist_ = self.cfg, self.cfg.train, self.device, self.dist
        self.T = cfg.model.context_length
        if t.global_batch_size % (t.micro_batch_size * dist_.world):
            raise GptlabError(
                f"train.global_batch_size: {t.global_batch_size} is not divisible by micro_batch_size "
                f"x world size ({t.micro_batch_size} x {dist_.world})"
            )
        self.accum = t.global_batch_size // (t.micro_batch_size * dist_.world)
        self.precision = resolve_precision(t.precision, device)
        if self.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise GptlabError("train.precision: bf16 is not supported on this GPU; use fp16")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32
        self.train_ds, self.val_ds, self.test_ds, self.sampler = open_run_data(cfg, self.T, self.vmap)

    def _build(self) -> None:
        t, m, rank = self.cfg.train, self.cfg.model, self.dist.rank
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        model = GPTModel(m).to(self.device)
        torch.manual_seed(t.seed * 1000 + rank + 1)  # dropout masks differ between ranks
        model.activation_checkpointing = t.activation_checkpointing
        self.n_params = count_params(model)
        self.tokens_budget = token_budget(self.cfg, self.n_params)
        self.step_tokens = t.global_batch_size * self.T
        self.total_steps = planned_steps(self.cfg, self.n_params)
        self.trainer = Trainer(
            model,
            OptimSettings.of(self.cfg),
            self.device,
            self.precision,
            self.dist,
            grad_clip=t.grad_clip,
            z_loss=t.z_loss,
            compile=t.compile,
            fsdp=t.fsdp,
        )

    def _start_or_resume(self) -> Progress:
        """Step 0, or the state of the checkpoint a resume starts from (checkpoint.resume_point: the newest intact
        one, with a warning naming any newer one passed over; an error when there are checkpoints but none is
        intact, so a resume never silently starts again and rewrites the run's history)."""
        ck = resume_point(self.run_dir, main=self.dist.main) if self.resume else None
        if ck is None:
            if self.dist.main:
                if self.resume and (self.run_dir / "meta.json").exists():
                    log.warning(
                        f"{self.run_dir}: no checkpoint was written before the run stopped; starting again from step 1"
                    )
                write_run_files(
                    self.run_dir,
                    self.cfg,
                    self.vmap,
                    params=self.n_params,
                    world_size=self.dist.world,
                    device=str(self.device),
                    precision=self.precision,
                    data_meta=self.train_ds.meta,
                    tokens=self.tokens_budget,
                    total_steps=self.total_steps,
                )
            return Progress()
        # the config's lr is the base of the schedule: the optimizer state saved with the checkpoint holds the
        # base_lr it was trained with, the same when the config is (check_resume), not after --continue-with
        bases = [[g["base_lr"] for g in o.param_groups] for o in self.trainer.opts]
        state = self.trainer.restore(ck)
        for o, b in zip(self.trainer.opts, bases, strict=True):
            for g, lr in zip(o.param_groups, b, strict=True):
                g["base_lr"] = lr
        sched = state.get("schedule") or {}
        self.warm_steps, self.seq_warm_steps = sched.get("warmup_steps"), sched.get("seq_len_warmup_steps")
        self.anchor = tuple(sched["anchor"]) if sched.get("anchor") else None
        if self.plan.changes:
            self._continue_with(state)
        self.resumed_from = (ck,)
        # the global batch of a step does not depend on the number of ranks, so resuming on another
        # number of ranks continues the same data order (dropout RNG of new ranks starts fresh)
        if self.dist.main:
            remove_partial(self.run_dir)
        step = state["step"]
        return Progress(
            step,
            state.get("skips", 0),
            state.get("lr_scale", 1.0),
            state.get("tokens", step * self.step_tokens),
            state.get("flops", flops_per_token(self.cfg.model, self.T) * step * self.step_tokens),
        )

    def _continue_with(self, state: dict) -> None:
        """Apply --continue-with from the checkpoint's step on: a new length keeps the warmups it had (in steps)
        and decays from the factor the old plan reached; then config.toml is the new config and meta.json's
        history says from which step."""
        step, t, old = state["step"], self.cfg.train, self.plan.recorded
        if self.total_steps <= step:
            raise GptlabError(
                f"--continue-with: the budget is {self.total_steps} steps ({self.tokens_budget:,} "
                f"tokens); the checkpoint has trained {step} already; ask for more"
            )
        old_total = state.get("total_steps") or planned_steps(old, self.n_params)
        if old_total != self.total_steps:
            warm = self.warm_steps if self.warm_steps is not None else int(round(t.warmup_frac * old_total))
            factor = lr_factor(step, old_total, old, warm, self.anchor)
            self.warm_steps = warm
            if self.seq_warm_steps is None:
                self.seq_warm_steps = int(t.seq_len_warmup_frac * old_total)
            self.anchor = (step, factor) if step >= warm else None
        if self.dist.main:
            record_continuation(self.run_dir, self.cfg, self.plan, step, self.tokens_budget, self.total_steps)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, stop_after: int | None) -> dict:
        from gptlab.config import resolve

        ensure_data(self.cfg, self.dist, self.progress)
        # resolved again now that the data is prepared (a corpus vocabulary is read from its train split); a
        # resolved config's interventions are applied already
        self.cfg, _, self.vmap = resolve(self.cfg.to_dict(), where=f"{self.run_dir}: config", apply_interventions=False)
        self.plan = check_resume(self.cfg, self.run_dir, self.resume, self.continue_with, main=self.dist.main)
        self.cfg = self.plan.cfg
        if self.dist.main:
            loggers.require(self.cfg.train.loggers)  # a missing package stops the run before it starts
        self.dist.barrier()  # every rank has checked the run folder before rank 0 writes config.toml into it
        final_file = self.run_dir / "final.json"
        if final_file.exists():
            return read_json(final_file, "delete it and re-run with --resume to score the finished run again")
        self._open_data()
        self._build()
        p = self._start_or_resume()
        if self.dist.main:
            (self.run_dir / MARKER).unlink(missing_ok=True)  # a preempted run that starts again
        t, m = self.cfg.train, self.cfg.model
        peak = device_peak_flops(self.device)
        self.log = TrainLog(
            self.run_dir / "metrics.jsonl",
            self.dist.main,
            t.log_interval,
            self.step_tokens,
            self.total_steps,
            p.step,
            lambda tps: mfu(m, tps, peak * self.dist.world if peak else None, self.T),
            self.cfg.name,
            self.progress,
        )
        logged_until = self.log.keep_until(p.step) if p.step > 0 else -1  # -1: nothing logged yet
        if self.dist.main:
            self.log.loggers = loggers.open_loggers(self.cfg, self.run_dir, p.step, logged_until)
        ok = False
        try:
            out = self._train(p, stop_after)
            ok = True
            return out
        finally:
            self.log.close_loggers(ok)

    def _train(self, p: Progress, stop_after: int | None) -> dict:
        t = self.cfg.train
        self.trainer.train_model.train()
        t0, start_tokens = time.time(), p.tokens  # tokens/s fallback: what this process trained on
        if p.step == 0 and t.eval_interval:
            self.log.val_loss(0, self._eval(self.val_ds, t.micro_batch_size, n_batches=t.eval_batches))
        try:
            with Preemption() as pre:
                stopped = self._loop(p, stop_after, pre)
        finally:
            self.log.close()
        return stopped or self._finish(time.time() - t0, p, p.tokens - start_tokens)

    def _loop(self, p: Progress, stop_after: int | None, pre: Preemption) -> dict | None:
        """Train to the end (None), or until `stop_after` steps or a preemption signal (what was reached)."""
        start = p.step
        # the next steps' batches are read on a background thread while this one trains (data/prefetch.py)
        with Prefetcher(
            lambda s: list(self._micro_batches(s)), start=start, depth=2, stop=self.total_steps, device=self.device
        ) as self.batches:
            return self._steps(p, start, stop_after, pre)

    def _steps(self, p: Progress, start: int, stop_after: int | None, pre: Preemption) -> dict | None:
        t = self.cfg.train
        for step in range(start, self.total_steps):
            self._one_step(step, p)
            done = p.step
            if t.eval_interval and done % t.eval_interval == 0 and done != self.total_steps:
                self.log.val_loss(done, self._eval(self.val_ds, t.micro_batch_size, n_batches=t.eval_batches))
            stopping = stop_after is not None and done - start >= stop_after
            if (t.checkpoint_interval and done % t.checkpoint_interval == 0) or done == self.total_steps or stopping:
                self._checkpoint(p)
            if stopping and done != self.total_steps:
                return {"stopped_at": done, "total_steps": self.total_steps}
            if p.step != self.total_steps and pre.requested(self.dist, self.device):
                return self._preempted(p, pre.signal or "signal on another rank")
        return None

    def _preempted(self, p: Progress, why: str) -> dict:
        """Checkpoint where the loop stands and leave preempted.json, for the scheduler that starts it again."""
        if self.last_checkpoint != p.step:
            self._checkpoint(p)
        out = {"stopped_at": p.step, "total_steps": self.total_steps, "preempted": why}
        if self.dist.main:
            atomic_write_json(self.run_dir / MARKER, out)
        return out

    def _one_step(self, step: int, p: Progress) -> None:
        """Train step `step`. A step whose batch was skipped (non-finite loss or gradient) is done too: the
        weights stay as they were, and the checkpoint and eval schedule go on, so the final checkpoint is always
        the state final.json scores and a resume never repeats a skipped step."""
        self.trainer.set_lr(lr_factor(step, self.total_steps, self.cfg, self.warm_steps, self.anchor) * p.lr_scale)
        res = self.trainer.step(self.batches.get(step), self.accum)
        p.step = step + 1
        if not res.ok:
            self._skip(step, res, p)
            return
        p.tokens += res.tokens
        p.flops += flops_per_token(self.cfg.model, self.seq_len(step)) * res.tokens
        self.log.train_step(p.step, res.loss, self.trainer.lrs, res.grad_norm, res.tokens)

    def seq_len(self, step: int) -> int:
        """The sequence length of `step`: the context, or shorter during seq_len_warmup."""
        warm_steps = self.seq_warm_steps
        if warm_steps is None:
            warm_steps = int(self.cfg.train.seq_len_warmup_frac * self.total_steps)
        if warm_steps and step < warm_steps:
            return min(self.T, max(8, int(self.T * (step + 1) / warm_steps) // 8 * 8))
        return self.T

    def _micro_batches(self, step: int):
        """The micro-batches of this rank at `step`, cut to the warm-up length and mapped to the model's ids."""
        t, rank, world = self.cfg.train, self.dist.rank, self.dist.world
        cur_T = self.seq_len(step)
        for micro in range(self.accum):
            x, y = self.sampler.batch_at(step, micro, rank, world, t.micro_batch_size, t.global_batch_size)
            if cur_T < self.T:
                x, y = x[:, :cur_T], y[:, :cur_T]
            if self.vmap is not None:
                x, y = self.vmap.to_compact(x), self.vmap.to_compact(y)
            yield x, y

    def _skip(self, step: int, res, p: Progress) -> None:
        """A non-finite step: under fp16 the GradScaler's way (skip it, the scale is lowered, up to max_skips);
        otherwise nan_policy: stop, or skip the batch and halve the lr (up to max_skips)."""
        t = self.cfg.train
        msg = (
            f"non-finite {'loss' if not math.isfinite(res.loss) else 'gradient'} at step {step + 1} "
            f"(last good checkpoint: {latest_checkpoint(self.run_dir) or 'none'})"
        )
        if self.trainer.scaler.is_enabled() and p.skips < t.max_skips:
            p.skips += 1
            self.log.skipped(step + 1, msg + "; fp16: step skipped, loss scale lowered", p.lr_scale)
            return
        if t.nan_policy == "stop" or p.skips >= t.max_skips:
            raise GptlabError(
                f"{self.run_dir}: {msg}; stopping (train.nan_policy={t.nan_policy}, skips used {p.skips}/{t.max_skips})"
            )
        p.skips += 1
        p.lr_scale *= 0.5
        self.log.skipped(step + 1, msg, p.lr_scale)

    def _checkpoint(self, p: Progress) -> None:
        # the config trained under: a resume compares the config it is asked for with this one (rundir.check_resume)
        state = {
            "skips": p.skips,
            "lr_scale": p.lr_scale,
            "tokens": p.tokens,
            "flops": p.flops,
            "config_hash": self.cfg.hash(),
            "config": self.cfg.to_dict(),
            "total_steps": self.total_steps,
        }
        if self.warm_steps is not None:
            state["schedule"] = {
                "warmup_steps": self.warm_steps,
                "seq_len_warmup_steps": self.seq_warm_steps,
                "anchor": list(self.anchor) if self.anchor else None,
            }
        self.trainer.save(
            self.run_dir, p.step, state, keep=self.cfg.train.keep_checkpoints or None, protect=self.resumed_from
        )
        self.last_checkpoint = p.step

    def _eval(self, ds, batch_size: int, offset: int = 0, n_batches: int = 0) -> float:
        # FSDP: every rank runs every batch (its forward needs all ranks); else batches are split over ranks
        tr = self.trainer
        return evaluate_loss(
            tr.model,
            ds,
            self.T,
            batch_size,
            self.device,
            self.precision,
            offset=offset,
            n_batches=n_batches,
            dist_=None if tr.fsdp else self.dist,
            vocab_map=self.vmap,
        )

    def _finish(self, wall: float, p: Progress, tokens_here: int) -> dict:
        """Val loss (eval_batches) and the test spec's loss, into final.json."""
        t, e = self.cfg.train, self.cfg.eval
        val_loss = self._eval(self.val_ds, t.micro_batch_size, n_batches=t.eval_batches)
        test_loss = self._eval(self.test_ds, e.batch_size, offset=e.offset, n_batches=e.batches)
        rows = self.log.rows()
        train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
        final = {  # tokens and FLOPs as trained (the budget check of reports compares these), and as planned
            "name": self.cfg.name,
            "steps": self.total_steps,
            "tokens": p.tokens,
            "params": self.n_params,
            "flops": p.flops,
            "tokens_planned": self.total_steps * self.step_tokens,
            "train_loss": float(np.mean(train_losses[-5:])) if train_losses else None,
            "val_loss": val_loss,
            "test_loss": test_loss,
            "test_perplexity": perplexity(test_loss),
            "wall_time": wall,
            "tokens_per_s": median_tokens_per_s(rows) or (tokens_here / wall if wall > 0 else None),
            "skipped_batches": p.skips,
            "precision": self.precision,
            "device": str(self.device),
            "world_size": self.dist.world,
        }
        if self.vmap is not None:  # test tokens the train split never had count as <|endoftext|>: say how many
            from gptlab.data.loader import eval_span

            start, stop = eval_span(self.test_ds, self.T, e.batch_size, e.offset, e.batches)
            final["test_tokens_outside_vocab"] = self.vmap.count_outside(self.test_ds, start, stop)
            final["test_tokens_evaluated"] = stop - start
        if self.dist.main:
            self.log.val_loss(self.total_steps, val_loss)
            atomic_write_json(self.run_dir / "final.json", final)
        self.dist.barrier()
        return final
