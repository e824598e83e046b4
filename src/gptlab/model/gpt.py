"""GPTModel with the structure and names of Raschka's "Build a Large Language Model (from Scratch)", ch. 4:
token + position embeddings, dropout, N TransformerBlocks (LayerNorm -> MultiHeadAttention with separate
W_query/W_key/W_value -> residual; LayerNorm -> GELU feed-forward 4x -> residual), final norm and an untied
`out_head` without bias. Attention runs through F.scaled_dot_product_attention (flash/efficient kernels on
CUDA); `attn_impl="explicit"` keeps the book's masked-softmax path for checking. `GPTModel.decode` is the
generation path: it adds tokens to a KV cache (kv_cache.py) and attends to the cached keys and values.

Options used by interventions (all off for the book's baseline): RoPE, RMSNorm, SwiGLU, QK-norm, logit
soft-capping, no biases, tied embeddings, GPT-2 style init, zero-initialised output projections, muP
(`cfg.mup`: hidden init and logits scaled with the width multiplier, attention scores by 1/d_head; the lr side is
in train/optim.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig
from gptlab.model.kv_cache import KVCache
from gptlab.model.layers import RMSNorm, Rotary, make_norm


class MultiHeadAttention(nn.Module):
    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
        cfg: ModelConfig | None = None,
    ):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        cfg = cfg or ModelConfig()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out, bias=cfg.bias)
        self.dropout_p = dropout
        self.dropout = nn.Dropout(dropout)
        # muP scores q.k / d_head (Yang et al. 2022, sec. 4): q and k become correlated in training, so their dot
        # product grows like d_head, not sqrt(d_head); None: SDPA's default 1/sqrt(d_head)
        self.scale = 1.0 / self.head_dim if cfg.mup else None
        self.attn_impl = cfg.attn_impl
        self.rotary = Rotary(self.head_dim, context_length) if cfg.pos_emb == "rope" else None
        self.q_norm = RMSNorm(self.head_dim, eps=1e-5) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=1e-5) if cfg.qk_norm else None
        if self.attn_impl == "explicit":
            self.register_buffer(
                "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1), persistent=False
            )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """Causal attention over `x`; with `cache`, over the cached tokens and `x` (layer `layer`'s slots)."""
        b, num_tokens, _ = x.shape
        shape = (b, num_tokens, self.num_heads, self.head_dim)
        queries = self.W_query(x).view(shape).transpose(1, 2)
        keys = self.W_key(x).view(shape).transpose(1, 2)
        values = self.W_value(x).view(shape).transpose(1, 2)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        if self.rotary is not None:
            pos = cache.pos if cache is not None else None
            queries, keys = self.rotary(queries, pos), self.rotary(keys, pos)
        attn_mask = None
        if cache is not None:
            keys, values = cache.store(layer, keys, values)
            attn_mask = cache.mask
        if self.attn_impl == "sdpa":
            context = F.scaled_dot_product_attention(
                queries,
                keys,
                values,
                attn_mask=attn_mask,
                dropout_p=self.dropout_p if self.training else 0.0,
                is_causal=cache is None,
                scale=self.scale,
            )
        else:  # the book's explicit path
            attn_scores = queries @ keys.transpose(2, 3)
            if cache is None:
                attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
            elif attn_mask is not None:
                attn_scores.masked_fill_(~attn_mask, -torch.inf)
            attn_weights = torch.softmax(
                attn_scores / self.head_dim**0.5 if self.scale is None else attn_scores * self.scale, dim=-1
            )
            attn_weights = self.dropout(attn_weights)
            context = attn_weights @ values
        context = context.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.emb_dim
        if cfg.mlp == "swiglu":
            # hidden = 2/3 * 4d keeps the parameter count of the 4x GELU MLP (Shazeer 2020), rounded to 8
            hidden = int(8 * d / 3 + 7) // 8 * 8
            self.gate = nn.Linear(d, hidden, bias=cfg.bias)
            self.layers = nn.Sequential(
                nn.Linear(d, hidden, bias=cfg.bias), nn.Identity(), nn.Linear(hidden, d, bias=cfg.bias)
            )
        else:
            self.gate = None
            self.layers = nn.Sequential(
                nn.Linear(d, 4 * d, bias=cfg.bias), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d, bias=cfg.bias)
            )

    @property
    def out_proj(self) -> nn.Linear:
        return self.layers[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.layers[2](F.silu(self.gate(x)) * self.layers[0](x))
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.att = MultiHeadAttention(
            cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads, cfg.qkv_bias, cfg
        )
        self.ff = FeedForward(cfg)
        self.norm1 = make_norm(cfg, cfg.emb_dim)
        self.norm2 = make_norm(cfg, cfg.emb_dim)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, layer))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.pos_emb == "learned" else None
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg, cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False
        self.reset_parameters()
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        cfg = self.cfg
        if cfg.init == "gpt2":  # GPT-2 / nanoGPT: N(0, 0.02), residual projections scaled by 1/sqrt(2L)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02
                    if name.endswith(("att.out_proj.weight", "ff.layers.2.weight")):
                        std = 0.02 / math.sqrt(2 * cfg.n_layers)
                    nn.init.normal_(p, mean=0.0, std=std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
        if cfg.zero_init_proj:  # modded-nanogpt: every residual branch starts as identity
            for blk in self.trf_blocks:
                nn.init.zeros_(blk.att.out_proj.weight)
                nn.init.zeros_(blk.ff.out_proj.weight)
        if cfg.mup:
            self._mup_rescale_init()

    @torch.no_grad()
    def _mup_rescale_init(self) -> None:
        """muP init (Tensor Programs V, table 3; the mup package): every weight starts with the std its init gives at
        the base width, except hidden matrices, whose std is the base width's / sqrt(m) (variance ~ 1/fan_in).
        Rescales in place after the usual init, so the random numbers drawn are those of the standard model.

        - gpt2 init (a fixed 0.02 at every width): hidden matrices x 1/sqrt(m); the rest already as at base width.
        - torch init: nn.Linear draws std ~ 1/sqrt(fan_in), already the base width's / sqrt(m) for hidden
          matrices; the untied out_head is scaled by sqrt(m) back to its base-width std, as mup's MuReadout does
          (the logits' 1/m multiplier in `_head` then carries the width dependence). Embeddings: N(0, 1) at every
          width."""
        m = self.cfg.mup_width_mult()
        if m == 1.0:
            return
        if self.cfg.init == "gpt2":
            for p in self.mup_hidden_params():
                p.mul_(m**-0.5)
        elif not self.cfg.tie_weights:
            self.out_head.weight.mul_(m**0.5)

    def mup_hidden_params(self) -> list[nn.Parameter]:
        """muP's hidden ('matrix-like') weights: both dimensions grow with the width. Every 2-D weight inside the
        blocks (attention and feed-forward); not the embeddings or the out_head (one dimension is the vocabulary
        or the context), biases or norm gains."""
        return [p for p in self.trf_blocks.parameters() if p.dim() == 2]

    def forward(self, in_idx: torch.Tensor, targets: torch.Tensor | None = None, z_loss: float = 0.0):
        """Logits (b, T, vocab) for `in_idx`, as in the book; with `targets`, the training loss instead:
        (mean cross-entropy in fp32, the same + z_loss * mean(logsumexp(logits)^2)). Computing the loss here
        (as nanoGPT does) lets torch.compile fuse it with the output layer, and the logits never outlive the
        call, so backward holds only what autograd saved."""
        logits = self._logits(in_idx)
        if targets is None:
            return logits
        lf = logits.flatten(0, 1).float()
        loss = F.cross_entropy(lf, targets.flatten())
        if not z_loss:
            return loss, loss
        return loss, loss + z_loss * torch.logsumexp(lf, dim=-1).pow(2).mean()

    def _logits(self, in_idx: torch.Tensor) -> torch.Tensor:
        _, seq_len = in_idx.shape
        if seq_len > self.cfg.context_length:
            raise ValueError(f"sequence length {seq_len} exceeds model context_length {self.cfg.context_length}")
        x = self.tok_emb(in_idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.drop_emb(x)
        if self.activation_checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            for blk in self.trf_blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.trf_blocks(x)
        return self._head(x)

    @torch.no_grad()
    def decode(self, in_idx: torch.Tensor, cache: KVCache, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Generation: logits (b, vocab) at the last position of `in_idx` (b, T), whose keys and values are added
        to `cache` after the tokens already there. `valid` (b, T) marks real tokens (False: left padding; default
        all real); positions count each row's real tokens only."""
        if cache.length + in_idx.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"sequence length {cache.length + in_idx.shape[1]} exceeds model context_length "
                f"{self.cfg.context_length}"
            )
        pos = cache.begin(torch.ones_like(in_idx, dtype=torch.bool) if valid is None else valid)
        x = self.tok_emb(in_idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        x = self.drop_emb(x)
        for i, blk in enumerate(self.trf_blocks):
            x = blk(x, cache, i)
        return self._head(x[:, -1])

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(x)
        logits = self.out_head(x)
        if self.cfg.mup:  # muP readout: logits x 1/m (the practitioner's guide's output multiplier; mup's MuReadout)
            logits = logits * (1.0 / self.cfg.mup_width_mult())
        if self.cfg.logit_softcap > 0:  # Gemma 2: cap * tanh(logits / cap)
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits / c)
        return logits


def count_params(model: nn.Module) -> int:
    """Unique parameters (a tied head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def non_embedding_params(model: GPTModel) -> int:
    n = count_params(model) - model.tok_emb.weight.numel()
    if model.pos_emb is not None:
        n -= model.pos_emb.weight.numel()
    if not model.cfg.tie_weights:
        n -= model.out_head.weight.numel()
    return n
