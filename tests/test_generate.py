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
    assert "".join(deltas) == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert not any(stop in d for d in deltas)


def test_vocabulary_map_must_fit_the_model(tmp_path):
    run = make_tiny_run(tmp_path / "bad", vocab_ids=record_vocab())
    ids = np.load(run / "vocab_map.npy")
    np.save(run / "vocab_map.npy", ids[1:])  # one id fewer than the model's outputs (<|endoftext|> is the last)
    with pytest.raises(GptlabError, match="model.vocab_size"):
        Generator.from_run(run, "cpu")


PROMPTS = [
    "The",
    "Name a colour.",
    "What is the opposite of hot? The opposite",
    "Translate the word into French.",
    "",
    "A duck says",
    "What sound does a duck make? A duck says quack and the cat says",
]


@pytest.mark.parametrize("sampling", [Sampling(0.0), Sampling(1.0, 20, seed=4)])
def test_complete_batch_matches_complete_one_at_a_time(compact, sampling):
    """Rows of different lengths in batches of 3 (rows ending at <|endoftext|>, at a stop string or at the
    length limit leave the batch) give each prompt the completion it gets alone."""
    gen = Generator.from_run(compact, "cpu")
    ids = [gen.encode(p) for p in PROMPTS]
    solo = [gen.complete(i, 24, sampling, stop=["ck"]) for i in ids]
    batch = gen.complete_batch(ids, 24, sampling, stop=["ck"], batch_size=3)
    assert [(o.text, o.finish_reason, o.completion_tokens) for o in batch] == [
        (o.text, o.finish_reason, o.completion_tokens) for o in solo
    ]
    assert {o.finish_reason for o in solo} == {"stop", "length"}


def test_judge_answers_do_not_depend_on_the_batch_size(compact):
    from conftest_ft import RECORDS

    from gptlab.posttrain.judge import generate_answers

    for temperature in (0.0, 0.9):
        one = generate_answers(
            compact, RECORDS[:7], max_new_tokens=12, temperature=temperature, device="cpu", batch_size=1
        )
        assert (
            generate_answers(
                compact, RECORDS[:7], max_new_tokens=12, temperature=temperature, device="cpu", batch_size=4
            )
            == one
        )
        assert len(set(one)) > 1


