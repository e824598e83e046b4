"""The run directory, the unit of truth: one process at a time (an flock), never overwritten by a new run, resumed
only with the config its checkpoint was trained under (or with the changes --continue-with names, among
CONTINUABLE), and described before step 1 (environment, git commit, versions)."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptlab import GptlabError, __version__
from gptlab.config import (
    RunConfig,
    config_from_run,
    deep_merge,
    flat,
    from_dict,
    hashed_view,
    parse_overrides,
    save_config,
    validate,
)
from gptlab.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

# flock() errors of filesystems without locks (some Lustre and NFS mounts): the run goes on without a lock
NO_LOCKS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK}


class RunLock:
    """An exclusive flock on RUN_DIR/run.lock: a second process gets a clear error, never a corrupted run."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.fd = None
        self.locked = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locked = True
        except BlockingIOError:
            other = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise GptlabError(f"{self.path.parent}: run directory is in use by another process (pid {other})") from None
        except OSError as e:
            if e.errno not in NO_LOCKS:
                raise
            log.warning(
                f"{self.path}: this filesystem has no file locks ({e.strerror}); nothing stops "
                f"a second process from using the run directory"
            )
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            if self.locked:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


# What a resumed run may change (`gptlab train --resume --continue-with KEY=VALUE`): how long it trains, its lr from
# the resume step on, and how often it evaluates, logs and checkpoints. Everything else (the model, the data and
# its order, the seed, the optimizer's other settings, the batch) made the checkpoint's weights and optimizer state
# what they are: changing it is a new run.
CONTINUABLE = (
    "train.tokens",
    "train.flops",
    "train.tokens_per_param",
    "train.lr",
    "train.muon_lr",
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.keep_checkpoints",
    "train.log_interval",
)


@dataclass
class ResumePlan:
    """What a run directory says about the run `gptlab train` is asked for (check_resume)."""

    cfg: RunConfig  # the config to train
    checkpoint: Path | None = None  # the checkpoint a resume starts from
    recorded: RunConfig | None = None  # the config that checkpoint was trained under
    changes: dict[str, list] = field(default_factory=dict)  # dotted field -> [old, new] that --continue-with applies
    new_entry: bool = True  # False: these changes were applied from this checkpoint before (meta.json's history)


def continue_config(cfg: RunConfig, items: list[str] | tuple[str, ...]) -> RunConfig:
    """`cfg` with --continue-with KEY=VALUE items applied: only fields in CONTINUABLE, checked like any config."""
    for item in items:
        key = item.partition("=")[0].strip()
        if "=" not in item:
            raise GptlabError(f"--continue-with {item}: expected section.key=value, e.g. train.lr=1e-3")
        if key not in CONTINUABLE:
            raise GptlabError(
                f"--continue-with {key}: a resumed run cannot change this field (its checkpoint's "
                f"weights, optimizer state and data order were made under the old value; start a new "
                f"run instead); expected one of {', '.join(CONTINUABLE)}"
            )
    out = from_dict(deep_merge(cfg.to_dict(), parse_overrides(list(items))), "--continue-with")
    validate(out, "--continue-with")
    return out


def differences(old: dict, new: dict) -> dict[str, list]:
    """The fields in the config hash that differ between config dicts `old` and `new`: dotted name -> [old, new],
    interventions first (they explain the rest), then in config order."""
    o, n = flat(hashed_view(old)), flat(hashed_view(new))
    keys = [k for k in {**n, **o} if o.get(k) != n.get(k)]
    return {k: [o.get(k), n.get(k)] for k in sorted(keys, key=lambda k: k != "interventions")}


def describe(changes: dict[str, list], most: int = 8) -> str:
    """'train.lr 0.002 -> 0.5, model.norm 'layernorm' -> 'rmsnorm'': at most `most`, then '+N more'."""
    parts = [
        f"{k} {o!r} -> {n!r}" if isinstance(o, str) or isinstance(n, str) else f"{k} {o} -> {n}"
        for k, (o, n) in list(changes.items())[:most]
    ]
    return ", ".join(parts) + (f", +{len(changes) - most} more" if len(changes) > most else "")


