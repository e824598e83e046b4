"""The regime of a run, screen beside target: what a small-scale screen can judge about a target run.

`Regime` holds a run's quantities (optimizer steps, tokens per step, parameters, width, context length, the
training split's size, precision) and, when measured, the baseline's test loss and the unigram model's. From
them: tokens per parameter, epochs over the training data, and the context learned (unigram loss - baseline
loss, nats). `informative` says whether a rung's baseline is clearly below the unigram model; `not_judged` says
why a screen cannot judge an intervention (interventions.py: what it acts on) when screen and target differ
too much in that quantity. Pure functions on numbers, plus `unigram_baseline`, which reads a prepared corpus.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab import GptlabError
from gptlab.data import TokenDataset, unigram_loss
from gptlab.data.tokenizer import EOT_ID
from gptlab.data.unigram import MAX_TOKENS, token_counts

# A screen judges an intervention only if it is within this factor of the target in every quantity the
# intervention acts on: one order of magnitude is about the span of a ladder's rungs, over which the fitted
# trend of Δ is measured; beyond it the mechanism runs in a regime the screen never saw (100 steps of a
# warmup-plus-cosine schedule are mostly warmup, 33,000 mostly decay).
MAX_FACTOR = 10.0

# A rung is informative when its baseline is at least this many nats below the unigram model's loss. 0.1 nats
# is a 10% lower perplexity than word frequencies alone give: well above the seed SD of a rung's loss (tiny CPU
# rungs show 0.003-0.03), so a rung that passes has learned context, not noise around the unigram level.
INFORMATIVE_MARGIN = 0.1

QUANTITY = {  # what an intervention acts on -> how the reason names it
    "horizon": "the training horizon",
    "batch": "the batch",
    "width": "the width",
    "data_repetition": "data repetition",
    "precision": "precision",
}


@dataclass(frozen=True)
class Regime:
    steps: int  # optimizer steps
    tokens_per_step: int  # global batch x context length
    params: int
    width: int  # the model's emb_dim
    context: int  # context length
    train_tokens: int  # tokens in the training split
    precision: str = "fp32"
    baseline_loss: float = math.nan  # the baseline's test loss (nan: not measured)
    unigram_loss: float = math.nan  # the unigram model's test loss on the same corpus (nan: not measured)

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params if self.params else math.nan

    @property
    def epochs(self) -> float:
        """Passes over the training split (above 1: the data repeats)."""
        return self.tokens / self.train_tokens if self.train_tokens else math.nan

    @property
    def context_learned(self) -> float:
        """Nats the baseline is below the unigram model (nan when either is not measured)."""
        return self.unigram_loss - self.baseline_loss

    def row(self) -> dict:
        """The regime table's row for this run (numbers; the report formats them)."""
        return dict(
            baseline_loss=self.baseline_loss,
            unigram_loss=self.unigram_loss,
            context_learned=self.context_learned,
            steps=self.steps,
            tokens_per_step=self.tokens_per_step,
            tokens_per_param=self.tokens_per_param,
            epochs=self.epochs,
            context=self.context,
            informative=informative(self.baseline_loss, self.unigram_loss),
        )


def regime_of(
    cfg,
    n_params: int,
    train_tokens: int,
    baseline_loss: float = math.nan,
    unigram: float = math.nan,
    precision: str | None = None,
) -> Regime:
    """The Regime of a resolved RunConfig with `n_params` parameters on a training split of `train_tokens`.
    `precision`: the one the run used (train.precision "auto" is bf16 on CUDA and fp32 elsewhere, so a CPU screen
    and a GPU target of one config differ); default the config's."""
    from gptlab.train.flops import planned_steps

    return Regime(
        steps=planned_steps(cfg, n_params),
        tokens_per_step=cfg.train.global_batch_size * cfg.model.context_length,
        params=int(n_params),
        width=cfg.model.emb_dim,
        context=cfg.model.context_length,
        train_tokens=int(train_tokens),
        precision=precision or cfg.train.precision,
        baseline_loss=baseline_loss,
        unigram_loss=unigram,
    )


def informative(baseline_loss: float, unigram_loss: float, margin: float = INFORMATIVE_MARGIN) -> bool | None:
    """True when the baseline is at least `margin` nats below the unigram model; None when either is unknown."""
    if not (math.isfinite(baseline_loss) and math.isfinite(unigram_loss)):
        return None
    return unigram_loss - baseline_loss >= margin