def test_cli_generate_prompts_file(compact, tmp_path, capsys):
    """--prompts FILE --batch N prints one JSON line per prompt, each the text --prompt gives for that prompt
    with the same seed."""
    import json

    from gptlab.cli import main

    prompts = ["The capital of France is", "Name a colour.", "What sound does a duck make?"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    args = ["--max-new-tokens", "10", "--temperature", "0.8", "--seed", "5", "--device", "cpu"]
    alone = []
    for p in prompts:
        assert main(["generate", str(compact), "--prompt", p, *args]) == 0
        alone.append(capsys.readouterr().out[len(p) : -1])
    for f in ("p.txt", "p.jsonl"):
        assert main(["generate", str(compact), "--prompts", str(tmp_path / f), "--batch", "2", *args]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["prompt"] for r in rows] == prompts and [r["completion"] for r in rows] == alone
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no"}\n')
    assert main(["generate", str(compact), "--prompts", str(tmp_path / "bad.jsonl")]) == 2
    assert 'bad.jsonl:2: expected an object with a "prompt" string' in capsys.readouterr().err
    assert main(["generate", str(compact), "--prompt", "x", "--prompts", str(tmp_path / "p.txt")]) == 2
    assert "either --prompt TEXT or --prompts FILE" in capsys.readouterr().err


def test_top_p_keeps_only_the_nucleus():
    """Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two (0.5 < 0.7 <= 0.8) and never samples the
    others over many seeds, though both kept tokens come up; top_p 0.9 lets the third in; top_p 1 keeps all."""
    import torch

    from gptlab.posttrain.generate import _pick

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def drawn(top_p):
        s = Sampling(1.0, None, None, top_p)
        return {_pick(logits, [s], [torch.Generator().manual_seed(i)])[0] for i in range(400)}

    assert drawn(0.7) == {0, 1}
    assert drawn(0.9) == {0, 1, 2}
    assert drawn(1.0) == drawn(None) == {0, 1, 2, 3}
    assert drawn(0.0) == drawn(1e-6) == {0}  # only the most likely token: greedy


def test_top_p_tiny_is_greedy_and_one_is_off(compact):
    gen = Generator.from_run(compact, "cpu")
    ids = gen.encode("Name a colour.")
    greedy = gen.complete(ids, 16, Sampling(0.0)).text
    assert gen.complete(ids, 16, Sampling(1.0, seed=5, top_p=1e-6)).text == greedy
    sampled = gen.complete(ids, 16, Sampling(1.0, seed=5)).text
    assert sampled != greedy  # so the line above says something
    assert gen.complete(ids, 16, Sampling(1.0, seed=5, top_p=1.0)).text == sampled
    # a nucleus changes what is drawn from the same seed (the tail is cut), and a row keeps it inside a batch
    nucleus = [Sampling(1.0, seed=5 + i, top_p=0.5) for i in range(len(PROMPTS))]
    prompts = [gen.encode(p) for p in PROMPTS]
    solo = [gen.complete(p, 16, s).text for p, s in zip(prompts, nucleus, strict=True)]
    assert [o.text for o in gen.complete_batch(prompts, 16, nucleus, batch_size=len(PROMPTS))] == solo


def test_decode_together_gives_each_row_its_own_length_stop_and_sampling(compact):
    """Rows with their own max_new_tokens, stop strings and sampling, decoded as one batch: each gets exactly
    what it gets alone, and each row's deltas join to its text."""
    gen = Generator.from_run(compact, "cpu")
    ids = [gen.encode(p) for p in PROMPTS]
    ref = gen.complete(ids[0], 16, Sampling(0.0)).text
    stop = ref[3:5]
    limits = [16, 3, 8, 24, 5, 12, 20]
    specs = [
        (
            ids[i],
            limits[i],
            Sampling(0.0) if i % 2 == 0 else Sampling(0.8, 40, seed=i, top_p=0.9),
            [stop] if i == 0 else ["ck"] if i == 3 else [],
        )
        for i in range(len(ids))
    ]
    solo = [gen.complete(*spec) for spec in specs]
    outs = [gen.stream(*spec) for spec in specs]
    deltas = [""] * len(outs)
    ended = set()
    for events in gen.decode_together(outs):
        for row, delta, end in events:
            assert row not in ended
            deltas[row] += delta
            if end:
                ended.add(row)
    assert ended == set(range(len(outs)))
    assert [(o.text, o.finish_reason, o.completion_tokens) for o in outs] == [
        (o.text, o.finish_reason, o.completion_tokens) for o in solo
    ]
    assert deltas == [o.text for o in solo]
    assert outs[0].finish_reason == "stop" and outs[0].text == ref[: ref.find(stop)]
    assert len({o.completion_tokens for o in outs}) > 3  # the rows really end at different steps


def test_cli_generate_top_p(compact, capsys):
    """--top-p reaches the sampler: top_p 0 keeps only the most likely token (the greedy text at any
    temperature); sampling at temperature 3 without it wanders off that text."""
    from gptlab.cli import main

    def run(*extra: str) -> str:
        assert (
            main(
                [
                    "generate",
                    str(compact),
                    "--prompt",
                    "Name a colour.",
                    "--max-new-tokens",
                    "12",
                    "--seed",
                    "7",
                    "--device",
                    "cpu",
                    *extra,
                ]
            )
            == 0
        )
        return capsys.readouterr().out

    greedy = run("--temperature", "0")
    assert run("--temperature", "3", "--top-p", "0") == greedy
    assert run("--temperature", "3") != greedy
    with pytest.raises(SystemExit) as e:
        main(["generate", str(compact), "--prompt", "x", "--top-p", "1.5"])
    assert e.value.code == 2 and "--top-p" in capsys.readouterr().err


def test_a_vanishing_temperature_is_greedy_not_a_crash(compact):
    """temperature 1e-40 passes every range check (> 0) but overflows the logits to inf: its limit, greedy,
    instead of multinomial's 'probability tensor contains inf/nan' (a 500 for a whole server batch)."""
    gen = Generator.from_run(compact, "cpu")
    ids = gen.encode("Name a colour.")
    greedy = gen.complete(ids, 12, Sampling(0.0)).text
    assert gen.complete(ids, 12, Sampling(1e-40, seed=3)).text == greedy
    prompts = [gen.encode(p) for p in PROMPTS]
    assert [o.text for o in gen.complete_batch(prompts, 12, [Sampling(1e-300, seed=1)] * len(PROMPTS))] == [
        gen.complete(p, 12, Sampling(0.0)).text for p in prompts
    ]
