"""Every intervention's effect on the resolved config, and through it on the model / optimizer / recipe."""

import pytest
import torch

from gptlab import GptlabError
from gptlab.config import load_config
from gptlab.interventions import REGISTRY, describe, parse_spec
from gptlab.model import GPTModel, count_params
from gptlab.train import build_optimizers

NANO = ["model.preset=nano", "model.vocab_size=512"]


def cfg(*ivs, extra=()):
    return load_config(None, [*NANO, *extra, f"interventions={list(ivs)!r}".replace("'", '"')])


def model(*ivs, extra=()):
    torch.manual_seed(0)
    return GPTModel(cfg(*ivs, extra=extra).model)


def test_grad_clip_sets_max_norm():
    assert cfg().train.grad_clip == 0.0
    assert cfg("grad_clip").train.grad_clip == 1.0
    assert cfg("grad_clip:max_norm=3.5").train.grad_clip == 3.5


def test_no_dropout_leaves_no_active_dropout():
    m = model("no_dropout")
    drops = [mod for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert drops and all(d.p == 0.0 for d in drops)
    assert all(blk.att.dropout_p == 0.0 for blk in m.trf_blocks)
    m.train()
    x = torch.randint(0, 512, (2, 16))
    assert torch.equal(m(x), m(x))  # train mode is deterministic without dropout
    assert cfg().model.drop_rate == 0.1


def test_qkv_bias_adds_exactly_3_x_layers_x_d():
    c = cfg().model
    assert count_params(model("qkv_bias")) - count_params(model()) == 3 * c.n_layers * c.emb_dim
    assert model("qkv_bias").trf_blocks[0].att.W_key.bias is not None


def test_weight_tying_shares_storage():
    m = model("weight_tying")
    assert m.out_head.weight is m.tok_emb.weight
    assert count_params(model()) - count_params(m) == 512 * 64


def test_lr_schedule_parameters():
    t = cfg("lr_schedule:peak=0.0014,warmup=0.05,final=0.1").train
    assert (t.lr, t.schedule, t.warmup_frac, t.min_lr_frac) == (0.0014, "cosine", 0.05, 0.1)


def test_weight_decay_on_matrices_only():
    c = cfg("weight_decay:value=0.01")
    m = GPTModel(c.model)
    (opt,) = build_optimizers(m, c, torch.device("cpu"))
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(opt.param_groups[0]["weight_decay"] == 0.01 for _ in [0])
    assert "trf_blocks.0.att.W_query.weight" in decayed and "out_head.weight" in decayed
    assert {"tok_emb.weight", "pos_emb.weight", "final_norm.weight", "trf_blocks.0.norm1.bias"} <= plain
    assert all(not n.endswith("bias") for n in decayed)
    # the book's baseline decays everything
    base = cfg()
    (opt,) = build_optimizers(GPTModel(base.model), base, torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]


@pytest.mark.parametrize(
    "name,field,value",
    [
        ("fp32", "precision", "fp32"),
        ("fp16", "precision", "fp16"),
        ("bf16", "precision", "bf16"),
        ("tf32", "tf32", True),
    ],
)
def test_precision_interventions(name, field, value):
    assert getattr(cfg(name).train, field) == value


def test_batch_and_lr_sweeps():
    t = cfg("batch_size:value=64", "lr:value=0.002").train
    assert (t.global_batch_size, t.lr) == (64, 0.002)
    assert cfg("batch_size:value=4").train.micro_batch_size == 4  # micro never exceeds global


def test_batch_scaling_rules():
    base = cfg().train  # nano defaults: global batch 32, micro 8, lr 4e-4, muon lr 0.02
    t = cfg("batch_scaling:factor=4").train  # square-root rule (Adam)
    assert t.global_batch_size == 4 * base.global_batch_size
    assert t.lr == pytest.approx(2 * base.lr) and t.muon_lr == pytest.approx(2 * base.muon_lr)
    t = cfg("batch_scaling:factor=0.25,rule=linear").train
    assert (t.global_batch_size, t.micro_batch_size) == (base.global_batch_size // 4, base.global_batch_size // 4)
    assert t.lr == pytest.approx(base.lr / 4)
    assert t.tokens == base.tokens  # same token budget: fewer, larger steps (or more, smaller ones)
    with pytest.raises(GptlabError, match="rule: expected 'sqrt' or 'linear'"):
        cfg("batch_scaling:rule=cubic")
    with pytest.raises(GptlabError, match="not a whole number of sequences"):
        cfg("batch_scaling:factor=0.3")


def test_flop_budget_matches_compute_not_tokens():
    from gptlab.train.flops import flops_per_token, token_budget

    budget = ["train.flops=1e12"]
    for ivs in [(), ("swiglu",), ("weight_tying",), ("rope",)]:
        c = cfg(*ivs, extra=budget)
        tokens = token_budget(c, 1)
        assert abs(tokens * flops_per_token(c.model) - 1e12) <= flops_per_token(c.model)
    # tying removes parameters but not FLOPs: FLOP-matched means token-matched, unlike tokens_per_param
    assert token_budget(cfg("weight_tying", extra=budget), 1) == token_budget(cfg(extra=budget), 1)
    n_untied, n_tied = count_params(model()), count_params(model("weight_tying"))
    assert token_budget(cfg("weight_tying"), n_tied) < token_budget(cfg(), n_untied)
    with pytest.raises(GptlabError, match="train.flops: set either train.tokens or train.flops"):
        cfg(extra=[*budget, "train.tokens=1000"])


def test_modern_architecture_interventions():
    assert model("rope").pos_emb is None and model("rope").trf_blocks[0].att.rotary is not None
    assert isinstance(model("rmsnorm").final_norm, torch.nn.RMSNorm)

    def ff(m):
        return sum(p.numel() for p in m.trf_blocks[0].ff.parameters())

    assert abs(ff(model("swiglu")) - ff(model())) / ff(model()) < 0.05  # 8d/3 hidden, rounded up to 8
    assert model("swiglu").trf_blocks[0].ff.gate is not None
    assert model("qk_norm").trf_blocks[0].att.q_norm is not None
    nb = model("no_bias")
    assert not any(n.endswith("bias") for n, _ in nb.named_parameters())
    assert cfg("softcap:cap=15").model.logit_softcap == 15.0
    x = torch.randint(0, 512, (1, 8))
    assert model("softcap:cap=2").eval()(x).abs().max() <= 2.0
    zi = model("zero_init_proj")
    assert torch.count_nonzero(zi.trf_blocks[0].att.out_proj.weight) == 0
    assert torch.count_nonzero(zi.trf_blocks[0].ff.out_proj.weight) == 0
    assert cfg("z_loss").train.z_loss == 1e-4
    assert cfg("gpt2_init").model.init == "gpt2"
    assert cfg("seq_len_warmup:frac=0.5").train.seq_len_warmup_frac == 0.5


def test_muon_uses_torch_muon_for_hidden_matrices():
    c = cfg("muon:lr=0.01")
    m = GPTModel(c.model)
    opts = build_optimizers(m, c, torch.device("cpu"))
    assert [type(o).__name__ for o in opts] == ["AdamW", "Muon"]
    muon_ids = {id(p) for g in opts[1].param_groups for p in g["params"]}
    assert id(m.trf_blocks[0].att.W_query.weight) in muon_ids and id(m.out_head.weight) not in muon_ids


def test_stacking_applies_in_order():
    t = cfg("lr:value=0.001", "lr_schedule:peak=0.003").train
    assert t.lr == 0.003
    t = cfg("lr_schedule:peak=0.003", "lr:value=0.001").train
    assert t.lr == 0.001


@pytest.mark.parametrize(
    "spec,match",
    [
        ("grad_clipp", r"unknown intervention 'grad_clipp' \(did you mean 'grad_clip'\?\)"),
        ("grad_clip:maxnorm=2", r"unknown parameter 'maxnorm' \(parameters: max_norm\)"),
        ("grad_clip:2", r"expected key=value"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(GptlabError, match=match):
        parse_spec(spec)


def test_every_intervention_is_documented_and_listed():
    text = describe()
    for name, iv in REGISTRY.items():
        assert iv.description and iv.source
        assert name in text
    block = text.split("\nlr_schedule ")[1].split("\nweight_decay ")[0]  # what a screen must match to judge it
    assert block.rstrip().endswith("acts on: horizon")
    assert "acts on" not in text.split("\nrope ")[1].split("\nrmsnorm ")[0]