def unigram_baseline(data_dir: str | os.PathLike, corpus_vocab: bool = False, max_tokens: int | None = MAX_TOKENS):
    """Test loss (nats/token) of the unigram model of a prepared corpus: the test split's cross-entropy under the
    train split's token frequencies, add-one smoothed over the vocabulary. With `corpus_vocab` the vocabulary is
    the model's under data.vocab = "corpus" (the ids in the train split plus <|endoftext|>, to which a test token
    outside it maps); else all 50,257 GPT-2 ids (gptlab.data.unigram_loss's number)."""
    if not corpus_vocab:
        return unigram_loss(data_dir, max_tokens)
    train = token_counts(TokenDataset(data_dir, "train"), max_tokens)
    test = token_counts(TokenDataset(data_dir, "test"), max_tokens)
    inside = train > 0
    inside[EOT_ID] = True
    test[EOT_ID] += test[~inside].sum()
    test[~inside] = 0
    n = test.sum()
    if n == 0:
        raise GptlabError(f"{data_dir}: test split is empty; cannot compute the unigram baseline")
    logp = np.log(train + 1.0) - np.log(train.sum() + float(inside.sum()))
    return float(-(test * logp).sum() / n)


def _ratio(a: float, b: float) -> float:
    lo, hi = sorted((float(a), float(b)))
    return math.inf if lo <= 0 else hi / lo


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "unknown"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def not_judged(acts_on, screen: Regime, target: Regime, factor: float = MAX_FACTOR) -> str | None:
    """None when the screen can judge an intervention acting on `acts_on` (interventions.ACTS_ON names); else the
    reason, e.g. "acts on the training horizon (screen 100 steps, target 33,000)": the screen and the target
    differ by more than `factor` in steps ("horizon"), tokens per step ("batch") or width ("width"), differ in
    precision, or ("data_repetition") one repeats its data (more than 1 epoch) and the other does not, or both
    do and their epochs differ by more than `factor`. Several reasons are joined by "; "."""
    reasons = [
        f"acts on {QUANTITY[what]} ({detail})" for what in acts_on if (detail := _apart(what, screen, target, factor))
    ]
    return "; ".join(reasons) or None


def _apart(what: str, screen: Regime, target: Regime, factor: float) -> str | None:
    """How screen and target differ in the quantity `what` when the screen cannot judge it, else None."""
    if what == "horizon" and _ratio(screen.steps, target.steps) > factor:
        return f"screen {_fmt(screen.steps)} steps, target {_fmt(target.steps)}"
    if what == "batch" and _ratio(screen.tokens_per_step, target.tokens_per_step) > factor:
        return f"screen {_fmt(screen.tokens_per_step)} tokens per step, target {_fmt(target.tokens_per_step)}"
    if what == "width" and _ratio(screen.width, target.width) > factor:
        return f"screen width {screen.width}, target {target.width}"
    if what == "precision" and screen.precision != target.precision:
        return f"screen {screen.precision}, target {target.precision}"
    if what == "data_repetition":
        s, t = screen.epochs, target.epochs
        if (s > 1) != (t > 1) or (s > 1 and t > 1 and _ratio(s, t) > factor):
            return f"screen {_fmt(s)} epochs, target {_fmt(t)}"
    return None


def prepared_train_tokens(data_dir: str | os.PathLike) -> int:
    """Tokens in the training split of a prepared corpus; 0 when it is not prepared here (epochs unknown)."""
    if not (Path(data_dir) / "meta.json").is_file():
        return 0
    return len(TokenDataset(data_dir, "train"))


def run_precision(cfg) -> str:
    """The precision a config trains in: train.precision, with "auto" as the trainer resolves it (bf16 on CUDA,
    fp32 elsewhere) for the device this machine gives it."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    import torch

    on_cuda = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
    return "bf16" if on_cuda else "fp32"


def config_regime(cfg, baseline_loss: float = math.nan, with_unigram: bool = True) -> Regime:
    """The Regime of a resolved RunConfig: its parameters counted on the meta device, its training split and (with
    `with_unigram`) the unigram model's test loss read from its prepared data (nan when not prepared here)."""
    import torch

    from gptlab.model import GPTModel, count_params

    with torch.device("meta"):
        n_params = count_params(GPTModel(cfg.model))
    train = prepared_train_tokens(cfg.data.dir)
    uni = math.nan
    if with_unigram and train:
        uni = unigram_baseline(cfg.data.dir, corpus_vocab=cfg.data.vocab == "corpus")
    return regime_of(cfg, n_params, train, baseline_loss, uni, run_precision(cfg))


def acts_on(interventions) -> tuple[str, ...]:
    """What a variant's interventions (strings as a spec names them, "name:key=value") act on together, in
    ACTS_ON's order."""
    from gptlab.interventions import ACTS_ON, parse_spec

    got = {q for s in interventions for q in parse_spec(s)[0].acts_on}
    return tuple(q for q in ACTS_ON if q in got)
