"""Hugging Face interop: export -> transformers, transformers -> import, tokenizer files, refusals, push path.
Everything is local (random-init models, HF_HUB_OFFLINE=1); the only fake is the Hub upload itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

# E402: these imports come after the skip without transformers
from gptlab import GptlabError  # noqa: E402
from gptlab.cli.interop import register as register_cli  # noqa: E402
from gptlab.config import PRESETS, ModelConfig, RunConfig, config_from_run, save_config  # noqa: E402
from gptlab.interop.hf import eval_hf, export_run, import_hf, import_to_run  # noqa: E402
from gptlab.model import GPTModel  # noqa: E402
from gptlab.train import load_run_model  # noqa: E402

SECRET = "hf_TESTTOKEN_0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def nano(**kw) -> ModelConfig:
    return ModelConfig(**{**PRESETS["nano"], "drop_rate": 0.0, **kw})


def make_run(run_dir: Path, mcfg: ModelConfig, seed: int = 0, final: dict | None = None) -> GPTModel:
    """A run directory as training leaves it: config.toml, checkpoints/step_N/model.safetensors, latest."""
    from safetensors.torch import save_model

    torch.manual_seed(seed)
    model = GPTModel(mcfg).eval()
    with torch.no_grad():  # make biases/LayerNorm non-trivial so a mapping mistake cannot hide
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    cfg = RunConfig(name=run_dir.name, model=mcfg)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.toml")
    ck = run_dir / "checkpoints" / "step_0000010"
    ck.mkdir(parents=True)
    save_model(model, str(ck / "model.safetensors"))
    (run_dir / "checkpoints" / "latest").write_text(ck.name + "\n")
    if final is not None:
        (run_dir / "final.json").write_text(json.dumps(final))
    return model


def hf_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    m = transformers.GPT2LMHeadModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return m(input_ids=x).logits


@pytest.mark.parametrize(
    "kw",
    [dict(qkv_bias=False), dict(qkv_bias=True), dict(tie_weights=True)],
    ids=["book-untied-no-qkv-bias", "qkv-bias", "tied"],
)
def test_export_round_trip_matches_transformers(tmp_path, kw):
    mcfg = nano(**kw)
    model = make_run(tmp_path / "run", mcfg, final={"tokens": 12345, "test_loss": 5.4321, "steps": 10})
    out = export_run(tmp_path / "run", tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "README.md",
            ".gptlab-owner",
        ]
    )  # the owner file: a re-export writes here again
    conf = json.loads((out / "config.json").read_text())
    assert conf["tie_word_embeddings"] is mcfg.tie_weights
    assert conf["n_positions"] == 64 and conf["activation_function"] == "gelu_new"
    torch.manual_seed(1)
    x = torch.randint(0, mcfg.vocab_size, (2, mcfg.context_length))
    with torch.no_grad():
        ours = model(x)
    theirs = hf_logits(out, x)
    assert (ours - theirs).abs().max().item() < 1e-4
    card = (out / "README.md").read_text()
    assert "12,345" in card and "5.4321" in card and "[model]" in card  # token count, test loss, config.toml
    # exporting again into the same folder is allowed (it only holds export files)
    export_run(tmp_path / "run", tmp_path / "hf")


def test_export_then_import_round_trip_and_run(tmp_path):
    model = make_run(tmp_path / "run", nano(qkv_bias=False))
    out = export_run(tmp_path / "run", tmp_path / "hf")
    back, cfg = import_hf(out)
    assert cfg.qkv_bias and not cfg.tie_weights and cfg.context_length == 64
    x = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() < 1e-5
    run = import_to_run(out, tmp_path / "imported", data_dir="data/x")
    loaded, rcfg = load_run_model(run)
    assert rcfg.data.dir == "data/x" and config_from_run(run).model == cfg
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max().item() < 1e-5
    with pytest.raises(GptlabError, match="already exists"):
        import_to_run(out, run)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_import_random_transformers_gpt2(tmp_path, tied, fmt):
    torch.manual_seed(0)
    conf = transformers.GPT2Config(
        vocab_size=1000,
        n_positions=48,
        n_embd=64,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=tied,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    ref = transformers.GPT2LMHeadModel(conf).eval()
    with torch.no_grad():  # random biases/LayerNorms (HF initialises them to 0/1)
        for p in ref.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(str(tmp_path / "hf"), safe_serialization=(fmt == "safetensors"))
    if (
        fmt == "bin" and not (tmp_path / "hf" / "pytorch_model.bin").exists()
    ):  # transformers 5 always writes safetensors
        sd = {k: v.clone() for k, v in ref.state_dict().items() if not (tied and k == "lm_head.weight")}
        torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
        (tmp_path / "hf" / "model.safetensors").unlink()
    model, cfg = import_hf(tmp_path / "hf")
    assert cfg.tie_weights is tied and cfg.vocab_size == 1000 and cfg.qkv_bias
    if tied:
        assert model.out_head.weight is model.tok_emb.weight
    x = torch.randint(0, 1000, (3, 48))
    with torch.no_grad():
        ours, theirs = model(x), ref(input_ids=x).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_exported_tokenizer_encodes_like_gpt2(tmp_path):
    make_run(tmp_path / "run", nano())
    out = export_run(tmp_path / "run", tmp_path / "hf")
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(out))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256 and tok.decode([15496, 995]) == "Hello world"
    assert transformers.AutoTokenizer.from_pretrained(str(out))("Hello world")["input_ids"] == [15496, 995]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(pos_emb="rope"), "pos_emb = 'rope'"),
        (dict(norm="rmsnorm"), "norm = 'rmsnorm'"),
        (dict(mlp="swiglu"), "mlp = 'swiglu'"),
        (dict(qk_norm=True), "qk_norm"),
        (dict(bias=False), "bias = false"),
        (dict(logit_softcap=30.0), "logit_softcap"),
    ],
)
def test_export_refuses_what_gpt2_cannot_represent(tmp_path, kw, match):
    make_run(tmp_path / "run", nano(**kw))
    with pytest.raises(GptlabError, match=match) as e:
        export_run(tmp_path / "run", tmp_path / "hf")
    assert "\n" not in str(e.value) and "config.toml" in str(e.value)
    assert not (tmp_path / "hf").exists()


def test_export_refuses_compact_vocabulary(tmp_path):
    import numpy as np

    make_run(tmp_path / "run", nano(vocab_size=300))
    np.save(tmp_path / "run" / "vocab_map.npy", np.arange(299).tolist() + [50256])
    with pytest.raises(GptlabError, match="compact corpus vocabulary"):
        export_run(tmp_path / "run", tmp_path / "hf")
    if hasattr(RunConfig().data, "vocab"):  # refused from the config alone too
        make_run(tmp_path / "run2", nano())
        cfg = config_from_run(tmp_path / "run2")
        cfg.data.vocab = "corpus"
        save_config(cfg, tmp_path / "run2" / "config.toml")
        with pytest.raises(GptlabError, match="compact corpus vocabulary"):
            export_run(tmp_path / "run2", tmp_path / "hf")


def test_export_refuses_foreign_files_in_out_dir(tmp_path):
    make_run(tmp_path / "run", nano())
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("x")
    with pytest.raises(GptlabError, match="notes.txt"):
        export_run(tmp_path / "run", tmp_path / "hf")


def test_import_errors(tmp_path):
    with pytest.raises(GptlabError, match="folder not found"):
        import_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptlabError, match="config.json: not found"):
        import_hf(tmp_path / "empty")
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GptlabError, match="model_type = 'llama'"):
        import_hf(d)
    (d / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 1, "n_positions": 8, "vocab_size": 10})
    )
    with pytest.raises(GptlabError, match="no weights found"):
        import_hf(d)
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(GptlabError, match="unreadable"):
        import_hf(d)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "activation_function": "relu"}))
    with pytest.raises(GptlabError, match="activation_function"):
        import_hf(d)


def test_push_uses_token_without_leaking_it(tmp_path, monkeypatch, capsys, caplog):
    import huggingface_hub

    calls = []

    def fake_create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))

    def fake_upload_folder(self, repo_id, folder_path, **kw):  # the one permitted fake: no network
        calls.append(("upload_folder", repo_id, folder_path, kw, self.token))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    make_run(tmp_path / "run", nano())
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(GptlabError, match="HF_TOKEN is not set"):
        export_run(tmp_path / "run", tmp_path / "hf", push="user/tiny")
    assert not calls

    monkeypatch.setenv("HF_TOKEN", SECRET)
    import argparse

    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers(dest="verb"))
    a = p.parse_args(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--push", "user/tiny"])
    assert a.fn(a) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == "user/tiny" and calls[0][2]["exist_ok"] is True and calls[0][3] == SECRET
    assert calls[1][2] == str(tmp_path / "hf") and calls[1][4] == SECRET
    for f in (tmp_path / "hf").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err and "huggingface.co/user/tiny" in captured.out
    assert SECRET not in caplog.text

    def failing_upload(self, repo_id, folder_path, **kw):
        raise RuntimeError(f"401 Unauthorized for token {self.token}")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", failing_upload)
    with pytest.raises(GptlabError) as e:
        export_run(tmp_path / "run", tmp_path / "hf", push="user/tiny")
    assert SECRET not in str(e.value) and "***" in str(e.value)


def test_cli_import_hf_and_eval_hf(tmp_path, capsys):
    import argparse

    import numpy as np

    from gptlab.data.loader import TokenDataset
    from gptlab.train import evaluate_loss

    model = make_run(tmp_path / "run", nano())
    out = export_run(tmp_path / "run", tmp_path / "hf")
    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers(dest="verb"))
    a = p.parse_args(["import-hf", str(out), "--run-dir", str(tmp_path / "imp")])
    assert a.fn(a) == 0 and "run directory" in capsys.readouterr().out
    assert load_run_model(tmp_path / "imp")[1].model.context_length == 64

    from gptlab.data.prepare import prepare

    data = tmp_path / "data"
    src = tmp_path / "corpus.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"Document {i}: to be, or not to be, that is the question. " * 20}) + "\n"
            for i in range(40)
        )
    )
    prepare([str(src)], str(data), val_frac=0.2, test_frac=0.2, workers=1, progress=False)
    got = eval_hf(out, data, "test", 0, 0, 2, device="cpu")
    want = evaluate_loss(model, TokenDataset(data, "test"), 64, 2, torch.device("cpu"), "fp32")
    assert abs(got - want) < 1e-4 and np.isfinite(got)


def test_cli_eval_hf_dir(tmp_path, capsys):
    """`gptlab eval --hf-dir DIR --data D`: the seed's yardstick path from the command line."""
    from gptlab.cli import main
    from gptlab.data.prepare import prepare

    make_run(tmp_path / "run", nano())
    out = export_run(tmp_path / "run", tmp_path / "hf")
    src = tmp_path / "corpus.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"Passage {i}: the quality of mercy is not strained. " * 20}) + "\n" for i in range(30)
        )
    )
    prepare([str(src)], str(tmp_path / "d"), val_frac=0.2, test_frac=0.2, workers=1, progress=False)
    assert (
        main(
            [
                "eval",
                "--hf-dir",
                str(out),
                "--data",
                str(tmp_path / "d"),
                "--batch-size",
                "2",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["loss"] == pytest.approx(eval_hf(out, tmp_path / "d", "test", 0, 0, 2, device="cpu"), rel=1e-6)
    assert main(["eval", "--hf-dir", str(out)]) == 2
    assert "--hf-dir needs --data" in capsys.readouterr().err
