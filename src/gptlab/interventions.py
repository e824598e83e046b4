"""Interventions are data: a name -> a small, documented edit of the resolved RunConfig.

A variant is a list of intervention specs applied in order. A spec is `name` or `name:key=value,key=value`,
e.g. `grad_clip:max_norm=3.5` or `lr_schedule:peak=0.0014,warmup=0.05,final=0.1`. A value must have the type of
the parameter's default (a flag takes true or false); the edited config is then validated like any other.

Each intervention declares what it acts on (`acts_on`, a subset of ACTS_ON): the quantities of a run whose size
changes what the intervention does, so that a screen far from the target in one of them cannot judge it
(analysis/regime.py). "horizon": the training length and schedule (a warmup-plus-cosine schedule, weight decay,
a warmup of the sequence length, the optimizer and its lr); "batch": the tokens per step; "width": the model's
width; "data_repetition": epochs over the data (dropout helps when data repeats); "precision": the number format.
None of these: an architectural change, judged at any horizon (its size dependence is what the ladder fits).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptlab import GptlabError
from gptlab.io import BoundaryError, coerce, parse_value

if TYPE_CHECKING:  # interventions edit a RunConfig but never import config (config imports them)
    from gptlab.config import RunConfig


@dataclass(frozen=True)
class Intervention:
    name: str
    fn: Callable[..., None]
    description: str
    source: str
    acts_on: tuple[str, ...] = ()  # a subset of ACTS_ON (the module docstring)

    def params(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in list(sig.parameters.items())[1:]}


REGISTRY: dict[str, Intervention] = {}


ACTS_ON = ("horizon", "batch", "width", "data_repetition", "precision")


def register(name: str, description: str, source: str, acts_on: tuple[str, ...] = ()):
    unknown = sorted(set(acts_on) - set(ACTS_ON))
    if unknown:
        raise ValueError(f"intervention {name}: acts_on: expected some of {', '.join(ACTS_ON)}, got {unknown}")

    def deco(fn):
        REGISTRY[name] = Intervention(name, fn, description, source, tuple(acts_on))
        return fn

    return deco


SEED_BLOG = "Giles Thomas, 'Writing an LLM from scratch' part 32 (interventions on the book's GPT-2 small)"
BOOK = "Raschka, Build a Large Language Model (from Scratch), ch. 4-5"

# ---- the seed's interventions ------------------------------------------------------------------


@register(
    "grad_clip", "clip the global gradient norm before each optimizer step", SEED_BLOG + " 32b; Pascanu et al. 2013"
)
def _grad_clip(cfg: RunConfig, max_norm: float = 1.0) -> None:
    cfg.train.grad_clip = float(max_norm)


@register(
    "no_dropout",
    "set every dropout rate to 0 (embeddings, attention weights, residuals)",
    SEED_BLOG + " 32c",
    acts_on=("data_repetition",),
)
def _no_dropout(cfg: RunConfig) -> None:
    cfg.model.drop_rate = 0.0


@register("qkv_bias", "add bias vectors to W_query, W_key and W_value", SEED_BLOG + " 32d; GPT-2 has them")
def _qkv_bias(cfg: RunConfig) -> None:
    cfg.model.qkv_bias = True


@register(
    "lr_schedule",
    "linear warmup then cosine decay from a peak lr to peak*final",
    SEED_BLOG + " 32f; Loshchilov & Hutter 2016",
    acts_on=("horizon",),
)
def _lr_schedule(
    cfg: RunConfig, peak: float = 0.0, warmup: float = 0.05, final: float = 0.1, shape: str = "cosine"
) -> None:
    if peak:
        cfg.train.lr = float(peak)
    cfg.train.schedule = str(shape)
    cfg.train.warmup_frac = float(warmup)
    cfg.train.min_lr_frac = float(final)


@register(
    "weight_decay",
    "AdamW decay on weight matrices only (none on norms, biases, embeddings)",
    SEED_BLOG + " 32g; Loshchilov & Hutter 2019 (AdamW)",
    acts_on=("horizon",),
)
def _weight_decay(cfg: RunConfig, value: float = 0.1, matrices_only: bool = True) -> None:
    cfg.train.weight_decay = float(value)
    cfg.train.decay_matrices_only = bool(matrices_only)


@register(
    "weight_tying",
    "out_head shares the token-embedding matrix (as OpenAI's GPT-2)",
    SEED_BLOG + " 32h; Press & Wolf 2017",
)
def _weight_tying(cfg: RunConfig) -> None:
    cfg.model.tie_weights = True


@register("fp32", "train in full float32 instead of mixed precision", SEED_BLOG + " 32e", acts_on=("precision",))
def _fp32(cfg: RunConfig) -> None:
    cfg.train.precision = "fp32"


@register("fp16", "float16 autocast with a GradScaler (the seed's cloud runs)", SEED_BLOG, acts_on=("precision",))
def _fp16(cfg: RunConfig) -> None:
    cfg.train.precision = "fp16"


@register("bf16", "bfloat16 autocast (no GradScaler needed)", "Kalamkar et al. 2019", acts_on=("precision",))
def _bf16(cfg: RunConfig) -> None:
    cfg.train.precision = "bf16"


@register("tf32", "allow TF32 matmuls on Ampere+ GPUs (the seed's runs had it on)", SEED_BLOG, acts_on=("precision",))
def _tf32(cfg: RunConfig, enabled: bool = True) -> None:
    cfg.train.tf32 = bool(enabled)


@register("lr", "set the (peak) learning rate", BOOK, acts_on=("horizon", "batch", "width"))
def _lr(cfg: RunConfig, value: float = 4e-4) -> None:
    cfg.train.lr = float(value)


@register(
    "batch_size",
    "set the global batch size in sequences (token budget unchanged: fewer, larger steps)",
    BOOK,
    acts_on=("batch", "horizon"),
)
def _batch_size(cfg: RunConfig, value: int = 32, micro: int = 0) -> None:
    cfg.train.global_batch_size = int(value)
    if micro:
        cfg.train.micro_batch_size = int(micro)
    cfg.train.micro_batch_size = min(cfg.train.micro_batch_size, cfg.train.global_batch_size)


@register(
    "batch_scaling",
    "scale the global batch by `factor` and the lr by a rule: sqrt (Adam) or linear (SGD); token budget unchanged",
    "Malladi et al. 2022 (square-root rule for Adam); Goyal et al. 2017 (linear rule)",
    acts_on=("batch", "horizon"),
)
def _batch_scaling(cfg: RunConfig, factor: float = 2.0, rule: str = "sqrt") -> None:
    if rule not in ("sqrt", "linear"):
        raise ValueError(f"rule: expected 'sqrt' or 'linear', got {rule!r}")
    t = cfg.train
    new_batch = t.global_batch_size * float(factor)
    if factor <= 0 or not new_batch.is_integer() or new_batch < 1:
        raise ValueError(
            f"factor: {factor} x global_batch_size {t.global_batch_size} is not a whole number of sequences"
        )
    scale = float(factor) ** 0.5 if rule == "sqrt" else float(factor)
    t.global_batch_size = int(new_batch)
    t.micro_batch_size = min(t.micro_batch_size, t.global_batch_size)
    t.lr *= scale
    t.muon_lr *= scale


# ---- beyond the seed -----------------------------------------------------------------------


@register(
    "rope", "rotary position embeddings on q and k instead of learned absolute positions", "Su et al. 2021 (RoFormer)"
)
def _rope(cfg: RunConfig) -> None:
    cfg.model.pos_emb = "rope"


@register("rmsnorm", "RMSNorm (torch.nn.RMSNorm) instead of LayerNorm", "Zhang & Sennrich 2019")
def _rmsnorm(cfg: RunConfig) -> None:
    cfg.model.norm = "rmsnorm"


@register("swiglu", "SwiGLU feed-forward with hidden 8d/3 (parameter-matched to the 4x GELU MLP)", "Shazeer 2020")
def _swiglu(cfg: RunConfig) -> None:
    cfg.model.mlp = "swiglu"


@register(
    "qk_norm", "RMSNorm on queries and keys per head before attention", "Dehghani et al. 2023; Wortsman et al. 2023"
)
def _qk_norm(cfg: RunConfig) -> None:
    cfg.model.qk_norm = True


@register("no_bias", "remove every bias (attention, feed-forward, LayerNorm)", "Chowdhery et al. 2022 (PaLM)")
def _no_bias(cfg: RunConfig) -> None:
    cfg.model.bias = False
    cfg.model.qkv_bias = False


@register("softcap", "cap logits smoothly: c * tanh(logits / c)", "Gemma 2 (2024)")
def _softcap(cfg: RunConfig, cap: float = 30.0) -> None:
    cfg.model.logit_softcap = float(cap)


@register(
    "z_loss", "auxiliary loss coef * logsumexp(logits)^2 keeps logits from drifting", "Chowdhery et al. 2022 (PaLM)"
)
def _z_loss(cfg: RunConfig, coef: float = 1e-4) -> None:
    cfg.train.z_loss = float(coef)


@register(
    "zero_init_proj", "zero-initialise attention and MLP output projections", "modded-nanogpt (Jordan et al. 2024)"
)
def _zero_init(cfg: RunConfig) -> None:
    cfg.model.zero_init_proj = True


@register(
    "gpt2_init", "GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2L)", "Radford et al. 2019; nanoGPT"
)
def _gpt2_init(cfg: RunConfig) -> None:
    cfg.model.init = "gpt2"


@register(
    "muon",
    "Muon (orthogonalised momentum) for hidden matrices, AdamW for the rest",
    "Jordan et al. 2024",
    acts_on=("horizon", "batch"),
)
def _muon(cfg: RunConfig, lr: float = 0.02) -> None:
    cfg.train.optimizer = "muon"
    cfg.train.muon_lr = float(lr)


@register(
    "seq_len_warmup",
    "train on short sequences first, growing linearly to full context",
    "Li et al. 2022",
    acts_on=("horizon",),
)
def _seq_len_warmup(cfg: RunConfig, frac: float = 0.25) -> None:
    cfg.train.seq_len_warmup_frac = float(frac)


@register(
    "mup",
    "muP for AdamW: width multiplier m = emb_dim / base_width; hidden matrices init std / sqrt(m) and "
    "lr / m, logits x 1/m, attention scores / d_head (base_width 0 = emb_dim: only the attention scale changes)",
    "Yang et al. 2022, Tensor Programs V (arXiv 2203.03466), table 3 and the mup package (MuReadout, MuAdamW); "
    "Dey et al. 2024, the muP practitioner's guide (Cerebras / EleutherAI nanoGPT-mup)",
    acts_on=("width",),
)
def _mup(cfg: RunConfig, base_width: int = 0) -> None:
    if base_width < 0:
        raise ValueError(f"base_width: expected a width >= 1 (or 0 = the model's emb_dim), got {base_width}")
    cfg.model.mup = True
    if base_width:
        cfg.model.mup_base_width = int(base_width)


# ---- parsing -------------------------------------------------------------------------------


def parse_spec(spec: str, where: str = "interventions") -> tuple[Intervention, dict[str, Any]]:
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise GptlabError(f"{where}: unknown intervention '{name}'{hint}; `gptlab interventions` lists them")
    iv = REGISTRY[name]
    allowed = iv.params()
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        if "=" not in item:
            raise GptlabError(f"{where}: '{spec}': expected key=value after ':', got '{item}'")
        k, _, v = item.partition("=")
        k = k.strip()
        if k not in allowed:
            opts = ", ".join(allowed) or "none"
            raise GptlabError(f"{where}: '{spec}': unknown parameter '{k}' (parameters: {opts})")
        kwargs[k] = _typed(parse_value(v.strip()), allowed[k], f"{where}: '{spec}': {k}")
    return iv, kwargs


def _typed(value: Any, default: Any, where: str) -> Any:
    """A parameter value of the type of the parameter's default (true/false for a flag, not any string)."""
    try:
        return coerce(value, type(default), where)
    except BoundaryError as e:
        raise GptlabError(str(e)) from None


def apply_interventions(cfg: RunConfig, specs: list[str], where: str = "interventions") -> RunConfig:
    for spec in specs:
        iv, kwargs = parse_spec(spec, where)
        try:
            iv.fn(cfg, **kwargs)
        except (TypeError, ValueError) as e:
            raise GptlabError(f"{where}: '{spec}': {e}") from None
    return cfg


def describe() -> str:
    lines = []
    for iv in REGISTRY.values():
        ps = ", ".join(f"{k}={v}" for k, v in iv.params().items())
        lines.append(f"{iv.name:<16} {iv.description}" + (f"  [{ps}]" if ps else ""))
        lines.append(f"{'':<16} source: {iv.source}")
        if iv.acts_on:
            lines.append(f"{'':<16} acts on: {', '.join(iv.acts_on)}")
    return "\n".join(lines)
