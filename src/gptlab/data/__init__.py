"""Data pipeline: `prepare` turns corpora into uint16 GPT-2 token shards + meta.json; the loader
memory-maps them and serves training sequences in a seeded order and sequential eval batches."""

from gptlab.data.loader import (
           SequenceSampler,
           TokenDataset,
           eval_batch_count,
           eval_batches,
           read_meta,
)
from gptlab.data.prepare import HFDataset, iter_documents, prepare, unigram_loss

__all__ = ["prepare", "HFDataset", "iter_documents", "unigram_loss", "TokenDataset", "SequenceSampler",
           "eval_batches", "eval_batch_count", "read_meta"]
