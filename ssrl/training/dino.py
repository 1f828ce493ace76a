"""Stage 1: DINO self-distillation with no labels (SSRL-NOTES, "Stage 1").

Per step: every utterance of the batch gives 2 long (global) and 4 short (local) crops, all
augmented. The teacher, an EMA of the student, sees the global crops; the student sees all of
them and learns to predict the teacher's centred, sharpened distribution over prototypes for
every other crop.
"""

from __future__ import annotations

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
from ssrl.runtime import (
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
from ssrl.tracking.mlflow_run import NULL_TRACKER, Tracking
from ssrl.training.checkpoints import Checkpoints
from ssrl.training.ema import ema_update, frozen_copy
from ssrl.training.job import Inputs, PlotHistory, compute_record, effective_params, write_records
from ssrl.training.loop import Phase, no_phase, train
from ssrl.training.optim import (
    cosine_schedule,
    param_groups,
    scaled_lr,
    set_lr,
    teacher_momentum,
)


class DINOModel(nn.Module):
    """Encoder followed by the projection head; the encoder's output is the speaker embedding."""

    def __init__(self, encoder: nn.Module, head: DINOHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(feats))


class DINOLoss(nn.Module):
    """DINO's cross-entropy and its centre, as facebookresearch/dino's `DINOLoss`.

    The centre is a buffer (in `state_dict`, so a checkpoint carries it): an EMA, with
    `center_momentum`, of the teacher's batch-mean outputs over the global batch. Subtracting it
    before the teacher's sharp softmax keeps one prototype from taking every utterance.
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float, teacher_temp: float,
                 center_momentum: float):
        super().__init__()
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: list[torch.Tensor],
                teacher_out: list[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over all (teacher global crop i, student crop j != i) pairs.

        `student_out[j]` and `teacher_out[i]` are `[B, K]` logits; the first len(teacher_out)
        student crops are the same global crops the teacher saw.
        """
        targets = [F.softmax((t.float() - self.center) / self.teacher_temp, dim=-1).detach()
                   for t in teacher_out]
        log_probs = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        terms = [-(t * lp).sum(dim=-1).mean()
                 for i, t in enumerate(targets) for j, lp in enumerate(log_probs) if i != j]
        return torch.stack(terms).mean()

    @torch.no_grad()
    def update_center(self, teacher_out: list[torch.Tensor], d: Dist = Dist()) -> None:
        """center <- m * center + (1 - m) * the teacher's batch mean (averaged over processes)."""
        batch_mean = all_reduce_mean(torch.cat(teacher_out).float().mean(dim=0, keepdim=True), d)
        self.center = self.center * self.center_momentum + batch_mean * (1 - self.center_momentum)


@dataclass
class DINORun:
    """What DINO holds while it trains: the loop's `Method` (ssrl.training.loop)."""

    cfg: dict
    device: torch.device
    d: Dist
    frontend: Frontend
    student: nn.Module  # DINOModel, DDP-wrapped under torchrun
    teacher: DINOModel
    optimizer: torch.optim.Optimizer
    loss: DINOLoss
    batches: CropBatches
    lr_at: np.ndarray
    momentum_at: np.ndarray
    steps: int
    phase: Phase = no_phase
    name: str = "DINO"

    def step(self, crops: dict, epoch: int, step: int) -> float:
        return dino_step(self, crops, epoch, step)

    def end_of_epoch(self, epoch: int) -> dict:
        return {}

    def starting(self, tracker: Tracking) -> None:
        pass

    def state_dict(self) -> dict:
        return {"student": unwrap(self.student).state_dict(),
                "teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict(),
                "dino_loss": self.loss.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.student).load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        if "optimizer" in state:  # a finished checkpoint keeps none
            self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["dino_loss"])


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
    loss = DINOLoss(c["out_dim"], c["student_temp"], c["teacher_temp"],
                    c["center_momentum"]).to(device)
    return DINORun(cfg, device, d, frontend, student, teacher, optimizer, loss,
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
            loss = run.loss(student_out, teacher_out)
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
        run.loss.update_center(teacher_out, run.d)
    return all_reduce_mean(loss.detach(), run.d).item()  # the global batch's loss


def train_dino(cfg: dict, inputs: Inputs, out_dir: Path, tracker: Tracking = NULL_TRACKER,
               plot: PlotHistory | None = None) -> dict:
    """Train DINO and write `out_dir/model.pt` (the teacher encoder), history.json and
    compute.json; return the compute record. Resumes from its own checkpoints only."""
    c = cfg["dino"]
    device, d = init_runtime(cfg["runtime"])
    store = WaveStore(inputs.train)
    augmenter = augmenter_from_config(cfg, inputs.noise, inputs.rir, c["p_reverb"], c["p_noise"])
    run = build_dino_run(cfg, store, augmenter, device, d)
    tracker.log_params(effective_params(cfg, device, "dino", run.momentum_at))

    ckpt = Checkpoints(out_dir / "checkpoint", inputs.fingerprint(cfg), d)
    history = train(run, ckpt, c["epochs"], tracker)

    compute = compute_record(history, run.steps, c["batch_size"], len(store))
    if d.main:
        save_model_file(out_dir / "model.pt", run.teacher.encoder, cfg["model"], run.frontend,
                        {"stage": "dino", "seed": cfg["seed"]})
        write_records(out_dir, history, compute, tracker, plot)
    return compute
