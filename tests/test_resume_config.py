"""Checkpoints know their config: a resume with another config than its checkpoint was trained under stops in one
line listing the changed fields before the run folder is touched; `--continue-with` applies chosen changes from the
checkpoint's step on (lr in the optimizer and in metrics.jsonl, a longer schedule that goes on from where it was),
rewrites config.toml and records {step, changes} in meta.json's history; a plain `--resume` uses the run folder's
config; a checkpoint from before checkpoints recorded their config is compared with config.toml, with a warning."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from gptlab.cli import main
from gptlab.config import config_from_run, load_config
from gptlab.train import latest_checkpoint, lr_factor, train
from gptlab.train.checkpoint import write_manifest

LR = 3e-3  # tiny_overrides' train.lr


def cfg_for(data, **kw):
    return load_config(None, tiny_overrides(data, **kw))  # 12 steps, checkpoints every 4


def gptlab(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["train", "--quiet", *map(str, args)])
    return rc, capsys.readouterr().err


def lrs(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "train_loss" in r}


def folder(run: Path) -> dict[str, bytes]:
    """Every file of the run folder but the lock, with its bytes."""
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


def weights(run: Path) -> dict:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    """The uninterrupted run: (final.json, weights, metrics lr by step)."""
    run = tmp_path_factory.mktemp("ref") / "ref"
    final = train(cfg_for(small_data), run)
    return final, weights(run), lrs(run)


def test_edited_config_toml_stops_listing_the_change_and_touches_nothing(small_data, tmp_path, capsys):
    """The reproduction: lr edited in RUN/config.toml, then --resume with that file. It used to exit 0 and train
    every step at the checkpoint's lr 0.003 while config.toml said 0.5."""
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=4)
    toml = run / "config.toml"
    toml.write_text(toml.read_text().replace(f"lr = {LR}\n", "lr = 0.5\n"))
    before = folder(run)
    for args in (["--config", toml], []):  # with the edited file, and with the run folder's (edited) config
        rc, err = gptlab(capsys, "--run-dir", run, "--resume", *args)
        assert rc == 2 and err.count("\n") == 1, err
        assert err == (
            f"gptlab: error: {run}/checkpoints/step_0000004: checkpoint is from another config (differs in "
            f"train.lr 0.003 -> 0.5); resume with the config it was trained under, or continue with the "
            f"change from this checkpoint on: --continue-with train.lr=0.5\n"
        )
        assert folder(run) == before  # config.toml as edited, nothing appended to metrics.jsonl, no checkpoint


def test_several_changed_fields_are_listed_with_dotted_names(small_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=4)
    before = folder(run)
    over = tiny_overrides(small_data, **{"model.n_layers": 2, "train.lr": 1e-3, "train.seed": 7})
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", *[x for o in over for x in ("--set", o)])
    assert rc == 2 and err.count("\n") == 1
    assert (
        "checkpoint is from another config (differs in model.n_layers 1 -> 2, train.seed 42 -> 7, "
        "train.lr 0.003 -> 0.001); resume with the config it was trained under\n"
    ) in err
    assert "--continue-with" not in err  # n_layers and seed cannot be continued with
    assert folder(run) == before


def test_plain_resume_uses_the_run_folders_config_and_continues_bit_for_bit(small_data, reference, tmp_path, capsys):
    """`gptlab train --run-dir RUN --resume`, no --config: it used to compare the defaults with the run's config
    and refuse; now the run's config.toml is the config, and the run ends as if never stopped."""
    ref, ref_w, ref_lrs = reference
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=5)
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["config_hash"] == config_from_run(run).hash() and state["total_steps"] == 12
    assert state["config"]["train"]["lr"] == LR
    rc, err = gptlab(capsys, "--run-dir", run, "--resume")
    assert rc == 0, err
    final = json.loads((run / "final.json").read_text())
    assert final["test_loss"] == ref["test_loss"]
    w = weights(run)
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)
    assert lrs(run) == ref_lrs
    assert "history" not in json.loads((run / "meta.json").read_text())


