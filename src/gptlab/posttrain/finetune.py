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
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID
from gptlab.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    commit_dir,
    file_sha256,
)
from gptlab.posttrain.instructions import (
    IGNORE_INDEX,
    TEST_FILE,
    build_example,
    collate,
    epoch_batches,
    load_records,
    split_indices,
)

SPLIT_FILE = "split.json"
RESULT_FILE = "finetune.json"
# arguments that must match when a fine-tune is resumed
_RESUME_KEYS = ("base_run", "data_sha256", "lr", "batch_size", "max_len", "val_frac", "test_frac", "seed",
                "weight_decay", "dropout", "grad_clip")


_sha256 = file_sha256


# --------------------------------------------------------------------------------------------
# Checkpoints: checkpoints/step_N dirs; `latest` -> best weights, `resume` -> newest training state
# --------------------------------------------------------------------------------------------


def _write_ckpt(out_dir: Path, step: int, model, opt, state: dict) -> str:
    from safetensors.torch import save_model

    ckdir = out_dir / "checkpoints"
    name = f"step_{step:07d}"
    final, tmp = ckdir / name, ckdir / f".tmp_{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / "rng.pt")
    atomic_write_json(tmp / "state.json", state)
    commit_dir(tmp, final)
    return name


def _pointer(out_dir: Path, which: str) -> str | None:
    p = out_dir / "checkpoints" / which
    if not p.is_file():
        return None
    name = p.read_text().strip()
    return name if (out_dir / "checkpoints" / name).is_dir() else None


def _prune(out_dir: Path) -> None:
    """Keep only the best (latest) and resume checkpoints; the best one needs no optimizer state."""
    ckdir = out_dir / "checkpoints"
    keep = {_pointer(out_dir, "latest"), _pointer(out_dir, "resume")}
    for p in ckdir.glob("step_*"):
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    best, res = _pointer(out_dir, "latest"), _pointer(out_dir, "resume")
    if best and best != res:
        for f in ("optimizer.pt", "rng.pt"):
            (ckdir / best / f).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def _masked_loss(model, x, y, precision, device, reduction="mean"):
    from gptlab.train import autocast_ctx

    with autocast_ctx(precision, device):
        logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)


@torch.no_grad()
def masked_eval_loss(model, examples, batch_size, pad_id, device, precision) -> float | None:
    """Mean cross-entropy over response targets (nats/token); None for an empty set."""
    if not examples:
        return None
    was = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total, count = 0.0, 0
    for s in range(0, len(order), batch_size):
        x, y = collate([examples[i] for i in order[s:s + batch_size]], pad_id)
        x, y = x.to(device), y.to(device)
        total += float(_masked_loss(model, x, y, precision, device, reduction="sum"))
        count += int((y != IGNORE_INDEX).sum())
    model.train(was)
    return total / count if count else None


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------


