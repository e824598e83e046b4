"""Typed configuration: dataclasses, TOML files, dotted `--set section.key=value` overrides (their raw tables are
read and merged by config_tables.py).

Every error is one line naming the file, the field and what was expected; unknown keys get the
closest valid name suggested. Each field declares what it accepts in its metadata (`ranged`: an interval for a
number, `one_of`: choices, `matching`: a pattern) and `validate` checks every declaration, then the rules that
tie fields together, on every resolved config. `resolve` is the one way from a file or a raw table to a run's
config and its hash (load_config, experiment specs, the runner and the `gptlab train` it starts all use it).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import tomli_w

from gptlab import GptlabError, interventions
from gptlab.config_tables import deep_merge, parse_overrides, read_config_toml, read_toml
from gptlab.io import BoundaryError, Range, atomic_write_text, coerce

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


# --------------------------------------------------------------------------------------------
# Field declarations: what each field accepts (checked by `validate`)
# --------------------------------------------------------------------------------------------
# Sizes are bounded far above any GPT-2-class model, so that no value overflows a tensor dimension; batch sizes too
# (65,536 sequences per forward pass, 2^24 per optimizer step), so a typo's extra zeros fails here, not in an
# allocation.
SEEDS = "[0, 4294967295]"  # numpy's and torch's seeding accept these everywhere (train.seed x 1000 + rank too)
DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


def ranged(default, interval: str, note: str = ""):
    """A numeric field whose values must lie in `interval` ("[0, 1)", "(0, inf)", ...); `note` explains
    special values in the error message (e.g. "0 = off")."""
    return field(default=default, metadata={"range": Range(interval), "note": note})


def hashed_when_set(default, interval: str | None = None, note: str = ""):
    """A field added after runs were recorded: at its default it is left out of the config hash, so every config
    that does not use it keeps the hash it had before the field existed; any other value is hashed as usual."""
    md: dict[str, Any] = {"hashed": "unless_default"}
    if interval is not None:
        md.update(range=Range(interval), note=note)
    return field(default=default, metadata=md)


def one_of(*choices: str):
    """A string field with a fixed set of values; the first is the default."""
    return field(default=choices[0], metadata={"choices": choices})


def subset_of(choices: tuple[str, ...], default: tuple[str, ...], hashed: bool = True):
    """A list field whose items must each be one of `choices`. `hashed=False`: the field says how a run is
    watched, not what it trains, so it is left out of the config hash (a resume or an experiment re-run may
    change it)."""
    return field(default_factory=lambda: list(default), metadata={"subset": choices, "hashed": hashed})


def matching(default: str, pattern: str, expected: str, hashed: bool = True):
    """A string field whose whole value must match the regular expression `pattern`."""
    return field(default=default, metadata={"pattern": pattern, "expected": expected, "hashed": hashed})


@dataclass
class ModelConfig:
    preset: str = ""  # if set, fills vocab/context/emb/heads/layers unless given explicitly
    vocab_size: int = ranged(50257, "[1, 65536]", "token shards are uint16")
    context_length: int = ranged(1024, "[1, 1048576]")
    emb_dim: int = ranged(768, "[1, 65536]")
    n_heads: int = ranged(12, "[1, 65536]")
    n_layers: int = ranged(12, "[1, 1024]")
    drop_rate: float = ranged(0.1, "[0, 1)")
    qkv_bias: bool = False
    bias: bool = True  # biases on out_proj, feed-forward and LayerNorm (False = "no bias anywhere")
    tie_weights: bool = False  # out_head shares tok_emb.weight
    attn_impl: str = one_of(
        "sdpa", "explicit"
    )  # "sdpa" (F.scaled_dot_product_attention) or "explicit" (book's masked softmax)
    init: str = one_of(
        "torch", "gpt2"
    )  # "torch" (PyTorch defaults, as the book) or "gpt2" (N(0, 0.02), scaled residuals)
    norm: str = one_of("layernorm", "rmsnorm")  # "layernorm" or "rmsnorm"
    pos_emb: str = one_of("learned", "rope")  # "learned" or "rope"
    mlp: str = one_of("gelu", "swiglu")  # "gelu" (4x) or "swiglu" (parameter-matched)
    qk_norm: bool = False
    logit_softcap: float = ranged(0.0, "[0, inf)", "0 = off")  # 0 = off
    zero_init_proj: bool = False
    # muP (Yang et al. 2022, the `mup` intervention): widths relative to mup_base_width, at which the hyperparameters
    # were tuned; hidden init and AdamW lr scale with it, logits by 1/m, attention by 1/d_head (gpt.py, optim.py)
    mup: bool = hashed_when_set(False)
    mup_base_width: int = hashed_when_set(0, "[0, 65536]", "0 = the model's emb_dim")

    def mup_width_mult(self) -> float:
        """m = emb_dim / base width under muP (1.0 without it, and at the base width)."""
        if not self.mup:
            return 1.0
        return self.emb_dim / (self.mup_base_width or self.emb_dim)


@dataclass
class DataConfig:
    dir: str = "data/shakespeare"  # folder with meta.json + token shards (`gptlab prepare`)
    source: str = ""  # if dir has no meta.json, train prepares it from this source (e.g. "bundled")
    # order of training sequences: -1 (default) = train.seed, so a seed covers initialisation, dropout and data
    # order; >= 0 pins one order for every run (then seeds vary only initialisation and dropout)
    data_seed: int = ranged(-1, "[-1, 4294967295]", "-1 = follow train.seed")
    vocab: str = one_of(
        "gpt2", "corpus"
    )  # "gpt2" (all 50,257 ids) or "corpus" (only ids that occur in the data; see vocab.py)


@dataclass
class TrainConfig:
    seed: int = ranged(42, SEEDS)
    device: str = matching("auto", DEVICE, "auto, cpu, cuda, cuda:N or mps")  # auto | cpu | cuda | cuda:N | mps
    precision: str = one_of("auto", "bf16", "fp16", "fp32")  # auto (bf16 on CUDA, fp32 elsewhere) | bf16 | fp16 | fp32
    tf32: bool = False
    compile: bool = False
    micro_batch_size: int = ranged(8, "[1, 65536]")  # sequences per device per forward pass
    global_batch_size: int = ranged(
        32, "[1, 16777216]"
    )  # sequences per optimizer step (all ranks, all accumulation steps)
    tokens: int = ranged(
        0, "[0, inf)", "0 = from flops or tokens_per_param"
    )  # training token budget; 0 = from `flops` if set, else tokens_per_param * parameters
    flops: float = ranged(
        0.0, "[0, inf)", "0 = off"
    )  # training FLOP budget (0 = off): tokens = flops / FLOPs-per-token, so variants that
    # change the model's size (SwiGLU, tying, ...) get the same compute, not the same tokens
    tokens_per_param: float = ranged(20.0, "(0, inf)")
    optimizer: str = one_of("adamw", "muon")  # adamw | muon (Muon for hidden matrices, AdamW for the rest)
    muon_lr: float = ranged(0.02, "(0, inf)")
    lr: float = ranged(4e-4, "(0, inf)")
    weight_decay: float = ranged(0.1, "[0, inf)")
    decay_matrices_only: bool = False  # book/seed: decay on every parameter
    beta1: float = ranged(0.9, "[0, 1)")
    beta2: float = ranged(0.999, "[0, 1)")
    eps: float = ranged(1e-8, "(0, inf)")
    grad_clip: float = ranged(0.0, "[0, inf)", "0 = off")  # max global grad norm; 0 = off
    schedule: str = one_of("constant", "cosine", "linear")  # constant | cosine (linear warmup then cosine) | linear
    warmup_frac: float = ranged(0.0, "[0, 1)")
    min_lr_frac: float = ranged(0.1, "[0, 1]")  # final lr = lr * min_lr_frac for cosine/linear
    z_loss: float = ranged(0.0, "[0, inf)", "0 = off")
    seq_len_warmup_frac: float = ranged(
        0.0, "[0, 1)", "0 = off"
    )  # 0 = off; else context grows linearly over this fraction of steps
    eval_interval: int = ranged(
        50, "[0, inf)", "0 = only at the end"
    )  # steps between val evaluations (0 = only at the end)
    eval_batches: int = ranged(10, "[0, inf)", "0 = the whole val split")
    log_interval: int = ranged(10, "[1, inf)")
    checkpoint_interval: int = ranged(100, "[0, inf)", "0 = only at the end")  # steps; 0 = only at the end
    keep_checkpoints: int = ranged(2, "[0, inf)", "0 = keep all")
    # stop | skip (skip the batch and halve the lr, at most max_skips times). Under fp16 a non-finite step is first
    # skipped the GradScaler's way (loss scale lowered, lr kept), at most max_skips times; then this policy applies.
    nan_policy: str = one_of("stop", "skip")
    max_skips: int = ranged(5, "[0, 1000000]")
    activation_checkpointing: bool = False
    fsdp: bool = False  # FSDP2 (fully_shard per block) under torchrun; checkpoints via torch.distributed.checkpoint
    progress: bool = True
    # where the curves go besides metrics.jsonl (always written): any of tensorboard, wandb, trackio (loggers.py).
    # Neither this nor log_project is part of the config hash: they change how a run is watched, not the run.
    loggers: list[str] = subset_of(("jsonl", "tensorboard", "wandb", "trackio"), ("jsonl",), hashed=False)
    # W&B project of every run; Trackio project of a plain run (an experiment's runs: the experiment's name)
    log_project: str = matching(
        "gptlab", r"[A-Za-z0-9_.+-]+", "a project name of letters, digits, _ . + or -", hashed=False
    )


@dataclass
class EvalConfig:
    """Which tokens make the test set: `batches` batches of `batch_size` sequences of the model's context,
    read sequentially from `split` starting at token `offset` (0 batches = the whole split)."""

    split: str = one_of("test", "train", "val")
    offset: int = ranged(0, "[0, inf)")
    batches: int = ranged(0, "[0, inf)", "0 = the whole split")
    batch_size: int = ranged(8, "[1, 65536]")


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
        """What the run trains: every field but those declared hashed=False (how it is watched) and those declared
        hashed "unless_default" that hold their default (fields added later: old configs keep their hash)."""
        blob = json.dumps(hashed_view(self.to_dict()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def hashed_view(d: dict) -> dict:
    """A copy of config dict `d` (RunConfig.to_dict()) with only the fields its hash covers: without those declared
    hashed=False and those declared hashed "unless_default" that hold their default."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for section, cls in SECTIONS.items():
        values = d.get(section)
        if not isinstance(values, dict):
            continue
        for f in dataclasses.fields(cls):
            h = f.metadata.get("hashed")
            if f.name in values and (h is False or (h == "unless_default" and values[f.name] == f.default)):
                del values[f.name]
    return d


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp, where: str) -> Any:
    try:
        return coerce(value, tp, where)
    except BoundaryError as e:
        raise GptlabError(str(e)) from None


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


