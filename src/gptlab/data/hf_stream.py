"""Hugging Face `datasets` as a document source: `HFDataset` names one, `resolve_hf` pins a Hub dataset to the commit
its revision points at, `read_hf` streams its rows (`datasets.load_dataset(..., streaming=True)`, the optional extra
`fineweb`), and `hf_meta` is what meta.json records of it. Every failure (no package, no network, no such column) is
one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptlab import GptlabError
from gptlab.io import file_sha256


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


HF_INSTALL = "pip install -e '.[fineweb]'` in the gptlab checkout, or `pip install 'datasets>=2.18'"
_HF_BATCH = 1024  # rows per batch read from the stream
_HF_TIMEOUT = 60.0  # seconds for the Hub API call that pins the revision (a dead network fails, not hangs)


def import_datasets(label: str):
    try:
        import datasets
    except ImportError:  # ModuleNotFoundError, or a broken install
        raise GptlabError(
            f"{label}: streaming a Hugging Face dataset needs the optional package 'datasets'; run `{HF_INSTALL}`"
        ) from None
    return datasets


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    msg = msg if len(msg) <= 240 else msg[:237] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def is_hub(ds: HFDataset) -> bool:
    """A Hub repository id, as opposed to a packaged builder ("json", "parquet", ...) or a local folder."""
    if Path(ds.path).exists():
        return False
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES as packaged
    except ImportError:  # pragma: no cover - older/newer datasets layouts
        packaged = {"json", "parquet", "csv", "text", "arrow"}
    return ds.path not in packaged


def network_hint() -> str:
    offline = [
        v
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
    ]
    why = f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set" if offline else "check the network"
    return (
        f"streaming from the Hub needs the network ({why}); or download the files once and run `gptlab prepare FOLDER`"
    )


def resolve_hf(ds: HFDataset) -> HFDataset:
    """Pin a Hub dataset to the commit its revision (default: main) points at now, so a re-run streams the
    same bytes; packaged builders on local files are taken as given."""
    import_datasets(ds.label)
    if is_hub(ds):
        from huggingface_hub import HfApi

        try:
            sha = HfApi().dataset_info(ds.path, revision=ds.revision, timeout=_HF_TIMEOUT).sha
        except Exception as e:  # offline, DNS, HTTP 401/404, ...: huggingface_hub raises many types
            name = type(e).__name__
            what = (
                "no such dataset (or it is gated/private: log in with `hf auth login`)"
                if "RepositoryNotFound" in name or "GatedRepo" in name
                else f"no revision {ds.revision!r}"
                if "RevisionNotFound" in name
                else network_hint()
            )
            raise GptlabError(f"{ds.label}: cannot reach the dataset on the Hub ({one_line(e)}); {what}") from None
        if sha:
            ds = HFDataset(ds.path, ds.name, ds.split, sha, ds.data_files)
    return ds


def open_hf(ds: HFDataset, label: str, field: str):
    """The streaming dataset, reduced to the text column when its features are known (`label` names it in
    errors)."""
    datasets = import_datasets(label)
    kw = {"data_files": list(ds.data_files)} if ds.data_files is not None else {}
    try:
        stream = datasets.load_dataset(ds.path, ds.name, split=ds.split, revision=ds.revision, streaming=True, **kw)
    except Exception as e:  # network errors, unknown config/split, missing files
        hint = (
            network_hint()
            if is_hub(ds) and isinstance(e, (OSError, ConnectionError))
            else "check the dataset id, --hf-name and --hf-split"
        )
        raise GptlabError(f"{label}: cannot open ({one_line(e)}); {hint}") from None
    features = getattr(stream, "features", None)
    if features is not None:
        if field not in features:
            raise GptlabError(
                f"{label}: no column '{field}' (columns: {', '.join(features)}); "
                "choose the column with text_field (--text-field)"
            )
        stream = stream.select_columns([field])
    return stream


def read_hf(ds: HFDataset, label: str, field: str) -> Iterator[tuple[str, int]]:
    """Each row's text (None = empty), with its UTF-8 size for the progress bar. A failure mid-stream (the
    network, most likely) is one line; re-running starts over and writes the same shards (pinned commit)."""
    stream, n = open_hf(ds, label, field), 0
    try:
        for batch in stream.iter(batch_size=_HF_BATCH):
            if field not in batch:
                raise GptlabError(
                    f"{label}, row {n + 1}: no field '{field}' (fields: {', '.join(batch)}); "
                    "choose the field with text_field (--text-field)"
                )
            for text in batch[field]:
                n += 1
                if text is None:
                    yield "", 0
                elif not isinstance(text, str):
                    raise GptlabError(f"{label}, row {n}: field '{field}' is {type(text).__name__}; expected a string")
                else:
                    yield text, len(text.encode("utf-8"))
    except GptlabError:
        raise
    except Exception as e:
        raise GptlabError(
            f"{label}: streaming failed after {n:,} rows ({one_line(e)}); check the network and "
            "re-run (prepare starts over and writes identical shards)"
        ) from None


def hf_meta(ds: HFDataset) -> dict:
    """What meta.json records of a streamed dataset (the local data_files with their sha256)."""
    out = {"hf_dataset": ds.path, "config": ds.name, "split": ds.split, "revision": ds.revision, "streaming": True}
    if ds.data_files is not None:
        files = []
        for f in ds.data_files:
            p = Path(f)
            files.append(
                {"path": f, "sha256": file_sha256(p), "bytes": p.stat().st_size} if p.is_file() else {"path": f}
            )
        out["data_files"] = files
    return out