def history(run_dir: Path) -> list[dict]:
    """meta.json's history: one {step, changes, config_hash, from_config_hash} per --continue-with applied."""
    try:
        h = json.loads((run_dir / "meta.json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []
    return h if isinstance(h, list) else []


def recorded_config(ck: Path | None, run_dir: Path, main: bool = True) -> tuple[RunConfig, str]:
    """(the config checkpoint `ck` was trained under, where it was read): its state.json records it; a checkpoint
    written before checkpoints recorded their config (or no checkpoint) is compared with RUN/config.toml, the
    former with a one-line warning."""
    if ck is not None:
        p = ck / "state.json"
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise GptlabError(f"{p}: unreadable checkpoint state ({e})") from None
        if isinstance(state, dict) and isinstance(state.get("config"), dict):
            cfg = from_dict(state["config"], f"{p}: config")
            return cfg, str(ck)
        if main:
            log.warning(
                f"{ck}: checkpoint records no config (written before checkpoints recorded "
                f"theirs); comparing the config asked for with {run_dir / 'config.toml'}"
            )
    return config_from_run(run_dir), str(run_dir / "config.toml")


def check_resume(
    cfg: RunConfig, run_dir: Path, resume: bool, continue_with: list[str] | tuple[str, ...] = (), main: bool = True
) -> ResumePlan:
    """New run: refuse to overwrite. Resume: the config asked for (with `continue_with` applied) must be the one the
    checkpoint it starts from was trained under, but for the fields --continue-with names; any other difference
    stops here, in one line listing the changed fields, before anything in the run folder is touched. The fields
    outside the config hash (loggers, ...) are the ones asked for now."""
    from gptlab.train.checkpoint import resume_point

    saved = run_dir / "config.toml"
    if not saved.exists():
        if continue_with:
            raise GptlabError(f"--continue-with: {run_dir} has no run to continue (no config.toml)")
        return ResumePlan(cfg)
    if not resume:
        raise GptlabError(
            f"{run_dir}: run directory already exists; pass --resume to continue it or choose another --run-dir"
        )
    ck = resume_point(run_dir, main=False)
    if ck is None and continue_with:
        raise GptlabError(
            f"--continue-with: {run_dir} has no checkpoint to continue from (the run starts again "
            f"from step 1 with the config in {saved})"
        )
    recorded, where = recorded_config(ck, run_dir, main)
    target = continue_config(cfg, continue_with) if continue_with else cfg
    if target.hash() == recorded.hash():
        return ResumePlan(target, ck, recorded)
    changes = differences(recorded.to_dict(), target.to_dict())
    # the same changes applied from this checkpoint before (then the process stopped before its next checkpoint):
    # config.toml holds them already, meta.json's history says so, and they apply again without a new entry
    again = ck is not None and any(
        isinstance(h, dict)
        and h.get("step") == int(ck.name[5:])
        and h.get("config_hash") == target.hash()
        and h.get("from_config_hash") == recorded.hash()
        for h in history(run_dir)
    )
    named = set(flat(parse_overrides(list(continue_with))))
    unnamed = {} if again else {k: v for k, v in changes.items() if k not in named}
    if unnamed or not changes:
        what = describe(unnamed) if unnamed else f"config hash {recorded.hash()} -> {target.hash()}"
        hint = ""
        if unnamed and all(k in CONTINUABLE for k in unnamed):
            hint = ", or continue with the change from this checkpoint on: " + " ".join(
                f"--continue-with {k}={_literal(n)}" for k, (_, n) in unnamed.items()
            )
        raise GptlabError(
            f"{where}: checkpoint is from another config (differs in {what}); resume with the config "
            f"it was trained under{hint}"
        )
    if (run_dir / "final.json").exists():
        raise GptlabError(
            f"{run_dir / 'final.json'}: the run has finished; --continue-with continues an unfinished "
            f"run (start a new run to train longer)"
        )
    return ResumePlan(target, ck, recorded, changes, new_entry=not again)


def _literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else str(v)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """The config check_resume allows (the config to train), for a resume without changes."""
    return check_resume(cfg, run_dir, resume).cfg


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=here,
            ).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment() -> dict:
    import numpy
    import tiktoken

    env = {
        "gptlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "tiktoken": tiktoken.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def write_run_files(
    run_dir: Path,
    cfg: RunConfig,
    vmap,
    *,
    params: int,
    world_size: int,
    device: str,
    precision: str,
    data_meta: dict,
    tokens: int,
    total_steps: int,
) -> None:
    """A new run's records, before step 1: the corpus vocabulary map (when the run has one), config.toml, and
    meta.json (environment, seeds, sizes, the data's sources and tokenizer, the budget); metrics.jsonl starts
    empty."""
    if vmap is not None:
        vmap.save(run_dir)
    save_config(cfg, run_dir / "config.toml")
    atomic_write_json(
        run_dir / "meta.json",
        {
            "environment": environment(),
            "seed": cfg.train.seed,
            "data_order_seed": cfg.data_order_seed(),
            "params": params,
            "world_size": world_size,
            "device": device,
            "precision": precision,
            "data_meta": data_meta.get("sources"),
            "data_tokenizer_hash": data_meta.get("tokenizer_hash"),
            "tokens": tokens,
            "total_steps": total_steps,
            "config_hash": cfg.hash(),
            "interventions": cfg.interventions,
            "created": time.time(),
            "argv": sys.argv,
        },
    )
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)


def record_continuation(
    run_dir: Path, cfg: RunConfig, plan: ResumePlan, step: int, tokens: int, total_steps: int
) -> None:
    """--continue-with applied from checkpoint `step`: config.toml becomes the new config, meta.json's history
    says from which step (a new entry unless these changes were applied from this checkpoint before) and its
    budget is the new one."""
    try:
        meta = read_json(run_dir / "meta.json", "the history of --continue-with changes cannot be recorded")
    except OSError as e:
        raise GptlabError(
            f"{run_dir / 'meta.json'}: unreadable ({e.strerror}); the history of "
            f"--continue-with changes cannot be recorded"
        ) from None
    if not isinstance(meta, dict):
        raise GptlabError(f"{run_dir / 'meta.json'}: expected a JSON object")
    save_config(cfg, run_dir / "config.toml")
    if plan.new_entry:
        meta["history"] = list(meta.get("history") or []) + [
            {
                "step": step,
                "changes": plan.changes,
                "config_hash": cfg.hash(),
                "from_config_hash": plan.recorded.hash(),
                "argv": sys.argv,
                "time": time.time(),
            }
        ]
    meta.update(tokens=tokens, total_steps=total_steps, config_hash=cfg.hash())
    atomic_write_json(run_dir / "meta.json", meta)
    log.warning(f"continuing {run_dir} from step {step} with {describe(plan.changes)}")