def resolve_preset(cfg: RunConfig, explicit_model_keys: set[str], where: str = "model.preset") -> None:
    m = cfg.model
    if not m.preset:
        return
    if m.preset not in PRESETS:
        raise GptlabError(
            f"{where}: unknown preset '{m.preset}'{_suggest(m.preset, PRESETS)}; choose from {', '.join(PRESETS)}"
        )
    for k, v in PRESETS[m.preset].items():
        if k not in explicit_model_keys:
            setattr(m, k, v)


def field_errors(obj, prefix: str):
    """(dotted name, message) for each field of a config section whose value breaks its declaration."""
    for f in dataclasses.fields(obj):
        v, md = getattr(obj, f.name), f.metadata
        if "range" in md and v not in md["range"]:
            note = f" ({md['note']})" if md["note"] else ""
            yield f"{prefix}{f.name}", f"must be {md['range']}{note}, got {v!r}"
        elif "choices" in md and v not in md["choices"]:
            *head, last = md["choices"]
            yield f"{prefix}{f.name}", f"expected {', '.join(head)} or {last}, got {v!r}"
        elif "subset" in md and any(x not in md["subset"] for x in v):
            *head, last = md["subset"]
            bad = next(x for x in v if x not in md["subset"])
            yield f"{prefix}{f.name}", f"expected a list of {', '.join(head)} or {last}, got {bad!r}"
        elif "pattern" in md and not (isinstance(v, str) and re.fullmatch(md["pattern"], v)):
            yield f"{prefix}{f.name}", f"expected {md['expected']}, got {v!r}"


