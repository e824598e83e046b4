"""Turn documents into GPT-2 token shards: `prepare(sources, out_dir)` writes `{split}_{index:06d}.bin` (uint16,
little-endian) and, last, `meta.json`, into a staging folder that replaces `out_dir` only when complete. The
documents come from sources.py.

Every document's tokens are followed by <|endoftext|> (50256). Documents go to a split by a hash of their tokens
(see `split_of`), so the split does not depend on file order, worker count or source format; the whole pipeline
streams (memory is bounded by a few batches of documents).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gptlab import GptlabError
from gptlab.data.hf_stream import hf_meta
from gptlab.data.sources import (
    DTYPE,
    Doc,
    HFDataset,
    expand_sources,
    progress_total,
    read_documents,
)
from gptlab.data.tokenizer import EOT_ID, VOCAB_SIZE, get_tokenizer, tokenizer_hash
from gptlab.io import atomic_write_json, check_dir, file_sha256, fsync_dir

SPLITS = ("train", "val", "test")
_SHARD_NAME = re.compile(r"^(train|val|test)_\d{6}\.bin(\.tmp)?$")
_BATCH_CHARS = 1 << 18  # characters (or tokens) per tokenisation task
_BATCH_DOCS = 1024
_HOLD = 2  # last documents held back per split, for the "no empty split" fix-up
_FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


# ------------------------------------------------------------------------------------------------
# Tokenising, splitting, writing
# ------------------------------------------------------------------------------------------------
def split_of(key: bytes, val_frac: float, test_frac: float) -> str:
    """u = first 8 bytes of the key as a big-endian fraction of 2**64: test if u < test_frac,
    val if u < test_frac + val_frac, else train."""
    u = int.from_bytes(key[:8], "big") / 2**64
    return "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"


def _encode_batch(batch: list[tuple[Doc, int]]) -> list[tuple[np.ndarray, bytes, int]]:
    """For each document: its tokens followed by EOT (uint16), its split key (sha256 of the token
    bytes without the EOT) and its source bytes. tiktoken releases the GIL, so threads run this
    in parallel."""
    enc = get_tokenizer()
    out = []
    for doc, nbytes in batch:
        ids = doc if isinstance(doc, np.ndarray) else enc.encode_ordinary(doc)
        toks = np.empty(len(ids) + 1, dtype=DTYPE)
        toks[:-1], toks[-1] = ids, EOT_ID
        out.append((toks, hashlib.sha256(memoryview(toks[:-1])).digest(), nbytes))
    return out


def _batches(docs: Iterable[tuple[Doc, int]]) -> Iterator[list[tuple[Doc, int]]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d[0])
        if size >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ordered_map(fn, items: Iterable, workers: int) -> Iterator:
    """map(fn, items) on `workers` threads, in order, with at most 2*workers tasks in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as ex:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _ShardWriter:
    """Appends documents (tokens + EOT) to `{split}_{i:06d}.bin`, a new shard every shard_tokens
    tokens; each shard is written as `<name>.tmp` and renamed when complete."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.tokens = self.documents = 0
        self.shards: list[dict] = []
        self._f = None
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    def add_document(self, toks: np.ndarray) -> None:
        self._buf.append(toks)
        self._buffered += len(toks)
        self.documents += 1
        if self._buffered >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._write(np.concatenate(self._buf))
            self._buf, self._buffered = [], 0

    def _write(self, toks: np.ndarray) -> None:
        i = 0
        while i < len(toks):
            if self._f is None:
                self._name = f"{self.split}_{len(self.shards):06d}.bin"
                self._f, self._n, self._h = open(self.out_dir / f"{self._name}.tmp", "wb"), 0, hashlib.sha256()
                self._max = 0
            take = min(len(toks) - i, self.shard_tokens - self._n)
            chunk = toks[i : i + take]
            data = chunk.tobytes()
            self._f.write(data)
            self._max = max(self._max, int(chunk.max()))
            self._h.update(data)
            self._n, i = self._n + take, i + take
            if self._n == self.shard_tokens:
                self._close()
        self.tokens += len(toks)

    def _close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self.out_dir / f"{self._name}.tmp", self.out_dir / self._name)
        self.shards.append(
            {"file": self._name, "tokens": self._n, "sha256": self._h.hexdigest(), "max_id": self._max}
        )  # lets the loader check ids < vocab_size without reading

    def finish(self) -> dict:
        self._flush()
        if self._f is not None:
            self._close()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            (self.out_dir / f"{self._name}.tmp").unlink(missing_ok=True)
            self._f = None


def _check_args(val_frac, test_frac, shard_tokens, workers, max_docs, text_field) -> None:
    for name, v in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= v < 1.0:
            raise GptlabError(f"prepare: {name} = {v}; expected a fraction in [0, 1)")
    if val_frac + test_frac >= 1.0:
        raise GptlabError(f"prepare: val_frac + test_frac = {val_frac + test_frac}; expected < 1 (train needs data)")
    for name, v, lo in (("shard_tokens", shard_tokens, 1), ("workers", workers, 0), ("max_docs", max_docs, 0)):
        if not isinstance(v, int) or v < lo:
            raise GptlabError(f"prepare: {name} = {v!r}; expected an integer >= {lo}")
    if not text_field:
        raise GptlabError("prepare: text_field is empty; expected a field/column name")


def prepare(
    sources: Sequence[str] | str,
    out_dir: str | os.PathLike,
    *,
    text_field: str = "text",
    val_frac: float = 0.05,
    test_frac: float = 0.05,
    shard_tokens: int = 100_000_000,
    workers: int = 0,
    progress: bool = True,
    max_docs: int = 0,
    force: bool = False,
) -> dict:
    """Tokenise `sources` into train/val/test uint16 shards in `out_dir`; write meta.json last and
    return it. workers=0 uses os.cpu_count() tokeniser threads; max_docs=0 reads everything.
    A source may be an `HFDataset` (streamed; needs the optional `datasets` package).

    Output depends only on the sources and the split/shard settings (not on workers), so re-runs
    are byte-identical. Everything is written into a staging folder beside `out_dir` (`staging_dir`) that
    replaces `out_dir` by a rename only once complete: a prepare that fails or is killed leaves the old
    dataset as it was. A source inside `out_dir`, an `out_dir` that is a file, or an `out_dir` holding files of
    its own is refused; `force` replaces such a folder too (its other files are deleted with it).
    """
    _check_args(val_frac, test_frac, shard_tokens, workers, max_docs, text_field)
    out = Path(os.path.realpath(out_dir) if os.path.islink(out_dir) else os.path.abspath(out_dir))
    staging, old = staging_dir(out), out.parent / f".{out.name}.old"
    files = expand_sources(sources)
    _refuse_sources_inside(files, out)
    _refuse_foreign_files(out, force)
    total = progress_total(files, text_field)  # also checks parquet/HF columns early, before anything is written
    total = None if max_docs else total
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=not progress, dynamic_ncols=True)
    done = [0, 0]  # source bytes tokenised so far, shard bytes they make (for a disk-full error's estimate)

    def advance(nbytes: int, ntokens: int) -> None:
        done[0] += nbytes
        done[1] += 2 * ntokens
        bar.update(nbytes)

    try:
        _recover_swap(out, old)
        shutil.rmtree(staging, ignore_errors=True)  # left by a prepare that was killed
        staging.mkdir(parents=True)
        docs = read_documents(files, text_field, max_docs)
        splits, moved = _write_splits(docs, staging, sources, val_frac, test_frac, shard_tokens, workers, advance)
        meta = _meta(files, text_field, max_docs, shard_tokens, val_frac, test_frac, moved, splits)
        atomic_write_json(staging / "meta.json", meta)
        _swap_in(staging, out, old)
    except OSError as e:
        if e.filename is None and e.errno not in _FS_ERRNOS:
            raise  # not the file system's (e.g. a network error of a streamed dataset)
        raise _os_error(e, out, staging, done, total) from None
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def staging_dir(out: str | os.PathLike) -> Path:
    """Where `prepare` writes before the result replaces `out`: a hidden sibling (inside `out` when `out` is a
    mount point, so that the final rename stays on one file system)."""
    out = Path(out)
    return out / ".staging" if os.path.ismount(out) else out.parent / f".{out.name}.staging"


def _refuse_sources_inside(files, out: Path) -> None:
    root = out.resolve()
    for f in files:
        if f.kind not in ("hf", "bundled") and f.path.resolve().is_relative_to(root):
            raise GptlabError(
                f"{f.label}: source is inside the output folder {out}, which prepare replaces; "
                "move it out or choose another --out"
            )


def _only_prepared_files(out: Path) -> bool:
    """Whether `out` holds only what prepare and the data layer write there (prepare's test of "ours")."""
    from gptlab.data.verify import RECORD
    from gptlab.data.vocab import CACHE

    ours = {"meta.json", CACHE, RECORD, "corpus_vocab.npy", ".staging"}
    return all(f.name in ours or _SHARD_NAME.match(f.name) or f.name.endswith(".tmp") for f in out.iterdir())


def _refuse_foreign_files(out: Path, force: bool) -> None:
    """`out` is replaced as a whole, so it may only hold what prepare and the data layer write there (unless
    `force`: then its other files go too); a file at `out` is always refused."""
    check_dir(
        out,
        "data",
        "data folder",
        force,
        _only_prepared_files,
        "files that are not part of a prepared dataset",
        "prepare replaces the whole folder, so choose a new or empty one (`gptlab prepare --force` replaces it anyway)",
    )


def _recover_swap(out: Path, old: Path) -> None:
    """A prepare killed between its two renames left the old dataset at `old`: put it back (or drop it)."""
    if old.exists():
        if out.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, out)


