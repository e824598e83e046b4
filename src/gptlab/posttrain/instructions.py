"""Instruction data as in chapter 7 of Raschka's book: Alpaca-format records ({"instruction", "input", "output"}),
the book's prompt template, reading and validating a data file, the seeded train/val/test split, and turning records
into padded, masked batches. Used by fine-tuning (training), the judge and the server (the prompt template).

Each record becomes   prompt ids + response ids + <|endoftext|>.   A batch is padded with <|endoftext|>; targets
are the inputs shifted by one, with -100 (ignored by the loss) on every position whose target is a prompt
token or padding. The first <|endoftext|> after the response stays a target, so the model learns to stop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, encode

PROMPT_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
IGNORE_INDEX = -100
TEST_FILE = "test_data.json"  # a fine-tune's held-out records, the judge's default set


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
        raise GptlabError(
            f"{where}: record {i}: expected an object with instruction/input/output, got {type(rec).__name__}"
        )
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
            raise GptlabError(
                f"{p}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); expected a list of "
                f"{{instruction, input, output}} records (or use .jsonl)"
            ) from None
        if not isinstance(raw, list):
            raise GptlabError(
                f"{p}: expected a JSON list of {{instruction, input, output}} records, got {type(raw).__name__}"
            )
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
        raise GptlabError(
            f"split: {n} record(s) leave no training records with val_frac={val_frac}, test_frac={test_frac}"
        )
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return {
        "test": sorted(perm[:n_test]),
        "val": sorted(perm[n_test : n_test + n_val]),
        "train": sorted(perm[n_test + n_val :]),
    }


def build_example(
    record: dict, max_len: int, vocab_map=None, stats: dict | None = None
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
    ids = ids[: max_len + 1]
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
        y[i, : max(0, n_prompt - 1)] = IGNORE_INDEX  # position j predicts token j+1: prompt while j+1 < n_prompt
    return x, y


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Positions into `lengths`, grouped into batches of similar length; batch order shuffled per epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(np.asarray(lengths)[order], kind="stable")]  # by length, ties at random
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
