"""Structure of gptlab.plan.memory_bytes (the memory `gptlab plan` prints): how each term scales with the
micro-batch, the GPU count under FSDP, the precision and the device. No timing, no real model (meta device)."""

from __future__ import annotations

import pytest

from gptlab.config import load_config
from gptlab.plan import format_plan, memory_bytes, plan
from gptlab.train.flops import matmul_params


def cfg_of(preset="nano", precision="auto", drop=0.1, attn="sdpa", ckpt=False):
    return load_config(
        None,
        extra={
            "model": {"preset": preset, "drop_rate": drop, "attn_impl": attn},
            "train": {"precision": precision, "activation_checkpointing": ckpt},
        },
    )


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_terms_scale_with_micro_batch(device, precision):
    cfg = cfg_of("tiny", precision)
    m1, m4 = memory_bytes(cfg, 1, device=device), memory_bytes(cfg, 4, device=device)
    assert m1["params"] == m4["params"]
    assert m1["state"] == m4["state"] == 16 * m1["params"]
    assert m1["casts"] == m4["casts"]
    assert m4["activations"] == 4 * m1["activations"]
    assert m4["logits"] == 4 * m1["logits"]
    for m in (m1, m4):
        assert m["total"] == m["state"] + m["casts"] + m["activations"] + m["logits"]


def test_fsdp_divides_only_the_state():
    cfg = cfg_of("gpt2-small", "bf16")
    one = memory_bytes(cfg, 8)
    ddp = memory_bytes(cfg, 8, gpus=8)
    fsdp = memory_bytes(cfg, 8, gpus=8, fsdp=True)
    assert ddp == one  # DDP replicates everything
    assert fsdp["state"] == one["state"] / 8
    for k in ("casts", "activations", "logits"):
        assert fsdp[k] == one[k]


def test_precision_terms():
    fp32, bf16 = memory_bytes(cfg_of("nano", "fp32"), 2), memory_bytes(cfg_of("nano", "bf16"), 2)
    m = cfg_of("nano").model
    tokens = 2 * m.context_length
    assert fp32["casts"] == 0
    assert bf16["casts"] == 2 * matmul_params(m)
    # forward_backward drops the logits before backward: 12 B per logit in either precision
    assert fp32["logits"] == bf16["logits"] == 12 * tokens * m.vocab_size
    assert bf16["activations"] < fp32["activations"]


def test_auto_precision_follows_the_device():
    auto = cfg_of("nano", "auto")
    assert memory_bytes(auto, 2, device="cuda") == memory_bytes(cfg_of("nano", "bf16"), 2, device="cuda")
    assert memory_bytes(auto, 2, device="cpu") == memory_bytes(cfg_of("nano", "fp32"), 2, device="cpu")


def test_attention_matrix_only_without_a_fused_kernel():
    """The s x s attention terms appear on the math path (CPU with dropout, or attn_impl='explicit'): doubling the
    context then more than doubles the activations; fused SDPA keeps them linear in the context."""

    def acts(ctx, device, drop=0.1, attn="sdpa"):
        cfg = cfg_of("nano", "fp32", drop, attn)
        cfg.model.context_length = ctx
        return memory_bytes(cfg, 1, device=device)["activations"]

    assert acts(128, "cuda") == 2 * acts(64, "cuda")
    assert acts(128, "cpu", drop=0.0) == 2 * acts(64, "cpu", drop=0.0)
    assert acts(128, "cpu") > 2 * acts(64, "cpu")
    assert acts(128, "cuda", attn="explicit") > 2 * acts(64, "cuda", attn="explicit")


def test_dropout_masks_cost_more_on_cpu():
    cfg = cfg_of("nano", "fp32", drop=0.1)
    no_drop = cfg_of("nano", "fp32", drop=0.0)
    assert memory_bytes(cfg, 1, device="cuda")["activations"] > memory_bytes(no_drop, 1, device="cuda")["activations"]
    cpu = memory_bytes(no_drop, 1, device="cpu")["activations"]
    cuda = memory_bytes(no_drop, 1, device="cuda")["activations"]
    assert cpu == cuda  # without dropout both use fused SDPA and store no masks


def test_activation_checkpointing_keeps_block_inputs_and_one_block():
    full = memory_bytes(cfg_of("mini", "bf16"), 4)["activations"]
    ck = memory_bytes(cfg_of("mini", "bf16", ckpt=True), 4)["activations"]
    assert ck < full / 2


def test_known_value_matches_the_cpu_measurement():
    """nano, micro-batch 4, fp32 on CPU, dropout 0.1: 300.0 MiB, the peak benchmarks/memory.py measured
    (benchmarks/results/memory_cpu.txt), term by term."""
    mem = memory_bytes(cfg_of("nano", "auto"), 4, device="cpu")
    s, b, d, a, L, V = 64, 4, 64, 4, 2, 50257
    assert mem["params"] == 6_536_704
    assert mem["state"] == 16 * 6_536_704
    assert mem["casts"] == 0
    block = (2 * 4 + 14 * 4 + 2 * 4) * s * b * d + (2 * 4 + 4) * a * s * s * b
    assert mem["activations"] == L * block + (4 + 4 + 4) * s * b * d
    assert mem["logits"] == 12 * b * s * V
    assert mem["total"] == 263_105_536  # 250.9 MiB measured (benchmarks/results/memory_cpu.txt)


def test_plan_prints_every_term():
    cfg = cfg_of("gpt2-small", "bf16")
    p = plan(cfg, gpus=1, gpu_type="H100")
    assert set(p["memory_detail"]) == {"state", "casts", "activations", "logits", "total"}
    text = format_plan(p)
    assert "16-bit weight copies" in text and "logits" in text
