"""Instruction fine-tuning (supervised, "SFT") as in chapter 7 of Raschka's "Build a Large Language Model
(from Scratch)": Alpaca-format records rendered with the book's prompt template, loss on the response only.

Data: a JSON list (or JSONL, one object a line) of {"instruction", "input", "output"} records; "input" may be
missing or empty. No instruction data set ships with gptlab: none of the PyPI packages that could carry one
(llms-from-scratch, alpaca-eval, alpaca-farm) includes the records. Point `--data` at a local file, e.g. the
book's `instruction-data.json` (1,100 records; in the book's repository rasbt/LLMs-from-scratch under
ch07/01_main-chapter-code/) or Stanford Alpaca's `alpaca_data.json` (52k records, CC BY-NC 4.0).

Each record becomes   prompt ids + response ids + <|endoftext|>.   A batch is padded with <|endoftext|>; targets
are the inputs shifted by one, with -100 (ignored by the loss) on every position whose target is a prompt
token or padding. The first <|endoftext|> after the response stays a target, so the model learns to stop.
With a base run's compact vocabulary (vocab_map.npy), a GPT-2 token outside it is read as <|endoftext|> and is
never a target (-100); finetune.json counts such tokens ("unknown_tokens").

Records are split once, deterministically (seeded permutation), into train / val / test; the indices are stored
in OUT/split.json and the held-out test records in OUT/test_data.json (the judge's default set). Batches are
built by length (records sorted by token count, ties broken at random, cut into batches, batch order shuffled
each epoch with the seed), so padding stays small.

OUT is itself a run directory: config.toml (copied from the base run), vocab_map.npy (if the base run has one),
checkpoints/latest -> the best-validation weights, so `load_run_model(OUT)`, `gptlab generate OUT` and
`gptlab serve OUT` work. checkpoints/resume -> the newest training state (weights, optimizer, RNG) for
`resume=True`. finetune.json holds the per-epoch losses, split sizes and the base run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID
from gptlab.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_json,
)
from gptlab.model import GPTModel
from gptlab.posttrain.instructions import (
    TEST_FILE,
    build_example,
    collate,
    epoch_batches,
    load_records,
    split_indices,
)
from gptlab.posttrain.settings import FinetuneSettings, resolve
from gptlab.train.checkpoint import (
    drop_training_state,
    latest_checkpoint,
    load_model_weights,
    pointed,
    resume_point,
)
from gptlab.train.distributed import resolve_device, resolve_precision
from gptlab.train.evaluate import IGNORE_INDEX, loss_sum
from gptlab.train.metrics import progress_bar
from gptlab.train.optim import OptimSettings
from gptlab.train.rundir import RunLock
from gptlab.train.trainer import Trainer

SPLIT_FILE = "split.json"
RESULT_FILE = "finetune.json"
# arguments that must match when a fine-tune is resumed
_RESUME_KEYS = (
    "base_run",
    "data_sha256",
    "lr",
    "batch_size",
    "max_len",
    "val_frac",
    "test_frac",
    "seed",
    "weight_decay",
    "dropout",
    "grad_clip",
)


def finetune(
    run_dir: str | Path,
    data_file: str | Path,
    out_dir: str | Path,
    settings: FinetuneSettings | None = None,
    *,
    overrides: list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
    stop_after: int | None = None,
    **values,
) -> dict:
    """Instruction-fine-tune the latest checkpoint of `run_dir` on `data_file`, writing run directory `out_dir`.

    The settings (FinetuneSettings: epochs, lr, batch_size, ...) are `settings`, else its defaults, with `values`
    (e.g. epochs=3) and `--set NAME=VALUE` `overrides` on top, all checked against their declarations.
    dropout -1 = the base run's model.drop_rate; patience 0 = never stop early; checkpoint_interval N = also save
    a resumable checkpoint every N optimizer steps (0 = at epoch ends only).
    stop_after: stop (with a checkpoint) after N optimizer steps of this call — simulates an interruption.
    Returns the contents of finetune.json.
    """
    from gptlab.config import config_from_run
    from gptlab.data.vocab import load_vocab_map

    run_dir, out_dir, data_path = Path(run_dir), Path(out_dir), Path(data_file)
    base = dataclasses.asdict(settings) if settings is not None else {}
    st = resolve(FinetuneSettings, base | values, overrides, "finetune")
    cfg = config_from_run(run_dir)
    base_ck = latest_checkpoint(run_dir)
    if base_ck is None:
        raise GptlabError(f"{run_dir}: no checkpoint to fine-tune (checkpoints/latest missing)")
    if out_dir.resolve() == run_dir.resolve():
        raise GptlabError(f"{out_dir}: the output directory must differ from the base run")
    if (out_dir / "config.toml").exists() and not (out_dir / SPLIT_FILE).exists():
        raise GptlabError(f"{out_dir}: is a pre-training run directory, not a fine-tune; choose another --out")
    ctx = cfg.model.context_length
    max_len = ctx if st.max_len is None else st.max_len
    if not 1 <= max_len <= ctx:
        raise GptlabError(f"finetune: max_len: must be in [1, {ctx}] (the model's context), got {max_len}")
    records = load_records(data_path)
    vm = load_vocab_map(run_dir, cfg.model.vocab_size)
    args = {
        "base_run": str(run_dir.resolve()),
        "base_checkpoint": base_ck.name,
        "data_file": str(data_path.resolve()),
        "data_sha256": file_sha256(data_path),
        "epochs": st.epochs,
        "lr": st.lr,
        "batch_size": st.batch_size,
        "max_len": max_len,
        "val_frac": st.val_frac,
        "test_frac": st.test_frac,
        "seed": st.seed,
        "weight_decay": st.weight_decay,
        "dropout": cfg.model.drop_rate if st.dropout == -1 else st.dropout,
        "patience": st.patience,
        "grad_clip": st.grad_clip,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir):
        split, finished = _open_out_dir(run_dir, out_dir, records, args, resume)
        if finished is not None:
            return finished
        pad_id = int(vm.lut[EOT_ID]) if vm is not None else EOT_ID
        job = FineTuning(cfg, out_dir, records, split, args, vm, pad_id, resolve_device(st.device))
        return job.run(base_ck, st.epochs, resume, progress, st.checkpoint_interval, stop_after)


def _open_out_dir(
    run_dir: Path, out_dir: Path, records: list[dict], args: dict, resume: bool
) -> tuple[dict, dict | None]:
    """(the record split, finetune.json if the fine-tune has finished). A new fine-tune: split the records and
    write the run files. An existing one (only with `resume`): check its settings match."""
    from gptlab.data.vocab import RUN_FILE

    split_path = out_dir / SPLIT_FILE
    if not split_path.exists():
        split = split_indices(len(records), args["val_frac"], args["test_frac"], args["seed"])
        atomic_write_text(out_dir / "config.toml", (run_dir / "config.toml").read_text())
        if (run_dir / RUN_FILE).exists():
            atomic_write_bytes(out_dir / RUN_FILE, (run_dir / RUN_FILE).read_bytes())
        atomic_write_json(out_dir / TEST_FILE, [records[i] for i in split["test"]])
        atomic_write_json(split_path, {"args": args, "n_records": len(records), "split": split, "test_file": TEST_FILE})
        return split, None
    if not resume:
        raise GptlabError(f"{out_dir}: already holds a fine-tune; pass --resume to continue it or choose another --out")
    saved = read_json(split_path, "start the fine-tune afresh in another --out")
    old = saved.get("args", {})
    diff = [k for k in _RESUME_KEYS if old.get(k) != args[k]]
    if diff:
        raise GptlabError(
            f"{split_path}: resume with different settings ({', '.join(diff)}: was "
            f"{', '.join(repr(old.get(k)) for k in diff)})"
        )
    done = out_dir / RESULT_FILE
    if done.exists():
        res = read_json(done)
        if res.get("finished") and (res.get("stopped_early") or res.get("epochs_run", 0) >= args["epochs"]):
            return saved["split"], res
    return saved["split"], None


def model_example(record: dict, max_len: int, vm, stats: dict) -> tuple[list[int], int] | None:
    """build_example in the model's ids: with a compact vocabulary `vm`, a token outside it becomes IGNORE_INDEX
    (read as <|endoftext|> by `batch`, never a target) and is counted in stats["unknown_tokens"]. None when no
    response token fits max_len or every response target is unknown."""
    ex = build_example(record, max_len)
    if ex is None or vm is None:
        return ex
    ids, n_prompt = ex
    t = torch.tensor(ids, dtype=torch.long)
    mapped = vm.lut[t]
    unknown = torch.from_numpy(vm.ids)[mapped] != t
    stats["unknown_tokens"] += int(unknown.sum())
    if unknown[n_prompt:].all():
        return None
    return mapped.masked_fill(unknown, IGNORE_INDEX).tolist(), n_prompt


def batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """collate, with unknown tokens (IGNORE_INDEX ids from model_example) read as pad_id (<|endoftext|>); as
    targets collate already ignores them."""
    x, y = collate(examples, pad_id)
    return x.masked_fill_(x == IGNORE_INDEX, pad_id), y


def masked_eval_loss(model, examples, batch_size, pad_id, device, precision) -> float | None:
    """Mean cross-entropy over response targets (nats/token); None for an empty set."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = (
        batch([examples[i] for i in order[s : s + batch_size]], pad_id) for s in range(0, len(order), batch_size)
    )
    total, count = loss_sum(model, batches, device, precision)
    return total / count if count else None


