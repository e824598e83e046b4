import pytest
import torch

from gptlab.config import PRESETS, ModelConfig
from gptlab.model import GPTModel, count_params


def nano(**kw):
    return ModelConfig(**{**PRESETS["nano"], **kw})


def test_gpt2_small_has_163m_untied_params():
    with torch.device("meta"):
        m = GPTModel(ModelConfig(**PRESETS["gpt2-small"]))
    assert count_params(m) == 163_009_536  # the book's number for the untied GPT-2 small
    with torch.device("meta"):
        tied = GPTModel(ModelConfig(**PRESETS["gpt2-small"], tie_weights=True))
    assert count_params(tied) == 163_009_536 - 50257 * 768  # = 124,412,160: OpenAI's "124M"


def test_book_structure_names():
    m = GPTModel(nano())
    names = dict(m.named_parameters())
    for n in [
        "tok_emb.weight",
        "pos_emb.weight",
        "trf_blocks.0.att.W_query.weight",
        "trf_blocks.0.att.W_key.weight",
        "trf_blocks.0.att.W_value.weight",
        "trf_blocks.0.att.out_proj.weight",
        "trf_blocks.0.ff.layers.0.weight",
        "trf_blocks.1.norm2.weight",
        "final_norm.weight",
        "out_head.weight",
    ]:
        assert n in names
    assert "out_head.bias" not in names
    assert "trf_blocks.0.att.W_query.bias" not in names


@pytest.mark.parametrize("drop", [0.0])
def test_sdpa_matches_explicit_masked_softmax(drop):
    torch.manual_seed(0)
    fast = GPTModel(nano(drop_rate=drop, attn_impl="sdpa")).eval()
    slow = GPTModel(nano(drop_rate=drop, attn_impl="explicit")).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(0, 50257, (3, 64))
    a, b = fast(x), slow(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_causal_no_future_leak():
    torch.manual_seed(0)
    m = GPTModel(nano(drop_rate=0.0)).eval()
    x = torch.randint(0, 50257, (1, 32))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 7) % 50257
    assert torch.allclose(m(x)[0, :20], m(y)[0, :20], atol=1e-5)
    assert not torch.allclose(m(x)[0, 20:], m(y)[0, 20:], atol=1e-5)


def test_context_length_enforced():
    m = GPTModel(nano())
    with pytest.raises(ValueError, match="context_length"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_tied_weights_share_storage():
    m = GPTModel(nano(tie_weights=True))
    assert m.out_head.weight.data_ptr() == m.tok_emb.weight.data_ptr()


def test_qkv_bias_adds_3_x_layers_x_d():
    a, b = GPTModel(nano()), GPTModel(nano(qkv_bias=True))
    c = nano()
    assert count_params(b) - count_params(a) == 3 * c.n_layers * c.emb_dim


def test_dropout_active_only_in_train_mode():
    torch.manual_seed(0)
    m = GPTModel(nano(drop_rate=0.5))
    x = torch.randint(0, 50257, (2, 16))
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    assert torch.allclose(m(x), m(x))


def test_forward_with_targets_returns_the_training_loss():
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = GPTModel(ModelConfig(**{**PRESETS["nano"], "vocab_size": 300}, drop_rate=0.0)).eval()
    x, y = torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))
    logits = m(x)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss, full = m(x, y)
    assert torch.equal(loss, full) and torch.allclose(loss, ce)
    loss, full = m(x, y, z_loss=1e-2)
    z = torch.logsumexp(logits.flatten(0, 1), dim=-1).pow(2).mean()
    assert torch.allclose(loss, ce) and torch.allclose(full, ce + 1e-2 * z)


def test_rmsnorm_under_bf16_autocast_normalises_in_fp32():
    import warnings

    torch.manual_seed(0)
    m = GPTModel(nano(vocab_size=300, norm="rmsnorm", qk_norm=True, drop_rate=0.0)).eval()
    x = torch.randint(0, 300, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it cannot use the fused kernel (bf16 input, fp32 weight)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.randn(4, 64).bfloat16()
            out = m.final_norm(h)
            logits = m(x)
    assert out.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    ref = torch.nn.functional.rms_norm(h.float(), (64,), m.final_norm.weight, 1e-5)
    assert torch.allclose(out.float(), ref, atol=1e-2)
