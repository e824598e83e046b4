"""The one generation path (posttrain.generate.Generator): vocabulary mapping, seeds, streaming, stop strings."""

import numpy as np
import pytest
from conftest_ft import make_tiny_run, record_vocab

from gptlab import GptlabError
from gptlab.data.tokenizer import encode
from gptlab.posttrain.generate import Generator, Sampling, generate_text
from gptlab.train import load_run_model


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("gen") / "compact", vocab_ids=record_vocab())


def test_compact_vocabulary_is_mapped_in_and_out(compact):
    gen = Generator.from_run(compact, "cpu")
    out = gen.complete(gen.encode("The capital of France is"), 12, Sampling(1.0, seed=3))
    assert 0 < out.completion_tokens <= 12 and out.finish_reason in ("stop", "length")
    assert set(encode(out.text)) <= set(record_vocab())  # only the run's tokens come out
    model, _ = load_run_model(compact, "cpu")
    assert generate_text(model, "The capital of France is", 12, seed=3, vocab_map=gen.vocab_map) == out.text


def test_seed_reproduces_and_greedy_ignores_it(compact):
    gen = Generator.from_run(compact, "cpu")
    ids = gen.encode("Name a colour.")
    assert gen.complete(ids, 10, Sampling(1.0, 50, 7)).text == gen.complete(ids, 10, Sampling(1.0, 50, 7)).text
    assert gen.complete(ids, 10, Sampling(0.0, seed=1)).text == gen.complete(ids, 10, Sampling(0.0, seed=2)).text


def test_stream_joins_to_the_text_and_stops_before_a_stop_string(compact):
    gen = Generator.from_run(compact, "cpu")
    ids, sampling = gen.encode("The"), Sampling(0.0)
    full = gen.complete(ids, 16, sampling)
    stream = gen.stream(ids, 16, sampling)
    assert "".join(stream) == full.text == stream.text and stream.finish_reason == full.finish_reason
    assert len(full.text) > 6
    stop = full.text[3:5]
    deltas = list(cut := gen.stream(ids, 16, sampling, stop=[stop]))
    assert "".join(deltas) == full.text[:full.text.find(stop)] and cut.finish_reason == "stop"
    assert not any(stop in d for d in deltas)


def test_vocabulary_map_must_fit_the_model(tmp_path):
    run = make_tiny_run(tmp_path / "bad", vocab_ids=record_vocab())
    ids = np.load(run / "vocab_map.npy")
    np.save(run / "vocab_map.npy", ids[1:])  # one id fewer than the model's outputs (<|endoftext|> is the last)
    with pytest.raises(GptlabError, match="model.vocab_size"):
        Generator.from_run(run, "cpu")
