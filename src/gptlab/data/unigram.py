"""The unigram baseline: the test loss of a model that knows token frequencies and nothing else."""

from __future__ import annotations

import os

import numpy as np

from gptlab import GptlabError
from gptlab.data.tokenizer import VOCAB_SIZE


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
