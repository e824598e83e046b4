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
import re
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.config import ModelConfig, RunConfig, config_from_run, save_config
from gptlab.io import atomic_write, atomic_write_json, atomic_write_text, check_dir, claim_dir, first_line
from gptlab.model import GPTModel

GPT2_VOCAB = 50257
EOT = "<|endoftext|>"
EXPORT_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
)

# --------------------------------------------------------------------------------------------
# Weight mapping
# --------------------------------------------------------------------------------------------


def _refusal(cfg: ModelConfig, where: str) -> str | None:
    """Why HF GPT-2 cannot represent this model (None if it can)."""
    if cfg.pos_emb != "learned":
        return f"{where}: model.pos_emb = '{cfg.pos_emb}'; GPT-2 has learned absolute positions only"
    if cfg.norm != "layernorm":
        return f"{where}: model.norm = '{cfg.norm}'; GPT-2 has LayerNorm only"
    if cfg.mlp != "gelu":
        return f"{where}: model.mlp = '{cfg.mlp}'; GPT-2 has the 4x GELU MLP only"
    if cfg.qk_norm:
        return f"{where}: model.qk_norm = true; GPT-2 has no QK-norm"
    if not cfg.bias:
        return f"{where}: model.bias = false; GPT-2 always has LayerNorm/projection biases"
    if cfg.logit_softcap > 0:
        return f"{where}: model.logit_softcap = {cfg.logit_softcap}; GPT-2 has no logit soft-capping"
    if cfg.mup:
        return f"{where}: model.mup = true; GPT-2 has no muP multipliers (logits x 1/m, attention scores / d_head)"
    if cfg.vocab_size < GPT2_VOCAB:
        return (
            f"{where}: model.vocab_size = {cfg.vocab_size}; the GPT-2 tokenizer needs at least {GPT2_VOCAB} output ids"
        )
    return None


def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel tensors (contiguous fp32 copies) for one of our models."""
    cfg = model.cfg
    why = _refusal(cfg, "model")
    if why:
        raise GptlabError(f"cannot export to Hugging Face GPT-2: {why}")

    def c(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous().clone()

    d = cfg.emb_dim
    sd = {"transformer.wte.weight": c(model.tok_emb.weight), "transformer.wpe.weight": c(model.pos_emb.weight)}
    for i, blk in enumerate(model.trf_blocks):
        p = f"transformer.h.{i}."
        att, ff = blk.att, blk.ff
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = c(blk.norm1.weight), c(blk.norm1.bias)
        qkv = torch.cat([att.W_query.weight, att.W_key.weight, att.W_value.weight], dim=0)  # [3d, d]
        sd[p + "attn.c_attn.weight"] = c(qkv.t())  # Conv1D: [in, out]
        if att.W_query.bias is not None:
            sd[p + "attn.c_attn.bias"] = c(torch.cat([att.W_query.bias, att.W_key.bias, att.W_value.bias]))
        else:  # GPT-2 always has this bias; zeros keep the outputs identical
            sd[p + "attn.c_attn.bias"] = torch.zeros(3 * d, dtype=torch.float32)
        sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"] = c(att.out_proj.weight.t()), c(att.out_proj.bias)
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = c(blk.norm2.weight), c(blk.norm2.bias)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = c(ff.layers[0].weight.t()), c(ff.layers[0].bias)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = c(ff.layers[2].weight.t()), c(ff.layers[2].bias)
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = c(model.final_norm.weight), c(model.final_norm.bias)
    if not cfg.tie_weights:
        sd["lm_head.weight"] = c(model.out_head.weight)
    return sd


def hf_config_dict(cfg: ModelConfig) -> dict:
    """config.json for GPT2LMHeadModel."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",  # = GELU with the tanh approximation, as nn.GELU(approximate="tanh")
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": bool(cfg.tie_weights),
        "bos_token_id": GPT2_VOCAB - 1,
        "eos_token_id": GPT2_VOCAB - 1,
        "torch_dtype": "float32",
        "use_cache": True,
    }


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _check_exportable(run_dir: Path) -> RunConfig:
    cfg = config_from_run(run_dir)
    from gptlab.data.vocab import RUN_FILE

    if (run_dir / RUN_FILE).exists() or getattr(cfg.data, "vocab", "gpt2") == "corpus":
        raise GptlabError(
            f"{run_dir}: cannot export to Hugging Face GPT-2: the run uses a compact corpus "
            'vocabulary (data.vocab = "corpus"); only full GPT-2 vocabulary runs can be exported'
        )
    why = _refusal(cfg.model, str(run_dir / "config.toml"))
    if why:
        raise GptlabError(f"cannot export to Hugging Face GPT-2: {why}")
    return cfg


EXPORT_DIR = "export"  # the kind of folder `export` writes (io.claim_dir)


def _earlier_export(out: Path) -> bool:
    """A complete export of an earlier gptlab (no owner file): every file of an export is there."""
    return all((out / f).is_file() for f in EXPORT_FILES)


def _check_out_dir(out: Path, run_dir: Path, force: bool) -> None:
    """--out: not the run directory, not a file, and new, empty or an export gptlab wrote (unless `force`)."""
    if out.resolve() == run_dir.resolve():
        raise GptlabError(f"--out {out}: must not be the run directory")
    check_dir(out, EXPORT_DIR, "--out", force, _earlier_export)


