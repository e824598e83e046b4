"""Instruction fine-tuning: the book's template, response-only masking, length batching, the split, a real
fine-tune of a tiny model (best checkpoint, finetune.json, load_run_model), exact resume, bad inputs, the CLI."""

import argparse
import dataclasses
import json

import pytest
import torch
from conftest_ft import RECORDS, make_tiny_run, record_vocab, write_records
from safetensors.torch import load_file

from gptlab import GptlabError
from gptlab.cli.posttrain import register as register_cli
from gptlab.data.tokenizer import EOT_ID, encode
from gptlab.posttrain.finetune import finetune
from gptlab.posttrain.instructions import (
    IGNORE_INDEX,
    build_example,
    collate,
    epoch_batches,
    format_input,
    format_prompt,
    load_records,
    split_indices,
)
from gptlab.train import latest_checkpoint, load_run_model

BOOK = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@pytest.fixture(scope="module")
def compact_run(tmp_path_factory):
    """A tiny model over the records' own ~160 tokens: fine-tuning steps take milliseconds."""
    return make_tiny_run(tmp_path_factory.mktemp("base") / "base", vocab_ids=record_vocab())


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("data") / "instructions.json")


def test_template_is_the_books_exactly():
    rec = {
        "instruction": "Identify the correct spelling of the following word.",
        "input": "Ocassion",
        "output": "The correct spelling is 'Occasion.'",
    }
    assert format_prompt(rec) == (
        f"{BOOK}\n\n### Instruction:\nIdentify the correct spelling of the following word.\n\n"
        "### Input:\nOcassion\n\n### Response:\n"
    )
    no_input = {"instruction": "What is an antonym of 'complicated'?", "input": "", "output": "simple"}
    assert (
        format_prompt(no_input)
        == f"{BOOK}\n\n### Instruction:\nWhat is an antonym of 'complicated'?\n\n### Response:\n"
    )
    assert format_input(no_input) == f"{BOOK}\n\n### Instruction:\nWhat is an antonym of 'complicated'?"
    assert format_prompt({"instruction": "x", "output": "y"}) == f"{BOOK}\n\n### Instruction:\nx\n\n### Response:\n"


def test_masking_prompt_and_padding_targets_keep_first_eot():
    short, long_ = RECORDS[8], RECORDS[0]  # plural of "cat" (has input) / opposite of hot
    ex = [build_example(short, 1024), build_example(long_, 1024)]
    for (ids, n_prompt), rec in zip(ex, (short, long_), strict=True):
        assert ids == encode(format_prompt(rec)) + encode(rec["output"]) + [EOT_ID]
        assert n_prompt == len(encode(format_prompt(rec)))
    x, y = collate(ex)
    L = max(len(ids) for ids, _ in ex) - 1
    assert x.shape == y.shape == (2, L)
    for row, (ids, n_prompt) in enumerate(ex):
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1]
        assert (x[row, n:] == EOT_ID).all()  # padded with <|endoftext|>
        expect = [IGNORE_INDEX] * (n_prompt - 1) + ids[n_prompt:] + [IGNORE_INDEX] * (L - n)
        assert y[row].tolist() == expect  # -100 exactly on prompt and padding targets
        assert (y[row] == EOT_ID).sum() == 1 and y[row, n - 1] == EOT_ID  # the first EOT stays, once
        assert (y[row] != IGNORE_INDEX).sum() == len(encode(RECORDS[[8, 0][row]]["output"])) + 1


def test_truncation_and_too_long_records():
    P = len(encode(format_prompt(RECORDS[0])))
    ids, n_prompt = build_example(RECORDS[0], P)
    assert len(ids) == P + 1 and n_prompt == P  # cut to max_len + 1 tokens: one response token is a target
    x, y = collate([(ids, n_prompt)])
    assert x.shape == (1, P) and (y != IGNORE_INDEX).sum() == 1 and y[0, -1] == ids[-1]
    assert build_example(RECORDS[0], P - 1) is None  # no response token fits: dropped


def test_compact_vocabulary_ids_and_unknown_tokens(compact_run):
    from gptlab.data.vocab import load_vocab_map

    vm = load_vocab_map(compact_run)
    stats = {}
    ids, _ = build_example(RECORDS[0], 1024, vm, stats)
    assert vm.to_gpt2(ids) == encode(format_prompt(RECORDS[0]) + RECORDS[0]["output"]) + [EOT_ID]
    assert stats["unknown_tokens"] == 0
    build_example({"instruction": "Describe a zebra.", "input": "", "output": "Stripes."}, 1024, vm, stats)
    assert stats["unknown_tokens"] > 0  # counted (and mapped to <|endoftext|>)


