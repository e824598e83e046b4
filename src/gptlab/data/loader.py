"""Reading prepared token shards: a memory-mapped split (`TokenDataset`), the deterministic
training order (`SequenceSampler`) and sequential evaluation batches (`eval_batches`).

Training order is a pure function of (data_seed, sample index): sample k is sequence
perm_e[k % n] of epoch e = k // n, with perm_e = default_rng([data_seed, e]).permutation(n). So
every run with the same data_seed sees the same sequences in the same order, and resuming only
needs the sample index.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import VOCAB_SIZE, tokenizer_hash
from gptlab.io import confined, file_sha256

SPLITS = ("train", "val", "test")


def _get(d: dict, key: str, where: str, typ: type | tuple = object):
    if not isinstance(d, dict) or key not in d:
        raise GptlabError(f"{where}: field '{key}' is missing; re-run `gptlab prepare`")
    if not isinstance(d[key], typ):
        raise GptlabError(f"{where}: field '{key}' = {d[key]!r} has the wrong type; re-run `gptlab prepare`")
    return d[key]


def read_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a prepared folder, checked against this gptlab's format and tokenizer."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise GptlabError(f"`{data_dir}`: no meta.json; run `gptlab prepare` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptlabError(f"{path}: malformed JSON ({e}); re-run `gptlab prepare`") from None
    if not isinstance(meta, dict):
        raise GptlabError(f"{path}: malformed meta.json (expected a JSON object); re-run `gptlab prepare`")
    if _get(meta, "format", str(path)) != 1:
        raise GptlabError(f"{path}: field 'format' = {meta['format']!r}; expected 1 (re-run `gptlab prepare`)")
    if _get(meta, "dtype", str(path)) != "uint16":
        raise GptlabError(f"{path}: field 'dtype' = {meta['dtype']!r}; expected 'uint16'")
    if _get(meta, "tokenizer_hash", str(path)) != tokenizer_hash():
        raise GptlabError(
            f"{path}: shards were prepared with another tokenizer (tokenizer_hash "
            f"{meta['tokenizer_hash']!r}, this gptlab's is {tokenizer_hash()!r}); "
            "re-run `gptlab prepare`"
        )
    _get(meta, "splits", str(path), dict)
    _shard_paths(Path(data_dir), meta, path)
    return meta


def _shard_paths(data_dir: Path, meta: dict, where: Path) -> None:
    """Every shard file meta.json names is a file name inside the data folder: a forged meta.json
    ("file": "../../etc/passwd") is one line naming meta.json and the field, before anything is opened."""
    for split, info in meta["splits"].items():
        shards = info.get("shards") if isinstance(info, dict) else None
        for i, sh in enumerate(shards if isinstance(shards, list) else []):
            if isinstance(sh, dict) and isinstance(sh.get("file"), str):
                confined(data_dir, sh["file"], f"{where}: field splits.{split}.shards[{i}].file")


_sha256 = file_sha256


def _check_ids(path: Path, arr: np.ndarray, max_id, vocab_size: int) -> None:
    """Every id of a shard < vocab_size: O(1) from the largest id meta.json recorded at prepare time, else (shards
    prepared by an older gptlab) by reading the shard, each time it is opened."""
    top = max_id if isinstance(max_id, int) and not isinstance(max_id, bool) else int(arr.max())
    if top >= vocab_size:
        raise GptlabError(
            f"shard {path}: token id {top} >= {vocab_size} (meta.json's vocab_size): corrupted or not "
            "GPT-2 uint16 tokens; re-run `gptlab prepare`"
        )


class TokenDataset:
    """One split of a prepared folder, memory-mapped read-only: `len(ds)` tokens,
    `ds.get(start, length)` reads across shard boundaries, `ds.meta` is meta.json."""

    def __init__(self, data_dir: str | os.PathLike, split: str, verify: bool = False):
        self.dir, self.split = Path(data_dir), split
        self.meta = read_meta(data_dir)
        where = str(self.dir / "meta.json")
        if split not in self.meta["splits"]:
            raise GptlabError(
                f"{where}: unknown split '{split}'; expected one of {', '.join(self.meta['splits']) or '(none)'}"
            )
        info = _get(self.meta["splits"], split, where, dict)
        self.arrays: list[np.ndarray] = []
        starts, total = [], 0
        for i, sh in enumerate(_get(info, "shards", f"{where} splits.{split}", list)):
            name = _get(sh, "file", f"{where} splits.{split}.shards", str)
            n = _get(sh, "tokens", f"{where} splits.{split}.shards", int)
            path = confined(self.dir, name, f"{where}: field splits.{split}.shards[{i}].file")
            if not path.is_file():
                raise GptlabError(
                    f"shard {path} is missing: data folder truncated or corrupted; re-run `gptlab prepare`"
                )
            size = path.stat().st_size
            if size != 2 * n:
                raise GptlabError(
                    f"shard {path} is truncated or corrupted: {size} bytes, meta.json says "
                    f"{n} tokens = {2 * n} bytes; re-run `gptlab prepare`"
                )
            if verify and _sha256(path) != sh.get("sha256"):
                raise GptlabError(
                    f"shard {path} is corrupted: its sha256 differs from meta.json's; re-run `gptlab prepare`"
                )
            if n:
                arr = np.memmap(path, dtype=np.dtype("<u2"), mode="r")
                _check_ids(path, arr, sh.get("max_id"), self.meta.get("vocab_size", VOCAB_SIZE))
                self.arrays.append(arr)
                starts.append(total)
                total += n
        if total != _get(info, "tokens", f"{where} splits.{split}", int):
            raise GptlabError(f"{where}: split '{split}' lists {info['tokens']} tokens but its shards hold {total}")
        self._starts, self._len = starts, total

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.dir)!r}, {self.split!r}, tokens={self._len})"

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64."""
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > self._len:
            raise IndexError(f"{self.split}: tokens [{start}, {start + length}) outside [0, {self._len})")
        out = np.empty(length, dtype=np.int64)
        i, pos = bisect.bisect_right(self._starts, start) - 1, 0
        while pos < length:
            off = start + pos - self._starts[i]
            take = min(length - pos, len(self.arrays[i]) - off)
            out[pos : pos + take] = self.arrays[i][off : off + take]
            pos, i = pos + take, i + 1
        return out