def _write_tokenizer(out: Path, context_length: int) -> None:
    from gptlab.data.tokenizer import _bpe_files

    vocab_bpe, encoder_json = _bpe_files()
    for src, dst in ((encoder_json, "vocab.json"), (vocab_bpe, "merges.txt")):
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise GptlabError(f"{src}: cannot read the GPT-2 tokenizer file ({e.strerror})") from None
        atomic_write(out / dst, lambda tmp, data=data: Path(tmp).write_bytes(data))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": context_length,
            "add_prefix_space": False,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            **special,
        },
    )
    atomic_write_json(out / "special_tokens_map.json", special)


def _model_card(run_dir: Path, cfg: RunConfig, ck: Path | None, n_params: int) -> str:
    final: dict = {}
    fp = run_dir / "final.json"
    if fp.is_file():
        try:
            final = json.loads(fp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            final = {}

    def num(key: str, fmt: str) -> str:
        v = final.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "not recorded"

    try:
        config_text = (run_dir / "config.toml").read_text(encoding="utf-8")
    except OSError:
        config_text = cfg.to_toml()
    e = cfg.eval
    test_spec = (
        f"split `{e.split}` of `{cfg.data.dir}`, offset {e.offset}, "
        f"{'all' if not e.batches else e.batches} batches of {e.batch_size} x {cfg.model.context_length} tokens"
    )
    status = "finished" if final else f"not finished (exported checkpoint `{ck.name if ck else '?'}`)"
    m = cfg.model
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- gpt2",
        "- gptlab",
        "---",
        "",
        f"# {cfg.name}",
        "",
        "A GPT-2 architecture language model trained from scratch with gptlab (the GPTModel of Raschka's "
        "*Build a Large Language Model (from Scratch)*), exported to the Hugging Face GPT-2 format.",
        "",
        "| | |",
        "|---|---|",
        f"| training | {status} |",
        f"| parameters | {n_params:,} ({'tied' if m.tie_weights else 'untied'} output head) |",
        f"| layers / heads / width / context | {m.n_layers} / {m.n_heads} / {m.emb_dim} / {m.context_length} |",
        f"| training tokens | {num('tokens', ',')} |",
        f"| optimizer steps | {num('steps', ',')} |",
        f"| test loss (nats/token) | {num('test_loss', '.4f')} |",
        f"| test perplexity | {num('test_perplexity', '.2f')} |",
        f"| validation loss | {num('val_loss', '.4f')} |",
        f"| test set | {test_spec} |",
        "",
        "The tokenizer is OpenAI's GPT-2 BPE (50,257 ids).",
    ]
    if not m.qkv_bias:
        lines += [
            "",
            "The run had no query/key/value biases; `c_attn.bias` is exported as zeros (GPT-2 always has "
            "that bias), so outputs are unchanged.",
        ]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import GPT2LMHeadModel, GPT2TokenizerFast",
        "tok = GPT2TokenizerFast.from_pretrained(PATH_OR_REPO)",
        "model = GPT2LMHeadModel.from_pretrained(PATH_OR_REPO)",
        'ids = tok("To be, or not", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=True)[0]))",
        "```",
        "",
        "## Training configuration (`config.toml`)",
        "",
        "```toml",
        config_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def export_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, push: str | None = None, force: bool = False
) -> Path:
    """Write `out_dir` so that `transformers.GPT2LMHeadModel.from_pretrained(out_dir)` and
    `GPT2TokenizerFast.from_pretrained(out_dir)` load the run's latest checkpoint offline; `push`: also upload
    it to that Hub repo with the token in $HF_TOKEN (never printed or written). Returns out_dir.

    `out_dir` must be new, empty or an earlier export (io.claim_dir); `force` writes into a folder holding other
    files too (the export's own files, e.g. README.md and config.json, are then overwritten)."""
    run_dir, out = Path(run_dir), Path(out_dir)
    token = None
    if push is not None:
        token = _hub_token(push)
    cfg = _check_exportable(run_dir)
    _check_out_dir(out, run_dir, force)
    from gptlab.train import latest_checkpoint, load_run_model

    model, _ = load_run_model(run_dir, "cpu")  # refuses a run without a checkpoint
    ck = latest_checkpoint(run_dir)
    sd = to_hf_state_dict(model)
    from gptlab.model import count_params

    n_params = count_params(model)
    del model

    from safetensors.torch import save_file

    claim_dir(out, EXPORT_DIR, "--out", force, _earlier_export)
    atomic_write(out / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    atomic_write_json(out / "config.json", hf_config_dict(cfg.model))
    _write_tokenizer(out, cfg.model.context_length)
    atomic_write_text(out / "README.md", _model_card(run_dir, cfg, ck, n_params))
    if push is not None:
        _push(out, push, token)
    return out


def _hub_token(repo: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*", repo):
        raise GptlabError(f"--push {repo!r}: expected a Hub repo id like 'user/model-name'")
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise GptlabError(
            f"--push {repo}: HF_TOKEN is not set; export a Hugging Face write token as HF_TOKEN "
            "(it is read from the environment only, never printed or saved)"
        )
    return token


def _push(out: Path, repo: str, token: str) -> None:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise GptlabError("--push: package 'huggingface_hub' is not installed (pip install huggingface_hub)") from None

    def scrub(e: BaseException) -> str:
        msg = first_line(e, 300)
        return msg.replace(token, "***") if token else msg

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id=repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            repo_type="model",
            folder_path=str(out),
            allow_patterns=list(EXPORT_FILES),
            commit_message="Upload gptlab export",
        )
    except Exception as e:  # network, auth, permission: one scrubbed line, the token never shown
        raise GptlabError(f"--push {repo}: upload failed ({type(e).__name__}: {scrub(e)})") from None


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