def finetune(run_dir: str | Path, data_file: str | Path, out_dir: str | Path, *, epochs: int = 2,
             lr: float = 5e-5, batch_size: int = 8, max_len: int | None = None, val_frac: float = 0.1,
             test_frac: float = 0.1, seed: int = 123, weight_decay: float = 0.1, dropout: float | None = 0.0,
             patience: int = 3, grad_clip: float = 0.0, checkpoint_interval: int = 0, device: str = "auto",
             progress: bool = True, resume: bool = False, stop_after: int | None = None) -> dict:
    """Instruction-fine-tune the latest checkpoint of `run_dir` on `data_file`, writing run directory `out_dir`.

    dropout: drop rate during fine-tuning (0 = off, the default; None = the base run's model.drop_rate).
    patience: stop after this many epochs without a better validation loss (0 = never stop early).
    checkpoint_interval: also save a resumable checkpoint every N optimizer steps (0 = at epoch ends only).
    stop_after: stop (with a checkpoint) after N optimizer steps of this call — simulates an interruption.
    Returns the contents of finetune.json.
    """
    from gptlab.config import config_from_run
    from gptlab.data.vocab import RUN_FILE, load_vocab_map
    from gptlab.model import GPTModel
    from gptlab.train import (
        RunLock,
        latest_checkpoint,
        load_model_weights,
        resolve_device,
        resolve_precision,
    )

    run_dir, out_dir, data_path = Path(run_dir), Path(out_dir), Path(data_file)
    for name, v, ok in (("epochs", epochs, epochs >= 1), ("batch_size", batch_size, batch_size >= 1),
                        ("lr", lr, lr > 0), ("patience", patience, patience >= 0),
                        ("weight_decay", weight_decay, weight_decay >= 0)):
        if not ok:
            raise GptlabError(f"finetune: {name}: invalid value {v!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise GptlabError(f"finetune: dropout: must be in [0, 1), got {dropout}")
    cfg = config_from_run(run_dir)
    base_ck = latest_checkpoint(run_dir)
    if base_ck is None:
        raise GptlabError(f"{run_dir}: no checkpoint to fine-tune (checkpoints/latest missing)")
    if out_dir.resolve() == run_dir.resolve():
        raise GptlabError(f"{out_dir}: the output directory must differ from the base run")
    if (out_dir / "config.toml").exists() and not (out_dir / SPLIT_FILE).exists():
        raise GptlabError(f"{out_dir}: is a pre-training run directory, not a fine-tune; choose another --out")
    ctx = cfg.model.context_length
    max_len = ctx if max_len is None else int(max_len)
    if not 1 <= max_len <= ctx:
        raise GptlabError(f"finetune: max_len: must be in [1, {ctx}] (the model's context), got {max_len}")
    records = load_records(data_path)
    vm = load_vocab_map(run_dir)
    if vm is not None and len(vm) != cfg.model.vocab_size:
        raise GptlabError(f"{run_dir / RUN_FILE}: {len(vm)} ids but model.vocab_size is {cfg.model.vocab_size}")
    pad_id = int(vm.lut[EOT_ID]) if vm is not None else EOT_ID
    args = {"base_run": str(run_dir.resolve()), "base_checkpoint": base_ck.name, "data_file": str(data_path.resolve()),
            "data_sha256": _sha256(data_path), "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "max_len": max_len, "val_frac": val_frac, "test_frac": test_frac, "seed": seed,
            "weight_decay": weight_decay, "dropout": cfg.model.drop_rate if dropout is None else dropout,
            "patience": patience, "grad_clip": grad_clip}

    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir):
        split_path = out_dir / SPLIT_FILE
        if split_path.exists():
            if not resume:
                raise GptlabError(f"{out_dir}: already holds a fine-tune; pass --resume to continue it or "
                                  f"choose another --out")
            saved = json.loads(split_path.read_text())
            old = saved.get("args", {})
            diff = [k for k in _RESUME_KEYS if old.get(k) != args[k]]
            if diff:
                raise GptlabError(f"{split_path}: resume with different settings ({', '.join(diff)}: was "
                                  f"{', '.join(repr(old.get(k)) for k in diff)})")
            split = saved["split"]
            done = out_dir / RESULT_FILE
            if done.exists():
                res = json.loads(done.read_text())
                if res.get("finished") and (res.get("stopped_early") or res.get("epochs_run", 0) >= epochs):
                    return res
        else:
            split = split_indices(len(records), val_frac, test_frac, seed)
            atomic_write_text(out_dir / "config.toml", (run_dir / "config.toml").read_text())
            if (run_dir / RUN_FILE).exists():
                atomic_write_bytes(out_dir / RUN_FILE, (run_dir / RUN_FILE).read_bytes())
            atomic_write_json(out_dir / TEST_FILE, [records[i] for i in split["test"]])
            atomic_write_json(split_path, {"args": args, "n_records": len(records), "split": split,
                                           "test_file": TEST_FILE})
        return _finetune(cfg, run_dir, out_dir, records, split, args, vm, pad_id, epochs, resume, device,
                         progress, checkpoint_interval, stop_after, GPTModel, load_model_weights,
                         resolve_device, resolve_precision, base_ck)