def test_length_batches_cover_everything_and_are_deterministic():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47, 9, 46, 10]
    b1 = epoch_batches(lengths, 2, seed=1, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 2 for b in b1)
    # each batch holds neighbours in length order: short with short, long with long
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 2 for b in b1)
    assert b1 == epoch_batches(lengths, 2, seed=1, epoch=1)
    assert b1 != epoch_batches(lengths, 2, seed=1, epoch=2)


def test_split_is_deterministic_and_disjoint():
    s = split_indices(40, 0.1, 0.1, seed=123)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (32, 4, 4)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(40))
    assert s == split_indices(40, 0.1, 0.1, seed=123) and s != split_indices(40, 0.1, 0.1, seed=124)
    with pytest.raises(GptlabError, match="no training records"):
        split_indices(2, 0.5, 0.4, seed=0)


def test_finetune_lowers_val_loss_and_writes_a_run_directory(compact_run, data_file, tmp_path):
    out = tmp_path / "sft"
    res = finetune(compact_run, data_file, out, epochs=2, lr=5e-3, batch_size=8, progress=False)
    assert res["finished"] and res["epochs_run"] == 2 and res["steps"] == 8
    assert res["split"] == {"train": 32, "val": 4, "test": 4}
    assert res["base_run"] == str(compact_run.resolve())
    assert res["history"][-1]["val_loss"] < res["val_loss_before"]
    assert res["best_val_loss"] == min(h["val_loss"] for h in res["history"])
    assert res["test_loss"] is not None and res["unknown_tokens"] == 0
    assert json.loads((out / "finetune.json").read_text()) == res
    split = json.loads((out / "split.json").read_text())
    test = json.loads((out / "test_data.json").read_text())
    assert test == [RECORDS[i] for i in split["split"]["test"]]
    assert (out / "config.toml").read_text() == (compact_run / "config.toml").read_text()
    assert (out / "vocab_map.npy").read_bytes() == (compact_run / "vocab_map.npy").read_bytes()
    model, cfg = load_run_model(out)  # the output is a run directory
    assert cfg.model.vocab_size == len(record_vocab()) + 1 and not model.training  # + <|endoftext|>
    best = latest_checkpoint(out)
    assert json.loads((best / "state.json").read_text())["best_epoch"] == res["best_epoch"]
    # a second fine-tune into the same folder needs --resume
    with pytest.raises(GptlabError, match="--resume"):
        finetune(compact_run, data_file, out, epochs=2, progress=False)
    # resuming a finished fine-tune returns its result without training
    assert finetune(compact_run, data_file, out, epochs=2, lr=5e-3, progress=False, resume=True) == res


def test_resume_after_interruption_matches_an_uninterrupted_run(compact_run, data_file, tmp_path):
    kw = dict(epochs=2, lr=2e-3, batch_size=8, progress=False)
    full = finetune(compact_run, data_file, tmp_path / "full", **kw)
    part = finetune(compact_run, data_file, tmp_path / "cut", stop_after=3, **kw)  # mid-epoch 1
    assert part["stopped_at"] == 3 and not part["finished"]
    part = finetune(compact_run, data_file, tmp_path / "cut", stop_after=2, resume=True, **kw)  # into epoch 2
    assert part["stopped_at"] == 5
    done = finetune(compact_run, data_file, tmp_path / "cut", resume=True, **kw)
    assert done["finished"] and done["steps"] == full["steps"] == 8
    assert [h["val_loss"] for h in done["history"]] == pytest.approx([h["val_loss"] for h in full["history"]], rel=1e-6)
    a = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "cut") / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(GptlabError, match="different settings.*lr"):
        finetune(compact_run, data_file, tmp_path / "cut", **dict(kw, lr=1e-3), resume=True)