def _swap_in(staging: Path, out: Path, old: Path) -> None:
    """Replace `out` by the complete `staging` folder: two renames (the old dataset stays whole at `old` in
    between), then the old one is deleted."""
    fsync_dir(staging)
    if staging.parent == out:  # out is a mount point: move the files (meta.json last, old meta.json first)
        (out / "meta.json").unlink(missing_ok=True)
        for f in out.iterdir():
            if f != staging and (f.is_file() or f.is_symlink()):
                f.unlink()
        for f in sorted(staging.iterdir(), key=lambda f: f.name == "meta.json"):
            os.replace(f, out / f.name)
        fsync_dir(out)
        return
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _os_error(e: OSError, out: Path, staging: Path, done: list[int], total: int | None) -> GptlabError:
    """A write that failed (disk full, read-only, permissions) as one line naming the path."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        written = sum(f.stat().st_size for f in staging.glob("*") if f.is_file()) if staging.is_dir() else 0
        src, shard = done
        need = (
            f"needs about {shard * total / src / 1e6:.1f} MB, estimated from the part done"
            if total and src
            else f"needs more than the {max(shard, written) / 1e6:.1f} MB tokenised so far"
        )
        free = shutil.disk_usage(staging.parent if staging.parent.exists() else out.parent).free + written
        return GptlabError(
            f"{out}: no space left on device while writing the shards ({need}; {free / 1e6:.1f} MB free there)"
        )
    return GptlabError(f"{e.filename or out}: {e.strerror or e} (while preparing {out})")


def _write_splits(
    docs, out: Path, sources, val_frac: float, test_frac: float, shard_tokens: int, workers: int, advance
) -> tuple[dict, list[dict]]:
    """Tokenise `docs` on worker threads, route each to its split's shard writer; return (the splits' shard
    lists and counts, the documents moved to fill an otherwise empty split)."""
    fracs = {"train": 1.0 - val_frac - test_frac, "val": val_frac, "test": test_frac}
    writers = {s: _ShardWriter(out, s, shard_tokens) for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    held = {s: collections.deque() for s in SPLITS}  # per split: its last _HOLD (key, tokens), unwritten
    try:
        for encoded in _ordered_map(_encode_batch, _batches(docs), workers or os.cpu_count() or 1):
            for toks, key, nbytes in encoded:
                s = split_of(key, val_frac, test_frac)
                counts[s] += 1
                held[s].append((key, toks))
                if len(held[s]) > _HOLD:
                    writers[s].add_document(held[s].popleft()[1])
                advance(nbytes, len(toks))
        moved = _fill_empty_splits(counts, held, fracs, sources)
        for s in SPLITS:
            for _, toks in held[s]:
                writers[s].add_document(toks)
        return {s: w.finish() for s, w in writers.items()}, moved
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def _fill_empty_splits(counts: dict, held: dict, fracs: dict, sources) -> list[dict]:
    """With >= 3 documents, a split with a positive fraction that got none takes the last held document of the
    split with the most; return what moved."""
    n_docs = sum(counts.values())
    if n_docs == 0:
        named = [sources] if isinstance(sources, (str, os.PathLike, HFDataset)) else sources
        raise GptlabError(
            f"{', '.join(s.label if isinstance(s, HFDataset) else str(s) for s in named)}: "
            "no documents (the corpus is empty)"
        )
    needy = [s for s in ("test", "val", "train") if fracs[s] > 0 and counts[s] == 0]
    if needy and n_docs < 3:
        raise GptlabError(
            f"prepare: only {n_docs} document(s), so the {'/'.join(needy)} split would be "
            "empty; need at least 3 documents (a .txt file is one document), or set val_frac=0 "
            "and test_frac=0"
        )
    moved = []
    for s in needy:  # the split with the most documents gives up its last document
        donor = max(SPLITS, key=lambda d: counts[d])
        key, toks = held[donor].pop()
        held[s].append((key, toks))
        counts[donor], counts[s] = counts[donor] - 1, counts[s] + 1
        moved.append({"key": key.hex(), "from": donor, "to": s})
    return moved


def _meta(files, text_field, max_docs, shard_tokens, val_frac, test_frac, moved, splits) -> dict:
    return {
        "format": 1,
        "tokenizer": "gpt2",
        "tokenizer_hash": tokenizer_hash(),
        "eot_id": EOT_ID,
        "dtype": "uint16",
        "vocab_size": VOCAB_SIZE,
        "sources": [
            hf_meta(f.dataset)
            if f.kind == "hf"
            else {"path": f.label, "sha256": file_sha256(f.path), "bytes": f.path.stat().st_size}
            for f in files
        ],
        "text_field": text_field,
        "max_docs": max_docs,
        "shard_tokens": shard_tokens,
        "split_rule": {
            "key": "sha256 of the document's tokens as uint16 little-endian bytes (without its EOT)",
            "u": "first 8 bytes of the key, big-endian, divided by 2**64",
            "test": f"u < {test_frac}",
            "val": f"{test_frac} <= u < {test_frac + val_frac}",
            "train": f"u >= {test_frac + val_frac}",
            "val_frac": val_frac,
            "test_frac": test_frac,
            "fixup": "with >= 3 documents, a split with a positive fraction left empty takes the last "
            "document of the split with the most documents (ties: train, val, test)",
            "order": "documents in input order",
            "moved": moved,
        },
        "splits": splits,
    }
