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
    cfg = load_config(None, ["train.lr=3e-4", "model.qkv_bias=true", "train.tokens=1_000", "name=x",
                             'interventions=["no_dropout"]'])
    assert cfg.train.lr == 3e-4 and cfg.model.qkv_bias is True and cfg.train.tokens == 1000 and cfg.name == "x"
    assert cfg.model.drop_rate == 0.0


@pytest.mark.parametrize("text,match", [
    ("[train]\nlrr = 1\n", r"c\.toml: train\.lrr: unknown key \(did you mean 'lr'\?\)"),
    ("[train]\nlr = 'fast'\n", r"train\.lr: expected a number"),
    ("[train]\nmicro_batch_size = 1.5\n", r"train\.micro_batch_size: expected an integer"),
    ("[model]\nqkv_bias = 3\n", r"model\.qkv_bias: expected true or false"),
    ("[model\n", r"c\.toml: malformed TOML"),
    ("[model]\npreset = 'gpt2-smal'\n", r"model\.preset: unknown preset 'gpt2-smal' \(did you mean 'gpt2-small'\?\)"),
    ("[model]\nemb_dim = 100\nn_heads = 3\n", r"model\.emb_dim: must be divisible"),
    ("interventions = ['grad_clipp']\n", r"unknown intervention 'grad_clipp' \(did you mean 'grad_clip'\?\)"),
    ("modle = 1\n", r"modle: unknown key \(did you mean 'model'\?\)"),
])
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
