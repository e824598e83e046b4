"""muP (the `mup` intervention): the coordinate check on real data, the base width's init, the optimizer's groups,
the attention scale on every attention path, and configs without muP keeping their hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gptlab import GptlabError
from gptlab.config import load_config
from gptlab.model import GPTModel
from gptlab.model.kv_cache import KVCache
from gptlab.train import build_optimizers
from gptlab.train.schedule import set_lr

CPU = torch.device("cpu")


def cfg(*sets: str, ivs: tuple[str, ...] = ()):
    return load_config(
        None,
        [
            "model.preset=nano",
            "model.vocab_size=512",
            "model.drop_rate=0.0",
            *sets,
            "interventions=" + json.dumps(list(ivs)),
        ],
    )


# ---- 1. coordinate check ---------------------------------------------------------------------------------------

WIDTHS = (64, 128, 256)
T, B, STEPS, LR = 32, 8, 4, 3e-3


@pytest.fixture(scope="module")
def coords(small_data):
    """{(mup, width): (mean |logits|, mean |logits - logits at init|, mean |GELU output of the last block's MLP|)}
    on a held batch after STEPS AdamW steps on the fixture's Shakespeare (2 layers, 4 heads: d_head grows with the
    width), every width starting from seed 0; muP's base width is the narrowest."""
    from gptlab.data.loader import TokenDataset

    tokens = TokenDataset(small_data, "train").get(0, 40_000)
    _, ids = np.unique(tokens, return_inverse=True)  # a compact vocabulary of the tokens that occur
    vocab = int(ids.max()) + 1

    def batch(i: int):
        starts = np.random.default_rng(i).integers(0, len(ids) - T - 1, B)
        rows = torch.from_numpy(np.stack([ids[s : s + T + 1] for s in starts]))
        return rows[:, :-1], rows[:, 1:]

    out = {}
    for mup in (False, True):
        for w in WIDTHS:
            c = load_config(
                None,
                [
                    "model.preset=nano",
                    f"model.vocab_size={vocab}",
                    f"model.emb_dim={w}",
                    "model.n_heads=4",
                    "model.n_layers=2",
                    f"model.context_length={T}",
                    "model.drop_rate=0.0",
                    f"train.lr={LR}",
                    "train.weight_decay=0.0",
                    "interventions=" + json.dumps([f"mup:base_width={WIDTHS[0]}"] if mup else []),
                ],
            )
            torch.manual_seed(0)
            model = GPTModel(c.model)
            (opt,) = build_optimizers(model, c, CPU)
            hidden = {}
            model.trf_blocks[-1].ff.layers[1].register_forward_hook(
                lambda mod, i, o, hidden=hidden: hidden.__setitem__("h", o.abs().mean().item())
            )
            held, _ = batch(10_000)
            with torch.no_grad():
                logits0 = model(held)
            for step in range(STEPS):
                loss, _ = model(*batch(step))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                logits = model(held)
            out[mup, w] = (logits.abs().mean().item(), (logits - logits0).abs().mean().item(), hidden["h"])
    return out


def _ratio(coords, mup: bool, k: int) -> float:
    """widest / narrowest for measurement k."""
    return coords[mup, WIDTHS[-1]][k] / coords[mup, WIDTHS[0]][k]


def test_coordinate_check_logits_stay_put_under_mup_and_grow_without(coords):
    # standard parametrisation: Adam moves every out_head entry by ~lr, and the logits sum emb_dim such moves, so
    # they grow with the width (measured: mean |logits| x2.8-3.0 and their change x4-4.8 from 64 to 256)
    assert _ratio(coords, False, 0) > 2.0, coords
    assert _ratio(coords, False, 1) > 3.0, coords
    # muP (logits x 1/m): the change stays of one size (measured x0.65-0.8), the logits do not grow
    assert 0.5 < _ratio(coords, True, 1) < 2.0, coords
    assert _ratio(coords, True, 0) < 1.25, coords


def test_coordinate_check_hidden_activations_stay_put_under_mup(coords):
    # hidden lr / m under muP: the MLP's activations keep their size (measured x0.96-1.0); without, they grow
    # (measured x1.55-1.7)
    assert 0.75 < _ratio(coords, True, 2) < 1.33, coords
    assert _ratio(coords, False, 2) > 1.3, coords


# ---- 2. at the base width muP is the standard init; at other widths the init rescales as it should ------------


@pytest.mark.parametrize("init", ["torch", "gpt2"])
@pytest.mark.parametrize("base", [0, 64])  # 0 = the model's emb_dim (64 for nano)
def test_base_width_gives_the_standard_init_and_differs_only_in_attention_scale(init, base):
    sp, mp = cfg(f'model.init="{init}"'), cfg(f'model.init="{init}"', ivs=(f"mup:base_width={base}",))
    assert mp.model.mup and mp.model.mup_width_mult() == 1.0
    torch.manual_seed(0)
    a = GPTModel(sp.model)
    torch.manual_seed(0)
    b = GPTModel(mp.model)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randint(0, 512, (2, 24))
    assert not torch.allclose(a(x), b(x))  # the attention scale is the one difference ...
    for blk in a.trf_blocks:
        blk.att.scale = 1.0 / blk.att.head_dim
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)  # ... and the only one
    ga = [(len(g["params"]), g["lr"], g["weight_decay"]) for g in build_optimizers(a, sp, CPU)[0].param_groups]
    gb = [(len(g["params"]), g["lr"], g["weight_decay"]) for g in build_optimizers(b, mp, CPU)[0].param_groups]
    assert ga == gb


