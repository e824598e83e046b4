"""What would break or crawl on a GPU node, checked where the mechanism runs on a CPU: device resolution, the
GPU peak table behind MFU, run locks on filesystems without flock, fp16 GradScaler steps that overflow, the torch
version Muon needs, data preparation under torchrun, the unigram baseline's bounded read, tokens/s under
sequence-length warm-up, and FSDP2 with a bf16 MixedPrecisionPolicy."""

import errno
import fcntl
import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.config import ModelConfig, load_config
from gptlab.model import GPTModel
from gptlab.train import OptimSettings, RunLock, Trainer, resolve_device, train
from gptlab.train.distributed import Dist
from gptlab.train.flops import PEAK_FLOPS, gpu_key, peak_of


def test_cuda_without_an_index_resolves_to_this_ranks_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3) and resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    "name,key",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100-PCIE"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA H800", "H800"),
        ("NVIDIA H800 PCIe", "H800-PCIE"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA GH200 480GB", "H200"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("Tesla T4", None),
    ],
)
def test_gpu_names_map_to_their_own_peak(name, key):
    assert gpu_key(name) == key


def test_gpu_type_peaks_and_unknown_types():
    assert peak_of("A100-80") == PEAK_FLOPS["A100"] and peak_of("h100-pcie") == 756e12 < peak_of("H100")
    assert peak_of("L40S") > 2 * peak_of("L4")
    with pytest.raises(GptlabError, match="--gpu-type: unknown 'V100'"):
        peak_of("V100")


def test_run_lock_on_a_filesystem_without_flock_warns_and_goes_on(monkeypatch, tmp_path, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / "run.lock").read_text().strip().isdigit()
    assert any(r.levelname == "WARNING" and "has no file locks" in r.getMessage() for r in caplog.records)

    def io_error(fd, op):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", io_error)
    with pytest.raises(OSError, match="Input/output"):
        with RunLock(tmp_path / "run2"):
            pass


def _tiny_model(**kw):
    torch.manual_seed(0)
    return GPTModel(
        ModelConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0, **kw)
    )


def test_fp16_step_with_a_non_finite_loss_is_skipped_and_the_next_one_trains():
    """Before: the skipped step left the GradScaler mid-unscale and the next step raised
    'unscale_() has already been called on this optimizer since the last update()'."""
    model = _tiny_model()
    tr = Trainer(model, OptimSettings(lr=1e-2, weight_decay=0.0), torch.device("cpu"), "fp16")
    x = torch.randint(0, 64, (2, 16))
    batch = [(x, torch.roll(x, -1, 1))]
    saved = model.out_head.weight.detach().clone()
    with torch.no_grad():
        model.out_head.weight.mul_(1e6)  # fp16 logits overflow: the loss is not finite
    scale = tr.scaler.get_scale()
    bad = tr.step(batch, accum=1)
    assert not bad.ok and tr.scaler.get_scale() < scale
    with torch.no_grad():
        model.out_head.weight.copy_(saved)
    before = model.out_head.weight.detach().clone()
    good = tr.step(batch, accum=1)
    assert good.ok and np.isfinite(good.loss) and not torch.equal(model.out_head.weight, before)


def test_fp16_run_skips_an_overflowing_step_instead_of_stopping(small_data, tmp_path, monkeypatch):
    """nan_policy = "stop" (the default) still lets an fp16 run skip a step the way a GradScaler does."""
    real = GPTModel.forward
    calls = {"n": 0}

    def overflow_once(self, x, targets=None, z_loss=0.0):
        out = real(self, x, targets, z_loss)
        if targets is not None:
            calls["n"] += 1
            if calls["n"] == 3:  # the third micro-step's loss is infinite
                return out[0] * float("inf"), out[1] * float("inf")
        return out

    monkeypatch.setattr(GPTModel, "forward", overflow_once)
    cfg = load_config(None, tiny_overrides(small_data, **{"train.precision": "fp16", "train.micro_batch_size": 8}))
    final = train(cfg, tmp_path / "run")
    assert final["skipped_batches"] == 1 and np.isfinite(final["test_loss"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") == "skipped_batch"] == [3]
    assert "loss scale lowered" in next(r["reason"] for r in rows if r.get("event") == "skipped_batch")


def test_muon_on_a_torch_without_it_is_one_line(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(GptlabError, match=r"muon needs torch >= 2.9"):
        Trainer(_tiny_model(), OptimSettings(lr=1e-3, weight_decay=0.0, muon_lr=0.02), torch.device("cpu"), "fp32")


def test_data_is_not_prepared_inside_a_multi_process_run(tmp_path):
    from gptlab.train.rundata import ensure_data

    cfg = load_config(None, [f'data.dir="{tmp_path / "none"}"', 'data.source="bundled"'])
    with pytest.raises(GptlabError, match="prepare it before a multi-process run: gptlab prepare bundled --out"):
        ensure_data(cfg, Dist(world=2, rank=1))


def test_unigram_reads_at_most_max_tokens_per_split(small_data):
    from gptlab.data.loader import TokenDataset
    from gptlab.data.tokenizer import VOCAB_SIZE
    from gptlab.data.unigram import unigram_loss

    n = 5000
    tr = np.bincount(np.concatenate(TokenDataset(small_data, "train").arrays)[:n], minlength=VOCAB_SIZE)
    te = np.bincount(np.concatenate(TokenDataset(small_data, "test").arrays)[:n], minlength=VOCAB_SIZE)
    logp = np.log(tr + 1.0) - np.log(tr.sum() + float(VOCAB_SIZE))
    assert unigram_loss(small_data, max_tokens=n) == pytest.approx(float(-(te * logp).sum() / te.sum()), rel=1e-12)
    assert unigram_loss(small_data) == unigram_loss(small_data, max_tokens=None)  # the small corpus is read whole


def test_tokens_per_second_counts_the_tokens_of_short_warm_up_sequences(tmp_path, monkeypatch):
    from gptlab.train import metrics

    clock = iter([100.0, 102.0, 102.0])  # construction, the row, the reset after it
    monkeypatch.setattr(metrics.time, "time", lambda: next(clock))
    log = metrics.TrainLog(tmp_path / "m.jsonl", True, 1, 1000, 10, 0, lambda tps: None, "t", False)
    log.train_step(1, 2.0, {"lr": 1e-3}, 0.5, tokens=250)  # a warm-up step: 250 of the nominal 1000 tokens
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert row["tokens_per_s"] == 125.0 and row["tokens"] == 1000


def test_fsdp2_bf16_mixed_precision_matches_one_process(small_data, tmp_path):
    """bf16 autocast with FSDP2's MixedPrecisionPolicy (bf16 all-gathers, fp32 gradient reduction) on 2 gloo ranks
    trains like one bf16 process."""
    from test_train import _torchrun

    over = tiny_overrides(
        small_data,
        **{"model.drop_rate": 0.0, "train.fsdp": True, "train.checkpoint_interval": 0, "train.precision": "bf16"},
    )
    single = train(load_config(None, over), tmp_path / "one")
    r = _torchrun(tmp_path / "two", over)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "final.json").read_text())
    assert two["precision"] == "bf16" and two["test_loss"] == pytest.approx(single["test_loss"], abs=2e-2)
