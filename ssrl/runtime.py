"""Where a training job runs: device, precision, threads, and its place among `torchrun`
processes (`Dist`, the one source of a process's rank)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("ssrl.train")


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
        if dist_info.main:
            log.info("torchrun: %d processes, %s backend", dist_info.world, dist.get_backend())
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
    """The student as the processes train it: DDP under torchrun, its BatchNorm synchronised.

    Batch statistics are computed over the global batch (`sync_batch_norm`), so every
    process holds the same running statistics and DDP need not broadcast buffers: with
    `broadcast_buffers=True` DDP overwrites them in place at every forward, which breaks
    autograd when one step runs the student more than once before its backward (DINO: global
    crops, then local crops)."""
    if d.world == 1:
        return model
    model = sync_batch_norm(model, device, d)
    return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)


def sync_batch_norm(model: nn.Module, device: torch.device, d: Dist) -> nn.Module:
    """`model` with every BatchNorm normalising over the global batch of all processes, so
    that N processes compute what one process computes on the whole batch (up to summation
    order). CUDA: `nn.SyncBatchNorm`; CPU (gloo, which `nn.SyncBatchNorm` does not run on):
    `GlobalBatchNorm`. Unchanged when alone. State-dict keys stay the same."""
    if d.world == 1 or any(isinstance(m, (nn.SyncBatchNorm, GlobalBatchNorm))
                           for m in model.modules()):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return GlobalBatchNorm.convert(model)


_BN_GROUP = None


def _bn_group():
    """A process group of its own for the statistics' all-reduces (forward and backward), so
    they never interleave with DDP's asynchronous gradient buckets on the default group."""
    global _BN_GROUP
    if _BN_GROUP is None:
        _BN_GROUP = dist.new_group(backend=dist.get_backend())
    return _BN_GROUP


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all `torchrun` processes, in plain differentiable
    operations (any backend, CPU included): per-channel sums are all-reduced (and, in the
    backward, their gradients), so the output, the gradients and the running statistics are
    those of one process normalising the concatenated batch."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        group = _bn_group()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count, group=group)
        n = count.item()
        mean = all_reduce(x.sum(dims), group=group) / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims), group=group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return y

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Every BatchNorm{1,2,3}d of `module` replaced by a GlobalBatchNorm with its state."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, device=next(
                          iter(module.state_dict().values())).device)
            new.load_state_dict(module.state_dict())
            if module.affine:
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            new.train(module.training)
            return new
        for name, child in module.named_children():
            converted = cls.convert(child)
            if converted is not child:
                setattr(module, name, converted)
        return module


def finite_or_raise(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; "
                                 "lower the learning rate or check the input data")
