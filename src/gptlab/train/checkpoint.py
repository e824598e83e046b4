"""One checkpoint format and one writer, for pretraining and fine-tuning.

RUN_DIR/checkpoints/step_NNNNNNN/ holds model.safetensors (weights that cannot execute code on load),
optimizer.pt (a list of optimizer state dicts), rng_rank{R}.pt (each rank's RNG) and state.json (the loop's own
state), then manifest.json (every file's size, written last). A checkpoint is written into a temp folder, fsynced and
renamed, then named by pointer files (`checkpoints/latest`, and for fine-tuning `checkpoints/resume`), so a crash
never leaves a half-written one; a checkpoint is *intact* when every file its manifest lists has the listed size
(one written before manifests: when it has model.safetensors). A resume starts from the newest intact checkpoint
with training state and says which newer ones it passed over and why; pruning never counts or deletes a damaged
one. A write that fails for lack of space or permission is removed and reported in one line.
Optimizer and RNG files are read with torch.load(weights_only=True). Under FSDP the model and optimizer are also
saved sharded with torch.distributed.checkpoint (loadable on any number of ranks) and rank 0 writes the gathered
full weights as model.safetensors for eval, generation and export."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.config import RunConfig, config_from_run
from gptlab.io import atomic_write_json, atomic_write_text, commit_dir, first_line, fs_reason
from gptlab.model import GPTModel
from gptlab.train.distributed import Dist, resolve_device

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


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


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    opts,
    state: dict,
    dist_: Dist,
    *,
    fsdp: bool = False,
    pointers: tuple[str, ...] = ("latest",),
    keep: int | None = None,
    protect: tuple[Path, ...] = (),
) -> Path:
    """Write checkpoints/step_N atomically and point `pointers` at it; then keep the newest `keep` intact
    checkpoints, every pointed one and `protect` (keep=None: keep all). Every rank saves its RNG state; rank 0
    saves the rest and the manifest. Out of space or permission: the partial write is removed, GptlabError."""
    ckdir = run_dir / CKPT_DIR
    final, tmp = ckdir / f"step_{step:07d}", ckdir / f".tmp_step_{step:07d}"
    with _write_errors(ckdir, final.name, tmp if dist_.main else None, model, opts):
        if dist_.main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        dist_.barrier()
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        _torch_save(rng, tmp / f"rng_rank{dist_.rank}.pt")
        if fsdp:
            _save_sharded(tmp, model, opts, dist_)
        elif dist_.main:
            from safetensors.torch import save_model

            save_model(unwrap(model), str(tmp / WEIGHTS))
            _torch_save([o.state_dict() for o in opts], tmp / "optimizer.pt")
        if dist_.main:
            atomic_write_json(tmp / "state.json", dict(state, step=step, world=dist_.world, fsdp=fsdp))
        dist_.barrier()
        if dist_.main:
            write_manifest(tmp)
            if final.exists():  # written before by a run that resumed from an older checkpoint
                discard(final)
            commit_dir(tmp, final)
            for name in pointers:
                atomic_write_text(ckdir / name, final.name + "\n")
    if dist_.main and keep is not None:
        prune(run_dir, keep, protect)
    dist_.barrier()
    return final


def _torch_save(obj, path: Path) -> None:
    """torch.save through a Python file, so a failed write raises OSError with its errno (torch.save to a path
    raises RuntimeError "[enforce fail at inline_container.cc...]" without one)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def write_manifest(ck: Path, without: tuple[Path, ...] = ()) -> None:
    """manifest.json: the size of every file of checkpoint folder `ck` (but `without`)."""
    files = {
        p.relative_to(ck).as_posix(): p.stat().st_size
        for p in sorted(ck.rglob("*"))
        if p.is_file() and p.name != MANIFEST and p not in without
    }
    atomic_write_json(ck / MANIFEST, {"files": files})


