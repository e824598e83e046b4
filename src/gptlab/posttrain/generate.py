"""Generation: the one path from text to sampled text, used by `gptlab generate`, `gptlab serve` and the judge.

A `Generator` holds a model and its run's corpus vocabulary (`vocab_map.npy`, when the run has one). Callers
speak GPT-2 ids and text; only the Generator maps ids into the model's compact vocabulary and back (GPT-2 ids
outside it are read as <|endoftext|>). Sampling is the book's generate(): temperature (0 = greedy), top-k,
an optional seed, stop at <|endoftext|> or after max_new_tokens, and a sliding window over the last
context_length tokens (no KV cache: the models here are small).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, decode, encode
from gptlab.data.vocab import RUN_FILE, VocabMap, load_vocab_map
from gptlab.model import GPTModel
from gptlab.train import load_run_model


@dataclass(frozen=True)
class Sampling:
    """How each next token is picked: temperature 0 is greedy; top_k None or 0 keeps every token; a seed makes
    sampling reproducible (None: torch's global generator)."""

    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None


class Generator:
    """A model and its vocabulary map: GPT-2 ids or text in, model tokens sampled, text out."""

    def __init__(self, model: GPTModel, vocab_map: VocabMap | None = None):
        self.model, self.vocab_map = model, vocab_map
        self.device = next(model.parameters()).device
        self.context_length = model.cfg.context_length
        self.eos_id = int(vocab_map.lut[EOT_ID]) if vocab_map is not None else EOT_ID

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> Generator:
        """The run's latest checkpoint with its vocabulary map (checked against the model's vocab_size)."""
        model, cfg = load_run_model(run_dir, device)
        vocab_map = load_vocab_map(run_dir)
        if vocab_map is not None and len(vocab_map) != cfg.model.vocab_size:
            raise GptlabError(f"{Path(run_dir) / RUN_FILE}: {len(vocab_map)} ids but model.vocab_size is "
                              f"{cfg.model.vocab_size}")
        return cls(model, vocab_map)

    def encode(self, text: str) -> list[int]:
        """GPT-2 ids (what a prompt's length is counted in)."""
        return encode(text)

    def decode(self, model_ids: Sequence[int]) -> str:
        return decode(self.vocab_map.to_gpt2(model_ids) if self.vocab_map is not None else model_ids)

    def _to_model(self, gpt2_ids: Sequence[int]) -> list[int]:
        if self.vocab_map is None:
            return list(gpt2_ids)
        return self.vocab_map.lut[torch.tensor(gpt2_ids, dtype=torch.long)].tolist()

    @torch.no_grad()
    def token_ids(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling()
                  ) -> Iterator[int]:
        """Yield the model's new token ids one by one, until <|endoftext|> (not yielded) or max_new_tokens.
        An empty prompt starts from <|endoftext|>."""
        idx = torch.tensor([self._to_model(prompt_ids) or [self.eos_id]], dtype=torch.long, device=self.device)
        rng = None
        if sampling.seed is not None:
            rng = torch.Generator(device=self.device).manual_seed(sampling.seed)
        self.model.eval()
        for _ in range(max_new_tokens):
            logits = self.model(idx[:, -self.context_length:])[:, -1, :].float()
            if sampling.top_k:
                v, _ = torch.topk(logits, min(sampling.top_k, logits.shape[-1]))
                logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
            if sampling.temperature and sampling.temperature > 0:
                probs = torch.softmax(logits / sampling.temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=rng)
            else:
                nxt = logits.argmax(dim=-1, keepdim=True)
            tok = int(nxt.item())
            if tok == self.eos_id:
                return
            yield tok
            idx = torch.cat([idx, nxt.to(idx.device)], dim=1)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
               stop: Sequence[str] = ()) -> TextStream:
        """The continuation as text deltas; see TextStream."""
        return TextStream(self, prompt_ids, max_new_tokens, sampling, stop)

    def complete(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                 stop: Sequence[str] = ()) -> TextStream:
        """The whole continuation: the returned stream, already exhausted (read its `text`)."""
        out = self.stream(prompt_ids, max_new_tokens, sampling, stop)
        for _ in out:
            pass
        return out


class TextStream:
    """Iterate for text deltas: a delta never splits a UTF-8 character and never holds part of a stop string;
    the text ends before the first stop string. Once exhausted, `text` is the deltas joined, `finish_reason`
    is "stop" (<|endoftext|> or a stop string) or "length", and `completion_tokens` counts the tokens
    generated."""

    def __init__(self, gen: Generator, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling,
                 stop: Sequence[str]):
        self._gen, self._prompt_ids, self._max, self._sampling, self._stop = (gen, prompt_ids, max_new_tokens,
                                                                              sampling, stop)
        self.finish_reason, self.completion_tokens, self.text = "length", 0, ""

    def __iter__(self) -> Iterator[str]:
        out: list[int] = []
        text, emitted = "", 0
        for tok in self._gen.token_ids(self._prompt_ids, self._max, self._sampling):
            out.append(tok)
            self.completion_tokens = len(out)
            text = self._gen.decode(out)
            hits = [p for p in (text.find(s) for s in self._stop) if p >= 0]
            if hits:
                text, self.finish_reason = text[:min(hits)], "stop"
                break
            safe = self._safe_end(text, emitted)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        else:
            if len(out) < self._max:
                self.finish_reason = "stop"  # <|endoftext|>
        self.text = text
        if len(text) > emitted:
            yield text[emitted:]

    def _safe_end(self, text: str, emitted: int) -> int:
        """How far `text` can be sent: not a trailing partial UTF-8 character (decoded as U+FFFD), not a tail
        that could be the start of a stop string."""
        safe = len(text)
        while safe > emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        hold = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, safe - emitted), hold, -1):
                if text[safe - k:safe] == s[:k]:
                    hold = k
                    break
        return safe - hold


def generate_text(model: GPTModel, prompt: str, max_new_tokens: int = 50, temperature: float = 1.0,
                  top_k: int | None = None, seed: int | None = None, vocab_map: VocabMap | None = None) -> str:
    """Continue `prompt` (the book's generate, as text): Generator(model, vocab_map).complete(...).text."""
    gen = Generator(model, vocab_map)
    return gen.complete(gen.encode(prompt), max_new_tokens, Sampling(temperature, top_k, seed)).text
