"""The model: the book's GPTModel (gpt.py) and the layers interventions swap in (layers.py)."""

from gptlab.model.gpt import (
    FeedForward,
    GPTModel,
    MultiHeadAttention,
    TransformerBlock,
    count_params,
    non_embedding_params,
)
from gptlab.model.layers import RMSNorm, Rotary, make_norm

__all__ = [
    "GPTModel",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "RMSNorm",
    "Rotary",
    "make_norm",
    "count_params",
    "non_embedding_params",
]
