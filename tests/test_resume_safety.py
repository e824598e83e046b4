"""Resume is never silent and never destroys history: a dangling `latest` or a damaged newest checkpoint falls back
to the newest intact one with a warning (or stops in one line), a checkpoint write that runs out of space or
permission is one line and leaves the previous checkpoint intact, a NaN-skipped last step still gets the final
checkpoint, and fine-tuning never trains on tokens outside a compact vocabulary."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from gptlab import GptlabError
from gptlab.config import load_config
from gptlab.train import latest_checkpoint, load_run_model, train


def cfg_for(data, **kw):
    # 12 steps, a checkpoint every 2 (the newest 2 kept: train.keep_checkpoints)
    return load_config(None, tiny_overrides(data, **{"train.checkpoint_interval": 2, **kw}))


def weights(ck: Path) -> dict:
    return load_file(str(ck / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps_logged(run: Path) -> list[int]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train_loss" in r]


def damage(ck: Path):
    from gptlab.train.checkpoint import damage

    return damage(ck)


def warnings_logged(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def ck_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """The uninterrupted run every resume below must reproduce bit for bit."""
    run = tmp_path_factory.mktemp("ref") / "ref"
    return train(cfg_for(small_data), run), weights(latest_checkpoint(run)), run


def test_dangling_latest_falls_back_to_the_newest_intact_checkpoint_and_keeps_history(
    small_data, reference, tmp_path, caplog
):
    ref, ref_w, _ = reference
    cfg, run = cfg_for(small_data, **{"train.keep_checkpoints": 2}), tmp_path / "r"
    train(cfg, run, stop_after=6)
    assert ck_names(run) == ["step_0000004", "step_0000006"]
    shutil.rmtree(run / "checkpoints" / "step_0000006")  # `latest` now names a missing folder
    meta = (run / "meta.json").read_bytes()
    caplog.clear()
    res = train(cfg, run, resume=True)
    err = warnings_logged(caplog)
    assert "resuming from" in err and "step_0000004" in err and "names step_0000006, which is missing" in err
    assert len(err.strip().splitlines()) == 1
    assert res["test_loss"] == ref["test_loss"] and same(weights(latest_checkpoint(run)), ref_w)
    assert (run / "meta.json").read_bytes() == meta  # not rewritten as for a new run
    assert steps_logged(run) == list(range(1, 13))  # the history before step 4 kept, nothing logged twice
    # keep_checkpoints = 2 kept the newest two and the checkpoint this resume started from
    assert ck_names(run) == ["step_0000004", "step_0000010", "step_0000012"]


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "state.json", "rng_rank0.pt"])
def test_damaged_newest_checkpoint_falls_back_with_a_message(damaged, small_data, reference, tmp_path, caplog):
    """A truncated file (a full disk, a bad copy) or a missing one (a delete cut short: without its RNG file a
    checkpoint used to load silently and continue with other dropout masks)."""
    ref, ref_w, _ = reference
    cfg, run = cfg_for(small_data), tmp_path / "r"
    train(cfg, run, stop_after=6)
    f = run / "checkpoints" / "step_0000006" / damaged
    if damaged.startswith("rng"):
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    caplog.clear()
    res = train(cfg, run, resume=True)
    err = warnings_logged(caplog)
    assert f"resuming from {run / 'checkpoints' / 'step_0000004'}" in err and f"{f}: unreadable checkpoint" in err
    assert res["test_loss"] == ref["test_loss"] and same(weights(latest_checkpoint(run)), ref_w)
    assert steps_logged(run) == list(range(1, 13))


def test_no_intact_checkpoint_stops_in_one_line_and_deletes_nothing(small_data, tmp_path):
    cfg, run = cfg_for(small_data), tmp_path / "r"
    train(cfg, run, stop_after=4)
    shutil.rmtree(run / "checkpoints" / "step_0000004")  # `latest` dangles
    w = run / "checkpoints" / "step_0000002" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "run.lock"}
    with pytest.raises(GptlabError) as e:
        train(cfg, run, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "no intact checkpoint to resume from" in msg
    assert "names step_0000004, which is missing" in msg and f"{w}: unreadable checkpoint" in msg
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "run.lock"} == before
    assert ck_names(run) == ["step_0000002"]
    with pytest.raises(GptlabError, match="names step_0000004, which is missing"):
        load_run_model(run)


def test_checkpoint_without_manifest_still_resumes(small_data, reference, tmp_path):
    """Checkpoints written before manifests existed are trusted as before (they were renamed into place whole)."""
    ref, ref_w, _ = reference
    cfg, run = cfg_for(small_data), tmp_path / "r"
    train(cfg, run, stop_after=6)
    for ck in (run / "checkpoints").glob("step_*"):
        (ck / "manifest.json").unlink(missing_ok=True)
    res = train(cfg, run, resume=True)
    assert res["test_loss"] == ref["test_loss"] and same(weights(latest_checkpoint(run)), ref_w)


# ---- out of space, read-only -------------------------------------------------------------------


def _checkpoint_bytes(ck: Path) -> int:
    return sum(p.stat().st_size for p in ck.rglob("*") if p.is_file())


def _only_step_4_left_intact(run: Path) -> None:
    ckdir = run / "checkpoints"
    assert not list(ckdir.glob(".tmp_step_*"))  # the partial write is gone
    assert ck_names(run) == ["step_0000004"] and damage(ckdir / "step_0000004") is None
    assert latest_checkpoint(run) == ckdir / "step_0000004"


def test_disk_full_while_checkpointing_is_one_line_with_the_space_needed(small_data, reference, mount, tmp_path):
    import re

    ref, ref_w, ref_run = reference
    size = _checkpoint_bytes(latest_checkpoint(ref_run))
    cfg, run = cfg_for(small_data, **{"train.checkpoint_interval": 4}), tmp_path / "r"
    ckdir = run / "checkpoints"
    mount(ckdir, f"size={size * 3 // 2}")  # room for one checkpoint, not for a second beside it
    train(cfg, run, stop_after=4)
    with pytest.raises(GptlabError) as e:
        train(cfg, run, resume=True)
    msg = str(e.value)
    assert "\n" not in msg
    m = re.fullmatch(
        rf"{re.escape(str(ckdir))}: cannot write checkpoint step_0000008: No space left on device "
        r"\(it needs about ([\d.]+) MiB, ([\d.]+) MiB free\)",
        msg,
    )
    assert m, msg
    assert 0.5 * size < float(m.group(1)) * 2**20 < 2 * size  # about the size of the state being written
    _only_step_4_left_intact(run)
    mount(ckdir, f"size={size * 4}", remount=True)  # space freed: the run resumes and ends as if never stopped
    res = train(cfg, run, resume=True)
    assert res["test_loss"] == ref["test_loss"] and same(weights(latest_checkpoint(run)), ref_w)


def test_read_only_checkpoint_folder_is_one_line(small_data, reference, mount, tmp_path):
    ref, ref_w, _ = reference
    cfg, run = cfg_for(small_data, **{"train.checkpoint_interval": 4}), tmp_path / "r"
    ckdir = run / "checkpoints"
    mount(ckdir, "size=64m")
    train(cfg, run, stop_after=4)
    mount(ckdir, "ro", remount=True)
    with pytest.raises(GptlabError) as e:
        train(cfg, run, resume=True)
    assert str(e.value) == f"{ckdir}: cannot write checkpoint step_0000008: Read-only file system"
    _only_step_4_left_intact(run)
    mount(ckdir, "rw", remount=True)
    res = train(cfg, run, resume=True)
    assert res["test_loss"] == ref["test_loss"] and same(weights(latest_checkpoint(run)), ref_w)


# ---- a NaN-skipped last step ----------------------------------------------------------------------


def test_nan_skipped_last_step_still_writes_the_final_checkpoint(small_data, tmp_path):
    """lr = 1e30: step 1 trains, its weights overflow, so steps 2 and 3 are skipped (nan_policy = skip). The final
    checkpoint must exist at step 3 with the weights final.json scored: those of step 1."""
    kw = {
        "train.lr": 1e30,
        "train.nan_policy": "skip",
        "train.max_skips": 5,
        "train.tokens": 8 * 32 * 3,
        "train.checkpoint_interval": 0,
        "train.eval_interval": 0,
    }
    train(cfg_for(small_data, **kw), tmp_path / "one", stop_after=1)
    final = train(cfg_for(small_data, **kw), tmp_path / "r")
    assert final["steps"] == 3 and final["skipped_batches"] == 2
    ck = latest_checkpoint(tmp_path / "r")
    assert ck is not None and ck.name == "step_0000003"
    assert json.loads((ck / "state.json").read_text())["skips"] == 2
    assert same(weights(ck), weights(latest_checkpoint(tmp_path / "one")))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") == "skipped_batch"] == [2, 3]


# ---- fine-tuning with a compact vocabulary --------------------------------------------------------


def test_finetune_masks_targets_outside_the_compact_vocabulary(tmp_path):
    """Tokens of the fine-tuning data outside the base run's vocabulary are read as <|endoftext|> but never
    trained or scored as targets; finetune.json counts them."""
    import torch.nn.functional as F
    from conftest_ft import RECORDS, make_tiny_run, record_vocab, write_records

    from gptlab.data.tokenizer import EOT_ID, encode
    from gptlab.data.vocab import load_vocab_map
    from gptlab.posttrain.finetune import finetune
    from gptlab.posttrain.instructions import format_prompt

    base = make_tiny_run(tmp_path / "base", vocab_ids=record_vocab())
    vm = load_vocab_map(base)
    records = [dict(r, output=r["output"] + " Zebras quarrel with ocelots.") for r in RECORDS]
    known = torch.from_numpy(vm.ids)
    odd = torch.tensor(encode(" Zebras quarrel with ocelots."))
    assert not torch.isin(odd, known).all()  # the data has tokens outside the vocabulary

    res = finetune(
        base,
        write_records(tmp_path / "d.json", records),
        tmp_path / "ft",
        epochs=1,
        lr=1e-3,
        batch_size=8,
        progress=False,
    )
    assert res["unknown_tokens"] > 0
    # the validation loss before training, computed here over known response targets only
    model, _ = load_run_model(base)
    split = json.loads((tmp_path / "ft" / "split.json").read_text())["split"]
    total, n = 0.0, 0
    with torch.no_grad():
        for i in split["val"]:
            prompt = encode(format_prompt(records[i]))
            ids = torch.tensor(prompt + encode(records[i]["output"]) + [EOT_ID])[: 64 + 1]  # max_len: the context
            logp = F.log_softmax(model(vm.lut[ids[:-1]][None])[0].float(), -1)
            for j in range(len(prompt) - 1, len(ids) - 1):  # position j predicts token j + 1
                if torch.isin(ids[j + 1], known):
                    total -= logp[j, vm.lut[ids[j + 1]]].item()
                    n += 1
    assert res["val_loss_before"] == pytest.approx(total / n, rel=1e-5)

    # the batches fine-tuning trains on: the same masking
    from gptlab.posttrain.finetune import batch, model_example

    stats = {"unknown_tokens": 0}
    x, y = batch([model_example(records[0], 1024, vm, stats)], int(vm.lut[EOT_ID]))
    assert stats["unknown_tokens"] == int((~torch.isin(odd, known)).sum())
    assert (y == int(vm.lut[EOT_ID])).sum() == 1  # only the <|endoftext|> that ends the record is that target
    assert (x >= 0).all() and (x < len(vm)).all()


def test_finetune_resume_with_a_missing_checkpoint_stops_instead_of_starting_over(tmp_path):
    """A fine-tune keeps only its pointed checkpoints; `checkpoints/resume` naming a missing one must not
    silently start again from the base run (and overwrite finetune.json with a fresh history)."""
    from conftest_ft import make_tiny_run, record_vocab, write_records

    from gptlab.posttrain.finetune import finetune

    base = make_tiny_run(tmp_path / "base", vocab_ids=record_vocab())
    data, out = write_records(tmp_path / "d.json"), tmp_path / "ft"
    kw = dict(epochs=2, lr=1e-3, batch_size=8, progress=False)
    finetune(base, data, out, stop_after=6, **kw)
    resume = out / "checkpoints" / (out / "checkpoints" / "resume").read_text().strip()
    shutil.rmtree(resume)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.lock"}
    with pytest.raises(GptlabError) as e:
        finetune(base, data, out, resume=True, **kw)
    assert "\n" not in str(e.value) and "no intact checkpoint to resume from" in str(e.value)
    assert f"names {resume.name}, which is missing" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.lock"} == before


def test_file_system_refusals_anywhere_are_one_line(small_data, tmp_path, mount, capsys):
    """Writes outside the checkpoint and prepare code (a run folder, any atomic write) refused by the file system:
    one line naming the path, exit 2, never a traceback; on a full disk with the space free there."""
    from gptlab.cli import main
    from gptlab.io import atomic_write_text

    ro = tmp_path / "ro"
    mount(ro, "size=1m")
    mount(ro, "ro", remount=True)
    argv = ["train", "--run-dir", str(ro / "run"), "--quiet"]
    for o in tiny_overrides(small_data):
        argv += ["--set", o]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gptlab: error: {ro / 'run'}") and "Read-only file system" in err and "\n" not in err
    with pytest.raises(GptlabError, match=rf"^{ro}/report.md: cannot write: Read-only file system$"):
        atomic_write_text(ro / "report.md", "x")
    full = tmp_path / "full"
    mount(full, "size=64k")
    with pytest.raises(GptlabError, match=rf"^{full}/big.bin: cannot write: No space left on device \([\d.]+ MiB free"):
        atomic_write_text(full / "big.bin", "x" * 200_000)
    assert list(full.iterdir()) == []  # the temp file is gone


def test_checkpoint_with_fewer_optimizer_states_than_optimizers_is_refused(tmp_path):
    """optimizer.pt holding one optimizer's state while the run has two is refused in one line, not loaded into the
    first optimizer with the second left fresh."""
    from gptlab.model import GPTModel
    from gptlab.train.checkpoint import load_checkpoint, save_checkpoint
    from gptlab.train.distributed import Dist
    from gptlab.train.optim import build_optimizers

    cfg = load_config(
        None,
        [
            "model.preset=nano",
            "model.vocab_size=64",
            "model.emb_dim=16",
            "model.n_heads=2",
            "model.n_layers=1",
            "model.context_length=8",
        ],
    )
    model = GPTModel(cfg.model)
    opts = build_optimizers(model, cfg, torch.device("cpu"))
    ck = save_checkpoint(tmp_path, 1, model, opts, {"step": 1}, Dist(1, 0, 0))
    two = [*opts, torch.optim.SGD(model.parameters(), lr=0.1)]
    with pytest.raises(GptlabError, match=r"step_0000001: unreadable checkpoint state \(zip\(\) argument 2 is shorter"):
        load_checkpoint(ck, model, two, 0)


def test_trainer_as_a_child_process_shows_library_warnings_on_stderr(small_data, tmp_path):
    """`gptlab train` run as a subprocess (as the experiment runner and SLURM jobs start it): a warning the training
    library logs reaches the child's stderr with the `gptlab: warning: ` prefix, and its stdout stays clean."""
    run = tmp_path / "r"
    over = [x for o in tiny_overrides(small_data, **{"train.tokens": 8 * 32 * 2}) for x in ("--set", o)]
    train(load_config(None, tiny_overrides(small_data, **{"train.tokens": 8 * 32 * 2})), run, stop_after=1)
    shutil.rmtree(run / "checkpoints")  # the run stopped before its first checkpoint
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run(
        [sys.executable, "-m", "gptlab", "train", "--run-dir", str(run), "--resume", "--quiet", *over],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    want = f"gptlab: warning: {run}: no checkpoint was written before the run stopped; starting again from step 1\n"
    assert want in r.stderr and "no checkpoint" not in r.stdout
    assert (run / "final.json").is_file()
