"""Stage 1: DINO self-distillation with no labels (SSRL-NOTES, "Stage 1").

Per step: every utterance of the batch gives 2 long (global) and 4 short (local) crops, all
augmented. The teacher, an EMA of the student, sees the global crops; the student sees all of
them and learns to predict the teacher's centred, sharpened distribution over prototypes for
every other crop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssrl.models.frontend import Frontend
from ssrl.models.heads import DINOHead
from ssrl.files import write_json
from ssrl.data.loader import CropBatches, View, augmenter_from_config, open_store
from ssrl.models.encoders import build_encoder
from ssrl.tracking.mlflow_run import Tracker
from ssrl.training.runtime import (
    Checkpoints,
    Dist,
    autocast,
    batches_per_epoch,
    cosine_schedule,
    ema_update,
    finite_or_raise,
    frozen_copy,
    init_runtime,
    linear_schedule,
    maybe_compile,
    param_groups,
    save_model_file,
    set_lr,
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


def train_dino(cfg: dict, train_store: Path, noise_store: Path | None, rir_store: Path | None,
               out_dir: Path, tracker: Tracker | None = None) -> dict:
    """Train DINO and write `out_dir/model.pt` (the teacher encoder). Resumes from checkpoints."""
    c = cfg["dino"]
    device, d = init_runtime(cfg["runtime"])
    store = open_store(train_store)
    frontend = Frontend(cfg["features"]["frontend"], n_mels=cfg["features"]["n_mels"]).to(device)
    augmenter = augmenter_from_config(cfg, noise_store, rir_store, c["p_reverb"], c["p_noise"])

    torch.manual_seed(cfg["seed"])  # the initial weights: the same in every run and process
    encoder = build_encoder({**cfg["model"], "n_mels": cfg["features"]["n_mels"]})
    head = DINOHead(encoder.embed_dim, c["out_dim"], c["hidden_dim"], c["bottleneck_dim"])
    student = DINOModel(encoder, head).to(device)
    # As in DINO, the teacher's BatchNorm uses batch statistics (train mode): with running
    # statistics its outputs barely differ between utterances early on, the centred targets
    # turn uniform, and training collapses (measured on the built-in corpus).
    teacher = frozen_copy(student).to(device).train()
    maybe_compile(cfg["runtime"], student.encoder, teacher.encoder)
    if d.world > 1:
        if device.type == "cuda":  # SyncBatchNorm has no CPU (gloo) implementation
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        student = nn.parallel.DistributedDataParallel(student)
    optimizer = torch.optim.SGD(param_groups(student, c["weight_decay"]), lr=0.0,
                                momentum=c["sgd_momentum"])
    center = torch.zeros(1, c["out_dim"], device=device)

    steps = batches_per_epoch(len(store), c["batch_size"], c["steps_per_epoch"])
    total = steps * c["epochs"]
    lr_at = cosine_schedule(c["lr"], c["min_lr"], total, c["warmup_epochs"] * steps)
    momentum_at = linear_schedule(c["momentum_start"], c["momentum_end"], total)

    ckpt = Checkpoints(out_dir / "checkpoint", d)
    state = ckpt.load()
    history: list[dict] = []
    epoch0, step0 = 0, 0
    resumed_losses: list[float] = []
    if state is not None:
        unwrap(student).load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        center = state["center"].to(device)
        epoch0, step0, history = state["epoch"], state["step"], state["history"]
        resumed_losses = list(state.get("epoch_losses", []))  # this epoch's steps so far
        log.info("resuming DINO at epoch %d step %d", epoch0, step0)

    views = [View("global", c["global_crops"], c["global_seconds"], augment=True),
             View("local", c["local_crops"], c["local_seconds"], augment=True)]
    batches = CropBatches(store, views, c["batch_size"], steps, cfg["seed"], d, augmenter, device,
                          cfg["augment"]["on_gpu"], cfg["runtime"]["num_workers"])
    n_global = c["global_crops"]
    last_layer = {id(p) for p in unwrap(student).head.last_layer_parameters()}
    every = cfg["runtime"]["checkpoint_every_steps"]

    def checkpoint(epoch: int, step: int) -> None:
        ckpt.save({"student": unwrap(student).state_dict(), "teacher": teacher.state_dict(),
                   "optimizer": optimizer.state_dict(), "center": center.cpu(),
                   "epoch": epoch, "step": step, "history": history,
                   "epoch_losses": losses if step else []})

    for epoch in range(epoch0, c["epochs"]):
        losses, t_epoch = (resumed_losses if epoch == epoch0 else []), time.time()
        for step, crops in batches.epoch(epoch, step0 if epoch == epoch0 else 0):
            it = epoch * steps + step
            set_lr(optimizer, float(lr_at[it]))
            with autocast(device, cfg["runtime"]["bf16"]):
                feats_global = frontend(torch.cat(crops["global"]))
                with torch.no_grad():
                    teacher_out = list(teacher(feats_global).chunk(n_global))
                student_out = list(student(feats_global).chunk(n_global))
                if crops["local"]:
                    feats_local = frontend(torch.cat(crops["local"]))
                    student_out += list(student(feats_local).chunk(len(crops["local"])))
                loss = dino_loss(student_out, teacher_out, center, c["student_temp"],
                                 c["teacher_temp"])
            finite_or_raise(loss, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c["clip_grad"] > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), c["clip_grad"])
            if epoch < c["freeze_last_layer_epochs"]:  # prototypes stay put while features form
                for p in unwrap(student).parameters():
                    if id(p) in last_layer:
                        p.grad = None
            optimizer.step()
            ema_update(teacher, unwrap(student), float(momentum_at[it]))
            center = updated_center(center, teacher_out, c["center_momentum"], d)
            losses.append(loss.item())
            if tracker is not None and it % 10 == 0:
                tracker.log_metrics({"loss": loss.item(), "lr": float(lr_at[it]),
                                     "teacher_momentum": float(momentum_at[it])}, step=it)
            if every and (it + 1) % every == 0 and step + 1 < steps:
                checkpoint(epoch, step + 1)

        row = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
               "seconds": time.time() - t_epoch}
        history.append(row)
        log.info("dino epoch %d/%d  loss %.4f  (%.1f s)", epoch + 1, c["epochs"], row["loss"],
                 row["seconds"])
        if tracker is not None:
            tracker.log_metrics({"epoch_loss": row["loss"]}, step=epoch)
        checkpoint(epoch + 1, 0)

    if d.main:
        save_model_file(out_dir / "model.pt", teacher.encoder, cfg["model"], cfg["features"],
                        {"stage": "dino"})
        write_json(out_dir / "history.json", history)
    return {"history": history}