def validate(cfg: RunConfig, where: str = "<config>") -> None:
    """Every field against its declaration, then the rules between fields; the first failure is a GptlabError."""
    for section in SECTIONS:
        for fld, msg in field_errors(getattr(cfg, section), f"{section}."):
            raise GptlabError(f"{where}: {fld}: {msg}")
    m, t = cfg.model, cfg.train
    checks = [
        (
            m.emb_dim % m.n_heads == 0,
            "model.emb_dim",
            f"must be divisible by model.n_heads ({m.emb_dim} % {m.n_heads} != 0)",
        ),
        (
            not (m.pos_emb == "rope" and (m.emb_dim // m.n_heads) % 2),
            "model.pos_emb",
            "rope needs an even head dimension",
        ),
        (not (t.tokens and t.flops), "train.flops", "set either train.tokens or train.flops, not both"),
        (
            not (m.mup and t.optimizer == "muon"),
            "model.mup",
            "muP's lr scaling here is for AdamW; train.optimizer = muon scales its own updates (use one or the other)",
        ),
    ]
    for ok, fld, msg in checks:
        if not ok:
            raise GptlabError(f"{where}: {fld}: {msg}")


class Resolved(NamedTuple):
    """A resolved config, its hash, its corpus vocabulary (data.vocab.VocabMap; None without one or its data)."""

    cfg: RunConfig
    hash: str
    vocab: Any


def resolve(
    source: str | Path | dict | None,
    *,
    where: str | None = None,
    extra: dict | None = None,
    overrides: list[str] | None = None,
    apply_interventions: bool = True,
) -> Resolved:
    """The one resolution of a run's config: `source` (a config file, read with its `base` chain; a raw table, its
    chain merged, e.g. an experiment run's; None: the defaults), `extra` (a table) and `overrides` (--set) merged
    over it, typed, the preset filled in, the interventions applied (apply_interventions=False: an already resolved
    config), validated, and for data.vocab = "corpus" with its data prepared, model.vocab_size set to the corpus
    vocabulary's size (training prepares missing data, then resolves again). Errors name `where` (default: the file)."""
    if isinstance(source, dict):
        raw, where = dict(source), where or "<config>"
    else:
        raw, where = (read_config_toml(source) if source else {}), where or str(source or "<defaults>")
    raw = deep_merge(deep_merge(raw, extra or {}), parse_overrides(overrides or []))
    cfg = from_dict(raw, where)
    resolve_preset(cfg, set((raw.get("model") or {}).keys()) - {"preset"}, f"{where}: model.preset")
    if apply_interventions and cfg.interventions:
        interventions.apply_interventions(cfg, cfg.interventions, where)
    validate(cfg, where)
    vocab = None
    if cfg.data.vocab == "corpus":  # (the import loads torch: only when needed)
        from gptlab.data.vocab import resolve_corpus_vocab

        vocab = resolve_corpus_vocab(cfg)
    return Resolved(cfg, cfg.hash(), vocab)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
    apply_interventions: bool = True,
) -> RunConfig:
    """A TOML file's (or the defaults') resolved config, with `extra` (a table) and `--set` overrides (`resolve`)."""
    return resolve(path, extra=extra, overrides=overrides, apply_interventions=apply_interventions).cfg


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
    parts = [
        f"{k} {o.get(k)!r} -> {n.get(k)!r}"
        if isinstance(o.get(k), str) or isinstance(n.get(k), str)
        else f"{k} {o.get(k)} -> {n.get(k)}"
        for k in keys[:most]
    ]
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
