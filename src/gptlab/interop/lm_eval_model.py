"""`GptlabLM`, the lm-eval model class registered as "gptlab": `loglikelihood` and `loglikelihood_rolling` scored
with a run's own GPTModel (its latest checkpoint, any architecture gptlab trains), batched, under no_grad, with the
context cut from the left to the model's context length exactly as lm-eval's `hf` model does; text is GPT-2 BPE.
A run with a corpus vocabulary scores over its compact vocabulary; tokens it lacks are fed and scored as
<|endoftext|> and counted (`tokens_outside_vocab`, `context_tokens_outside_vocab`). `generate_until` is refused.
Importing this module registers the class (interop/lm_eval.py imports it)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, encode

try:
    import lm_eval.models  # noqa: F401  lm-eval's own models (lazy); registering ours first would hide them
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ModuleNotFoundError:  # pragma: no cover - install problem
    raise GptlabError(
        "downstream evaluation needs lm-evaluation-harness: pip install -e '.[eval]' (or pip install 'lm-eval>=0.4')"
    ) from None


@register_model("gptlab")
class GptlabLM(TemplateLM):
    """lm-eval's view of a gptlab model: `GptlabLM(run="runs/x")` (or model_args "run=runs/x" under the name
    "gptlab"), or `GptlabLM(model=GPTModel, vocab_map=...)` for a model already in memory."""

    def __init__(
        self,
        run: str | None = None,
        device: str = "auto",
        batch_size: int | str = 16,
        model=None,
        vocab_map=None,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        from gptlab.train import autocast_ctx, resolve_precision

        if (run is None) == (model is None):
            raise GptlabError("GptlabLM: give run=RUN_DIR or model=GPTModel")
        if run is not None:
            from gptlab.data.vocab import load_vocab_map
            from gptlab.train import load_run_model

            model, cfg = load_run_model(run, device)
            vocab_map = load_vocab_map(run, cfg.model.vocab_size)
        if str(batch_size).startswith("auto"):
            batch_size = 16
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise GptlabError(f"GptlabLM: batch_size {batch_size!r} is not a whole number") from None
        if self.batch_size < 1:
            raise GptlabError(f"GptlabLM: batch_size must be at least 1, got {self.batch_size}")
        self.model = model.eval()
        self.dev = next(model.parameters()).device
        precision = resolve_precision("auto", self.dev)
        self._autocast = lambda: autocast_ctx(precision, self.dev)
        self.vocab_map = vocab_map
        self.max_length = model.cfg.context_length
        self.reset_counts()

    def reset_counts(self) -> None:
        self.counts = dict(
            requests=0,
            tokens_scored=0,
            tokens_outside_vocab=0,
            context_tokens=0,
            context_tokens_outside_vocab=0,
            requests_truncated=0,
        )

    # -- TemplateLM's tokenizer interface ------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return encode(string)

    # -- scoring --------------------------------------------------------------------------------------
    def _outside(self, ids: list[int]) -> int:
        if self.vocab_map is None:
            return 0
        t = torch.tensor(ids, dtype=torch.long)
        return int(((self.vocab_map.lut[t] == self.vocab_map.lut[EOT_ID]) & (t != EOT_ID)).sum())

    def _to_model(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.vocab_map is None else self.vocab_map.to_compact(t)

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(sum of log-probs of `cont` after `ctx`, whether greedy decoding gives `cont`) per (ctx, cont) of GPT-2
        ids. Longest first in batches of `batch_size`; the input is (ctx + cont)[-(L+1):][:-1] for context
        length L, right-padded (the model is causal, so padding after a row's tokens does not change them)."""
        from tqdm import tqdm

        L = self.max_length
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: (-(len(pairs[i][0]) + len(pairs[i][1])), i))
        bar = tqdm(total=len(pairs), disable=disable_tqdm, desc="gptlab loglikelihood")
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            rows, spans = [], []
            for i in idx:
                ctx, cont = pairs[i]
                if not cont or not ctx:
                    raise GptlabError("loglikelihood: empty context or continuation after tokenisation")
                if len(cont) > L:
                    raise GptlabError(
                        f"loglikelihood: a continuation of {len(cont)} tokens is longer than the "
                        f"model's context length {L}"
                    )
                full = (ctx + cont)[-(L + 1) :]
                inp = full[:-1]
                c = self.counts
                c["requests"] += 1
                c["requests_truncated"] += len(ctx) + len(cont) > L + 1
                c["tokens_scored"] += len(cont)
                c["tokens_outside_vocab"] += self._outside(cont)
                c["context_tokens"] += len(inp) - len(cont) + 1
                c["context_tokens_outside_vocab"] += self._outside(inp[: len(inp) - len(cont) + 1])
                rows.append(inp)
                spans.append((len(inp) - len(cont), cont))
            x = torch.full((len(rows), max(len(r) for r in rows)), EOT_ID, dtype=torch.long)
            for r, row in enumerate(rows):
                x[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            with self._autocast():
                logits = self.model(self._to_model(x).to(self.dev))
            for r, (start, cont) in enumerate(spans):
                lp = F.log_softmax(logits[r, start : start + len(cont)].float(), dim=-1)
                tgt = self._to_model(torch.tensor(cont, dtype=torch.long)).to(self.dev)
                ll = lp.gather(-1, tgt[:, None]).squeeze(-1).double().sum().item()
                out[idx[r]] = (ll, bool((lp.argmax(-1) == tgt).all().item()))
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        res = self.score([(ctx, cont) for _, ctx, cont in requests], disable_tqdm=disable_tqdm)
        for (key, _, _), r in zip(requests, res, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, r)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-probs of each whole text, in disjoint windows of the context length (lm-eval's
        rolling windows; the first token is predicted from <|endoftext|>)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            for w in get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                pairs.append(make_disjoint_window(w))
                owner.append(n)
        sums = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, self.score(pairs, disable_tqdm=disable_tqdm), strict=True):
            sums[n] += ll
        for req, s in zip(requests, sums, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), s)
        return sums

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise GptlabError(
            "gptlab's lm-eval model scores log-likelihoods only: generation tasks (output_type "
            "generate_until) are not supported; choose a multiple-choice or perplexity task"
        )


# ------------------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------------------
