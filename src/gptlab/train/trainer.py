"""The training loop: AMP, gradient accumulation, clipping, LR schedule, eval, atomic checkpoints, exact
resume, NaN policy, DDP under torchrun (NCCL on GPU, gloo on CPU), tqdm progress, JSONL metrics.

One entry point for one process or many: `gptlab train ...` or `torchrun --nproc_per_node N -m gptlab train ...`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from gptlab import GptlabError, __version__
from gptlab.config import RunConfig, config_from_run, save_config
from gptlab.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from gptlab.model import GPTModel, count_params
from gptlab.train.flops import device_peak_flops, flops_per_token, mfu, token_budget

# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


class Dist:
    """rank/world from torchrun's environment; a no-op when WORLD_SIZE is unset or 1."""

    def __init__(self, device_type: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self._own = False
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            self._own = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        if self._own and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise GptlabError(f"train.device: '{spec}' requested but CUDA is not available")
    if spec == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(spec)


def resolve_precision(spec: str, device: torch.device) -> str:
    if spec == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return spec


def autocast_ctx(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`: pinned first on CUDA, so the non_blocking copy really is asynchronous."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def forward_backward(model, x: torch.Tensor, y: torch.Tensor, precision: str, device: torch.device, accum: int = 1,
                     z_loss: float = 0.0, scale=lambda loss: loss) -> torch.Tensor:
    """One micro-step: forward and loss under autocast (the model computes the loss, so torch.compile fuses it
    with the output layer), backward of loss / accum through `scale` (the GradScaler's, for fp16). Returns the
    detached cross-entropy. The logits die inside the model's forward: at the peak in backward autograd holds
    the log-softmax output and two gradients, 12 B per logit, not 16 (fp32) or 18 (16-bit) as when a caller
    keeps the logits and their fp32 copy alive."""
    with autocast_ctx(precision, device):
        loss, full = model(x, y, z_loss)
    scale(full / accum).backward()
    return loss.detach()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment() -> dict:
    import numpy
    import tiktoken

    env = {"gptlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "tiktoken": tiktoken.__version__, "platform": platform.platform(),
           "git_commit": git_commit(), "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


class RunLock:
    """An exclusive flock on RUN_DIR/run.lock: a second process gets a clear error, never a corrupted run."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise GptlabError(f"{self.path.parent}: run directory is in use by another process (pid {other})") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


# --------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------


def build_optimizers(model: GPTModel, cfg: RunConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    t = cfg.train
    named = list(model.named_parameters())  # shared (tied) parameters appear once
    embed_names = {"tok_emb.weight", "pos_emb.weight"}

    def decays(name: str, p: torch.Tensor) -> bool:
        if not t.decay_matrices_only:
            return True  # the book / seed: AdamW weight_decay on every parameter
        return p.dim() >= 2 and name not in embed_names

    muon_params, adam_named = [], named
    if t.optimizer == "muon":
        muon_params = [p for n, p in named if p.dim() == 2 and n.startswith("trf_blocks.")]
        ids = {id(p) for p in muon_params}
        adam_named = [(n, p) for n, p in named if id(p) not in ids]
    groups = [
        {"params": [p for n, p in adam_named if decays(n, p)], "weight_decay": t.weight_decay},
        {"params": [p for n, p in adam_named if not decays(n, p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    fused = device.type in ("cuda", "cpu")  # fused AdamW kernels exist for both (CPU: ~7x faster step)
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                                                           fused=fused)]
    if muon_params:
        opts.append(torch.optim.Muon(muon_params, lr=t.muon_lr, weight_decay=t.weight_decay,
                                     adjust_lr_fn="match_rms_adamw"))
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def lr_factor(step: int, total: int, cfg: RunConfig) -> float:
    """Multiplier on the base lr at optimizer step `step` (0-based) of `total`."""
    t = cfg.train
    warm = int(round(t.warmup_frac * total))
    if step < warm:
        return (step + 1) / warm
    if t.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm - 1))
    if t.schedule == "linear":
        return 1.0 - (1.0 - t.min_lr_frac) * progress
    return t.min_lr_frac + (1.0 - t.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Checkpoints (safetensors model + torch optimizer/RNG state loadable with weights_only=True)
# --------------------------------------------------------------------------------------------


def unwrap(model: torch.nn.Module) -> GPTModel:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def save_checkpoint(run_dir: Path, step: int, model, opts, extra: dict, keep: int, rank: int, world: int,
                    dist_: Dist, fsdp: bool = False) -> None:
    """Write checkpoints/step_N atomically: everything into a temp folder, fsync, rename, then point
    `latest` at it. Every rank saves its RNG state; rank 0 saves the rest. With FSDP the model and optimizer
    are also saved sharded with torch.distributed.checkpoint (loadable on any number of ranks), and rank 0
    writes the gathered full weights as model.safetensors for eval/generation/export."""
    from safetensors.torch import save_model

    from gptlab.io import commit_dir

    ckdir = run_dir / "checkpoints"
    final = ckdir / f"step_{step:07d}"
    tmp = ckdir / f".tmp_step_{step:07d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist_.barrier()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng_rank{rank}.pt")
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_state_dict,
        )

        base = unwrap(model)
        msd, osd = get_state_dict(base, opts)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        full = get_model_state_dict(base, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            plain = GPTModel(base.cfg)
            plain.load_state_dict(full)
            save_model(plain, str(tmp / "model.safetensors"))
    elif rank == 0:
        save_model(unwrap(model), str(tmp / "model.safetensors"))
        torch.save([o.state_dict() for o in opts], tmp / "optimizer.pt")
    if rank == 0:
        atomic_write_json(tmp / "state.json", dict(extra, step=step, world=world, fsdp=fsdp))
    dist_.barrier()
    if rank == 0:
        commit_dir(tmp, final)
        atomic_write_text(ckdir / "latest", final.name + "\n")
        old = sorted(p for p in ckdir.glob("step_*") if p.is_dir())
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    dist_.barrier()


def latest_checkpoint(run_dir: Path) -> Path | None:
    ptr = run_dir / "checkpoints" / "latest"
    if not ptr.is_file():
        return None
    p = run_dir / "checkpoints" / ptr.read_text().strip()
    return p if p.is_dir() else None


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
    """Restore model, optimizer and this rank's RNG. A sharded (FSDP, torch.distributed.checkpoint) checkpoint
    loads on any number of ranks, with or without FSDP; a full one (model.safetensors + optimizer.pt) too."""
    if (ck / "dcp").is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_state_dict,
            set_state_dict,
        )

        base = unwrap(model)
        msd, osd = get_state_dict(base, opts)
        state = {"model": msd, "optim": osd}
        import warnings

        try:
            with warnings.catch_warnings():  # loading on one process without a process group is intended
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(state, checkpoint_id=str(ck / "dcp"))
        except Exception as e:  # DCP raises several types (CheckpointException, RuntimeError, ...)
            raise GptlabError(f"{ck / 'dcp'}: unreadable sharded checkpoint ({str(e).splitlines()[0][:200]})") from None
        set_state_dict(base, opts, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        load_model_weights(unwrap(model), ck / "model.safetensors")
    try:
        if not (ck / "dcp").is_dir():
            states = torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True)
            for o, s in zip(opts, states):
                o.load_state_dict(s)
        rng_file = ck / f"rng_rank{rank}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        state = json.loads((ck / "state.json").read_text())
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, json.JSONDecodeError, pickle.UnpicklingError) as e:
        raise GptlabError(f"{ck}: unreadable checkpoint state ({str(e).splitlines()[0][:200]})") from None
    return state


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_loss(model, dataset, context_length: int, batch_size: int, device: torch.device, precision: str,
                  offset: int = 0, n_batches: int = 0, dist_: Dist | None = None, vocab_map=None) -> float:
    """Mean cross-entropy (nats/token) over sequential windows; sharded over ranks when distributed."""
    from gptlab.data.loader import eval_batches

    was_training = model.training
    model.eval()
    rank, world = (dist_.rank, dist_.world) if dist_ else (0, 1)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in eval_batches(dataset, context_length, batch_size, offset=offset, n_batches=n_batches,
                             rank=rank, world=world):
        if vocab_map is not None:
            x, y = vocab_map.to_compact(x), vocab_map.to_compact(y)
        x, y = to_device(x, device), to_device(y, device)
        with autocast_ctx(precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
        total[0] += loss.double()
        total[1] += y.numel()
    if dist_ is not None:
        dist_.all_reduce_sum(total)
    model.train(was_training)
    if total[1].item() == 0:
        raise GptlabError("evaluation: no tokens to evaluate (split too small for the context length)")
    return (total[0] / total[1]).item()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """New run: refuse to overwrite. Resume: use the saved config, refuse a different one."""
    saved = run_dir / "config.toml"
    if saved.exists():
        old = config_from_run(run_dir)
        if not resume:
            raise GptlabError(f"{run_dir}: run directory already exists; pass --resume to continue it "
                              f"or choose another --run-dir")
        if old.hash() != cfg.hash():
            diff = [k for k in _flat(cfg.to_dict()) if _flat(cfg.to_dict())[k] != _flat(old.to_dict()).get(k)]
            raise GptlabError(f"{saved}: checkpoint is from another config (differs in {', '.join(diff[:4])})")
        return old
    return cfg


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_eval_spec(cfg: RunConfig, test_ds, T: int) -> None:
    from gptlab.data.loader import eval_batch_count

    e = cfg.eval
    have = eval_batch_count(test_ds, T, e.batch_size, offset=e.offset)
    if e.batches and e.batches > have:
        raise GptlabError(f"eval.batches: the test set spec asks for {e.batches} batches of {e.batch_size} x {T} tokens "
                          f"from token {e.offset:,} of the {e.split} split, which has room for {have}")


def _ensure_data(cfg: RunConfig, dist_: Dist) -> None:
    meta = Path(cfg.data.dir) / "meta.json"
    if meta.exists():
        return
    if not cfg.data.source:
        raise GptlabError(f"data.dir: {cfg.data.dir} has no meta.json; run `gptlab prepare --out {cfg.data.dir}` "
                          f"or set data.source")
    if dist_.main:
        from gptlab.data.prepare import prepare

        prepare([s.strip() for s in cfg.data.source.split(",")], cfg.data.dir, progress=cfg.train.progress)
    dist_.barrier()


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train `cfg` in `run_dir`. `stop_after`: stop (with a checkpoint) after that many optimizer steps —
    used by tests to simulate an interruption. Returns the final metrics (or progress when stopped)."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    dist_ = Dist(device.type)
    try:
        if dist_.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        dist_.barrier()
        lock = RunLock(run_dir) if dist_.main else contextlib.nullcontext()
        with lock:
            return _train(cfg, run_dir, resume, stop_after, device, dist_)
    finally:
        dist_.close()


def _train(cfg, run_dir, resume, stop_after, device, dist_) -> dict:
    from gptlab.data.loader import SequenceSampler, TokenDataset
    from gptlab.data.vocab import resolve_corpus_vocab

    _ensure_data(cfg, dist_)
    vmap = resolve_corpus_vocab(cfg)
    cfg = prepare_run_dir(cfg, run_dir, resume)
    t, m = cfg.train, cfg.model
    final_file = run_dir / "final.json"
    if final_file.exists():
        return json.loads(final_file.read_text())

    world, rank = dist_.world, dist_.rank
    if t.global_batch_size % (t.micro_batch_size * world):
        raise GptlabError(f"train.global_batch_size: {t.global_batch_size} is not divisible by micro_batch_size "
                          f"x world size ({t.micro_batch_size} x {world})")
    accum = t.global_batch_size // (t.micro_batch_size * world)
    precision = resolve_precision(t.precision, device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GptlabError("train.precision: bf16 is not supported on this GPU; use fp16")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32

    train_ds = TokenDataset(cfg.data.dir, "train")
    val_ds = TokenDataset(cfg.data.dir, "val")
    T = m.context_length
    sampler = SequenceSampler(train_ds, T, cfg.data.data_seed)
    test_ds = TokenDataset(cfg.data.dir, cfg.eval.split)
    _check_eval_spec(cfg, test_ds, T)  # fail before training, not after
    if vmap is None and train_ds.meta.get("vocab_size", 50257) > m.vocab_size:
        raise GptlabError(f"model.vocab_size: {m.vocab_size} is smaller than the data's vocabulary "
                          f"({train_ds.meta['vocab_size']})")

    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = GPTModel(m).to(device)
    torch.manual_seed(t.seed * 1000 + rank + 1)  # dropout masks differ between ranks
    model.activation_checkpointing = t.activation_checkpointing
    n_params = count_params(model)
    tokens_budget = token_budget(cfg, n_params)
    step_tokens = t.global_batch_size * T
    total_steps = max(1, math.ceil(tokens_budget / step_tokens))
    use_fsdp = t.fsdp and dist_.enabled
    if use_fsdp:  # FSDP2: parameters, gradients and optimizer state sharded over ranks, one unit per block
        from torch.distributed.fsdp import fully_shard

        for blk in model.trf_blocks:
            fully_shard(blk)
        fully_shard(model)
    opts = build_optimizers(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))

    start_step, skips, lr_scale = 0, 0, 1.0
    ck = latest_checkpoint(run_dir) if resume else None
    if ck is not None:
        state = load_checkpoint(ck, model, opts, rank)
        start_step, skips, lr_scale = state["step"], state.get("skips", 0), state.get("lr_scale", 1.0)
        # the global batch of a step does not depend on the number of ranks, so resuming on another
        # number of ranks continues the same data order (dropout RNG of new ranks starts fresh)
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    if dist_.main:
        if ck is None:
            if vmap is not None:
                vmap.save(run_dir)
            save_config(cfg, run_dir / "config.toml")
            atomic_write_json(run_dir / "meta.json", {
                "environment": environment(), "seed": t.seed, "params": n_params, "world_size": world,
                "device": str(device), "precision": precision, "data_meta": train_ds.meta.get("sources"),
                "data_tokenizer_hash": train_ds.meta.get("tokenizer_hash"), "tokens": tokens_budget,
                "total_steps": total_steps, "config_hash": cfg.hash(), "interventions": cfg.interventions,
                "created": time.time(), "argv": sys.argv})
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        else:  # drop metrics logged after the checkpoint we resume from
            for stale in (run_dir / "checkpoints").glob(".tmp_step_*"):  # a write cut short by a crash
                shutil.rmtree(stale, ignore_errors=True)
            rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("step", 0) <= start_step]
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    train_model = model
    if t.compile:
        train_model = torch.compile(model)
    if dist_.enabled and not use_fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    peak = device_peak_flops(device)
    fpt = flops_per_token(m, T)
    metrics_path = run_dir / "metrics.jsonl"

    def checkpoint(step: int) -> None:
        extra = {"skips": skips, "lr_scale": lr_scale, "tokens": step * step_tokens}
        if scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        save_checkpoint(run_dir, step, train_model, opts, extra, t.keep_checkpoints, rank, world, dist_, use_fsdp)

    def run_eval(ds, batch_size: int, offset: int = 0, n_batches: int = 0) -> float:
        # FSDP: every rank runs every batch (its forward needs all ranks); else batches are split over ranks
        return evaluate_loss(model, ds, T, batch_size, device, precision, offset=offset, n_batches=n_batches,
                             dist_=None if use_fsdp else dist_, vocab_map=vmap)

    bar = None
    if dist_.main and t.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc=cfg.name, unit="step", dynamic_ncols=True,
                   file=sys.stderr)
    train_model.train()
    t0 = time.time()
    tok_count, recent, window = 0, [], []  # window: step losses since the last log line
    log_t0, log_tokens = time.time(), 0
    if start_step == 0 and t.eval_interval:
        vl = run_eval(val_ds, t.micro_batch_size, n_batches=t.eval_batches)
        if dist_.main:
            append_jsonl(metrics_path, {"step": 0, "tokens": 0, "val_loss": vl})
    seq_warm_steps = int(t.seq_len_warmup_frac * total_steps)
    step = start_step
    for step in range(start_step, total_steps):
        factor = lr_factor(step, total_steps, cfg) * lr_scale
        for o in opts:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * factor
        cur_T = T
        if seq_warm_steps and step < seq_warm_steps:
            cur_T = max(8, int(T * (step + 1) / seq_warm_steps) // 8 * 8)
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = sampler.batch_at(step, micro, rank, world, t.micro_batch_size, t.global_batch_size)
            if cur_T < T:
                x, y = x[:, :cur_T], y[:, :cur_T]
            if vmap is not None:
                x, y = vmap.to_compact(x), vmap.to_compact(y)
            x, y = to_device(x, device), to_device(y, device)
            sync = contextlib.nullcontext()
            if use_fsdp:
                model.set_requires_gradient_sync(micro == accum - 1)
            elif dist_.enabled and micro < accum - 1:
                sync = train_model.no_sync()
            with sync:
                loss_sum += forward_backward(train_model, x, y, precision, device, accum, t.z_loss, scaler.scale)
        tok_count += x.numel() * accum * world
        stats = torch.stack([loss_sum / accum, torch.zeros((), device=device)])
        for o in opts:
            scaler.unscale_(o)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"),
                                               foreach=True)
        if hasattr(gnorm, "full_tensor"):  # DTensor under FSDP
            gnorm = gnorm.full_tensor()
        stats[1] = (~torch.isfinite(gnorm)).float() if not scaler.is_enabled() else 0.0
        dist_.all_reduce_sum(stats)
        step_loss = (stats[0] / world).item()
        bad = (not math.isfinite(step_loss)) or stats[1].item() > 0
        if bad:
            msg = (f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient'} at step {step + 1} "
                   f"(last good checkpoint: {latest_checkpoint(run_dir) or 'none'})")
            if t.nan_policy == "stop" or skips >= t.max_skips:
                if bar:
                    bar.close()
                raise GptlabError(f"{run_dir}: {msg}; stopping (train.nan_policy={t.nan_policy}, "
                                  f"skips used {skips}/{t.max_skips})")
            skips += 1
            lr_scale *= 0.5
            for o in opts:
                o.zero_grad(set_to_none=True)
            if dist_.main:
                append_jsonl(metrics_path, {"step": step + 1, "event": "skipped_batch", "reason": msg,
                                            "lr_scale": lr_scale})
            continue
        for o in opts:
            scaler.step(o)
        scaler.update()
        for o in opts:
            o.zero_grad(set_to_none=True)
        recent.append(step_loss)
        recent = recent[-50:]
        window.append(step_loss)
        done = step + 1
        log_tokens += step_tokens
        if dist_.main:
            if done % t.log_interval == 0 or done == total_steps:
                dt = time.time() - log_t0
                tps = log_tokens / dt if dt > 0 else 0.0
                # train_loss: mean over the steps since the last log line (a single batch is noisy)
                row = {"step": done, "tokens": done * step_tokens, "train_loss": float(np.mean(window)),
                       "lr": opts[0].param_groups[0]["lr"], "grad_norm": float(gnorm), "tokens_per_s": tps}
                u = mfu(m, tps, peak * world if peak else None, T)
                if u is not None:
                    row["mfu"] = u
                if len(recent) > 10 and step_loss > 1.5 * float(np.median(recent[:-1])):
                    row["event"] = "loss_spike"
                append_jsonl(metrics_path, row)
                log_t0, log_tokens, window = time.time(), 0, []
                if bar:
                    bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tps:,.0f}", lr=f"{row['lr']:.2e}")
            if bar:
                bar.update(1)
        if t.eval_interval and done % t.eval_interval == 0 and done != total_steps:
            vl = run_eval(val_ds, t.micro_batch_size, n_batches=t.eval_batches)
            if dist_.main:
                append_jsonl(metrics_path, {"step": done, "tokens": done * step_tokens, "val_loss": vl})
        if (t.checkpoint_interval and done % t.checkpoint_interval == 0) or done == total_steps \
                or (stop_after is not None and done - start_step >= stop_after):
            checkpoint(done)
        if stop_after is not None and done - start_step >= stop_after and done != total_steps:
            if bar:
                bar.close()
            return {"stopped_at": done, "total_steps": total_steps}
    if bar:
        bar.close()
    wall = time.time() - t0

    # final evaluation on val (eval_batches) and the test spec
    val_loss = run_eval(val_ds, t.micro_batch_size, n_batches=t.eval_batches)
    e = cfg.eval
    test_loss = run_eval(test_ds, e.batch_size, offset=e.offset, n_batches=e.batches)
    rows = read_jsonl(metrics_path) if dist_.main else []
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    final = {
        "name": cfg.name, "steps": total_steps, "tokens": total_steps * step_tokens, "params": n_params,
        "flops": fpt * total_steps * step_tokens, "train_loss": float(np.mean(train_losses[-5:])) if train_losses else None,
        "val_loss": val_loss, "test_loss": test_loss, "test_perplexity": math.exp(test_loss),
        "wall_time": wall, "tokens_per_s": _median_tps(rows) or (tok_count / wall if wall > 0 else None),
        "skipped_batches": skips,
        "precision": precision, "device": str(device), "world_size": world,
    }
    if dist_.main:
        append_jsonl(metrics_path, {"step": total_steps, "tokens": total_steps * step_tokens, "val_loss": val_loss})
        atomic_write_json(final_file, final)
    dist_.barrier()
    return final


def _median_tps(rows: list[dict]) -> float | None:
    """Median logged throughput (the first window, with warm-up, is dropped when there are others)."""
    tps = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    if len(tps) > 1:
        tps = tps[1:]
    return float(np.median(tps)) if tps else None


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


__all__ = ["train", "evaluate_loss", "load_run_model", "lr_factor", "build_optimizers", "forward_backward"]
