"""Corpus vocabulary: an optional output layer over only the GPT-2 tokens that occur in the prepared corpus.

On a CPU, a tiny model's cost is dominated by the 50,257-way output layer (for a 64-dim model it is >95% of
the FLOPs). With `data.vocab = "corpus"` the model's vocabulary is the set of GPT-2 ids that occur in any split
of the prepared data (19,5xx for the bundled Shakespeare): text is still GPT-2 BPE, ids are remapped through a
lookup table, and the run stores the map (`vocab_map.npy`) so generation decodes exactly. Losses are then
over that restricted vocabulary — comparable between runs of one experiment, not with full-vocabulary runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, VOCAB_SIZE

CACHE = "corpus_vocab.npy"
RUN_FILE = "vocab_map.npy"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from gptlab.io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


class VocabMap:
    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= VOCAB_SIZE or EOT_ID not in ids:
            raise GptlabError("vocab map: expected a 1-D array of distinct GPT-2 ids containing <|endoftext|>")
        self.ids = ids  # compact id -> GPT-2 id
        lut = np.full(VOCAB_SIZE, int(np.searchsorted(ids, EOT_ID)), dtype=np.int64)
        lut[ids] = np.arange(len(ids))
        self.lut = torch.from_numpy(lut)  # GPT-2 id -> compact id (unknown -> <|endoftext|>)
        self._lut_dev: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def to_compact(self, t: torch.Tensor) -> torch.Tensor:
        key = str(t.device)
        if key not in self._lut_dev:
            self._lut_dev[key] = self.lut.to(t.device)
        return self._lut_dev[key][t]

    def to_gpt2(self, ids) -> list[int]:
        return [int(self.ids[i]) for i in ids]

    def save(self, run_dir: str | Path) -> None:
        _save_npy(Path(run_dir) / RUN_FILE, self.ids)


def corpus_vocab(data_dir: str | Path) -> VocabMap:
    """Sorted distinct token ids over every split (cached in the data folder)."""
    from gptlab.data.loader import TokenDataset, read_meta
    data_dir = Path(data_dir)
    cache = data_dir / CACHE
    meta = read_meta(data_dir)
    if cache.exists():
        try:
            return VocabMap(np.load(cache, allow_pickle=False))
        except (ValueError, OSError, GptlabError):
            pass  # rebuilt below
    seen = np.zeros(VOCAB_SIZE, dtype=bool)
    for split in meta["splits"]:
        ds = TokenDataset(data_dir, split)
        for arr in ds.arrays:
            for i in range(0, len(arr), 1 << 24):
                seen[np.asarray(arr[i:i + (1 << 24)])] = True
    seen[EOT_ID] = True
    ids = np.flatnonzero(seen)
    _save_npy(cache, ids)
    return VocabMap(ids)


def load_vocab_map(run_dir: str | Path) -> VocabMap | None:
    p = Path(run_dir) / RUN_FILE
    if not p.exists():
        return None
    try:
        return VocabMap(np.load(p, allow_pickle=False))
    except (ValueError, OSError) as e:
        raise GptlabError(f"{p}: unreadable vocabulary map ({e})") from None


def resolve_corpus_vocab(cfg) -> VocabMap | None:
    """For `data.vocab = "corpus"` with prepared data: set cfg.model.vocab_size and return the map."""
    if cfg.data.vocab != "corpus" or not (Path(cfg.data.dir) / "meta.json").exists():
        return None
    vm = corpus_vocab(cfg.data.dir)
    cfg.model.vocab_size = len(vm)
    return vm
