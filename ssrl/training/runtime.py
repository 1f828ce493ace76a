"""Where a training job runs: device, precision, threads, and its place among `torchrun`
processes (`Dist`, the one source of a process's rank)."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place among the `torchrun` processes (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """What `torchrun` says in RANK / WORLD_SIZE / LOCAL_RANK (alone when unset)."""
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
                   int(env.get("LOCAL_RANK", "0")))


def init_runtime(runtime: dict) -> tuple[torch.device, Dist]:
    """Pick the device, set CPU threads, and join the process group when under torchrun."""
    torch.set_num_threads(int(runtime.get("threads", 1)))
    dist_info = Dist.from_env()
    want = runtime.get("device", "auto")
    cuda = torch.cuda.is_available() and want != "cpu"
    if dist_info.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        # Leave the group before the interpreter tears down: gloo's threads otherwise die
        # joinable and abort the process ("terminate called without an active exception").
        atexit.register(_leave_group)
    if cuda:
        device = torch.device(want if want.startswith("cuda:") else f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    return device, dist_info


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def maybe_compile(runtime: dict, *encoders: nn.Module) -> None:
    """`torch.compile` the encoders in place (state-dict keys unchanged) when configured."""
    if runtime.get("compile"):
        for encoder in encoders:
            encoder.compile()


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 on CPU (CPU bf16 is slower there and not needed)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world
    return x


def all_gather_cat(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank (rank order)."""
    if d.world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def distribute(model: nn.Module, device: torch.device, d: Dist) -> nn.Module:
    """The student as the processes train it: DDP under torchrun (SyncBatchNorm on GPUs; gloo on
    CPU has no SyncBatchNorm, so BatchNorm statistics stay per process there)."""
    if d.world == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model)


def finite_or_raise(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; "
                                 "lower the learning rate or check the input data")
