"""Generation: the one path from text to sampled text, used by `gptlab generate`, `gptlab serve` and the judge.

A `Generator` holds a model and its run's corpus vocabulary (`vocab_map.npy`, when the run has one). Callers
speak GPT-2 ids and text; only the Generator maps ids into the model's compact vocabulary and back (GPT-2 ids
outside it are read as <|endoftext|>). Sampling is the book's generate(): temperature (0 = greedy), top-k,
an optional seed, stop at <|endoftext|> or after max_new_tokens, and a sliding window over the last
context_length tokens; plus top-p (nucleus) sampling, as OpenAI's API has it.

Decoding keeps a KV cache (model/kv_cache.py): the prompt is prefilled once, then each step feeds one token
per row. Several prompts decode together as one left-padded batch (`complete_batch`); a row that ends
(<|endoftext|>, a stop string, its own max_new_tokens) leaves the batch. Each row gets the tokens it would get alone:
its positions count its own tokens, padding is masked, and each seeded row samples from its own generator.
Once a row outgrows the context, the window slides: each step recomputes the batch over every row's last
context_length tokens, exactly what the book's generate() computes (a sliding cache would keep keys and values
that were computed with the dropped token in view).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, decode, encode
from gptlab.data.vocab import VocabMap, load_vocab_map
from gptlab.model import GPTModel
from gptlab.model.kv_cache import KVCache
from gptlab.train import load_run_model


@dataclass(frozen=True)
class Sampling:
    """How each next token is picked: temperature 0 is greedy; top_k None or 0 keeps every token; top_p (nucleus
    sampling) keeps the most likely tokens whose probabilities (after top_k and temperature) first add up to at
    least top_p (None or 1 keeps every token; 0 keeps only the most likely); a seed makes sampling reproducible
    (None: torch's global generator)."""

    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    top_p: float | None = None


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
        return cls(model, load_vocab_map(run_dir, cfg.model.vocab_size))

    def encode(self, text: str) -> list[int]:
        """GPT-2 ids (what a prompt's length is counted in)."""
        return encode(text)

    def decode(self, model_ids: Sequence[int]) -> str:
        return decode(self.vocab_map.to_gpt2(model_ids) if self.vocab_map is not None else model_ids)

    def _to_model(self, gpt2_ids: Sequence[int]) -> list[int]:
        if self.vocab_map is None:
            return list(gpt2_ids)
        return self.vocab_map.lut[torch.tensor(gpt2_ids, dtype=torch.long)].tolist()

    def token_ids(
        self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling()
    ) -> Iterator[int]:
        """Yield the model's new token ids one by one, until <|endoftext|> (not yielded) or max_new_tokens.
        An empty prompt starts from <|endoftext|>."""
        for step in self._decode([prompt_ids], max_new_tokens, [sampling], set()):
            if step[0] == self.eos_id:
                return
            yield step[0]

    @torch.no_grad()
    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        samplings: Sequence[Sampling],
        stopped: set[int],
    ) -> Iterator[dict[int, int]]:
        """The decoding loop over GPT-2-id prompts: each step yields {row: next model token} for every running
        row. A row ends after <|endoftext|> (yielded), after its max_new_tokens (one for all rows, or one per
        row), or once the caller adds it to `stopped`."""
        seqs = [self._to_model(p) or [self.eos_id] for p in prompts]
        limits = [max_new_tokens] * len(seqs) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != len(seqs):
            raise ValueError(f"{len(limits)} max_new_tokens for {len(seqs)} prompts")
        rngs = [
            torch.Generator(device=self.device).manual_seed(s.seed) if s.seed is not None else None for s in samplings
        ]
        rows, cache, ctx = [r for r in range(len(seqs)) if limits[r] > 0], None, self.context_length
        made = [0] * len(seqs)
        self.model.eval()
        while rows:
            if cache is None or cache.full:  # prefill every row's last context_length tokens, left-padded
                windows = [seqs[r][-ctx:] for r in rows]
                width = max(map(len, windows))
                left = max(limits[r] - made[r] for r in rows)  # the most tokens a row still makes
                cache = KVCache(len(self.model.trf_blocks), min(ctx, width + left - 1))
                idx = [[0] * (width - len(w)) + w for w in windows]
                valid = [[False] * (width - len(w)) + [True] * len(w) for w in windows]
                logits = self.model.decode(self._tensor(idx), cache, self._tensor(valid, torch.bool))
            else:
                logits = self.model.decode(self._tensor([[seqs[r][-1]] for r in rows]), cache)
            toks = _pick(logits.float(), [samplings[r] for r in rows], [rngs[r] for r in rows])
            for r, tok in zip(rows, toks, strict=True):
                seqs[r].append(tok)
                made[r] += 1
            yield dict(zip(rows, toks, strict=True))
            keep = [
                i
                for i, (r, tok) in enumerate(zip(rows, toks, strict=True))
                if tok != self.eos_id and r not in stopped and made[r] < limits[r]
            ]
            if not keep:
                return
            if len(keep) < len(rows):
                rows = [rows[i] for i in keep]
                cache.keep(self._tensor(keep))

    def _tensor(self, data: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, device=self.device)

    def stream(
        self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(), stop: Sequence[str] = ()
    ) -> TextStream:
        """The continuation as text deltas; see TextStream."""
        return TextStream(self, prompt_ids, max_new_tokens, sampling, stop)

    def complete(
        self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(), stop: Sequence[str] = ()
    ) -> TextStream:
        """The whole continuation: the returned stream, already exhausted (read its `text`)."""
        out = self.stream(prompt_ids, max_new_tokens, sampling, stop)
        for _ in out:
            pass
        return out

    def complete_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling | Sequence[Sampling] = Sampling(),
        stop: Sequence[str] = (),
        batch_size: int = 8,
        progress: Callable[[int], object] | None = None,
    ) -> list[TextStream]:
        """`complete` for many prompts (one Sampling, or one per prompt), decoded `batch_size` at a time in
        batches of similar prompt lengths (less padding); the results come back in the prompts' order.
        `progress` is called with the number of prompts each finished batch held."""
        if batch_size < 1:
            raise GptlabError(f"generate: batch size: expected a positive number of prompts, got {batch_size}")
        samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        outs = [TextStream(self, p, max_new_tokens, s, stop) for p, s in zip(prompts, samplings, strict=True)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            for _ in self.decode_together([outs[i] for i in chunk]):
                pass
            for i in chunk:
                outs[i].finish()
            if progress is not None:
                progress(len(chunk))
        return outs

    def decode_together(
        self, outs: Sequence[TextStream], cancelled: Set[int] = frozenset()
    ) -> Iterator[list[tuple[int, str, bool]]]:
        """Decode fresh TextStreams (from `stream`, each with its own prompt, max_new_tokens, sampling and stop
        strings) as one batch. Each step yields (row, delta, ended) for every row that got a token: `delta` is
        the text that can be sent now ("" while a stop string or a UTF-8 character is incomplete); when `ended`,
        the stream is finished (delta includes its tail) and its finish_reason and completion_tokens are final.
        A row whose index the caller puts in `cancelled` leaves the batch at its next token, unfinished."""
        stopped: set[int] = set()
        for step in self._decode(
            [o._prompt_ids for o in outs], [o._max for o in outs], [o._sampling for o in outs], stopped
        ):
            events = []
            for row, tok in step.items():
                if row in cancelled:
                    stopped.add(row)
                    continue
                out = outs[row]
                delta = out.push(tok) if tok != self.eos_id else None
                ended = delta is None or out.completion_tokens >= out._max
                if ended:
                    stopped.add(row)
                    delta = (delta or "") + out.finish()
                events.append((row, delta, ended))
            yield events


class TextStream:
    """Iterate for text deltas: a delta never splits a UTF-8 character and never holds part of a stop string;
    the text ends before the first stop string. Once exhausted, `text` is the deltas joined, `finish_reason`
    is "stop" (<|endoftext|> or a stop string) or "length", `completion_tokens` counts the tokens generated
    and `tokens` holds them (the model's ids)."""

    def __init__(
        self, gen: Generator, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling, stop: Sequence[str]
    ):
        self._gen, self._prompt_ids, self._max, self._sampling, self._stop = (
            gen,
            prompt_ids,
            max_new_tokens,
            sampling,
            stop,
        )
        self.finish_reason, self.completion_tokens, self.text = "length", 0, ""
        self.tokens: list[int] = []
        self._emitted, self._stopped = 0, False

    def __iter__(self) -> Iterator[str]:
        for tok in self._gen.token_ids(self._prompt_ids, self._max, self._sampling):
            delta = self.push(tok)
            if delta is None:
                break
            if delta:
                yield delta
        tail = self.finish()
        if tail:
            yield tail

    def push(self, tok: int) -> str | None:
        """Take one generated token (not <|endoftext|>): the text that can be sent now, or None once a stop
        string ends the text."""
        self.tokens.append(tok)
        self.completion_tokens = len(self.tokens)
        text = self._gen.decode(self.tokens)
        hits = [p for p in (text.find(s) for s in self._stop) if p >= 0]
        if hits:
            self.text, self.finish_reason, self._stopped = text[: min(hits)], "stop", True
            return None
        self.text = text
        safe = self._safe_end(text, self._emitted)
        delta, self._emitted = text[self._emitted : safe], max(safe, self._emitted)
        return delta

    def finish(self) -> str:
        """End the stream (after <|endoftext|>, max_new_tokens or a stop string): the text not yet sent."""
        if not self._stopped and self.completion_tokens < self._max:
            self.finish_reason = "stop"  # <|endoftext|>
        tail, self._emitted = self.text[self._emitted :], len(self.text)
        return tail

    def _safe_end(self, text: str, emitted: int) -> int:
        """How far `text` can be sent: not a trailing partial UTF-8 character (decoded as U+FFFD), not a tail
        that could be the start of a stop string."""
        safe = len(text)
        while safe > emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        hold = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, safe - emitted), hold, -1):
                if text[safe - k : safe] == s[:k]:
                    hold = k
                    break
        return safe - hold