def _finetune(cfg, run_dir, out_dir, records, split, args, vm, pad_id, epochs, resume, device, progress,
              checkpoint_interval, stop_after, GPTModel, load_model_weights, resolve_device, resolve_precision,
              base_ck) -> dict:
    dev = resolve_device(device)
    precision = resolve_precision("auto", dev)
    max_len, bs, seed = args["max_len"], args["batch_size"], args["seed"]

    stats = {"unknown_tokens": 0}

    def examples(part: str) -> tuple[list, int]:
        ex = [build_example(records[i], max_len, vm, stats) for i in split[part]]
        kept = [e for e in ex if e is not None]
        return kept, len(ex) - len(kept)

    train_ex, drop_train = examples("train")
    val_ex, drop_val = examples("val")
    test_ex, drop_test = examples("test")
    if not train_ex:
        raise GptlabError(f"{args['data_file']}: no training record fits max_len={max_len} tokens with at least "
                          f"one response token")
    lengths = [len(ids) for ids, _ in train_ex]
    n_batches = math.ceil(len(train_ex) / bs)

    torch.manual_seed(seed)
    mcfg = dataclasses.replace(cfg.model, drop_rate=args["dropout"])
    model = GPTModel(mcfg)
    opt_kwargs = {"fused": True} if dev.type == "cuda" else {}
    resume_name = _pointer(out_dir, "resume") if resume else None
    state: dict
    if resume_name is not None:
        ck = out_dir / "checkpoints" / resume_name
        load_model_weights(model, ck / "model.safetensors")
        model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=args["lr"], weight_decay=args["weight_decay"], **opt_kwargs)
        try:
            opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True))
            rng = torch.load(ck / "rng.pt", weights_only=True)
            state = json.loads((ck / "state.json").read_text())
        except (OSError, RuntimeError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise GptlabError(f"{ck}: unreadable checkpoint state ({str(e).splitlines()[0][:200]})") from None
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    else:
        load_model_weights(model, base_ck / "model.safetensors")
        model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=args["lr"], weight_decay=args["weight_decay"], **opt_kwargs)
        state = {"epoch": 1, "batch": 0, "step": 0, "history": [], "best_val": None, "best_epoch": None,
                 "bad_epochs": 0, "loss_sum": 0.0, "loss_n": 0, "stopped_early": False, "wall_time": 0.0,
                 "val_loss_before": masked_eval_loss(model, val_ex, bs, pad_id, dev, precision)}
    if state["batch"] >= n_batches:  # the checkpoint closed an epoch
        state.update(epoch=state["epoch"] + 1, batch=0, loss_sum=0.0, loss_n=0)

    def summary(finished: bool) -> dict:
        res = {
            "base_run": args["base_run"], "base_checkpoint": args["base_checkpoint"], "data_file": args["data_file"],
            "records": len(records), "split": {k: len(v) for k, v in split.items()},
            "dropped_too_long": {"train": drop_train, "val": drop_val, "test": drop_test},
            "unknown_tokens": stats["unknown_tokens"],
            "args": args, "epochs_run": len(state["history"]), "steps": state["step"],
            "history": state["history"], "val_loss_before": state["val_loss_before"],
            "best_epoch": state["best_epoch"], "best_val_loss": state["best_val"],
            "stopped_early": state["stopped_early"], "device": str(dev), "precision": precision,
            "wall_time": state["wall_time"], "finished": finished,
        }
        res.update(extra)
        return res

    extra: dict = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * n_batches, initial=min(epochs * n_batches, (state["epoch"] - 1) * n_batches
                                                         + state["batch"]),
                   desc=f"finetune {out_dir.name}", unit="step", dynamic_ncols=True, file=sys.stderr)
    t0 = time.time()
    wall0 = state["wall_time"]
    steps_this_call = 0
    model.train()

    def save(pointers: tuple[str, ...]) -> None:
        state["wall_time"] = wall0 + time.time() - t0
        name = _write_ckpt(out_dir, state["step"], model, opt, state)
        for p in pointers:
            atomic_write_text(out_dir / "checkpoints" / p, name + "\n")
        _prune(out_dir)

    try:
        while state["epoch"] <= epochs and not state["stopped_early"]:
            epoch = state["epoch"]
            batches = epoch_batches(lengths, bs, seed, epoch)
            for b in range(state["batch"], n_batches):
                x, y = collate([train_ex[i] for i in batches[b]], pad_id)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                loss = _masked_loss(model, x, y, precision, dev)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if args["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args["grad_clip"])
                opt.step()
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise GptlabError(f"{out_dir}: non-finite loss at epoch {epoch}, batch {b + 1}; lower --lr "
                                      f"(last good checkpoint: {_pointer(out_dir, 'resume') or 'none'})")
                state["loss_sum"] += lv
                state["loss_n"] += 1
                state["batch"] = b + 1
                state["step"] += 1
                steps_this_call += 1
                if bar:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{lv:.3f}")
                if b + 1 == n_batches:
                    break
                interrupted = stop_after is not None and steps_this_call >= stop_after
                if interrupted or (checkpoint_interval and state["step"] % checkpoint_interval == 0):
                    save(("resume",))
                if interrupted:
                    atomic_write_json(out_dir / RESULT_FILE, summary(False))
                    return summary(False) | {"stopped_at": state["step"]}
            # end of epoch: validate, keep the best
            val = masked_eval_loss(model, val_ex, bs, pad_id, dev, precision)
            state["history"].append({"epoch": epoch, "step": state["step"],
                                     "train_loss": state["loss_sum"] / max(1, state["loss_n"]), "val_loss": val})
            better = val is None or state["best_val"] is None or val < state["best_val"]
            if better:
                state["best_val"], state["best_epoch"], state["bad_epochs"] = val, epoch, 0
            else:
                state["bad_epochs"] += 1
                if args["patience"] and state["bad_epochs"] >= args["patience"]:
                    state["stopped_early"] = True
            if bar:
                bar.set_postfix(epoch=epoch, val=f"{val:.3f}" if val is not None else "-")
            save(("latest", "resume") if better else ("resume",))
            state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_n=0)
            atomic_write_json(out_dir / RESULT_FILE, summary(False))
            if stop_after is not None and steps_this_call >= stop_after and state["epoch"] <= epochs \
                    and not state["stopped_early"]:
                return summary(False) | {"stopped_at": state["step"]}
    finally:
        if bar:
            bar.close()

    # test loss of the best weights
    best = _pointer(out_dir, "latest")
    if best and best != _pointer(out_dir, "resume"):
        load_model_weights(model, out_dir / "checkpoints" / best / "model.safetensors")
    extra["test_loss"] = masked_eval_loss(model, test_ex, bs, pad_id, dev, precision)
    res = summary(True)
    atomic_write_json(out_dir / RESULT_FILE, res)
    return res


__all__ = ["finetune", "masked_eval_loss"]
