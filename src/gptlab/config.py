"""Typed configuration: dataclasses, TOML files, dotted `--set section.key=value` overrides.

Every error is one line naming the file, the field and what was expected; unknown keys get the
closest valid name suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from gptlab import GptlabError, interventions
from gptlab.io import atomic_write_text, parse_value

# --------------------------------------------------------------------------------------------
# Model presets. gpt2-* follow the book's GPT_CONFIG_124M family (untied head: 163M params for small).
# --------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12),
    "gpt2-medium": dict(vocab_size=50257, context_length=1024, emb_dim=1024, n_heads=16, n_layers=24),
    "gpt2-large": dict(vocab_size=50257, context_length=1024, emb_dim=1280, n_heads=20, n_layers=36),
    "gpt2-xl": dict(vocab_size=50257, context_length=1024, emb_dim=1600, n_heads=25, n_layers=48),
    # CPU-sized models for tests and the default run.
    "nano": dict(vocab_size=50257, context_length=64, emb_dim=64, n_heads=4, n_layers=2),
    "tiny": dict(vocab_size=50257, context_length=128, emb_dim=128, n_heads=4, n_layers=4),
    "mini": dict(vocab_size=50257, context_length=256, emb_dim=256, n_heads=8, n_layers=6),
}


@dataclass
class ModelConfig:
    preset: str = ""  # if set, fills vocab/context/emb/heads/layers unless given explicitly
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    bias: bool = True  # biases on out_proj, feed-forward and LayerNorm (False = "no bias anywhere")
    tie_weights: bool = False  # out_head shares tok_emb.weight
    attn_impl: str = "sdpa"  # "sdpa" (F.scaled_dot_product_attention) or "explicit" (book's masked softmax)
    init: str = "torch"  # "torch" (PyTorch defaults, as the book) or "gpt2" (N(0, 0.02), scaled residuals)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    pos_emb: str = "learned"  # "learned" or "rope"
    mlp: str = "gelu"  # "gelu" (4x) or "swiglu" (parameter-matched)
    qk_norm: bool = False
    logit_softcap: float = 0.0  # 0 = off
    zero_init_proj: bool = False


@dataclass
class DataConfig:
    dir: str = "data/shakespeare"  # folder with meta.json + token shards (`gptlab prepare`)
    source: str = ""  # if dir has no meta.json, train prepares it from this source (e.g. "bundled")
    # order of training sequences: -1 (default) = train.seed, so a seed covers initialisation, dropout and data
    # order; >= 0 pins one order for every run (then seeds vary only initialisation and dropout)
    data_seed: int = -1
    vocab: str = "gpt2"  # "gpt2" (all 50,257 ids) or "corpus" (only ids that occur in the data; see vocab.py)


@dataclass
class TrainConfig:
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | bf16 | fp16 | fp32
    tf32: bool = False
    compile: bool = False
    micro_batch_size: int = 8  # sequences per device per forward pass
    global_batch_size: int = 32  # sequences per optimizer step (all ranks, all accumulation steps)
    tokens: int = 0  # training token budget; 0 = from `flops` if set, else tokens_per_param * parameters
    flops: float = 0.0  # training FLOP budget (0 = off): tokens = flops / FLOPs-per-token, so variants that
    # change the model's size (SwiGLU, tying, ...) get the same compute, not the same tokens
    tokens_per_param: float = 20.0
    optimizer: str = "adamw"  # adamw | muon (Muon for hidden matrices, AdamW for the rest)
    muon_lr: float = 0.02
    lr: float = 4e-4
    weight_decay: float = 0.1
    decay_matrices_only: bool = False  # book/seed: decay on every parameter
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    schedule: str = "constant"  # constant | cosine (linear warmup then cosine) | linear
    warmup_frac: float = 0.0
    min_lr_frac: float = 0.1  # final lr = lr * min_lr_frac for cosine/linear
    z_loss: float = 0.0
    seq_len_warmup_frac: float = 0.0  # 0 = off; else context grows linearly over this fraction of steps
    eval_interval: int = 50  # steps between val evaluations (0 = only at the end)
    eval_batches: int = 10
    log_interval: int = 10
    checkpoint_interval: int = 100  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    # stop | skip (skip the batch and halve the lr, at most max_skips times). Under fp16 a non-finite step is first
    # skipped the GradScaler's way (loss scale lowered, lr kept), at most max_skips times; then this policy applies.
    nan_policy: str = "stop"
    max_skips: int = 5
    activation_checkpointing: bool = False
    fsdp: bool = False  # FSDP2 (fully_shard per block) under torchrun; checkpoints via torch.distributed.checkpoint
    progress: bool = True


@dataclass
class EvalConfig:
    """Which tokens make the test set: `batches` batches of `batch_size` sequences of the model's context,
    read sequentially from `split` starting at token `offset` (0 batches = the whole split)."""

    split: str = "test"
    offset: int = 0
    batches: int = 0
    batch_size: int = 8


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    interventions: list[str] = field(default_factory=list)  # applied in order (see `gptlab interventions`)

    # ---- helpers -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def data_order_seed(self) -> int:
        """The seed of the training sequences' order: data.data_seed if pinned, else train.seed."""
        return self.data.data_seed if self.data.data_seed >= 0 else self.train.seed

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str) -> Any:
    """Check/convert one value against a dataclass field type; raise a one-line GptlabError."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # --set a.b=x,y
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise GptlabError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise GptlabError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise GptlabError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise GptlabError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise GptlabError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise GptlabError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise GptlabError(f"{where}: expected a string, got {value!r}")
    raise GptlabError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _fill_section(obj, values: dict, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(values, dict):
        raise GptlabError(f"{where}: expected a table, got {values!r}")
    for key, value in values.items():
        if key not in names:
            raise GptlabError(f"{where}.{key}: unknown key{_suggest(key, names)}")
        setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))


def from_dict(d: dict, source: str = "<config>") -> RunConfig:
    cfg = RunConfig()
    top_hints = typing.get_type_hints(RunConfig)
    valid = [f.name for f in dataclasses.fields(RunConfig)]
    for key, value in d.items():
        if key in SECTIONS:
            _fill_section(getattr(cfg, key), value, f"{source}: {key}")
        elif key in valid:
            setattr(cfg, key, _coerce(value, top_hints[key], f"{source}: {key}"))
        else:
            raise GptlabError(f"{source}: {key}: unknown key{_suggest(key, valid)}")
    return cfg


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise GptlabError(f"{p}: config file not found")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise GptlabError(f"{p}: malformed TOML: {e}") from None
    except UnicodeDecodeError:
        raise GptlabError(f"{p}: not UTF-8 text") from None


def read_config_toml(path: str | Path, _seen: tuple = ()) -> dict:
    """A config file; `base = "other.toml"` (relative to the file) is read first and this file merged over it."""
    p = Path(path).resolve()
    if p in _seen:
        raise GptlabError(f"{path}: base: circular inheritance ({' -> '.join(str(x) for x in _seen + (p,))})")
    raw = read_toml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise GptlabError(f"{path}: base: expected a path to another config TOML")
    bp = Path(path).parent / base
    if not bp.is_file():
        raise GptlabError(f"{path}: base: {base} not found (looked for {bp})")
    return deep_merge(read_config_toml(bp, _seen + (p,)), raw)


def parse_overrides(items: list[str]) -> dict:
    """['train.lr=3e-4', 'model.preset=tiny'] -> nested dict."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise GptlabError(f"--set {item}: expected section.key=value")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GptlabError(f"--set {item}: {p} is set twice")
        node[parts[-1]] = parse_value(text.strip())
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_preset(cfg: RunConfig, explicit_model_keys: set[str], where: str = "model.preset") -> None:
    m = cfg.model
    if not m.preset:
        return
    if m.preset not in PRESETS:
        raise GptlabError(f"{where}: unknown preset '{m.preset}'{_suggest(m.preset, PRESETS)}; choose from {', '.join(PRESETS)}")
    for k, v in PRESETS[m.preset].items():
        if k not in explicit_model_keys:
            setattr(m, k, v)


