"""Export a run as a `transformers` GPT-2 folder (config.json, model.safetensors, the GPT-2 tokenizer files and a
model card), optionally pushed to the Hub with `huggingface_hub`. The weight mapping is the one in interop/hf.py's
docstring; every model variant GPT-2 cannot represent is refused with one line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.config import ModelConfig, RunConfig, config_from_run
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
    from gptlab.data.tokenizer import bpe_files

    vocab_bpe, encoder_json = bpe_files()
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
        "out = model.generate(ids, max_new_tokens=40, do_sample=True)",
        "text = tok.decode(out[0])  # the prompt and 40 sampled tokens",
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
