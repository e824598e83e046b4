"""Shard checksums: compare every shard's sha256 with meta.json's, and remember that it was done.

`verify_data(dir)` hashes the shards not verified before and records them in `verified.json` in the data folder,
keyed by each shard's name, size, mtime and meta.json sha256; a shard whose entry still matches is not hashed
again. `gptlab verify DIR` hashes everything (force=True); every `gptlab train` calls it before the first step
(sha256 runs at about 1 GB/s, so this costs seconds against a run of hours on FineWeb-sized data, milliseconds on
the bundled corpus). The same read finds each shard's largest id, which must be below GPT-2's vocabulary (and
meta.json's vocab_size) and not above meta.json's max_id: an edited meta.json cannot pass off ids the model has no
row for. A failure is one line naming the shard. Each time a shard is opened, loader.py checks meta.json's max_id
against vocab_size (O(1)).
"""

from __future__ import annotations

import os
from pathlib import Path

from gptlab import GptlabError
from gptlab.data.loader import SPLITS, TokenDataset, read_meta
from gptlab.data.tokenizer import VOCAB_SIZE
from gptlab.io import atomic_write_json

RECORD = "verified.json"


def _stamp(path: Path, sha256: str, max_id, vocab_size) -> list:
    """What a verification holds for: the shard's size and mtime, and what meta.json says of it (an edited max_id
    or vocab_size is verified afresh)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, sha256, max_id, vocab_size]


def _sha256_and_max(path: Path) -> tuple[str, int]:
    """(sha256 of the file, its largest uint16 token id; -1 when empty), in one read."""
    import hashlib

    import numpy as np

    h, top = hashlib.sha256(), -1
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):  # an even size: blocks never split a token
            h.update(block)
            if len(block) >= 2:
                top = max(top, int(np.frombuffer(block, dtype="<u2", count=len(block) // 2).max()))
    return h.hexdigest(), top


def _read_record(path: Path) -> dict:
    import json

    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def shard_failures(data_dir: str | os.PathLike, force: bool = False) -> tuple[list[str], int]:
    """(one line per shard whose sha256 differs from meta.json's, number of shards hashed). Shards recorded as
    verified with the same size, mtime and hash are skipped unless `force`; the record is updated."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    for split in meta["splits"]:
        if split in SPLITS:
            TokenDataset(data_dir, split)  # presence, sizes and ids in range: one-line errors naming the shard
    record_path = data_dir / RECORD
    record = {} if force else _read_record(record_path)
    verified, failures, hashed = {}, [], 0
    vocab_size = meta.get("vocab_size", VOCAB_SIZE)
    limit = min(vocab_size, VOCAB_SIZE) if isinstance(vocab_size, int) else VOCAB_SIZE
    for info in meta["splits"].values():
        for sh in info["shards"]:
            path, want, max_id = data_dir / sh["file"], sh.get("sha256"), sh.get("max_id")
            stamp = _stamp(path, want, max_id, vocab_size)
            if record.get(sh["file"]) == stamp:
                verified[sh["file"]] = stamp
                continue
            hashed += 1
            sha, top = _sha256_and_max(path)
            if sha != want:
                failures.append(
                    f"shard {path}: sha256 differs from meta.json's (corrupted or changed after "
                    "prepare); re-run `gptlab prepare`"
                )
            elif top >= limit:  # the ids themselves, not meta.json's word for them
                failures.append(
                    f"shard {path}: token id {top} >= {limit:,} (the vocabulary of GPT-2's tokenizer"
                    f"{' and meta.json' if limit == vocab_size else ''}): not GPT-2 tokens or corrupted; "
                    "re-run `gptlab prepare`"
                )
            elif isinstance(max_id, int) and top > max_id:
                failures.append(
                    f"shard {path}: holds token id {top} but meta.json's max_id is {max_id} (meta.json "
                    "edited, or the shard changed with it); re-run `gptlab prepare`"
                )
            else:
                verified[sh["file"]] = stamp
    if hashed:
        try:
            atomic_write_json(record_path, verified)
        except (OSError, GptlabError):  # a read-only data folder: verified again next time, which is only slower
            pass
    return failures, hashed


def verify_data(data_dir: str | os.PathLike, force: bool = False) -> int:
    """Raise a one-line GptlabError naming the first bad shard (and how many more); return how many were hashed."""
    failures, hashed = shard_failures(data_dir, force)
    if failures:
        more = (
            f" (and {len(failures) - 1} more shard(s); `gptlab verify {data_dir}` lists them)"
            if len(failures) > 1
            else ""
        )
        raise GptlabError(failures[0] + more)
    return hashed
