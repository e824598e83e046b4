"""Corpus vocabulary: an optional output layer over only the GPT-2 tokens that occur in the prepared train split.

On a CPU, a tiny model's cost is dominated by the 50,257-way output layer (for a 64-dim model it is >95% of
the FLOPs). With `data.vocab = "corpus"` the model's vocabulary is the set of GPT-2 ids that occur in the train
split of the prepared data, plus <|endoftext|> (the val and test splits are not looked at, so nothing of them
leaks into the model): text is still GPT-2 BPE, ids are remapped through a lookup table, and the run stores the
map (`vocab_map.npy`) so generation decodes exactly. A val/test token the train split never had maps to
<|endoftext|>'s id; evaluation counts those tokens and says how many there were (`count_outside`). Losses are
then over that restricted vocabulary — comparable between runs of one experiment, not with full-vocabulary runs.

The ids are cached in the data folder (`corpus_vocab.npz`) together with a key naming the train shards they were
derived from (file names and sha256s from meta.json); a cache whose key differs from the folder's meta.json is
rebuilt, never reused. In a read-only data folder the ids are computed in memory each time (one read of the train
split) and a one-line note says the cache was not written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, VOCAB_SIZE

log = logging.getLogger(__name__)

CACHE = "corpus_vocab.npz"  # ids and the key of the train shards they came from
RUN_FILE = "vocab_map.npy"


def _array_bytes(save, *args, **kwargs) -> bytes:
    """What np.save or np.savez writes, in memory: the vocabulary's files hold at most 50,257 ids (400 KB), so
    they are written whole with atomic_write_bytes, with no writer handed down to io to call back."""
    buf = BytesIO()
    save(buf, *args, **kwargs)
    return buf.getvalue()


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

    def count_outside(self, dataset, start: int, stop: int) -> int:
        """How many of tokens [start, stop) of a TokenDataset are not in this vocabulary (they map to
        <|endoftext|>'s id)."""
        known = np.zeros(VOCAB_SIZE, dtype=bool)
        known[self.ids] = True
        n, chunk = 0, 1 << 22
        for i in range(start, stop, chunk):
            n += int((~known[dataset.get(i, min(chunk, stop - i))]).sum())
        return n

    def save(self, run_dir: str | Path) -> None:
        from gptlab.io import atomic_write_bytes

        atomic_write_bytes(Path(run_dir) / RUN_FILE, _array_bytes(np.save, self.ids))


def _train_key(meta: dict) -> str:
    """What the vocabulary is derived from: the train shards' names and sha256s (meta.json)."""
    shards = [[sh.get("file"), sh.get("sha256")] for sh in meta["splits"].get("train", {}).get("shards", [])]
    return hashlib.sha256(json.dumps({"split": "train", "shards": shards}).encode()).hexdigest()


def _cached(cache: Path, key: str) -> VocabMap | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return VocabMap(z["ids"])
    except (ValueError, OSError, KeyError, GptlabError):
        pass
    return None


# (data folder, train key) -> its corpus vocabulary: a process resolves many configs (an experiment's every run), and
# reads or counts the train split once, even where the folder's cache cannot be written
_KNOWN: dict[tuple[str, str], VocabMap] = {}


def corpus_vocab(data_dir: str | Path) -> VocabMap:
    """Sorted distinct token ids of the train split, plus <|endoftext|> (cached in the data folder, keyed by the
    train shards' sha256s, and in this process)."""
    from gptlab.data.loader import TokenDataset, read_meta
    from gptlab.data.unigram import token_counts
    from gptlab.io import atomic_write_bytes

    data_dir = Path(data_dir)
    cache = data_dir / CACHE
    key = _train_key(read_meta(data_dir))
    known = (str(data_dir.resolve()), key)
    if known in _KNOWN:
        return _KNOWN[known]
    if cache.exists() and (vm := _cached(cache, key)) is not None:
        _KNOWN[known] = vm
        return vm
    seen = token_counts(TokenDataset(data_dir, "train")) > 0
    seen[EOT_ID] = True
    ids = np.flatnonzero(seen)
    try:
        atomic_write_bytes(cache, _array_bytes(np.savez, ids=ids, key=np.array(key)))
    except (OSError, GptlabError) as e:  # a read-only data folder: the cache is optional, only slower without it
        why = str(e).rsplit(": ", 1)[-1] if isinstance(e, GptlabError) else (e.strerror or str(e))
        log.warning(f"{cache} not written ({why}): the corpus vocabulary is computed in memory, again next time")
    _KNOWN[known] = VocabMap(ids)
    return _KNOWN[known]


def load_vocab_map(run_dir: str | Path, vocab_size: int | None = None) -> VocabMap | None:
    """A run's vocabulary map (None for a full-vocabulary run); with `vocab_size` (the run's model.vocab_size)
    a map of another size is a one-line error, not a failed lookup deep in the model."""
    p = Path(run_dir) / RUN_FILE
    if not p.exists():
        return None
    try:
        vm = VocabMap(np.load(p, allow_pickle=False))
    except (ValueError, OSError) as e:
        raise GptlabError(f"{p}: unreadable vocabulary map ({e})") from None
    if vocab_size is not None and len(vm) != vocab_size:
        raise GptlabError(f"{p}: {len(vm)} ids but model.vocab_size is {vocab_size}")
    return vm


def resolve_corpus_vocab(cfg) -> VocabMap | None:
    """For `data.vocab = "corpus"` with prepared data: set cfg.model.vocab_size and return the map. A step of
    config.resolve (the config's last), not called on its own."""
    if cfg.data.vocab != "corpus" or not (Path(cfg.data.dir) / "meta.json").exists():
        return None
    vm = corpus_vocab(cfg.data.dir)
    cfg.model.vocab_size = len(vm)
    return vm