class FineTuning:
    """The loop of one fine-tune: epochs of length-grouped batches through a Trainer, validation at each epoch's
    end (the best epoch's weights are `checkpoints/latest`), early stopping, resumable checkpoints
    (`checkpoints/resume`), and finetune.json after every epoch."""

    def __init__(
        self, cfg, out_dir: Path, records: list[dict], split: dict, args: dict, vm, pad_id: int, device: torch.device
    ):
        self.cfg, self.out_dir, self.records, self.split, self.args = cfg, out_dir, records, split, args
        self.pad_id, self.device = pad_id, device
        self.precision = resolve_precision("auto", device)
        self.unknown = {"unknown_tokens": 0}
        self.train_ex, drop_train = self._examples("train", vm)
        self.val_ex, drop_val = self._examples("val", vm)
        self.test_ex, drop_test = self._examples("test", vm)
        self.dropped = {"train": drop_train, "val": drop_val, "test": drop_test}
        if not self.train_ex:
            raise GptlabError(
                f"{args['data_file']}: no training record fits max_len={args['max_len']} tokens with "
                f"at least one response token"
            )
        self.n_batches = math.ceil(len(self.train_ex) / args["batch_size"])
        self.extra: dict = {}

    def _examples(self, part: str, vm) -> tuple[list, int]:
        ex = [model_example(self.records[i], self.args["max_len"], vm, self.unknown) for i in self.split[part]]
        kept = [e for e in ex if e is not None]
        return kept, len(ex) - len(kept)

    def _val_loss(self, examples) -> float | None:
        return (
            masked_eval_loss(
                self.trainer.model, examples, self.args["batch_size"], self.pad_id, self.device, self.precision
            )
            if examples
            else None
        )

    # ---- setup ---------------------------------------------------------------------------------

    def _start(self, base_ck: Path, resume: bool) -> None:
        args = self.args
        torch.manual_seed(args["seed"])
        model = GPTModel(dataclasses.replace(self.cfg.model, drop_rate=args["dropout"]))
        resume_ck = resume_point(self.out_dir, "resume") if resume else None  # the newest intact one, or None
        self.resumed_from = (resume_ck,) if resume_ck else ()  # never pruned by this process
        if resume_ck is None:
            load_model_weights(model, base_ck / "model.safetensors")
        model.to(self.device)
        self.trainer = Trainer(
            model,
            OptimSettings(lr=args["lr"], weight_decay=args["weight_decay"]),
            self.device,
            self.precision,
            grad_clip=args["grad_clip"],
        )
        if resume_ck is not None:
            self.state = self.trainer.restore(resume_ck)
        else:
            self.state = {
                "epoch": 1,
                "batch": 0,
                "step": 0,
                "history": [],
                "best_val": None,
                "best_epoch": None,
                "bad_epochs": 0,
                "loss_sum": 0.0,
                "loss_n": 0,
                "stopped_early": False,
                "wall_time": 0.0,
                "val_loss_before": self._val_loss(self.val_ex),
            }
        if self.state["batch"] >= self.n_batches:  # the checkpoint closed an epoch
            self.state.update(epoch=self.state["epoch"] + 1, batch=0, loss_sum=0.0, loss_n=0)

    # ---- the loop ------------------------------------------------------------------------------

    def run(
        self, base_ck: Path, epochs: int, resume: bool, progress: bool, checkpoint_interval: int, stop_after: int | None
    ) -> dict:
        self._start(base_ck, resume)
        s, nb = self.state, self.n_batches
        self.bar = progress_bar(
            epochs * nb, min(epochs * nb, (s["epoch"] - 1) * nb + s["batch"]), f"finetune {self.out_dir.name}", progress
        )
        self.t0, self.wall0, self.steps_this_call = time.time(), s["wall_time"], 0
        self.trainer.model.train()
        try:
            while s["epoch"] <= epochs and not s["stopped_early"]:
                if not self._epoch(checkpoint_interval, stop_after):
                    atomic_write_json(self.out_dir / RESULT_FILE, self.summary(False))
                    return self.summary(False) | {"stopped_at": s["step"]}
                self._end_epoch()
                atomic_write_json(self.out_dir / RESULT_FILE, self.summary(False))
                if (
                    stop_after is not None
                    and self.steps_this_call >= stop_after
                    and s["epoch"] <= epochs
                    and not s["stopped_early"]
                ):
                    return self.summary(False) | {"stopped_at": s["step"]}
        finally:
            if self.bar:
                self.bar.close()
        return self._finish()

    def _epoch(self, checkpoint_interval: int, stop_after: int | None) -> bool:
        """Train the rest of the current epoch; False when interrupted by `stop_after` (after a checkpoint)."""
        s, args = self.state, self.args
        epoch = s["epoch"]
        batches = epoch_batches([len(ids) for ids, _ in self.train_ex], args["batch_size"], args["seed"], epoch)
        for b in range(s["batch"], self.n_batches):
            res = self.trainer.step([batch([self.train_ex[i] for i in batches[b]], self.pad_id)], accum=1)
            if not res.ok:
                raise GptlabError(
                    f"{self.out_dir}: non-finite loss at epoch {epoch}, batch {b + 1}; lower --lr "
                    f"(last good checkpoint: {self._pointer('resume') or 'none'})"
                )
            s["loss_sum"] += res.loss
            s["loss_n"] += 1
            s["batch"], s["step"] = b + 1, s["step"] + 1
            self.steps_this_call += 1
            if self.bar:
                self.bar.update(1)
                self.bar.set_postfix(epoch=epoch, loss=f"{res.loss:.3f}")
            if b + 1 == self.n_batches:
                break
            interrupted = stop_after is not None and self.steps_this_call >= stop_after
            if interrupted or (checkpoint_interval and s["step"] % checkpoint_interval == 0):
                self._save(("resume",))
            if interrupted:
                return False
        return True

    def _end_epoch(self) -> None:
        """Validate, keep the best weights as `latest`, count epochs without improvement."""
        s = self.state
        epoch, val = s["epoch"], self._val_loss(self.val_ex)
        s["history"].append(
            {"epoch": epoch, "step": s["step"], "train_loss": s["loss_sum"] / max(1, s["loss_n"]), "val_loss": val}
        )
        better = val is None or s["best_val"] is None or val < s["best_val"]
        if better:
            s["best_val"], s["best_epoch"], s["bad_epochs"] = val, epoch, 0
        else:
            s["bad_epochs"] += 1
            if self.args["patience"] and s["bad_epochs"] >= self.args["patience"]:
                s["stopped_early"] = True
        if self.bar:
            self.bar.set_postfix(epoch=epoch, val=f"{val:.3f}" if val is not None else "-")
        self._save(("latest", "resume") if better else ("resume",))
        s.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_n=0)

    def _save(self, pointers: tuple[str, ...]) -> None:
        """Checkpoint with `pointers`; keep only the best (latest) and resume ones, the best without optimizer."""
        self.state["wall_time"] = self.wall0 + time.time() - self.t0
        self.trainer.save(
            self.out_dir, self.state["step"], self.state, pointers=pointers, keep=0, protect=self.resumed_from
        )
        best, res = pointed(self.out_dir, "latest"), pointed(self.out_dir, "resume")
        if best and best != res:
            drop_training_state(best)

    def _pointer(self, name: str) -> str | None:
        ck = pointed(self.out_dir, name)
        return ck.name if ck else None

    def _finish(self) -> dict:
        """Test loss of the best weights."""
        best = pointed(self.out_dir, "latest")
        if best and best != pointed(self.out_dir, "resume"):
            load_model_weights(self.trainer.model, best / "model.safetensors")
        self.extra["test_loss"] = self._val_loss(self.test_ex)
        res = self.summary(True)
        atomic_write_json(self.out_dir / RESULT_FILE, res)
        return res

    def summary(self, finished: bool) -> dict:
        s, a = self.state, self.args
        return {
            "base_run": a["base_run"],
            "base_checkpoint": a["base_checkpoint"],
            "data_file": a["data_file"],
            "records": len(self.records),
            "split": {k: len(v) for k, v in self.split.items()},
            "dropped_too_long": self.dropped,
            "unknown_tokens": self.unknown["unknown_tokens"],
            "args": a,
            "epochs_run": len(s["history"]),
            "steps": s["step"],
            "history": s["history"],
            "val_loss_before": s["val_loss_before"],
            "best_epoch": s["best_epoch"],
            "best_val_loss": s["best_val"],
            "stopped_early": s["stopped_early"],
            "device": str(self.device),
            "precision": self.precision,
            "wall_time": s["wall_time"],
            "finished": finished,
            **self.extra,
        }


__all__ = ["finetune", "masked_eval_loss", "model_example", "batch", "FineTuning"]