def test_full_vocabulary_run_fine_tunes(tmp_path):
    base = make_tiny_run(tmp_path / "base")  # vocab_size 50257, context 64
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:12]))  # .jsonl works too
    res = finetune(base, data, tmp_path / "sft", epochs=1, batch_size=8, val_frac=0.2, test_frac=0.2, progress=False)
    assert res["finished"] and res["split"]["train"] == 8 and res["steps"] == 1
    assert res["best_epoch"] == 1 and latest_checkpoint(tmp_path / "sft") is not None


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "not found"),
        ("{not json", "not JSON"),
        ('{"instruction": "x"}', "expected a JSON list"),
        ("[]", "no records"),
        (
            '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}]',
            r"record 1: missing field 'output'",
        ),
        ('[{"output": "b"}]', r"record 0: missing field 'instruction'"),
        ('[{"instruction": "a", "input": 3, "output": "b"}]', r"record 0: field 'input' must be a string, got int"),
        ('["just text"]', "record 0: expected an object"),
    ],
)
def test_bad_data_is_a_one_line_error(tmp_path, content, match):
    p = tmp_path / "data.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(GptlabError, match=match) as e:
        load_records(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_bad_jsonl_line_and_bad_runs(compact_run, data_file, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(GptlabError, match="line 2: not JSON"):
        load_records(p)
    with pytest.raises(GptlabError, match="not a run directory"):
        finetune(tmp_path / "nowhere", data_file, tmp_path / "o", progress=False)
    with pytest.raises(GptlabError, match="must differ"):
        finetune(compact_run, data_file, compact_run, progress=False)
    with pytest.raises(GptlabError, match="max_len"):
        finetune(compact_run, data_file, tmp_path / "o", max_len=65, progress=False)


def test_cli_verb(compact_run, data_file, tmp_path, capsys):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="verb", required=True)
    register_cli(sub)
    out = tmp_path / "cli-sft"
    a = p.parse_args(
        ["finetune", str(compact_run), "--data", str(data_file), "--out", str(out), "--epochs", "1", "--quiet"]
    )
    assert a.fn(a) == 0
    text = capsys.readouterr().out
    assert "train 32, val 4, test 4" in text and "best epoch 1" in text


def test_resume_from_a_checkpoint_in_the_earlier_fine_tune_format(compact_run, data_file, tmp_path):
    """Fine-tunes checkpointed before pretraining and fine-tuning shared one writer stored one optimizer state
    dict (not a list) and rng.pt (no rank): such a checkpoint still resumes to the uninterrupted result."""
    kw = dict(epochs=1, lr=2e-3, batch_size=8, progress=False)
    full = finetune(compact_run, data_file, tmp_path / "full", **kw)
    finetune(compact_run, data_file, tmp_path / "cut", stop_after=2, **kw)
    ck = tmp_path / "cut" / "checkpoints" / (tmp_path / "cut" / "checkpoints" / "resume").read_text().strip()
    (ck / "manifest.json").unlink()  # that format had no manifest
    (states,) = torch.load(ck / "optimizer.pt", weights_only=True)
    torch.save(states, ck / "optimizer.pt")
    (ck / "rng_rank0.pt").rename(ck / "rng.pt")
    done = finetune(compact_run, data_file, tmp_path / "cut", resume=True, **kw)
    assert done["history"] == full["history"] and done["test_loss"] == full["test_loss"]


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(lr="fast"), "lr"),
        (dict(device="gpu"), "device"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(seed=-1), "seed"),
        (dict(epochs=True), "epochs"),
        (dict(checkpoint_interval=-2), "checkpoint_interval"),
    ],
)
def test_library_checks_every_setting_before_writing(compact_run, data_file, tmp_path, bad, field):
    """The library refuses what the CLI refuses (one declaration): a bad setting is one line naming it, and the
    output folder is not created."""
    out = tmp_path / "o"
    with pytest.raises(GptlabError, match=rf"^finetune: {field}: ") as e:
        finetune(compact_run, data_file, out, progress=False, **bad)
    assert "\n" not in str(e.value) and not out.exists()


def test_unknown_setting_names_the_closest(compact_run, data_file, tmp_path):
    with pytest.raises(GptlabError, match=r"finetune: learning_rate: unknown setting"):
        finetune(compact_run, data_file, tmp_path / "o", progress=False, learning_rate=1e-3)
    with pytest.raises(GptlabError, match=r"did you mean 'epochs'"):
        finetune(compact_run, data_file, tmp_path / "o", progress=False, overrides=["epoch=1"])


def test_cli_options_are_the_settings_defaults_and_set_overrides_them(compact_run, data_file, tmp_path, capsys):
    from gptlab.posttrain.settings import FinetuneSettings

    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers(dest="verb", required=True))
    a = p.parse_args(["finetune", "RUN", "--data", "D", "--out", "O"])
    assert {k: getattr(a, k) for k in dataclasses.asdict(FinetuneSettings())} == dataclasses.asdict(FinetuneSettings())
    out = tmp_path / "set-sft"
    a = p.parse_args(
        [
            "finetune",
            str(compact_run),
            "--data",
            str(data_file),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--set",
            "epochs=1",
            "--set",
            "lr=1e-3",
            "--quiet",
            "--json",
        ]
    )
    assert a.fn(a) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["epochs_run"] == 1 and res["args"]["lr"] == 1e-3
    with pytest.raises(GptlabError, match=r"^finetune: lr: must be > 0"):
        a = p.parse_args(
            ["finetune", str(compact_run), "--data", str(data_file), "--out", str(tmp_path / "x"), "--set", "lr=-1"]
        )
        a.fn(a)
    assert not (tmp_path / "x").exists()