def test_quiet_is_not_part_of_the_run_a_resume_checks(small_data, reference, tmp_path, capsys):
    """--quiet silences this process's progress bars only: a run started without it resumes with it and the other
    way round, and ends as if never stopped. It used to set train.progress in the config, so the resume was refused:
    "checkpoint is from another config (differs in train.progress True -> False)"."""
    ref, ref_w, _ = reference
    for first, then in ((["--stop-after", "5"], ["--quiet"]), (["--stop-after", "5", "--quiet"], [])):
        run = tmp_path / f"r{len(then)}"
        sets = [x for o in [*tiny_overrides(small_data), "train.progress=true"] for x in ("--set", o)]
        assert main(["train", "--run-dir", str(run), *sets, *first]) == 0
        assert ("step/s" in capsys.readouterr().err) == ("--quiet" not in first)  # a bar, or none with --quiet
        rc = main(["train", "--run-dir", str(run), "--resume", *then])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert ("step/s" in err) == (then == [])  # the resumed process's own bar, or none with --quiet
        assert config_from_run(run).train.progress is True
        assert json.loads((run / "final.json").read_text())["test_loss"] == ref["test_loss"]
        w = weights(run)
        assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)


def test_continue_with_lr_is_the_lr_from_the_resume_step_and_is_recorded(small_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=4)
    old_hash = config_from_run(run).hash()
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", "--continue-with", "train.lr=0.01")
    assert rc == 0, err
    assert f"continuing {run} from step 4 with train.lr 0.003 -> 0.01" in err
    assert lrs(run) == {**{s: LR for s in range(1, 5)}, **{s: 0.01 for s in range(5, 13)}}
    cfg = config_from_run(run)
    assert cfg.train.lr == 0.01  # config.toml describes what was trained from step 4 on
    meta = json.loads((run / "meta.json").read_text())
    [h] = meta["history"]
    assert (h["step"], h["changes"], h["from_config_hash"], h["config_hash"]) == (
        4,
        {"train.lr": [LR, 0.01]},
        old_hash,
        cfg.hash(),
    )
    assert meta["config_hash"] == cfg.hash()
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["config_hash"] == cfg.hash() and state["config"]["train"]["lr"] == 0.01


def test_continue_with_muon_lr_sets_the_second_optimizers_lr(small_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg_for(small_data, **{"train.optimizer": "muon", "train.muon_lr": 0.02}), run, stop_after=4)
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", "--continue-with", "train.muon_lr=0.05")
    assert rc == 0, err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    got = {r["step"]: (r["lr"], r["lr_muon"]) for r in rows if "train_loss" in r}
    assert got == {s: (LR, 0.02 if s <= 4 else 0.05) for s in range(1, 13)}


def test_continue_with_more_tokens_keeps_the_warmup_and_decays_from_where_it_was(small_data, tmp_path, capsys):
    """A cosine schedule over 12 steps (3 of warmup) continued at step 6 to 24 steps: the warmup keeps its 3 steps,
    step 7 gets the lr the old plan gave it (no jump), and the lr decays from there to lr x min_lr_frac at step 24.
    A second resume (after a stop) continues that schedule, and a crash before the next checkpoint applies the same
    changes again without a second history entry."""
    kw = {"train.schedule": "cosine", "train.warmup_frac": 0.25, "train.min_lr_frac": 0.1}
    old = cfg_for(small_data, **kw)
    run = tmp_path / "r"
    train(old, run, stop_after=6)
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", "--continue-with", "train.tokens=6144", "--stop-after", 4)
    assert rc == 0, err
    rc, err = gptlab(capsys, "--run-dir", run, "--resume")
    assert rc == 0, err
    got = lrs(run)
    assert sorted(got) == list(range(1, 25))
    assert [got[s] for s in (1, 2, 3)] == [LR / 3, 2 * LR / 3, LR]  # warmup as planned, not 6 steps
    assert got[7] == pytest.approx(LR * lr_factor(6, 12, old))  # where the old plan was at step 7
    later = [got[s] for s in range(7, 25)]
    assert all(a > b for a, b in zip(later, later[1:], strict=False))
    assert got[24] == pytest.approx(LR * 0.1)
    # a cosine from step 7's factor f down to 0.1 over steps 7..24
    f = lr_factor(6, 12, old)
    assert got[16] == pytest.approx(LR * (0.1 + (f - 0.1) * 0.5 * (1 + math.cos(math.pi * 9 / 17))))
    meta = json.loads((run / "meta.json").read_text())
    assert [(h["step"], h["changes"]) for h in meta["history"]] == [(6, {"train.tokens": [3072, 6144]})]
    assert (meta["tokens"], meta["total_steps"]) == (6144, 24)
    final = json.loads((run / "final.json").read_text())
    assert final["steps"] == 24 and final["tokens"] == 24 * 8 * 32


