"""Stage 1: DINO self-distillation with no labels (SSRL-NOTES, "Stage 1").

Per step: every utterance of the batch gives 2 long (global) and 4 short (local) crops, all
augmented. The teacher, an EMA of the student, sees the global crops; the student sees all of
them and learns to predict the teacher's centred, sharpened distribution over prototypes for
every other crop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssrl.data.loader import CropBatches, View, augmenter_from_config, batches_per_epoch
from ssrl.data.stores import WaveStore
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.heads import DINOHead
from ssrl.models.model_file import save_model_file
from ssrl.training.checkpoints import Checkpoints
from ssrl.training.ema import ema_update, frozen_copy
from ssrl.training.job import Inputs, Progress, compute_record, effective_params, write_records
from ssrl.training.optim import (
    cosine_schedule,
    param_groups,
    scaled_lr,
    set_lr,
    teacher_momentum,
)
from ssrl.training.runtime import (
    Dist,
    all_reduce_mean,
    autocast,
    distribute,
    finite_or_raise,
    init_runtime,
    maybe_compile,
    sync_batch_norm,
    unwrap,
)

log = logging.getLogger("ssrl.dino")


class DINOModel(nn.Module):
    """Encoder followed by the projection head; the encoder's output is the speaker embedding."""

    def __init__(self, encoder: nn.Module, head: DINOHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(feats))


