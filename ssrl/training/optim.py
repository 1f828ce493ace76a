"""Optimiser helpers and per-step schedules: learning rates and the EMA teacher's momentum.

Every schedule is an array with one value per optimiser step of the whole stage, computed once,
so a resumed run reads the same values as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


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


def momentum_from_lag(lag_epochs: float, steps_per_epoch: int) -> float:
    """The EMA momentum whose time constant is `lag_epochs` epochs.

    An EMA with momentum m averages the last 1 / (1 - m) steps (its time constant), so a
    teacher that lags the student by L epochs of S steps has m = 1 - 1 / (L * S). The paper's
    0.999 -> 0.9999 on VoxCeleb2 at batch 480 (2,275 steps per epoch) is a lag of
    0.44 -> 4.4 epochs."""
    return 1.0 - 1.0 / max(lag_epochs * steps_per_epoch, 1.0)


#: The paper's EMA momentum [start, end], used when a section sets neither it nor a lag.
PAPER_MOMENTUM = (0.999, 0.9999)


def teacher_momentum(c: dict, steps_per_epoch: int, total_steps: int) -> np.ndarray:
    """Per-step EMA momentum of a stage's config section: from `teacher_lag_epochs`
    [start, end] when given (the dynamics then survive a change of data size or batch), else
    from `momentum_start` / `momentum_end` as written (null: the paper's). The start-up check
    refuses a section that sets both."""
    lag = c.get("teacher_lag_epochs")
    if lag:
        start, end = (momentum_from_lag(x, steps_per_epoch) for x in lag)
    else:
        start, end = (d if c.get(k) is None else c[k]
                      for k, d in zip(("momentum_start", "momentum_end"), PAPER_MOMENTUM))
    return linear_schedule(start, end, total_steps)


def scaled_lr(c: dict) -> float:
    """A section's base lr under the linear scaling rule: `lr x batch_size /
    lr_reference_batch` when a reference batch is given (DINO's rule, reference 256), else
    `lr` as written."""
    ref = c.get("lr_reference_batch")
    return c["lr"] * c["batch_size"] / ref if ref else c["lr"]


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
