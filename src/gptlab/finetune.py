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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import GptlabError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, commit_dir, file_sha256
from .tokenizer import EOT_ID, encode

PROMPT_HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.")
IGNORE_INDEX = -100
SPLIT_FILE = "split.json"
TEST_FILE = "test_data.json"
RESULT_FILE = "finetune.json"
# arguments that must match when a fine-tune is resumed
_RESUME_KEYS = ("base_run", "data_sha256", "lr", "batch_size", "max_len", "val_frac", "test_frac", "seed",
                "weight_decay", "dropout", "grad_clip")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def format_input(record: dict) -> str:
    """The book's `format_input`: header, instruction and (if not empty) input, without the response header."""
    text = f"{PROMPT_HEADER}\n\n### Instruction:\n{record['instruction']}"
    if record.get("input"):
        text += f"\n\n### Input:\n{record['input']}"
    return text


def format_prompt(record: dict) -> str:
    """format_input + "\\n\\n### Response:\\n": everything the model sees before its answer."""
    return format_input(record) + "\n\n### Response:\n"


def _check_record(rec: Any, i: int, where: str) -> dict:
    if not isinstance(rec, dict):
        raise GptlabError(f"{where}: record {i}: expected an object with instruction/input/output, "
                          f"got {type(rec).__name__}")
    for key in ("instruction", "output"):
        if key not in rec:
            raise GptlabError(f"{where}: record {i}: missing field '{key}'")
        if not isinstance(rec[key], str):
            raise GptlabError(f"{where}: record {i}: field '{key}' must be a string, got {type(rec[key]).__name__}")
    inp = rec.get("input")
    if inp is not None and not isinstance(inp, str):
        raise GptlabError(f"{where}: record {i}: field 'input' must be a string, got {type(inp).__name__}")
    if not rec["instruction"].strip():
        raise GptlabError(f"{where}: record {i}: field 'instruction' is empty")
    return {"instruction": rec["instruction"], "input": inp or "", "output": rec["output"]}


def load_records(path: str | Path) -> list[dict]:
    """Read and validate Alpaca-format records (.json list or .jsonl); one-line errors name the record."""
    p = Path(path)
    if not p.is_file():
        raise GptlabError(f"{p}: instruction data file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GptlabError(f"{p}: not UTF-8 text") from None
    except OSError as e:
        raise GptlabError(f"{p}: unreadable ({e.strerror})") from None
    if p.suffix.lower() == ".jsonl":
        raw = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise GptlabError(f"{p}: line {n}: not JSON ({e.msg})") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{p}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); expected a list of "
                              f"{{instruction, input, output}} records (or use .jsonl)") from None
        if not isinstance(raw, list):
            raise GptlabError(f"{p}: expected a JSON list of {{instruction, input, output}} records, "
                              f"got {type(raw).__name__}")
    if not raw:
        raise GptlabError(f"{p}: contains no records")
    return [_check_record(r, i, str(p)) for i, r in enumerate(raw)]


def split_indices(n: int, val_frac: float, test_frac: float, seed: int) -> dict[str, list[int]]:
    """Seeded permutation of range(n) cut into test, val and train (in that order)."""
    for name, f in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= f < 1.0:
            raise GptlabError(f"{name}: must be in [0, 1), got {f}")
    n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
    n_val = max(1, round(n * val_frac)) if val_frac > 0 else 0
    if n - n_test - n_val < 1:
        raise GptlabError(f"split: {n} record(s) leave no training records with val_frac={val_frac}, "
                          f"test_frac={test_frac}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return {"test": sorted(perm[:n_test]), "val": sorted(perm[n_test:n_test + n_val]),
            "train": sorted(perm[n_test + n_val:])}


def build_example(record: dict, max_len: int, vocab_map=None, stats: dict | None = None
                  ) -> tuple[list[int], int] | None:
    """(token ids, number of prompt tokens) with ids = prompt + response + <|endoftext|>, in the model's id
    space, cut to max_len + 1 tokens (inputs are ids[:-1]). None if no response token fits.
    With a compact vocabulary, GPT-2 tokens outside it become <|endoftext|>; `stats["unknown_tokens"]` counts them."""
    prompt = encode(format_prompt(record))
    ids = prompt + encode(record["output"]) + [EOT_ID]
    if vocab_map is not None:
        t = torch.tensor(ids, dtype=torch.long)
        mapped = vocab_map.lut[t]
        if stats is not None:
            eot = int(vocab_map.lut[EOT_ID])
            stats["unknown_tokens"] = stats.get("unknown_tokens", 0) + int(((mapped == eot) & (t != EOT_ID)).sum())
        ids = mapped.tolist()
    ids = ids[:max_len + 1]
    if len(prompt) > len(ids) - 1:  # not even the first response token is a target
        return None
    return ids, len(prompt)


