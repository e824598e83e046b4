import json

import pytest

from gptlab import GptlabError
from gptlab.config import load_config, parse_overrides


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_preset(tmp_path):
    cfg = load_config(write(tmp_path, '[model]\npreset = "nano"\nemb_dim = 32\n'))
    assert cfg.model.n_layers == 2 and cfg.model.context_length == 64
    assert cfg.model.emb_dim == 32  # explicit beats preset


def test_overrides_types(tmp_path):
    cfg = load_config(
        None, ["train.lr=3e-4", "model.qkv_bias=true", "train.tokens=1_000", "name=x", 'interventions=["no_dropout"]']
    )
    assert cfg.train.lr == 3e-4 and cfg.model.qkv_bias is True and cfg.train.tokens == 1000 and cfg.name == "x"
    assert cfg.model.drop_rate == 0.0


@pytest.mark.parametrize(
    "text,match",
    [
        ("[train]\nlrr = 1\n", r"c\.toml: train\.lrr: unknown key \(did you mean 'lr'\?\)"),
        ("[train]\nlr = 'fast'\n", r"train\.lr: expected a number"),
        ("[train]\nmicro_batch_size = 1.5\n", r"train\.micro_batch_size: expected an integer"),
        ("[model]\nqkv_bias = 3\n", r"model\.qkv_bias: expected true or false"),
        ("[model\n", r"c\.toml: malformed TOML"),
        (
            "[model]\npreset = 'gpt2-smal'\n",
            r"model\.preset: unknown preset 'gpt2-smal' \(did you mean 'gpt2-small'\?\)",
        ),
        ("[model]\nemb_dim = 100\nn_heads = 3\n", r"model\.emb_dim: must be divisible"),
        ("interventions = ['grad_clipp']\n", r"unknown intervention 'grad_clipp' \(did you mean 'grad_clip'\?\)"),
        ("modle = 1\n", r"modle: unknown key \(did you mean 'model'\?\)"),
    ],
)
def test_bad_config_one_line_errors(tmp_path, text, match):
    with pytest.raises(GptlabError, match=match) as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(GptlabError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "bad.toml"
    p.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(GptlabError, match="bad.toml"):
        load_config(p)


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(GptlabError, match="expected section.key=value"):
        parse_overrides(["oops"])


def test_config_hash_stable_and_sensitive():
    a, b = load_config(None, ["train.lr=1e-3"]), load_config(None, ["train.lr=1e-3"])
    c = load_config(None, ["train.lr=2e-3"])
    assert a.hash() == b.hash() != c.hash()


def _corpus_jsonl(path, n_docs=100, n_words=300):
    """A small corpus of made-up documents over a 200-word vocabulary: its corpus vocabulary is a few hundred
    GPT-2 ids."""
    import json
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(200)]
    path.write_text(
        "".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(n_words))}) + "\n" for _ in range(n_docs))
    )
    return path


def test_runner_and_its_train_child_resolve_the_same_config(tmp_path):
    """A spec whose data.vocab = "corpus" data is not prepared when the spec is read, run with --set: the hash the
    `gptlab train` child records (meta.json, results.sqlite) is the one the runner resolves for the run, so a
    re-run finds the run done rather than changed; and a config of that run, resolved now, has the corpus
    vocabulary's size."""
    import sqlite3

    import tomli_w
    from conftest import tiny_overrides

    from gptlab.config import resolve
    from gptlab.experiments.run.runner import run_experiment
    from gptlab.experiments.specs.experiment import load_spec

    data = tmp_path / "data"
    base = parse_overrides(
        tiny_overrides(
            str(data),
            **{"data.source": str(_corpus_jsonl(tmp_path / "c.jsonl")), "train.tokens": 8 * 32 * 3, "eval.batches": 0},
        )
    )
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    spec_path = tmp_path / "exp.toml"
    spec_path.write_text(
        tomli_w.dumps(
            {
                "name": "t",
                "base": "base.toml",
                "seeds": [1],
                "variants": [{"name": "baseline", "interventions": ["no_dropout"]}],
            }
        )
    )
    spec = load_spec(spec_path)
    v = spec.variants[0]
    before = spec.resolve(v, 1)
    assert before.vocab is None and before.cfg.model.vocab_size == 50257  # data not prepared yet
    sets = ["train.lr=0.002", "model.qkv_bias=true"]
    out = tmp_path / "exp"
    assert run_experiment(str(spec_path), out=str(out), overrides=sets, quiet=True).ok
    expected = spec.resolve(v, 1, parse_overrides(sets))
    assert expected.vocab is not None and expected.cfg.model.vocab_size == len(expected.vocab) < 1000
    assert expected.cfg.train.lr == 0.002 and expected.cfg.model.drop_rate == 0.0
    meta = json.loads((out / "runs" / "baseline-s1" / "meta.json").read_text())
    with sqlite3.connect(out / "results.sqlite") as c:
        (row_hash,) = c.execute("select config_hash from runs where run_id = 'baseline-s1'").fetchone()
    assert meta["config_hash"] == row_hash == expected.hash
    assert resolve(out / "configs" / "baseline-s1.toml").hash == expected.hash  # the child's table, resolved
    assert run_experiment(str(spec_path), out=str(out), overrides=sets, quiet=True).ok  # done, not "changed"
    with pytest.raises(GptlabError, match=r"^baseline-s1: finished with another config \(train.lr 0.002 -> 0.003\)"):
        run_experiment(str(spec_path), out=str(out), overrides=sets[1:], quiet=True)