def test_changes_applied_again_after_a_crash_before_the_next_checkpoint(small_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=4)
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", "--continue-with", "train.lr=0.01", "--stop-after", 2)
    assert rc == 0, err
    # as if the process had died before writing step 6: the newest checkpoint is step 4 (trained at 0.003)
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_0000006")
    (run / "checkpoints" / "latest").write_text("step_0000004\n")
    rc, err = gptlab(capsys, "--run-dir", run, "--resume")
    assert rc == 0, err
    assert lrs(run) == {**{s: LR for s in range(1, 5)}, **{s: 0.01 for s in range(5, 13)}}
    assert len(json.loads((run / "meta.json").read_text())["history"]) == 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--continue-with", "model.n_layers=2"],
            "--continue-with model.n_layers: a resumed run cannot change this field",
        ),
        (["--continue-with", "train.seed=7"], "--continue-with train.seed: a resumed run cannot change this field"),
        (["--continue-with", "data.dir=elsewhere"], "--continue-with data.dir: a resumed run cannot change this field"),
        (["--continue-with", "train.lr"], "--continue-with train.lr: expected section.key=value"),
        (["--continue-with", "train.lr=-1"], "--continue-with: train.lr: must be > 0, got -1.0"),
        (
            ["--continue-with", "train.tokens=1024"],
            "--continue-with: the budget is 4 steps (1,024 tokens); the checkpoint has trained 4 already; ask for more",
        ),
    ],
)
def test_refused_continuations_are_one_line_and_touch_nothing(small_data, tmp_path, capsys, args, expected):
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=4)
    before = folder(run)
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", *args)
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"gptlab: error: {expected}"), err
    assert folder(run) == before


def test_continue_with_needs_resume_and_an_unfinished_run(small_data, tmp_path, capsys):
    run = tmp_path / "r"
    rc, err = gptlab(capsys, "--run-dir", run, "--continue-with", "train.lr=0.01")
    assert rc == 2 and err == "gptlab: error: train: --continue-with changes a run it resumes; add --resume\n"
    train(cfg_for(small_data, **{"train.tokens": 8 * 32 * 2}), run)
    before = folder(run)
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", "--continue-with", "train.tokens=2048")
    assert rc == 2 and err == (
        f"gptlab: error: {run}/final.json: the run has finished; --continue-with continues "
        f"an unfinished run (start a new run to train longer)\n"
    )
    assert folder(run) == before


def strip_recorded_config(ck: Path) -> None:
    """Make `ck` a checkpoint as written before checkpoints recorded their config (manifest rewritten to match)."""
    p = ck / "state.json"
    state = json.loads(p.read_text())
    for k in ("config", "config_hash", "total_steps"):
        state.pop(k)
    p.write_text(json.dumps(state))
    write_manifest(ck)


def test_checkpoint_without_recorded_config_is_compared_with_config_toml(small_data, reference, tmp_path, capsys):
    ref, ref_w, _ = reference
    run = tmp_path / "r"
    train(cfg_for(small_data), run, stop_after=4)
    strip_recorded_config(latest_checkpoint(run))
    toml = run / "config.toml"
    text = toml.read_text()
    toml.write_text(text.replace(f"lr = {LR}\n", "lr = 0.5\n"))
    before = folder(run)
    over = [x for o in tiny_overrides(small_data) for x in ("--set", o)]
    rc, err = gptlab(capsys, "--run-dir", run, "--resume", *over)
    warning = (
        f"gptlab: warning: {run}/checkpoints/step_0000004: checkpoint records no config (written before "
        f"checkpoints recorded theirs); comparing the config asked for with {toml}\n"
    )
    assert rc == 2 and err == warning + (
        f"gptlab: error: {toml}: checkpoint is from another config (differs in train.lr 0.5 -> 0.003); resume with "
        f"the config it was trained under, or continue with the change from this checkpoint on: "
        f"--continue-with train.lr=0.003\n"
    )
    assert folder(run) == before
    toml.write_text(text)
    rc, err = gptlab(capsys, "--run-dir", run, "--resume")
    assert rc == 0 and err == warning
    assert json.loads((run / "final.json").read_text())["test_loss"] == ref["test_loss"]
    w = weights(run)
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)