def collate(examples: list[tuple[list[int], int]], pad_id: int = EOT_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs (B, L) padded with pad_id; targets (B, L) = inputs shifted by one with IGNORE_INDEX on prompt
    and padding targets. The <|endoftext|> that ends each record is kept as its last target."""
    L = max(len(ids) - 1 for ids, _ in examples)
    x = torch.full((len(examples), L), pad_id, dtype=torch.long)
    y = torch.full((len(examples), L), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(examples):
        n = len(ids) - 1
        t = torch.tensor(ids, dtype=torch.long)
        x[i, :n] = t[:-1]
        y[i, :n] = t[1:]
        y[i, :max(0, n_prompt - 1)] = IGNORE_INDEX  # position j predicts token j+1: prompt while j+1 < n_prompt
    return x, y


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Positions into `lengths`, grouped into batches of similar length; batch order shuffled per epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(np.asarray(lengths)[order], kind="stable")]  # by length, ties at random
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


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
    from .train import autocast_ctx

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
    from .config import config_from_run
    from .model import GPTModel
    from .train import RunLock, latest_checkpoint, load_model_weights, resolve_device, resolve_precision
    from .vocab import RUN_FILE, load_vocab_map

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


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cmd_finetune(a) -> int:
    res = finetune(a.run, a.data, a.out, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, max_len=a.max_len,
                   val_frac=a.val_frac, test_frac=a.test_frac, seed=a.seed, weight_decay=a.weight_decay,
                   dropout=None if a.dropout < 0 else a.dropout, patience=a.patience, grad_clip=a.grad_clip,
                   checkpoint_interval=a.checkpoint_interval, device=a.device, progress=not a.quiet,
                   resume=a.resume)
    if a.json:
        print(json.dumps(res))
        return 0
    s = res["split"]
    print(f"records {res['records']}: train {s['train']}, val {s['val']}, test {s['test']}"
          + (f"  (dropped, too long: {res['dropped_too_long']})" if any(res["dropped_too_long"].values()) else ""))
    if res.get("unknown_tokens"):
        print(f"note: {res['unknown_tokens']} token(s) of the data are not in the base run's compact vocabulary "
              f"(vocab_map.npy) and were replaced by <|endoftext|>")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'epoch':>5} {'steps':>7} {'train loss':>10} {'val loss':>9}")
    print(f"{0:>5} {0:>7} {'-':>10} {fmt(res['val_loss_before']):>9}")
    for h in res["history"]:
        print(f"{h['epoch']:>5} {h['step']:>7} {fmt(h['train_loss']):>10} {fmt(h['val_loss']):>9}")
    print(f"best epoch {res['best_epoch']} (val {fmt(res['best_val_loss'])}), test loss {fmt(res.get('test_loss'))}"
          + ("  [stopped early]" if res["stopped_early"] else ""))
    print(f"run directory: {a.out}  (try: gptlab serve {a.out})")
    return 0


def register_cli(sub, make_parser) -> None:
    """Add `gptlab finetune`. make_parser(sub, name, help, example) -> argparse parser (cli._parser)."""
    s = make_parser(sub, "finetune", "instruction-fine-tune a run on Alpaca-format data (the book's chapter 7)",
                    "gptlab finetune runs/tiny-cpu --data instruction-data.json --out runs/tiny-cpu-sft\n"
                    "gptlab finetune runs/tiny-cpu --data alpaca.jsonl --out runs/tiny-sft --epochs 3 --lr 1e-4\n"
                    "gptlab finetune runs/tiny-cpu --data instruction-data.json --out runs/tiny-cpu-sft --resume\n"
                    "# data: a JSON list (or .jsonl) of {\"instruction\", \"input\", \"output\"} records, e.g. the\n"
                    "# book's instruction-data.json (rasbt/LLMs-from-scratch, ch07/01_main-chapter-code)")
    s.add_argument("run", help="base run directory (its latest checkpoint is fine-tuned)")
    s.add_argument("--data", required=True, help="Alpaca-format .json list or .jsonl file")
    s.add_argument("--out", required=True, help="output run directory")
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--lr", type=float, default=5e-5)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-len", type=int, default=None, help="max tokens per example (default: model context)")
    s.add_argument("--val-frac", type=float, default=0.1)
    s.add_argument("--test-frac", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=123)
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--dropout", type=float, default=0.0, help="drop rate while fine-tuning (-1 = the base run's)")
    s.add_argument("--patience", type=int, default=3, help="epochs without val improvement before stopping (0 = off)")
    s.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0 = off)")
    s.add_argument("--checkpoint-interval", type=int, default=0, help="also checkpoint every N steps (0 = epochs)")
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in --out")
    s.add_argument("--json", action="store_true", help="print finetune.json instead of a table")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_finetune)


__all__ = ["finetune", "format_prompt", "format_input", "load_records", "build_example", "collate", "split_indices",
           "epoch_batches", "masked_eval_loss", "register_cli"]
