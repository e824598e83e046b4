"""One checkpoint format and one writer, for pretraining and fine-tuning.

RUN_DIR/checkpoints/step_NNNNNNN/ holds model.safetensors (weights that cannot execute code on load),
optimizer.pt (a list of optimizer state dicts), rng_rank{R}.pt (each rank's RNG) and state.json (the loop's own
state). A checkpoint is written into a temp folder, fsynced and renamed, then named by pointer files
(`checkpoints/latest`, and for fine-tuning `checkpoints/resume`), so a crash never leaves a half-written one.
Optimizer and RNG files are read with torch.load(weights_only=True). Under FSDP the model and optimizer are also
saved sharded with torch.distributed.checkpoint (loadable on any number of ranks) and rank 0 writes the gathered
full weights as model.safetensors for eval, generation and export."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.config import RunConfig, config_from_run
from gptlab.io import atomic_write_json, atomic_write_text, commit_dir
from gptlab.model import GPTModel
from gptlab.train.distributed import Dist, resolve_device

CKPT_DIR = "checkpoints"


def unwrap(model: torch.nn.Module) -> GPTModel:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def pointed(run_dir: str | Path, pointer: str = "latest") -> Path | None:
    """The checkpoint a pointer file names, if both exist."""
    ptr = Path(run_dir) / CKPT_DIR / pointer
    if not ptr.is_file():
        return None
    p = ptr.parent / ptr.read_text().strip()
    return p if p.is_dir() else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    return pointed(run_dir, "latest")


def save_checkpoint(run_dir: Path, step: int, model, opts, state: dict, dist_: Dist, *, fsdp: bool = False,
                    pointers: tuple[str, ...] = ("latest",), keep: int | None = None) -> Path:
    """Write checkpoints/step_N atomically and point `pointers` at it; then keep the newest `keep` checkpoints
    and every pointed one (keep=None: keep all). Every rank saves its RNG state; rank 0 saves the rest."""
    ckdir = run_dir / CKPT_DIR
    final, tmp = ckdir / f"step_{step:07d}", ckdir / f".tmp_step_{step:07d}"
    if dist_.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist_.barrier()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng_rank{dist_.rank}.pt")
    if fsdp:
        _save_sharded(tmp, model, opts, dist_)
    elif dist_.main:
        from safetensors.torch import save_model

        save_model(unwrap(model), str(tmp / "model.safetensors"))
        torch.save([o.state_dict() for o in opts], tmp / "optimizer.pt")
    if dist_.main:
        atomic_write_json(tmp / "state.json", dict(state, step=step, world=dist_.world, fsdp=fsdp))
    dist_.barrier()
    if dist_.main:
        commit_dir(tmp, final)
        for name in pointers:
            atomic_write_text(ckdir / name, final.name + "\n")
        if keep is not None:
            prune(run_dir, keep)
    dist_.barrier()
    return final


def _save_sharded(tmp: Path, model, opts, dist_: Dist) -> None:
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_model
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    base = unwrap(model)
    msd, osd = get_state_dict(base, opts)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
    full = get_model_state_dict(base, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist_.main:
        plain = GPTModel(base.cfg)
        plain.load_state_dict(full)
        save_model(plain, str(tmp / "model.safetensors"))


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints and those a pointer names."""
    ckdir = run_dir / CKPT_DIR
    named = {p.read_text().strip() for p in ckdir.iterdir() if p.is_file()}
    steps = sorted(p for p in ckdir.glob("step_*") if p.is_dir())
    for p in steps[:len(steps) - keep] if keep > 0 else steps:
        if p.name not in named:
            shutil.rmtree(p, ignore_errors=True)


def drop_training_state(ck: Path) -> None:
    """Keep only the weights of a checkpoint nothing will resume from (e.g. a fine-tune's best epoch)."""
    for f in [ck / "optimizer.pt", *ck.glob("rng_rank*.pt")]:
        f.unlink(missing_ok=True)


def remove_partial(run_dir: Path) -> None:
    """Temp folders of a checkpoint write cut short by a crash."""
    for stale in (run_dir / CKPT_DIR).glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_model_weights(model: GPTModel, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as e:
        raise GptlabError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    except RuntimeError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GptlabError(f"{path}: checkpoint does not match the model config ({msg[:200]})") from None
    if missing or unexpected:
        what = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise GptlabError(f"{path}: checkpoint does not match the model config ({what})")


def load_checkpoint(ck: Path, model, opts, rank: int) -> dict:
    """Restore model, optimizer and this rank's RNG; return state.json. A sharded (FSDP) checkpoint loads on any
    number of ranks, with or without FSDP; a full one (model.safetensors + optimizer.pt) too."""
    sharded = (ck / "dcp").is_dir()
    if sharded:
        _load_sharded(ck, model, opts)
    else:
        load_model_weights(unwrap(model), ck / "model.safetensors")
    try:
        if not sharded:
            states = torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True)
            if isinstance(states, dict):  # a fine-tune checkpointed before the shared format: one state dict
                states = [states]
            for o, s in zip(opts, states):
                o.load_state_dict(s)
        rng_file = ck / f"rng_rank{rank}.pt"
        if not rng_file.exists() and (ck / "rng.pt").exists():  # likewise: its RNG file had no rank
            rng_file = ck / "rng.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        return json.loads((ck / "state.json").read_text())
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, json.JSONDecodeError, pickle.UnpicklingError) as e:
        raise GptlabError(f"{ck}: unreadable checkpoint state ({str(e).splitlines()[0][:200]})") from None


def _load_sharded(ck: Path, model, opts) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    base = unwrap(model)
    msd, osd = get_state_dict(base, opts)
    state = {"model": msd, "optim": osd}
    try:
        with warnings.catch_warnings():  # loading on one process without a process group is intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(ck / "dcp"))
    except Exception as e:  # DCP raises several types (CheckpointException, RuntimeError, ...)
        raise GptlabError(f"{ck / 'dcp'}: unreadable sharded checkpoint ({str(e).splitlines()[0][:200]})") from None
    set_state_dict(base, opts, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_run_model(run_dir: str | Path, device: str = "cpu") -> tuple[GPTModel, RunConfig]:
    """The model from a run's latest checkpoint (or final weights), ready for eval/generation."""
    run_dir = Path(run_dir)
    cfg = config_from_run(run_dir)
    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise GptlabError(f"{run_dir}: no checkpoint yet (checkpoints/latest missing)")
    model = GPTModel(cfg.model)
    load_model_weights(model, ck / "model.safetensors")
    model.to(resolve_device(device)).eval()
    return model, cfg