def dino_loss(student_out: list[torch.Tensor], teacher_out: list[torch.Tensor],
              center: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Mean cross-entropy over all (teacher global crop i, student crop j ≠ i) pairs.

    `student_out[j]` and `teacher_out[i]` are `[B, K]` logits; the first len(teacher_out)
    student crops are the same global crops the teacher saw.
    """
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher_out]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    terms = [-(t * lp).sum(dim=-1).mean()
             for i, t in enumerate(targets) for j, lp in enumerate(log_probs) if i != j]
    return torch.stack(terms).mean()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_out: list[torch.Tensor], momentum: float,
                   d: Dist = Dist()) -> torch.Tensor:
    """EMA of the teacher's batch-mean logits (averaged over all processes)."""
    batch_mean = torch.cat(teacher_out).float().mean(dim=0, keepdim=True)
    if d.world > 1:
        torch.distributed.all_reduce(batch_mean)
        batch_mean /= d.world
    return center * momentum + batch_mean * (1 - momentum)


def no_phase(name: str) -> contextlib.AbstractContextManager:
    """The default `DINORun.phase`: steps name their phases so a benchmark can time them."""
    return contextlib.nullcontext()


@dataclass
class DINORun:
    """What DINO holds while it trains (the loop's working set)."""

    cfg: dict
    device: torch.device
    d: Dist
    frontend: Frontend
    student: nn.Module  # DINOModel, DDP-wrapped under torchrun
    teacher: DINOModel
    optimizer: torch.optim.Optimizer
    center: torch.Tensor
    batches: CropBatches
    lr_at: np.ndarray
    momentum_at: np.ndarray
    steps: int
    phase: Callable[[str], contextlib.AbstractContextManager] = no_phase


def build_dino_run(cfg: dict, store, augmenter, device: torch.device, d: Dist) -> DINORun:
    """Student (encoder + head), EMA teacher, SGD, schedules: DINO before its first step."""
    c = cfg["dino"]
    torch.manual_seed(cfg["seed"])  # the initial weights: the same in every run and process
    encoder = build_encoder({**cfg["model"], "n_mels": cfg["features"]["n_mels"]})
    head = DINOHead(encoder.embed_dim, c["out_dim"], c["hidden_dim"], c["bottleneck_dim"])
    student = DINOModel(encoder, head).to(device)
    # As in DINO, the teacher's BatchNorm uses batch statistics (train mode): with running
    # statistics its outputs barely differ between utterances early on, the centred targets
    # turn uniform, and training collapses (measured on the built-in corpus).
    teacher = frozen_copy(student).to(device).train()
    # Under torchrun both normalise over the global batch, as one process would.
    student, teacher = (sync_batch_norm(m, device, d) for m in (student, teacher))
    maybe_compile(cfg["runtime"], student.encoder, teacher.encoder)
    student = distribute(student, device, d)
    optimizer = torch.optim.SGD(param_groups(student, c["weight_decay"]), lr=0.0,
                                momentum=c["sgd_momentum"])
    steps = batches_per_epoch(len(store), c["batch_size"], c["steps_per_epoch"])
    total = steps * c["epochs"]
    views = [View("global", c["global_crops"], c["global_seconds"], augment=True),
             View("local", c["local_crops"], c["local_seconds"], augment=True)]
    frontend = Frontend(cfg["features"]["frontend"], n_mels=cfg["features"]["n_mels"]).to(device)
    return DINORun(cfg, device, d, frontend, student, teacher, optimizer,
                   torch.zeros(1, c["out_dim"], device=device),
                   CropBatches(store, views, c["batch_size"], steps, cfg["seed"], d, augmenter,
                               device, cfg["augment"]["on_gpu"], cfg["runtime"]["num_workers"]),
                   cosine_schedule(scaled_lr(c), c["min_lr"], total, c["warmup_epochs"] * steps),
                   teacher_momentum(c, steps, total), steps)


def dino_step(run: DINORun, crops: dict, epoch: int, step: int) -> float:
    """One optimiser step: the teacher's centred, sharpened view of the global crops is the
    target for the student's view of every other crop; then the teacher and centre follow."""
    c = run.cfg["dino"]
    it = epoch * run.steps + step
    set_lr(run.optimizer, float(run.lr_at[it]))
    n_global = c["global_crops"]
    with run.phase("teacher"), autocast(run.device, run.cfg["runtime"]["bf16"]):
        feats_global = run.frontend(torch.cat(crops["global"]))
        with torch.no_grad():
            teacher_out = list(run.teacher(feats_global).chunk(n_global))
    with run.phase("student"):
        with autocast(run.device, run.cfg["runtime"]["bf16"]):
            student_out = list(run.student(feats_global).chunk(n_global))
            if crops["local"]:
                feats_local = run.frontend(torch.cat(crops["local"]))
                student_out += list(run.student(feats_local).chunk(len(crops["local"])))
            loss = dino_loss(student_out, teacher_out, run.center, c["student_temp"],
                             c["teacher_temp"])
        finite_or_raise(loss, epoch, step)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with run.phase("optim"):
        if c["clip_grad"] > 0:
            torch.nn.utils.clip_grad_norm_(run.student.parameters(), c["clip_grad"])
        if epoch < c["freeze_last_layer_epochs"]:  # prototypes stay put while features form
            for p in unwrap(run.student).head.last_layer_parameters():
                p.grad = None
        run.optimizer.step()
    with run.phase("ema"):
        ema_update(run.teacher, unwrap(run.student), float(run.momentum_at[it]))
        run.center = updated_center(run.center, teacher_out, c["center_momentum"], run.d)
    return all_reduce_mean(loss.detach(), run.d).item()  # the global batch's loss


def train_dino(cfg: dict, inputs: Inputs, out_dir: Path, tracker=None) -> dict:
    """Train DINO and write `out_dir/model.pt` (the teacher encoder), history.json and
    compute.json; return the compute record. Resumes from its own checkpoints only."""
    c = cfg["dino"]
    device, d = init_runtime(cfg["runtime"])
    store = WaveStore(inputs.train)
    augmenter = augmenter_from_config(cfg, inputs.noise, inputs.rir, c["p_reverb"], c["p_noise"])
    run = build_dino_run(cfg, store, augmenter, device, d)
    if tracker is not None:
        tracker.log_params(effective_params(cfg, device, "dino", run.momentum_at))

    ckpt = Checkpoints(out_dir / "checkpoint", inputs.fingerprint(cfg), d)
    state = ckpt.load()
    history: list[dict] = []
    epoch0, step0 = 0, 0
    resumed_losses: list[float] = []
    if state is not None:
        unwrap(run.student).load_state_dict(state["student"])
        run.teacher.load_state_dict(state["teacher"])
        if not state.get("finished"):
            run.optimizer.load_state_dict(state["optimizer"])
        run.center = state["center"].to(device)
        epoch0, step0, history = state["epoch"], state["step"], state["history"]
        resumed_losses = list(state.get("epoch_losses", []))  # this epoch's steps so far
        if state.get("finished"):
            log.info("DINO finished training in an earlier run (epoch %d, %s): writing its "
                     "outputs again, no training", epoch0, ckpt.path)
        else:
            log.info("resuming DINO at epoch %d step %d", epoch0, step0)

    def checkpoint(epoch: int, step: int, losses: list[float], finished: bool = False) -> None:
        state = {"student": unwrap(run.student).state_dict(),
                 "teacher": run.teacher.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "center": run.center.cpu(), "epoch": epoch, "step": step,
                 "history": history, "epoch_losses": losses if step else []}
        ckpt.finish(state) if finished else ckpt.save(state)

    every = cfg["runtime"]["checkpoint_every_steps"]
    progress = Progress(c["epochs"], history, tracker)
    for epoch in range(epoch0, c["epochs"]):
        losses, t_epoch = (resumed_losses if epoch == epoch0 else []), time.time()
        for step, crops in run.batches.epoch(epoch, step0 if epoch == epoch0 else 0):
            losses.append(dino_step(run, crops, epoch, step))
            it = epoch * run.steps + step
            if tracker is not None and it % 10 == 0:
                tracker.log_metrics({"step/loss": losses[-1], "step/lr": float(run.lr_at[it]),
                                     "step/teacher_momentum": float(run.momentum_at[it])},
                                    step=it + 1)
            if every and (it + 1) % every == 0 and step + 1 < run.steps:
                checkpoint(epoch, step + 1, losses)
        progress.epoch({"epoch": epoch + 1,
                        "loss": float(np.mean(losses)) if losses else float("nan"),
                        "seconds": time.time() - t_epoch})
        if epoch + 1 < c["epochs"]:
            checkpoint(epoch + 1, 0, [])
    # Kept (finished, no optimiser) until the job runs again: a job stopped after this point,
    # before its outputs were accepted, writes them again from here without training.
    checkpoint(c["epochs"], 0, [], finished=True)

    compute = compute_record(history, run.steps, c["batch_size"], len(store))
    if d.main:
        save_model_file(out_dir / "model.pt", run.teacher.encoder, cfg["model"], run.frontend,
                        {"stage": "dino", "seed": cfg["seed"]})
        write_records(out_dir, history, compute, tracker)
    return compute