def validate(cfg: RunConfig, where: str = "<config>") -> None:
    m, t, e = cfg.model, cfg.train, cfg.eval
    checks = [
        (m.emb_dim % m.n_heads == 0, "model.emb_dim", f"must be divisible by model.n_heads ({m.emb_dim} % {m.n_heads} != 0)"),
        (m.context_length > 0, "model.context_length", "must be > 0"),
        (0.0 <= m.drop_rate < 1.0, "model.drop_rate", "must be in [0, 1)"),
        (m.attn_impl in ("sdpa", "explicit"), "model.attn_impl", "expected 'sdpa' or 'explicit'"),
        (m.init in ("torch", "gpt2"), "model.init", "expected 'torch' or 'gpt2'"),
        (m.norm in ("layernorm", "rmsnorm"), "model.norm", "expected 'layernorm' or 'rmsnorm'"),
        (m.pos_emb in ("learned", "rope"), "model.pos_emb", "expected 'learned' or 'rope'"),
        (m.mlp in ("gelu", "swiglu"), "model.mlp", "expected 'gelu' or 'swiglu'"),
        (not (m.pos_emb == "rope" and (m.emb_dim // m.n_heads) % 2), "model.pos_emb", "rope needs an even head dimension"),
        (t.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision", "expected auto, bf16, fp16 or fp32"),
        (t.schedule in ("constant", "cosine", "linear"), "train.schedule", "expected constant, cosine or linear"),
        (t.optimizer in ("adamw", "muon"), "train.optimizer", "expected 'adamw' or 'muon'"),
        (t.nan_policy in ("stop", "skip"), "train.nan_policy", "expected 'stop' or 'skip'"),
        (t.micro_batch_size > 0, "train.micro_batch_size", "must be > 0"),
        (t.global_batch_size > 0, "train.global_batch_size", "must be > 0"),
        (t.lr > 0, "train.lr", "must be > 0"),
        (t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)"),
        (0 <= t.warmup_frac < 1, "train.warmup_frac", "must be in [0, 1)"),
        (t.tokens >= 0, "train.tokens", "must be >= 0 (0 = tokens_per_param x params)"),
        (t.flops >= 0, "train.flops", "must be >= 0 (0 = off)"),
        (not (t.tokens and t.flops), "train.flops", "set either train.tokens or train.flops, not both"),
        (cfg.data.vocab in ("gpt2", "corpus"), "data.vocab", "expected 'gpt2' or 'corpus'"),
        (e.split in ("train", "val", "test"), "eval.split", "expected train, val or test"),
        (cfg.data.data_seed >= -1, "data.data_seed", "must be >= 0, or -1 (follow train.seed)"),
        (e.offset >= 0, "eval.offset", "must be >= 0"),
        (e.batch_size > 0, "eval.batch_size", "must be > 0"),
    ]
    for ok, fld, msg in checks:
        if not ok:
            raise GptlabError(f"{where}: {fld}: {msg}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                extra: dict | None = None, apply_interventions: bool = True) -> RunConfig:
    """Read a TOML file (or defaults), merge `extra` (dict) and `--set` overrides, resolve the preset,
    apply the listed interventions, validate. Returns the resolved config."""
    raw: dict = read_config_toml(path) if path else {}
    where = str(path) if path else "<defaults>"
    if extra:
        raw = deep_merge(raw, extra)
    ov = parse_overrides(overrides or [])
    raw = deep_merge(raw, ov)
    cfg = from_dict(raw, where)
    explicit = set((raw.get("model") or {}).keys()) - {"preset"}
    resolve_preset(cfg, explicit, f"{where}: model.preset")
    if apply_interventions and cfg.interventions:
        interventions.apply_interventions(cfg, cfg.interventions, where)
    validate(cfg, where)
    return cfg


def flat(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: RunConfig, new: RunConfig, most: int = 4) -> str:
    """'interventions [] -> ['qkv_bias'], model.qkv_bias False -> True': the fields that differ, interventions
    first (they explain the rest), then in config order; at most `most`, then '+N more'."""
    o, n = flat(old.to_dict()), flat(new.to_dict())
    keys = sorted((k for k in {**o, **n} if o.get(k) != n.get(k)), key=lambda k: k != "interventions")
    parts = [f"{k} {o.get(k)!r} -> {n.get(k)!r}" if isinstance(o.get(k), str) or isinstance(n.get(k), str)
             else f"{k} {o.get(k)} -> {n.get(k)}" for k in keys[:most]]
    return ", ".join(parts) + (f", +{len(keys) - most} more" if len(keys) > most else "")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, cfg.to_toml())


def config_from_run(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run directory (interventions already applied)."""
    p = Path(run_dir) / "config.toml"
    if not p.is_file():
        raise GptlabError(f"{run_dir}: not a run directory (no config.toml)")
    cfg = from_dict(read_toml(p), str(p))
    validate(cfg, str(p))
    return cfg
