"""Shard checksums: compare every shard's sha256 with meta.json's, and remember that it was done.

`verify_data(dir)` hashes the shards not verified before and records them in `verified.json` in the data folder,
keyed by each shard's name, size, mtime and meta.json sha256; a shard whose entry still matches is not hashed
again. `gptlab verify DIR` hashes everything (force=True); every `gptlab train` calls it before the first step
(sha256 runs at about 1 GB/s, so this costs seconds against a run of hours on FineWeb-sized data, milliseconds on
the bundled corpus). A failure is one line naming the shard. Ids in range are checked separately, each time a
shard is opened (loader.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from gptlab import GptlabError
from gptlab.data.loader import SPLITS, TokenDataset, read_meta
from gptlab.io import atomic_write_json, file_sha256

RECORD = "verified.json"


def _stamp(path: Path, sha256: str) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, sha256]


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
    for split, info in meta["splits"].items():
        for sh in info["shards"]:
            path, want = data_dir / sh["file"], sh.get("sha256")
            stamp = _stamp(path, want)
            if record.get(sh["file"]) == stamp:
                verified[sh["file"]] = stamp
                continue
            hashed += 1
            if file_sha256(path) == want:
                verified[sh["file"]] = stamp
            else:
                failures.append(f"shard {path}: sha256 differs from meta.json's (corrupted or changed after "
                                "prepare); re-run `gptlab prepare`")
    if hashed:
        try:
            atomic_write_json(record_path, verified)
        except OSError:  # a read-only data folder: verified again next time, which is only slower
            pass
    return failures, hashed


def verify_data(data_dir: str | os.PathLike, force: bool = False) -> int:
    """Raise a one-line GptlabError naming the first bad shard (and how many more); return how many were hashed."""
    failures, hashed = shard_failures(data_dir, force)
    if failures:
        more = f" (and {len(failures) - 1} more shard(s); `gptlab verify {data_dir}` lists them)" \
            if len(failures) > 1 else ""
        raise GptlabError(failures[0] + more)
    return hashed
