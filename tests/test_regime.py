"""The regime of a screen beside its target (analysis/regime.py) on constructed numbers and corpora."""

import math

import pytest
from test_data import make_data_dir

from gptlab.data.tokenizer import EOT_ID, VOCAB_SIZE
from gptlab.experiments.analysis import regime
from gptlab.experiments.analysis.regime import Regime, informative, not_judged, unigram_baseline
from gptlab.interventions import REGISTRY

# GPT-2 small as the seed trains it: ~33,000 steps of 96 x 1024 tokens on a corpus read about once
TARGET = Regime(
    steps=33_000, tokens_per_step=98_304, params=124_000_000, width=768, context=1024, train_tokens=9_000_000_000
)


def screen(steps: int, **kw) -> Regime:
    base = dict(tokens_per_step=1_024, params=200_000, width=64, context=64, train_tokens=300_000)
    return Regime(steps=steps, **{**base, **kw})


def test_horizon_variant_screened_at_one_percent_of_the_steps_is_not_judged():
    s = screen(330, width=768, tokens_per_step=98_304, train_tokens=9_000_000_000)
    why = not_judged(REGISTRY["lr_schedule"].acts_on, s, TARGET)
    assert why == "acts on the training horizon (screen 330 steps, target 33,000)"
    assert not_judged(REGISTRY["lr_schedule"].acts_on, screen(3_300, width=768, tokens_per_step=98_304), TARGET) is None


def test_variant_acting_on_nothing_is_judged_however_far_the_screen():
    assert REGISTRY["rope"].acts_on == ()
    assert not_judged(REGISTRY["rope"].acts_on, screen(40), TARGET) is None


def test_reasons_name_each_quantity_that_differs():
    s = screen(40, precision="fp32")
    t = Regime(**{**TARGET.__dict__, "precision": "bf16"})
    why = not_judged(("batch", "width", "precision"), s, t)
    assert why.split("; ") == [
        "acts on the batch (screen 1,024 tokens per step, target 98,304)",
        "acts on the width (screen width 64, target 768)",
        "acts on precision (screen fp32, target bf16)",
    ]


def test_dropout_is_not_judged_when_only_the_screen_repeats_its_data():
    repeats = screen(1_000)  # 1,024,000 tokens over a 300,000-token split: 3.4 epochs
    assert repeats.epochs == pytest.approx(1_024_000 / 300_000)
    why = not_judged(REGISTRY["no_dropout"].acts_on, repeats, TARGET)
    assert why == "acts on data repetition (screen 3.41 epochs, target 0.36)"
    assert not_judged(("data_repetition",), screen(100), TARGET) is None  # neither repeats


def test_registry_rejects_an_unknown_quantity():
    with pytest.raises(ValueError, match="acts_on"):
        from gptlab.interventions import register

        register("x", "", "", acts_on=("depth",))


def test_row_derives_tokens_per_param_epochs_and_context_learned():
    s = screen(100, baseline_loss=6.0, unigram_loss=6.5)
    row = s.row()
    assert row["tokens_per_param"] == pytest.approx(100 * 1024 / 200_000)
    assert row["epochs"] == pytest.approx(100 * 1024 / 300_000)
    assert row["context_learned"] == pytest.approx(0.5)
    assert row["informative"] is True


def test_informative_needs_the_margin_below_unigram():
    assert informative(6.08, 6.39) is True
    assert informative(6.39 - regime.INFORMATIVE_MARGIN / 2, 6.39) is False
    assert informative(7.19, 6.39) is False
    assert informative(math.nan, 6.39) is None


def test_unigram_baseline_in_closed_form(tmp_path):
    a, b, c = 100, 200, 300  # train: a three times, b once; test: a, b and c (c never seen in train)
    d = make_data_dir(tmp_path / "d", {"train": [[a, a, a, b]], "val": [[a]], "test": [[a, b, c]]})
    full = -(math.log(4 / (4 + VOCAB_SIZE)) + math.log(2 / (4 + VOCAB_SIZE)) + math.log(1 / (4 + VOCAB_SIZE))) / 3
    assert unigram_baseline(d) == pytest.approx(full, rel=1e-12)
    # corpus vocabulary {a, b, <|endoftext|>}: c maps to <|endoftext|>, which train never had
    assert EOT_ID not in (a, b, c)
    corpus = -(math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 3
    assert unigram_baseline(d, corpus_vocab=True) == pytest.approx(corpus, rel=1e-12)


def test_regime_of_a_config_counts_its_steps_and_tokens():
    from gptlab.config import load_config

    over = ["model.preset=nano", "model.vocab_size=512", "model.context_length=32", "train.global_batch_size=8"]
    cfg = load_config(None, [*over, "train.tokens=3000", "train.precision=fp32"])
    r = regime.regime_of(cfg, n_params=10_000, train_tokens=1_000, baseline_loss=5.0, unigram=5.05)
    assert (r.steps, r.tokens_per_step, r.context) == (12, 256, 32)  # 3,000 tokens in whole steps of 256
    assert r.epochs == pytest.approx(12 * 256 / 1_000) and r.width == cfg.model.emb_dim
    assert r.row()["informative"] is False  # 0.05 nats below unigram: not clearly
