"""What every training loop shares: device, precision, schedules, EMA, checkpoints, processes.

The loops themselves (DINO in `train_dino.py`, SSRL and the iterative rounds in
`train_ssrl.py`) stay short because everything that is not the method lives here.

Determinism: the epoch's order comes from (seed, epoch) and every draw of a step from
(seed, epoch, step, item) (see `loader.item_rng`), so a run resumed from a checkpoint taken at
any step boundary replays exactly the same batches, crops and augmentations as an
uninterrupted run. No RNG state needs saving.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ssrl.files import InputError, atomic_path

log = logging.getLogger("ssrl.train")


# --- devices, precision, processes -------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """This process's place among the `torchrun` processes (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_runtime(runtime: dict) -> tuple[torch.device, Dist]:
    """Pick the device, set CPU threads, and join the process group when under torchrun."""
    torch.set_num_threads(int(runtime.get("threads", 1)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist_info = Dist()
    want = runtime.get("device", "auto")
    cuda = torch.cuda.is_available() and want != "cpu"
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        dist_info = Dist(dist.get_rank(), dist.get_world_size(), local)
    if cuda:
        device = torch.device(want if want.startswith("cuda:") else f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    return device, dist_info


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


# --- schedules ---------------------------------------------------------------------------

def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Per-step values: linear warm-up from `warmup_start`, then cosine from `base` to `final`."""
    warm = np.linspace(warmup_start, base, warmup_steps, endpoint=False)
    n = max(total_steps - warmup_steps, 0)
    t = np.arange(n)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(n, 1)))
    return np.concatenate([warm, cos])[:total_steps]


def linear_schedule(start: float, end: float, total_steps: int) -> np.ndarray:
    """EMA momentum: rises linearly from `start` (first step) to `end` (last step)."""
    return np.linspace(start, end, max(total_steps, 1))


# --- EMA teacher ---------------------------------------------------------------------------

@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← m·teacher + (1−m)·student, for parameters and floating buffers (BN stats)."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        if tb.dtype.is_floating_point:
            tb.mul_(momentum).add_(sb.detach(), alpha=1.0 - momentum)
        else:
            tb.copy_(sb)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy that receives no gradient (the teacher)."""
    import copy

    teacher = copy.deepcopy(unwrap(model))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: biases and norm parameters (1-D) get none."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- checkpoints ---------------------------------------------------------------------------

class Checkpoints:
    """`<dir>/last.pt`, replaced atomically; loaded with `weights_only=True` (no code runs).

    A checkpoint holds tensors, numpy arrays (as tensors), numbers, strings and the position
    `(epoch, step)` of the NEXT step to run; every per-utterance state goes in too.
    """

    def __init__(self, directory: str | os.PathLike, d: Dist = Dist()):
        self.dir = Path(directory)
        self.path = self.dir / "last.pt"
        self.d = d

    def save(self, state: dict[str, Any]) -> None:
        if not self.d.main:
            return
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
            raise InputError(f"{self.path}: cannot load checkpoint ({err}); "
                             "delete it to start this stage over") from None


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a stage's final model file (weights and the config they were built with)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    try:
        model = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: cannot load model file ({err})") from None
    if not isinstance(model, dict) or not {"encoder", "model_cfg", "features_cfg"} <= set(model):
        raise InputError(f"{path}: not a model file (no encoder weights or model config; "
                         "a training checkpoint? give the stage's model.pt)")
    return model


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that says which file does not fit which model."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).splitlines()[0:3])
        raise InputError(f"{source}: checkpoint does not match the configured model ({first}); "
                         "was it trained with another model config?") from None


def save_model_file(path: str | os.PathLike, encoder: nn.Module, model_cfg: dict,
                    features_cfg: dict, extra: dict[str, Any] | None = None) -> None:
    """The artefact later stages read: the (teacher) encoder and how to rebuild it."""
    state = {"encoder": {k: v.detach().cpu() for k, v in unwrap(encoder).state_dict().items()},
             "model_cfg": dict(model_cfg), "features_cfg": dict(features_cfg)}
    state.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def batches_per_epoch(n_items: int, batch_size: int, steps: int | None) -> int:
    """Steps in one epoch: a fixed count when configured, else one pass (drop the last partial)."""
    return int(steps) if steps else max(n_items // batch_size, 1)


def epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's utterance order, a function of (seed, epoch) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 2**32 - 1])).permutation(
        n_items)


def step_indices(order: np.ndarray, step: int, batch_size: int) -> np.ndarray:
    """Utterances of one step; wraps around so fixed step counts can exceed one pass."""
    start = step * batch_size
    return order[np.arange(start, start + batch_size) % len(order)]


def finite_or_raise(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; "
                                 "lower the learning rate or check the input data")