def discard(ck: Path) -> None:
    """Delete checkpoint folder `ck`, renamed out of the step_* names first: a crash mid-delete leaves a temp
    folder (removed by remove_partial), never a partial one a resume could take for a checkpoint."""
    aside = ck.parent / f".tmp_{ck.name}_old"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(ck, aside)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _write_errors(ckdir: Path, name: str, tmp: Path | None, model, opts):
    """Turn a checkpoint write that failed for lack of space or permission into one line naming the folder (and
    for space, about how much the checkpoint needs); remove the partial write (`tmp`) whatever the failure."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        code = getattr(e, "errno", None)
        found = re.search(r"os error (\d+)", str(e))  # safetensors' SafetensorError keeps it in its message
        why = fs_reason(ckdir, code or (int(found.group(1)) if found else None), lambda: state_bytes(model, opts))
        if why is None:
            raise
        raise GptlabError(f"{ckdir}: cannot write checkpoint {name}: {why}") from None


def state_bytes(model, opts) -> int:
    """The size of what a checkpoint holds: weights and optimizer state."""

    def size(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    return size(unwrap(model).state_dict()) + sum(size(o.state_dict()["state"]) for o in opts)


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
        save_model(plain, str(tmp / WEIGHTS))


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint folders, newest first."""
    ckdir = Path(run_dir) / CKPT_DIR
    found = [p for p in ckdir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if ckdir.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def damage(ck: Path) -> str | None:
    """Why checkpoint `ck` cannot be trusted, as one line naming the file; None when it is intact: each file its
    manifest lists exists with the listed size (one written before manifests: its weights file exists)."""
    m = ck / MANIFEST
    if not m.is_file():
        return None if (ck / WEIGHTS).is_file() else f"{ck / WEIGHTS}: unreadable checkpoint (missing)"
    try:
        files = json.loads(m.read_text())["files"]
        listed = {str(k): int(v) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{m}: unreadable checkpoint manifest"
    for name, size in listed.items():
        p = ck / name
        have = p.stat().st_size if p.is_file() else None
        if have != size:
            what = "checkpoint" if name == WEIGHTS else "checkpoint state"
            found = "missing" if have is None else f"{have:,} bytes"
            return f"{p}: unreadable {what} ({found}, {MANIFEST} lists {size:,} bytes)"
    return None


def _not_resumable(ck: Path) -> str | None:
    why = damage(ck)
    if why is None and not (
        (ck / "state.json").is_file() and ((ck / "optimizer.pt").is_file() or (ck / "dcp").is_dir())
    ):
        why = f"{ck}: weights only, no training state"
    return why


def resume_point(run_dir: str | Path, pointer: str = "latest", main: bool = True) -> Path | None:
    """The checkpoint a resume starts from: the one `pointer` names if it is intact and holds training state, else
    the newest such one. Those passed over (damaged, weights only, or a pointer naming a missing folder) are named
    in a one-line warning on stderr, and `pointer` is pointed at the one chosen (both by `main` only). None when
    the run has no checkpoint at all; GptlabError naming what was found when none is intact."""
    ckdir = Path(run_dir) / CKPT_DIR
    ptr = ckdir / pointer
    named = ptr.read_text().strip() if ptr.is_file() else ""
    passed = [f"{ptr} names {named}, which is missing"] if named and not (ckdir / named).is_dir() else []
    first = [ckdir / named] if named and not passed else []
    for ck in first + [c for c in checkpoints(run_dir) if c.name != named]:
        why = _not_resumable(ck)
        if why is not None:
            passed.append(why)
            continue
        if passed and main:
            log.warning(f"resuming from {ck}, passing over {'; '.join(passed)}")
            atomic_write_text(ptr, ck.name + "\n")
        return ck
    if passed:
        raise GptlabError(f"{ckdir}: no intact checkpoint to resume from: {'; '.join(passed)}")
    return None


def prune(run_dir: Path, keep: int, protect: tuple[Path, ...] = ()) -> None:
    """Delete all but the newest `keep` intact checkpoints, those a pointer names and `protect`; damaged ones are
    neither counted nor deleted (a resume names them; the run replaces them when it reaches their step)."""
    ckdir = run_dir / CKPT_DIR
    named = {p.read_text().strip() for p in ckdir.iterdir() if p.is_file()} | {Path(p).name for p in protect}
    intact = [p for p in checkpoints(run_dir) if damage(p) is None]
    for p in intact[keep:]:
        if p.name not in named:
            discard(p)


def drop_training_state(ck: Path) -> None:
    """Keep only the weights of a checkpoint nothing will resume from (e.g. a fine-tune's best epoch)."""
    gone = (ck / "optimizer.pt", *ck.glob("rng_rank*.pt"))
    if (ck / MANIFEST).exists():  # first, so a crash in between leaves an intact (weights-only) checkpoint
        write_manifest(ck, without=gone)
    for f in gone:
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
        raise GptlabError(f"{path}: unreadable checkpoint ({first_line(e)})") from None
    except RuntimeError as e:
        raise GptlabError(f"{path}: checkpoint does not match the model config ({first_line(e, 200)})") from None
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
        load_model_weights(unwrap(model), ck / WEIGHTS)
    try:
        if not sharded:
            states = torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True)
            if isinstance(states, dict):  # a fine-tune checkpointed before the shared format: one state dict
                states = [states]
            for o, s in zip(opts, states, strict=True):
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
        raise GptlabError(f"{ck}: unreadable checkpoint state ({first_line(e, 200)})") from None


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
        raise GptlabError(f"{ck / 'dcp'}: unreadable sharded checkpoint ({first_line(e, 200)})") from None
    set_state_dict(base, opts, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_run_model(run_dir: str | Path, device: str = "cpu") -> tuple[GPTModel, RunConfig]:
    """The model from a run's latest checkpoint (or final weights), ready for eval/generation."""
    run_dir = Path(run_dir)
    cfg = config_from_run(run_dir)
    ck = latest_checkpoint(run_dir)
    if ck is None:
        ptr = run_dir / CKPT_DIR / "latest"
        if ptr.is_file():
            raise GptlabError(f"{ptr}: names {ptr.read_text().strip()}, which is missing")
        raise GptlabError(f"{run_dir}: no checkpoint yet (checkpoints/latest missing)")
    why = damage(ck)
    if why is not None:
        raise GptlabError(why)
    model = GPTModel(cfg.model)
    load_model_weights(model, ck / WEIGHTS)
    model.to(resolve_device(device)).eval()
    return model, cfg
