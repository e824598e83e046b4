"""The Trainer: one model's training machinery, shared by pretraining (pretrain.py) and fine-tuning
(posttrain/finetune.py).

It owns the model as trained (optionally FSDP2-sharded per block, compiled, wrapped in DDP), its optimizers and
GradScaler, and does four things: `step` (micro-batches -> forward, loss and backward under autocast with gradient
accumulation and gradient sync only on the last micro-step -> unscale, clip, a non-finite check agreed by all
ranks -> optimizer step), `evaluate` (mean loss over batches), `save` and `restore` (one checkpoint format, RNG
included, so a resumed run continues bit for bit)."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab import GptlabError
from gptlab.train.checkpoint import load_checkpoint, save_checkpoint
from gptlab.train.distributed import Dist, autocast_ctx, to_device
from gptlab.train.evaluate import loss_sum
from gptlab.train.optim import OptimSettings, make_optimizers
from gptlab.train.schedule import set_lr

Batch = tuple[torch.Tensor, torch.Tensor]


def forward_backward(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    device: torch.device,
    accum: int = 1,
    z_loss: float = 0.0,
    scale=lambda loss: loss,
) -> torch.Tensor:
    """One micro-step: forward and loss under autocast (the model computes the loss, so torch.compile fuses it
    with the output layer), backward of loss / accum through `scale` (the GradScaler's, for fp16). Returns the
    detached cross-entropy. The logits die inside the model's forward: at the peak in backward autograd holds
    the log-softmax output and two gradients, 12 B per logit, not 16 (fp32) or 18 (16-bit) as when a caller
    keeps the logits and their fp32 copy alive."""
    with autocast_ctx(precision, device):
        loss, full = model(x, y, z_loss)
    scale(full / accum).backward()
    return loss.detach()


@dataclass
class StepResult:
    loss: float  # mean cross-entropy over the step's micro-batches and ranks
    grad_norm: float  # before clipping
    ok: bool  # False: non-finite loss or gradient; the optimizer did not step
    tokens: int  # tokens processed by all ranks


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimSettings,
        device: torch.device,
        precision: str,
        dist_: Dist | None = None,
        grad_clip: float = 0.0,
        z_loss: float = 0.0,
        compile: bool = False,
        fsdp: bool = False,
    ):
        self.dist = dist_ or Dist()
        self.device, self.precision, self.grad_clip, self.z_loss = device, precision, grad_clip, z_loss
        self.fsdp = fsdp and self.dist.enabled
        if self.fsdp and optim.muon_lr is not None:
            raise GptlabError(
                "train.optimizer: muon does not run under train.fsdp (Newton-Schulz orthogonalises "
                "whole matrices, FSDP2 gives each rank a shard); use DDP (train.fsdp = false)"
            )
        if self.fsdp:  # FSDP2: parameters, gradients and optimizer state sharded over ranks, one unit per block
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            # bf16 training all-gathers bf16 weights (half the traffic of fp32) and reduces gradients in fp32
            bf16 = precision == "bf16"
            mp = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
            )
            for blk in model.trf_blocks:
                fully_shard(blk, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
        self.model = model
        self.opts = make_optimizers(model, optim, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        self.train_model = torch.compile(model) if compile else model
        if self.dist.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # no buffer to sync each forward: RoPE tables and the causal mask are constants, identical on every rank
            # (torch 2.13 names the switch forward_sync_buffers; earlier releases broadcast_buffers)
            no_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False}
            )
            self.train_model = DDP(
                self.train_model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
            )

    # ---- one optimizer step ----------------------------------------------------------------

    def set_lr(self, factor: float) -> None:
        set_lr(self.opts, factor)

    @property
    def lrs(self) -> dict[str, float]:
        """Each optimizer's current lr: "lr" (AdamW, the first), "lr_muon" (Muon, under train.optimizer = muon)."""
        muon = getattr(torch.optim, "Muon", ())
        return {
            "lr" if i == 0 else "lr_muon" if isinstance(o, muon) else f"lr_{i}": o.param_groups[0]["lr"]
            for i, o in enumerate(self.opts)
        }

    def step(self, micro_batches: list[Batch] | Iterable[Batch], accum: int) -> StepResult:
        """Accumulate gradients over `accum` micro-batches (each already in the model's vocabulary), then step
        unless the loss or gradient is non-finite on any rank; gradients are cleared either way."""
        loss_total, tokens = torch.zeros((), device=self.device), 0
        for micro, (x, y) in enumerate(micro_batches):
            x, y = to_device(x, self.device), to_device(y, self.device)
            with self._grad_sync(last=micro == accum - 1):
                loss_total += forward_backward(
                    self.train_model, x, y, self.precision, self.device, accum, self.z_loss, self.scaler.scale
                )
            tokens += x.numel() * self.dist.world
        stats = torch.stack([loss_total / accum, torch.zeros((), device=self.device)])
        gnorm = self._unscale_and_clip()
        stats[1] = (~torch.isfinite(gnorm)).float() if not self.scaler.is_enabled() else 0.0
        self.dist.all_reduce_sum(stats)
        loss = (stats[0] / self.dist.world).item()
        ok = math.isfinite(loss) and stats[1].item() == 0
        if ok:
            for o in self.opts:
                self.scaler.step(o)
        if ok or self.scaler.is_enabled():
            self.scaler.update()  # also after a skipped fp16 step: lowers the scale and ends this unscale_()
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        return StepResult(loss, float(gnorm), ok, tokens)

    def _grad_sync(self, last: bool):
        """Gradients are all-reduced (DDP) or reduce-scattered (FSDP) only on the last micro-step."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
        elif self.dist.enabled and not last:
            return self.train_model.no_sync()
        return contextlib.nullcontext()

    def _unscale_and_clip(self) -> torch.Tensor:
        for o in self.opts:
            self.scaler.unscale_(o)
        gnorm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.grad_clip if self.grad_clip > 0 else float("inf"), foreach=True
        )
        return gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # DTensor under FSDP

    # ---- evaluation and checkpoints --------------------------------------------------------

    def evaluate(self, batches: Iterable[Batch]) -> tuple[float, int]:
        """(summed loss, counted targets) over `batches`; under FSDP every rank runs every batch (its forward
        needs all ranks), otherwise the caller gives each rank its share and the sums are all-reduced."""
        return loss_sum(self.model, batches, self.device, self.precision, None if self.fsdp else self.dist)

    def save(
        self,
        run_dir: Path,
        step: int,
        state: dict,
        pointers: tuple[str, ...] = ("latest",),
        keep: int | None = None,
        protect: tuple[Path, ...] = (),
    ) -> Path:
        if self.scaler.is_enabled():
            state = dict(state, scaler=self.scaler.state_dict())
        return save_checkpoint(
            run_dir,
            step,
            self.train_model,
            self.opts,
            state,
            self.dist,
            fsdp=self.fsdp,
            pointers=pointers,
            keep=keep,
            protect=protect,
        )

    def restore(self, ck: Path) -> dict:
        state = load_checkpoint(ck, self.train_model, self.opts, self.dist.rank)
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        return state
