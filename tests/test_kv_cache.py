"""The KV cache (model/kv_cache.py, GPTModel.decode) and batched decoding (Generator._decode) against the book's
uncached generate(): the whole window through GPTModel.forward for every new token.

Token ids are compared exactly. The cached path computes the same sums in other shapes (one query against
cached keys instead of a full causal matrix), so logits agree to ~1e-6 rather than bit for bit (checked
below with a tolerance); greedy picks stay identical because the models' top logits are further apart than
that, which the diversity check on each reference keeps honest (a run that repeats one token would prove
little)."""

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.model import GPTModel
from gptlab.model.kv_cache import KVCache
from gptlab.posttrain.generate import Generator, Sampling

CTX = 16
# every option that changes attention or positions, plus the ones that change the logits around them
VARIANTS = {
    "learned": {},
    "rope": {"pos_emb": "rope"},
    "rope+qk_norm": {"pos_emb": "rope", "qk_norm": True},
    "qk_norm": {"qk_norm": True},
    "explicit": {"attn_impl": "explicit"},
    "rope+explicit": {"pos_emb": "rope", "attn_impl": "explicit"},
    "qkv_bias": {"qkv_bias": True},
    "modern": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "logit_softcap": 30.0},
}
PROMPTS = [[5, 6, 7], [9] * 12, list(range(20, 40)), [1]]  # 20 tokens > CTX: cropped from the start


def model(variant: str, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=50257, context_length=CTX, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1, **VARIANTS[variant]
    )
    return GPTModel(cfg).eval()


def book_generate(m: GPTModel, ids: list[int], n: int, seed: int | None = None, top_k: int = 0) -> list[int]:
    """The book's generate(): the last context_length tokens through forward() for every new token."""
    idx, out = torch.tensor([ids]), []
    rng = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for _ in range(n):
            logits = m(idx[:, -CTX:])[:, -1].float()
            if rng is None:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                v, _ = torch.topk(logits, top_k)
                logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits / 0.8, -1), 1, generator=rng)
            out.append(int(nxt))
            idx = torch.cat([idx, nxt], 1)
    return out


def decode_rows(gen: Generator, prompts, n: int, samplings, stop_at: dict[int, int] | None = None) -> list[list[int]]:
    """Run Generator._decode over `prompts` as one batch; `stop_at` {row: step} ends rows early."""
    rows: list[list[int]] = [[] for _ in prompts]
    stopped: set[int] = set()
    for step, toks in enumerate(gen._decode(prompts, n, samplings, stopped)):
        for r, t in toks.items():
            rows[r].append(t)
        stopped |= {r for r, s in (stop_at or {}).items() if s == step}
    return rows


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_greedy_matches_the_uncached_book_loop_past_the_context(variant):
    m = model(variant)
    gen = Generator(m)
    for p in PROMPTS:
        ref = book_generate(m, p, 2 * CTX)  # runs well past the context: the window slides
        assert len(set(ref)) > 4, "a degenerate reference proves little"
        assert list(gen.token_ids(p, 2 * CTX, Sampling(0.0))) == ref


@pytest.mark.parametrize("variant", ["learned", "rope"])
def test_cached_sampling_with_a_seed_matches_the_book_loop(variant):
    m = model(variant)
    gen = Generator(m)
    for i, p in enumerate(PROMPTS):
        got = list(gen.token_ids(p, 2 * CTX, Sampling(0.8, 50, seed=10 + i)))
        assert got == book_generate(m, p, 2 * CTX, seed=10 + i, top_k=50)


@pytest.mark.parametrize("variant", ["learned", "rope+qk_norm", "explicit"])
def test_decode_logits_match_forward_logits(variant):
    """Prefill of a left-padded batch, then single-token steps: each real row's logits equal forward()'s on
    that row alone, so padding is masked and positions count each row's own tokens."""
    m = model(variant)
    rows = [[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13], [14]]
    width = max(map(len, rows))
    cache = KVCache(len(m.trf_blocks), CTX)
    idx = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    valid = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    logits = m.decode(idx, cache, valid)
    for _step in range(CTX - width):
        with torch.no_grad():
            want = torch.cat([m(torch.tensor([r]))[:, -1] for r in rows])
        torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)
        nxt = logits.argmax(-1).tolist()
        rows = [r + [t] for r, t in zip(rows, nxt, strict=True)]
        logits = m.decode(torch.tensor(nxt)[:, None], cache)
    with pytest.raises(ValueError, match="context_length"):
        m.decode(torch.tensor(nxt)[:, None], cache)


@pytest.mark.parametrize("variant", ["learned", "rope"])
def test_batch_matches_one_at_a_time(variant):
    """Prompts of different lengths (one longer than the context) decoded together give each row the tokens
    it gets alone, greedy and seeded sampling alike, including after the window starts sliding."""
    gen = Generator(model(variant))
    greedy = [Sampling(0.0)] * len(PROMPTS)
    solo = [decode_rows(gen, [p], 2 * CTX, greedy[:1])[0] for p in PROMPTS]
    assert decode_rows(gen, PROMPTS, 2 * CTX, greedy) == solo
    sampled = [Sampling(1.0, 20, seed=3 + i) for i in range(len(PROMPTS))]
    solo = [decode_rows(gen, [p], 2 * CTX, [s])[0] for p, s in zip(PROMPTS, sampled, strict=True)]
    assert decode_rows(gen, PROMPTS, 2 * CTX, sampled) == solo


@pytest.mark.parametrize("variant", ["learned", "rope"])
def test_rows_leaving_the_batch_do_not_change_the_others(variant):
    """Finished rows leave the cache (with the padding only they needed); the rest go on as if alone."""
    gen = Generator(model(variant))
    greedy = [Sampling(0.0)] * len(PROMPTS)
    solo = [decode_rows(gen, [p], 2 * CTX, greedy[:1])[0] for p in PROMPTS]
    got = decode_rows(gen, PROMPTS, 2 * CTX, greedy, stop_at={2: 1, 0: 5, 1: 9})  # the longest prompt first
    assert [len(r) for r in got] == [6, 10, 2, 2 * CTX]
    assert got == [s[: len(r)] for r, s in zip(got, solo, strict=True)]


def test_kv_cache_refuses_more_tokens_than_its_capacity():
    cache = KVCache(1, 4)
    cache.begin(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="capacity 4"):
        cache.begin(torch.ones(2, 2, dtype=torch.bool))
