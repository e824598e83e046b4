"""The unigram baseline: the test loss of a model that knows token frequencies and nothing else."""

from __future__ import annotations

import os

import numpy as np

from gptlab import GptlabError
from gptlab.data.tokenizer import VOCAB_SIZE

MAX_TOKENS = 100_000_000  # per split: enough for the estimate, and a FineWeb-sized split is not read whole


def token_counts(dataset, max_tokens: int | None = None, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of each of the 50257 token ids in the first `max_tokens` (None: all) of a TokenDataset split."""
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    left = max_tokens if max_tokens is not None else sum(len(a) for a in dataset.arrays)
    for arr in dataset.arrays:
        for i in range(0, min(len(arr), left), chunk):
            counts += np.bincount(arr[i : min(i + chunk, left)], minlength=VOCAB_SIZE)[:VOCAB_SIZE]
        left -= min(len(arr), left)
        if left <= 0:
            break
    return counts


def unigram_loss(data_dir: str | os.PathLike, max_tokens: int | None = MAX_TOKENS) -> float:
    """Cross-entropy (nats/token) of the test split under the train split's unigram distribution with add-one
    smoothing over the vocabulary: the loss a model must beat to have learnt context. Each split's first
    `max_tokens` tokens are counted (None: all)."""
    from gptlab.data.loader import TokenDataset

    train = token_counts(TokenDataset(data_dir, "train"), max_tokens)
    test = token_counts(TokenDataset(data_dir, "test"), max_tokens)
    if test.sum() == 0:
        raise GptlabError(f"{data_dir}: test split is empty; cannot compute the unigram baseline")
    logp = np.log(train + 1.0) - np.log(train.sum() + float(VOCAB_SIZE))
    return float(-(test * logp).sum() / test.sum())
