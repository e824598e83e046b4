"""Hugging Face interop: export a run as a `transformers` GPT-2 folder (optionally pushed to the Hub), import a
local GPT-2 folder as a GPTModel or as a run directory, and evaluate one on our prepared data.

The mapping (ours -> GPT-2; GPT-2's Conv1D stores weights as [in, out], nn.Linear as [out, in]):

    tok_emb / pos_emb                        -> transformer.wte / transformer.wpe
    trf_blocks.i.norm1 / norm2               -> transformer.h.i.ln_1 / ln_2
    trf_blocks.i.att.W_query|W_key|W_value   -> transformer.h.i.attn.c_attn   (concatenated q|k|v, transposed;
                                                zero bias when the run has qkv_bias = false)
    trf_blocks.i.att.out_proj                -> transformer.h.i.attn.c_proj   (transposed)
    trf_blocks.i.ff.layers.0 / layers.2      -> transformer.h.i.mlp.c_fc / c_proj (transposed)
    final_norm / out_head                    -> transformer.ln_f / lm_head (omitted when tied)

Only the model family GPT-2 can represent is exported; every other variant is refused with one line.
Nothing here downloads anything: `transformers` is not needed to export or import (only safetensors/torch),
`huggingface_hub` only for `--push`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.config import ModelConfig, RunConfig, save_config
from gptlab.interop.hf_export import GPT2_VOCAB, export_run, hf_config_dict, to_hf_state_dict
from gptlab.io import atomic_write, atomic_write_json, atomic_write_text, first_line
from gptlab.model import GPTModel

# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _read_hf_config(hf: Path) -> dict:
    if not hf.is_dir():
        raise GptlabError(f"{hf}: Hugging Face model folder not found")
    p = hf / "config.json"
    if not p.is_file():
        raise GptlabError(f"{p}: not found; expected a folder written by save_pretrained (config.json + weights)")
    try:
        conf = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GptlabError(f"{p}: malformed JSON ({e})") from None
    if not isinstance(conf, dict):
        raise GptlabError(f"{p}: expected a JSON object")
    return conf


def hf_to_model_config(conf: dict, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a GPT-2 config.json; refuses what GPTModel cannot reproduce exactly."""
    mt = conf.get("model_type")
    if mt != "gpt2":
        raise GptlabError(f"{where}: model_type = {mt!r}; only GPT-2 models (model_type 'gpt2') can be imported")

    def get(key: str, default, typ=int):
        v = conf.get(key, default)
        if typ is int and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise GptlabError(f"{where}: {key} = {v!r}; expected a positive integer")
        if typ is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise GptlabError(f"{where}: {key} = {v!r}; expected a number")
        return v

    d, h = get("n_embd", 768), get("n_head", 12)
    checks = [
        (d % h == 0, "n_embd", f"{d} is not divisible by n_head = {h}"),
        (conf.get("n_inner") in (None, 4 * d), "n_inner", f"{conf.get('n_inner')!r}; expected null or 4 x n_embd"),
        (
            conf.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
            "activation_function",
            f"{conf.get('activation_function')!r}; expected 'gelu_new' (tanh-approximate GELU)",
        ),
        (
            math.isclose(float(get("layer_norm_epsilon", 1e-5, float)), 1e-5, rel_tol=1e-6),
            "layer_norm_epsilon",
            f"{conf.get('layer_norm_epsilon')!r}; expected 1e-05",
        ),
        (conf.get("scale_attn_weights", True) is True, "scale_attn_weights", "false; expected true"),
        (
            not conf.get("scale_attn_by_inverse_layer_idx", False),
            "scale_attn_by_inverse_layer_idx",
            "true; expected false",
        ),
        (not conf.get("add_cross_attention", False), "add_cross_attention", "true; expected false"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise GptlabError(f"{where}: {key} = {msg}")
    drop = float(get("resid_pdrop", 0.1, float))
    if not 0.0 <= drop < 1.0:
        raise GptlabError(f"{where}: resid_pdrop = {drop}; expected a value in [0, 1)")
    return ModelConfig(
        vocab_size=get("vocab_size", GPT2_VOCAB),
        context_length=get("n_positions", 1024),
        emb_dim=d,
        n_heads=h,
        n_layers=get("n_layer", 12),
        drop_rate=drop,
        qkv_bias=True,
        bias=True,
        tie_weights=bool(conf.get("tie_word_embeddings", True)),
        init="gpt2",
    )


def _load_hf_tensors(hf: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def load_st(p: Path) -> dict:
        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise GptlabError(f"{p}: unreadable safetensors file ({first_line(e, 200)})") from None

    def load_bin(p: Path) -> dict:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors of many kinds; weights_only refuses code
            raise GptlabError(f"{p}: unreadable PyTorch weights ({first_line(e, 200)})") from None
        if not isinstance(sd, dict):
            raise GptlabError(f"{p}: expected a state dict")
        return sd

    for name, loader in (("model.safetensors", load_st), ("pytorch_model.bin", load_bin)):
        if (hf / name).is_file():
            return loader(hf / name)
        index = hf / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise GptlabError(f"{index}: malformed index ({e})") from None
            sd: dict = {}
            for s in shards:
                if not (hf / s).is_file():
                    raise GptlabError(f"{hf / s}: shard listed in {index.name} is missing")
                sd.update(loader(hf / s))
            return sd
    raise GptlabError(f"{hf}: no weights found (expected model.safetensors or pytorch_model.bin)")


def from_hf_state_dict(
    sd: dict[str, torch.Tensor], cfg: ModelConfig, where: str = "weights"
) -> dict[str, torch.Tensor]:
    """Our state dict from GPT2LMHeadModel / GPT2Model tensors (with or without the `transformer.` prefix)."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    d = cfg.emb_dim

    def g(key: str, shape: tuple) -> torch.Tensor:
        if key not in sd:
            raise GptlabError(f"{where}: tensor '{key}' is missing")
        t = sd[key]
        if tuple(t.shape) != shape:
            raise GptlabError(f"{where}: tensor '{key}' has shape {tuple(t.shape)}; expected {shape} from config.json")
        return t.detach().to(torch.float32)

    out = {
        "tok_emb.weight": g("wte.weight", (cfg.vocab_size, d)),
        "pos_emb.weight": g("wpe.weight", (cfg.context_length, d)),
    }
    for i in range(cfg.n_layers):
        p, q = f"h.{i}.", f"trf_blocks.{i}."
        out[q + "norm1.weight"], out[q + "norm1.bias"] = g(p + "ln_1.weight", (d,)), g(p + "ln_1.bias", (d,))
        w = g(p + "attn.c_attn.weight", (d, 3 * d)).t()  # [3d, d]
        b = g(p + "attn.c_attn.bias", (3 * d,))
        for j, name in enumerate(("W_query", "W_key", "W_value")):
            out[q + f"att.{name}.weight"] = w[j * d : (j + 1) * d].clone(memory_format=torch.contiguous_format)
            out[q + f"att.{name}.bias"] = b[j * d : (j + 1) * d].clone()
        out[q + "att.out_proj.weight"] = g(p + "attn.c_proj.weight", (d, d)).t().contiguous()
        out[q + "att.out_proj.bias"] = g(p + "attn.c_proj.bias", (d,))
        out[q + "norm2.weight"], out[q + "norm2.bias"] = g(p + "ln_2.weight", (d,)), g(p + "ln_2.bias", (d,))
        out[q + "ff.layers.0.weight"] = g(p + "mlp.c_fc.weight", (d, 4 * d)).t().contiguous()
        out[q + "ff.layers.0.bias"] = g(p + "mlp.c_fc.bias", (4 * d,))
        out[q + "ff.layers.2.weight"] = g(p + "mlp.c_proj.weight", (4 * d, d)).t().contiguous()
        out[q + "ff.layers.2.bias"] = g(p + "mlp.c_proj.bias", (d,))
    out["final_norm.weight"], out["final_norm.bias"] = g("ln_f.weight", (d,)), g("ln_f.bias", (d,))
    if cfg.tie_weights:
        out["out_head.weight"] = out["tok_emb.weight"]
    else:
        if "lm_head.weight" not in sd:
            raise GptlabError(
                f"{where}: tensor 'lm_head.weight' is missing and config.json has tie_word_embeddings = false"
            )
        out["out_head.weight"] = g("lm_head.weight", (cfg.vocab_size, d))
    return out


def import_hf(hf_dir: str | os.PathLike) -> tuple[GPTModel, ModelConfig]:
    """A local Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin) as our GPTModel
    (fp32, CPU, eval mode) and its ModelConfig."""
    hf = Path(hf_dir)
    conf = _read_hf_config(hf)
    cfg = hf_to_model_config(conf, str(hf / "config.json"))
    ours = from_hf_state_dict(_load_hf_tensors(hf), cfg, str(hf))
    with torch.device("meta"):
        model = GPTModel(cfg)
    model.load_state_dict(ours, strict=True, assign=True)
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:  # pragma: no cover - every tensor is mapped above
            raise GptlabError(f"{hf}: no weights for '{name}'")
    return model.eval(), cfg


def import_to_run(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, data_dir: str | None = None) -> Path:
    """Write a run directory (config.toml, checkpoints/step_0000000/model.safetensors, checkpoints/latest) holding
    the weights of a local HF GPT-2 folder, so every verb that takes a RUN (eval, generate, export) works on it.
    `data_dir` sets the run's data.dir (the data `gptlab eval RUN` reads by default)."""
    from safetensors.torch import save_model

    from gptlab.io import fsync_dir

    run = Path(run_dir)
    if (run / "config.toml").exists() or (run / "checkpoints").exists():
        raise GptlabError(f"{run}: run directory already exists; choose another --run-dir")
    model, mcfg = import_hf(hf_dir)
    cfg = RunConfig(name=run.name or "imported", out_dir=str(run.parent), model=mcfg)
    if data_dir:
        cfg.data.dir = str(data_dir)
    ckdir = run / "checkpoints"
    final = ckdir / "step_0000000"
    final.mkdir(parents=True, exist_ok=True)
    atomic_write(final / "model.safetensors", lambda tmp: save_model(model, tmp))
    atomic_write_json(final / "state.json", {"step": 0, "imported_from": str(Path(hf_dir).resolve())})
    fsync_dir(ckdir)
    atomic_write_text(ckdir / "latest", final.name + "\n")
    from gptlab.model import count_params

    atomic_write_json(
        run / "meta.json",
        {"imported_from": str(Path(hf_dir).resolve()), "params": count_params(model), "config_hash": cfg.hash()},
    )
    save_config(cfg, run / "config.toml")  # last: its presence marks a complete run directory
    return run


def eval_hf(
    hf_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    offset: int = 0,
    batches: int = 0,
    batch_size: int = 8,
    context_length: int | None = None,
    device: str = "auto",
) -> float:
    """Mean test loss (nats/token) of a local HF GPT-2 folder on our prepared data, through the same
    `evaluate_loss` as our runs (windows of `context_length` tokens, default the model's n_positions)."""
    from gptlab.data.loader import TokenDataset
    from gptlab.train import evaluate_loss, resolve_device, resolve_precision

    model, cfg = import_hf(hf_dir)
    T = context_length or cfg.context_length
    if not 0 < T <= cfg.context_length:
        raise GptlabError(f"context_length: {T}; expected 1..{cfg.context_length} (the model's n_positions)")
    ds = TokenDataset(data_dir, split)
    dev = resolve_device(device)
    model.to(dev)
    return evaluate_loss(
        model, ds, T, batch_size, dev, resolve_precision("auto", dev), offset=offset, n_batches=batches
    )


__all__ = [
    "export_run",
    "import_hf",
    "import_to_run",
    "eval_hf",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "hf_config_dict",
    "hf_to_model_config",
]