def generate_text(
    model: GPTModel,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    vocab_map: VocabMap | None = None,
) -> str:
    """Continue `prompt` (the book's generate, as text): Generator(model, vocab_map).complete(...).text."""
    gen = Generator(model, vocab_map)
    return gen.complete(gen.encode(prompt), max_new_tokens, Sampling(temperature, top_k, seed)).text


def _pick(logits: torch.Tensor, samplings: Sequence[Sampling], rngs: Sequence[torch.Generator | None]) -> list[int]:
    """The next token of each row of `logits` (B, vocab): greedy rows take the argmax; sampled rows apply top-k,
    temperature and top-p, and draw from their own generator (as a row decoded alone would)."""
    if not any(s.temperature and s.temperature > 0 for s in samplings):
        return logits.argmax(dim=-1).tolist()  # top-k and top-p never change the argmax
    out = []
    for row, s, rng in zip(logits.split(1), samplings, rngs, strict=True):
        if not (s.temperature and s.temperature > 0):
            out.append(int(row.argmax(dim=-1)))
            continue
        if s.top_k:
            v, _ = torch.topk(row, min(s.top_k, row.shape[-1]))
            row = row.masked_fill(row < v[:, -1:], float("-inf"))
        scaled = row / s.temperature
        if not torch.isfinite(scaled.max()):  # a temperature so small the logits overflow: its limit, greedy
            out.append(int(row.argmax(dim=-1)))
            continue
        probs = torch.softmax(scaled, dim=-1)
        if s.top_p is not None and s.top_p < 1:
            probs = _nucleus(probs, s.top_p)
        out.append(int(torch.multinomial(probs, 1, generator=rng)))
    return out


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p filtering of one row (1, vocab): keep the most likely tokens, in order, until their probabilities
    add up to at least top_p (always the most likely one), zero the rest."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(dim=-1) - sorted_p >= top_p  # the mass before a token already reaches top_p
    outside[..., 0] = False
    return probs.masked_fill(outside.scatter(-1, order, outside), 0.0)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: JSONL (name ending .jsonl: one {"prompt": "..."} object per line, so a prompt can hold
    newlines) or plain text (one prompt per line). Blank lines are skipped."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GptlabError(f"{p}: cannot read the prompts ({e})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix != ".jsonl":
            out.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{p}:{n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise GptlabError(f'{p}:{n}: expected an object with a "prompt" string, got {line[:60]!r}')
        out.append(obj["prompt"])
    if not out:
        raise GptlabError(f"{p}: no prompts (expected one per line)")
    return out
