"""Data pipeline: sources.py reads corpora into documents, prepare.py turns them into uint16 GPT-2 token shards
+ meta.json, loader.py memory-maps the shards and serves training sequences in a seeded order and sequential eval
batches; tokenizer.py (GPT-2 BPE without a network), vocab.py (the corpus vocabulary), unigram.py (the baseline),
verify.py (shard sha256s against meta.json)."""

from gptlab.data.loader import (
    SequenceSampler,
    TokenDataset,
    eval_batch_count,
    eval_batches,
    read_meta,
)
from gptlab.data.prepare import prepare
from gptlab.data.sources import HFDataset, iter_documents
from gptlab.data.unigram import unigram_loss

__all__ = [
    "prepare",
    "HFDataset",
    "iter_documents",
    "unigram_loss",
    "TokenDataset",
    "SequenceSampler",
    "eval_batches",
    "eval_batch_count",
    "read_meta",
]