def _pair(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) token rows -> inputs (B, T) and targets shifted by one."""
    return torch.from_numpy(np.ascontiguousarray(rows[:, :-1])), torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))


class SequenceSampler:
    """Non-overlapping training windows in a seeded order: sequence j is tokens [j*T, j*T+T+1),
    n = (len-1)//T; global sample k is sequence perm_e[k % n], e = k // n,
    perm_e = np.random.default_rng([data_seed, e]).permutation(n)."""

    def __init__(self, dataset: TokenDataset, context_length: int, data_seed: int):
        self.dataset, self.T, self.data_seed = dataset, int(context_length), int(data_seed)
        if self.T < 1:
            raise GptlabError(f"context_length = {context_length}; expected >= 1")
        self.n = (len(dataset) - 1) // self.T
        if self.n <= 0:
            raise GptlabError(
                f"{dataset.dir}: {dataset.split} split too small for context_length {self.T} "
                f"({len(dataset)} tokens; need at least {self.T + 1})"
            )
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Sequences per epoch."""
        return self.n

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.data_seed, epoch]).permutation(self.n)
            self._perms = {k: v for k, v in self._perms.items() if k == epoch - 1}  # keep at most 2
            self._perms[epoch] = perm
        return perm

    def sequence(self, k: int) -> int:
        """Index j of the window that global sample k reads."""
        if k < 0:
            raise IndexError(f"sample index {k} < 0")
        e, i = divmod(int(k), self.n)
        return int(self.permutation(e)[i])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (len(indices), T) int64 for the given global sample indices."""
        T = self.T
        rows = np.empty((len(indices), T + 1), dtype=np.int64)
        for r, k in enumerate(indices):
            rows[r] = self.dataset.get(self.sequence(k) * T, T + 1)
        return _pair(rows)

    @staticmethod
    def indices_at(step: int, micro: int, rank: int, world: int, micro_batch: int, global_batch: int) -> range:
        """Global sample indices of micro-step `micro` on `rank` at optimizer step `step`: the step
        owns [step*G, (step+1)*G), rank r the contiguous G/world of those starting at r*G/world,
        and micro-step m the m-th micro_batch of the rank's slice."""
        G, mb = int(global_batch), int(micro_batch)
        if world < 1 or mb < 1 or G < 1 or G % (world * mb):
            raise GptlabError(
                f"global_batch_size {G} must be a positive multiple of world_size {world} x "
                f"micro_batch_size {mb} = {world * mb}"
            )
        accum = G // (world * mb)
        if not (0 <= rank < world and 0 <= micro < accum and step >= 0):
            raise GptlabError(
                f"batch_at: step {step}, micro {micro}, rank {rank} out of range "
                f"(world {world}, {accum} micro-steps per step)"
            )
        start = step * G + rank * (G // world) + micro * mb
        return range(start, start + mb)

    def batch_at(
        self, step: int, micro: int, rank: int, world: int, micro_batch: int, global_batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (micro_batch, T) inputs/targets for micro-step `micro` of optimizer step `step` on `rank`."""
        return self.batch(self.indices_at(step, micro, rank, world, micro_batch, global_batch))


def _eval_plan(dataset: TokenDataset, T: int, batch_size: int, offset: int, n_batches: int) -> tuple[int, int]:
    """(windows used, batches) for sequential evaluation."""
    if T < 1 or batch_size < 1 or n_batches < 0 or offset < 0:
        raise GptlabError(
            f"eval: context_length {T}, batch_size {batch_size}, offset {offset}, n_batches "
            f"{n_batches}; expected T >= 1, batch_size >= 1, offset >= 0, n_batches >= 0"
        )
    if offset + T + 1 > len(dataset):
        raise GptlabError(
            f"{dataset.dir}: {dataset.split} split too small to evaluate: {len(dataset)} tokens, "
            f"need offset {offset} + context_length {T} + 1"
        )
    windows = (len(dataset) - offset - 1) // T
    batches = -(-windows // batch_size)
    if n_batches:
        batches = min(batches, n_batches)
        windows = min(windows, batches * batch_size)
    return windows, batches


def eval_span(
    dataset: TokenDataset, context_length: int, batch_size: int, offset: int = 0, n_batches: int = 0
) -> tuple[int, int]:
    """The tokens [start, stop) that `eval_batches` with the same arguments reads (all ranks together)."""
    windows, _ = _eval_plan(dataset, int(context_length), int(batch_size), int(offset), int(n_batches))
    return int(offset), int(offset) + windows * int(context_length) + 1


def eval_batch_count(
    dataset: TokenDataset,
    context_length: int,
    batch_size: int,
    offset: int = 0,
    n_batches: int = 0,
    rank: int = 0,
    world: int = 1,
) -> int:
    """How many batches `eval_batches` with the same arguments yields (on this rank)."""
    _, batches = _eval_plan(dataset, int(context_length), int(batch_size), int(offset), int(n_batches))
    return len(range(rank, batches, world))


def eval_batches(
    dataset: TokenDataset,
    context_length: int,
    batch_size: int,
    offset: int = 0,
    n_batches: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential non-overlapping windows: window i covers [offset + i*T, offset + i*T + T + 1),
    batch b holds windows [b*batch_size, (b+1)*batch_size). n_batches=0 means every full window
    (the last batch may be partial), else at most n_batches batches. Yields batches b with
    b % world == rank."""
    if not 0 <= rank < world:
        raise GptlabError(f"eval: rank {rank} out of range for world size {world}")
    T, bs, offset = int(context_length), int(batch_size), int(offset)
    windows, batches = _eval_plan(dataset, T, bs, offset, int(n_batches))
    for b in range(rank, batches, world):
        nw = min(bs, windows - b * bs)
        tokens = dataset.get(offset + b * bs * T, nw * T + 1)
        yield (torch.from_numpy(tokens[:-1].reshape(nw, T)), torch.from_numpy(tokens[1:].reshape(nw, T).copy()))
