"""Where the computation runs: the process group under torchrun (NCCL on GPU, gloo on CPU), the device of this
rank, the autocast precision, and host-to-device copies of batches."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from gptlab import GptlabError


class Dist:
    """rank/world of this process; `Dist()` is one process without a process group, `Dist.from_env` reads
    torchrun's environment and joins the group."""

    def __init__(self, world: int = 1, rank: int = 0, local_rank: int = 0):
        self.world, self.rank, self.local_rank = world, rank, local_rank
        self.enabled = world > 1
        self._own = False

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
        """On CUDA the device is set before the process group exists and bound to it (`device_id`), so NCCL's
        first collective and every barrier use this rank's GPU, not GPU 0."""
        d = cls(
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
        if d.enabled and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
                dist.init_process_group(backend="nccl", device_id=device)
            else:
                dist.init_process_group(backend="gloo")
            d._own = True
        return d

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
    if spec == "cuda":  # an index always: torch.cuda.set_device needs one
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
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