def test_wider_model_hidden_init_std_scales_by_one_over_sqrt_m():
    """gpt2 init draws a fixed 0.02: muP divides hidden matrices by sqrt(m); torch's init already draws hidden
    matrices with std ~ 1/sqrt(fan_in), and muP puts the out_head back to its base-width std (as mup's MuReadout)."""
    for init in ("torch", "gpt2"):
        torch.manual_seed(0)
        wide = GPTModel(cfg("model.emb_dim=256", f'model.init="{init}"', ivs=("mup:base_width=64",)).model)
        torch.manual_seed(0)
        base = GPTModel(cfg("model.emb_dim=64", f'model.init="{init}"', ivs=("mup",)).model)
        for name in ("att.W_query.weight", "ff.layers.0.weight", "ff.layers.2.weight"):
            w, b = (m.trf_blocks[0].get_submodule(name.rsplit(".", 1)[0]).weight.std().item() for m in (wide, base))
            assert w / b == pytest.approx(0.5, rel=0.05), (init, name)
        assert wide.out_head.weight.std().item() == pytest.approx(base.out_head.weight.std().item(), rel=0.05)
        assert wide.tok_emb.weight.std().item() == pytest.approx(base.tok_emb.weight.std().item(), rel=0.05)


# ---- 3. the optimizer: hidden matrices at lr / m, everything else at lr -------------------------------------


@pytest.mark.parametrize("matrices_only", [False, True])
def test_param_groups_hidden_matrices_get_lr_over_m(matrices_only):
    c = cfg(
        "model.emb_dim=256",
        "train.lr=0.004",
        "train.weight_decay=0.1",
        f"train.decay_matrices_only={str(matrices_only).lower()}",
        ivs=("mup:base_width=64",),
    )
    model = GPTModel(c.model)
    (opt,) = build_optimizers(model, c, CPU)
    hidden = {id(p) for blk in model.trf_blocks for n, p in blk.named_parameters() if p.dim() == 2}
    assert len(hidden) == 2 * 6  # W_query, W_key, W_value, out_proj, two MLP matrices per block
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter in exactly one group
    for n, p in model.named_parameters():
        lr, wd = lr_of[id(p)]
        if id(p) in hidden:
            assert lr == pytest.approx(0.001), n  # 0.004 / m, m = 256 / 64
            assert wd == pytest.approx(0.4), n  # lr x decay as at the base width (mup's MuAdamW)
        else:
            assert lr == 0.004, n  # embeddings, out_head, biases, norm gains
            assert wd in (0.0, 0.1), n
    assert opt.param_groups[0]["lr"] == 0.004  # the lr the trainer logs is the base lr
    set_lr([opt], 0.5)  # the schedule scales every group from its own base
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.0005, 0.002])


# ---- attention scale on every path, config rules, hashes ------------------------------------------------------


def test_mup_attention_scale_on_sdpa_explicit_and_kv_cache_paths():
    c = cfg(ivs=("mup:base_width=32",))
    torch.manual_seed(0)
    sdpa = GPTModel(c.model).eval()
    c.model.attn_impl = "explicit"
    explicit = GPTModel(c.model).eval()
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        full = sdpa(x)
        torch.testing.assert_close(explicit(x), full, rtol=1e-5, atol=1e-5)
        cache = KVCache(len(sdpa.trf_blocks), c.model.context_length)
        sdpa.decode(x[:, :12], cache)
        torch.testing.assert_close(sdpa.decode(x[:, 12:], cache), full[:, -1], rtol=1e-5, atol=1e-5)


def test_configs_without_mup_keep_their_hashes():
    # recorded before the mup fields existed: results keyed by these hashes stay found
    assert load_config(None).hash() == "cfabab5aa856"
    assert load_config(None, ["model.preset=nano", 'interventions=["rope","muon"]']).hash() == "9b4c95a81d40"
    assert cfg(ivs=("mup",)).hash() != cfg().hash() != cfg(ivs=("mup:base_width=32",)).hash()


@pytest.mark.parametrize(
    "sets,message",
    [
        (["model.mup_base_width=-1"], "model.mup_base_width: must be in [0, 65536] (0 = the model's emb_dim), got -1"),
        (["model.mup_base_width=70000"], "model.mup_base_width: must be in [0, 65536]"),
        (['interventions=["mup", "muon"]'], "model.mup: muP's lr scaling here is for AdamW"),
        (['interventions=["mup:base_width=-3"]'], "'mup:base_width=-3': base_width: expected a width >= 1"),
        (['interventions=["mup:base_width=wide"]'], "mup:base_width=wide"),
    ],
)
def test_bad_mup_settings_are_one_line_errors(sets, message):
    with pytest.raises(GptlabError) as e:
        load_config(None, ["model.preset=nano", *sets])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_hf_export_refuses_a_mup_model():
    from gptlab.interop.hf import to_hf_state_dict

    c = cfg("model.vocab_size=50257", ivs=("mup",))
    with pytest.raises(GptlabError, match="model.mup = true; GPT-2 has no muP multipliers"):
        to_hf_state_dict(GPTModel(c.model))
