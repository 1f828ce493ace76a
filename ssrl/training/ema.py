"""The EMA teacher: a copy of the student that follows it slowly and gets no gradient."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ssrl.runtime import unwrap


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for parameters and floating buffers (BN)."""
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
    """A copy that receives no gradient (the teacher), in eval mode."""
    teacher = copy.deepcopy(unwrap(model))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()
