"""The speaker classifier and its fixed-label trainings: one round of the iterative baseline
(SSRL-NOTES, "Baseline the paper beats") and the supervised topline (true speakers; reporting
only). SSRL's student is this classifier too: `ssrl.training.ssrl` builds on `ClassifierRun`
and adds the teacher that re-labels.

A classifier training reads its settings from `ClassifierConfig` (the `ssrl` keys listed in
`ssrl.config.CLASSIFIER_KEYS`: a round's or the topline's job config holds exactly those), and
runs through the one training loop (`ssrl.training.loop.train`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ssrl.data.augment import Augmenter
from ssrl.data.loader import CropBatches, View, augmenter_from_config, batches_per_epoch
from ssrl.data.stores import WaveStore
from ssrl.evaluation.embed import embed_waves, evaluate_waves
from ssrl.evaluation.label_quality import cluster_quality
from ssrl.files import InputError, save_npz
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.heads import AAMSoftmax
from ssrl.models.model_file import (
    load_encoder,
    load_model_file,
    load_state_checked,
    save_model_file,
)
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
from ssrl.training.ema import frozen_copy
from ssrl.training.job import Inputs, PlotHistory, compute_record, effective_params, write_records
from ssrl.training.loop import Phase, no_phase, train
from ssrl.training.optim import cosine_schedule, param_groups, set_lr, teacher_momentum


class SpeakerClassifier(nn.Module):
    """Encoder -> (optional dropout, the "model noise") -> AAM-softmax over pseudo speakers."""

    def __init__(self, encoder: nn.Module, n_classes: int, scale: float, margin: float,
                 dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = AAMSoftmax(encoder.embed_dim, n_classes, scale, margin)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        """Per-utterance AAM cross-entropy."""
        return self.classifier(self.dropout(self.encoder(feats)), labels, active)


@dataclass(frozen=True)
class ClassifierConfig:
    """The settings of a classifier training (`ssrl.config.CLASSIFIER_KEYS`, same order)."""

    epochs: int
    steps_per_epoch: int | None  # None: one pass over the training set
    batch_size: int
    student_seconds: float
    p_reverb: float
    p_noise: float
    scale: float  # AAM-softmax
    margin: float
    dropout: float  # before the classifier ("model noise")
    warm_epochs: int  # lr: warm_lr -> min_lr over these epochs, then lr -> min_lr
    warm_lr: float
    lr: float
    min_lr: float
    weight_decay: float
    eval_every: int  # dev EER every N epochs (0: never)
    momentum_start: float | None  # the EMA schedule (SSRL's teacher; logged by every job)
    momentum_end: float | None
    teacher_lag_epochs: list[float] | None

    @classmethod
    def from_section(cls, section: Mapping[str, Any], strict: bool = True) -> ClassifierConfig:
        """The classifier keys of an `ssrl` section. `strict`: a key that is not one of them
        is an error (a round's or the topline's job config holds exactly these); SSRL, whose
        section holds its own keys too, passes strict=False."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(section) - set(names))
        if strict and unknown:
            raise InputError(f"config ssrl: {', '.join(unknown)}: not read by a classifier "
                             f"training (it reads {', '.join(names)})")
        missing = [k for k in names if k not in section]
        if missing:
            raise InputError(f"config ssrl: missing {', '.join(missing)}")
        return cls(**{k: section[k] for k in names})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_schedule(c: ClassifierConfig, epochs: int, steps: int) -> np.ndarray:
    """Two cosine cycles: warm_lr -> min_lr over the warm epochs, then restart at lr -> min_lr."""
    warm = min(c.warm_epochs, epochs)
    first = cosine_schedule(c.warm_lr, c.min_lr, warm * steps)
    second = cosine_schedule(c.lr, c.min_lr, (epochs - warm) * steps)
    return np.concatenate([first, second])


def weighted_loss(per_utt: torch.Tensor, weights: torch.Tensor | None,
                  d: Dist = Dist()) -> torch.Tensor:
    """L = sum w * CE / sum w (SSRL's noisy-label modelling: w = p_clean); the plain mean
    without weights.

    Under DDP each process divides by the global sum w / world, so that DDP's average of the
    processes' gradients is the gradient of L over the whole global batch."""
    if weights is None:
        return per_utt.mean()
    return (weights * per_utt).sum() / all_reduce_mean(weights.sum(), d).clamp_min(1e-8)


def pseudo_label_quality(labels: np.ndarray, speakers: list[str] | None) -> dict[str, float]:
    """NMI, purity, inverse purity and Hungarian accuracy of `labels` against the true
    speakers (reporting only); nothing without them."""
    if speakers is None:
        return {}
    return {k: float(v) for k, v in cluster_quality(speakers, labels).items()
            if k != "n_clusters"}


# --- building a classifier training ------------------------------------------------------------

class ClassifierJob(NamedTuple):
    """What a classifier training opens before it builds its run."""

    device: torch.device
    d: Dist
    store: WaveStore
    augmenter: Augmenter
    dev: WaveStore | None  # the dev set, on the main process only
    init: dict | None  # the initial encoder's state (warm start)


def open_job(cfg: dict, c: ClassifierConfig, inputs: Inputs, warm_start: bool) -> ClassifierJob:
    """What every classifier training opens first (SSRL, a round, the topline): the device and
    process group, the training store, the augmenter, the dev set and the front end."""
    device, d = init_runtime(cfg["runtime"])
    store = WaveStore(inputs.train)
    augmenter = augmenter_from_config(cfg, inputs.noise, inputs.rir, c.p_reverb, c.p_noise)
    dev = WaveStore(inputs.dev) if inputs.dev is not None and d.main else None
    init = load_model_file(inputs.init)["encoder"] if warm_start else None
    return ClassifierJob(device, d, store, augmenter, dev, init)


def build_student(cfg: dict, c: ClassifierConfig, centroids: np.ndarray,
                  init_encoder: dict | None, device: torch.device, d: Dist, *,
                  ema_teacher: bool) -> tuple[nn.Module, SpeakerClassifier | None,
                                              torch.optim.Optimizer]:
    """Student (encoder from `init_encoder`; with it, AAM rows = `centroids`), its EMA teacher
    when asked for, and Adam: the classifier before its first step."""
    torch.manual_seed(cfg["seed"])  # the initial weights: the same in every run and process
    encoder = build_encoder({**cfg["model"], "n_mels": cfg["features"]["n_mels"]})
    if init_encoder is not None:
        load_state_checked(encoder, init_encoder, "the initial model")
    student = SpeakerClassifier(encoder, len(centroids), c.scale, c.margin, c.dropout)
    if init_encoder is not None:
        with torch.no_grad():
            student.classifier.weight.copy_(torch.from_numpy(centroids))
    student.to(device)
    teacher = frozen_copy(student).to(device) if ema_teacher else None
    student = sync_batch_norm(student, device, d)  # under torchrun: over the global batch
    teacher = sync_batch_norm(teacher, device, d) if teacher is not None else None
    maybe_compile(cfg["runtime"], student.encoder, *([teacher.encoder] if teacher else []))
    student = distribute(student, device, d)
    optimizer = torch.optim.Adam(param_groups(student, c.weight_decay), lr=0.0,
                                 fused=device.type == "cuda")
    return student, teacher, optimizer


def crop_batches(cfg: dict, c: ClassifierConfig, store, augmenter: Augmenter,
                 device: torch.device, d: Dist,
                 teacher_view: View | None = None) -> tuple[CropBatches, int]:
    """The student's short augmented crops (and the teacher's view, for SSRL); steps/epoch."""
    steps = batches_per_epoch(len(store), c.batch_size, c.steps_per_epoch)
    views = [View("student", 1, c.student_seconds, augment=True)]
    if teacher_view is not None:
        views.append(teacher_view)
    batches = CropBatches(store, views, c.batch_size, steps, cfg["seed"], d, augmenter, device,
                          cfg["augment"]["on_gpu"], cfg["runtime"]["num_workers"])
    return batches, steps


def frontend_of(cfg: dict, device: torch.device) -> Frontend:
    """The job's feature front end (the one its model file will name), on `device`."""
    return Frontend(cfg["features"]["frontend"], n_mels=cfg["features"]["n_mels"]).to(device)


# --- a classifier training: what the loop runs -------------------------------------------------

@dataclass(kw_only=True)
class ClassifierRun:
    """What every classifier training holds while it runs (SSRL's run extends it)."""

    name: str  # "iterative", "supervised", "ssrl": the model file's stage
    cfg: dict
    c: ClassifierConfig
    epochs: int
    device: torch.device
    d: Dist
    store: Any  # WaveStore or MemoryWaves
    dev: WaveStore | None
    frontend: Frontend
    student: nn.Module  # SpeakerClassifier, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    batches: CropBatches
    lr_at: np.ndarray
    momentum_at: np.ndarray
    steps: int
    phase: Phase = no_phase

    def result(self) -> SpeakerClassifier:
        """The model this training yields (SSRL: its EMA teacher when it has one)."""
        return unwrap(self.student)

    def current_labels(self) -> np.ndarray:
        """Each training utterance's label now (int64 [N])."""
        raise NotImplementedError

    def learn(self, wave: torch.Tensor, y: torch.Tensor, active: torch.Tensor,
              weights: torch.Tensor | None, epoch: int, step: int) -> torch.Tensor:
        """The student's part of a step: AAM loss on its crops (weighted), backward, Adam."""
        with self.phase("student"):
            with autocast(self.device, self.cfg["runtime"]["bf16"]):
                per_utt = self.student(self.frontend(wave), y, active)
            loss = weighted_loss(per_utt, weights, self.d)
            finite_or_raise(loss, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with self.phase("optim"):
            self.optimizer.step()
        return loss

    def dev_row(self, epoch: int) -> dict[str, float]:
        """Dev EER of the resulting model every `eval_every` epochs and after the last."""
        every = self.c.eval_every
        if self.dev is None or not every or ((epoch + 1) % every and epoch + 1 != self.epochs):
            return {}
        return evaluate_waves(self.result().encoder, self.frontend, self.dev, self.device,
                              split="dev")

    def starting(self, tracker: Tracking) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"student": unwrap(self.student).state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.student).load_state_dict(state["student"])
        if "optimizer" in state:  # a finished checkpoint keeps none
            self.optimizer.load_state_dict(state["optimizer"])


@dataclass(kw_only=True)
class FixedLabelRun(ClassifierRun):
    """A classifier trained on labels that never change (a round, the topline)."""

    labels: np.ndarray  # int64 [N]
    n_classes: int
    describe_labels: bool  # rows carry the labels' quality (rounds: pseudo labels)

    def current_labels(self) -> np.ndarray:
        return self.labels

    def step(self, crops: dict, epoch: int, step: int) -> float:
        set_lr(self.optimizer, float(self.lr_at[epoch * self.steps + step]))
        active = torch.ones(self.n_classes, dtype=torch.bool, device=self.device)
        y = torch.from_numpy(self.labels[crops["utts"].numpy()]).long().to(self.device)
        loss = self.learn(crops["student"][0], y, active, None, epoch, step)
        return all_reduce_mean(loss.detach(), self.d).item()  # the global batch's loss

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if self.describe_labels:
            row = {"n_clusters": self.n_classes,
                   **pseudo_label_quality(self.labels, self.store.spk)}
        return {**row, **self.dev_row(epoch)}


def build_fixed_label_run(cfg: dict, c: ClassifierConfig, store, augmenter: Augmenter,
                          labels: np.ndarray, centroids: np.ndarray, *, name: str, epochs: int,
                          init_encoder: dict | None, device: torch.device, d: Dist,
                          dev: WaveStore | None = None) -> FixedLabelRun:
    """A fixed-label classifier training before its first step."""
    student, _, optimizer = build_student(cfg, c, centroids, init_encoder, device, d,
                                          ema_teacher=False)
    batches, steps = crop_batches(cfg, c, store, augmenter, device, d)
    return FixedLabelRun(
        name=name, cfg=cfg, c=c, epochs=epochs, device=device, d=d, store=store, dev=dev,
        frontend=frontend_of(cfg, device), student=student, optimizer=optimizer,
        batches=batches, lr_at=lr_schedule(c, epochs, steps),
        momentum_at=teacher_momentum(c.as_dict(), steps, steps * epochs), steps=steps,
        labels=labels.astype(np.int64), n_classes=len(centroids),
        describe_labels=name != "supervised")


def train_classifier_run(run: ClassifierRun, inputs: Inputs, out: Path, tracker: Tracking,
                         plot: PlotHistory | None, teacher: bool,
                         step_offset: int = 0) -> dict:
    """Train `run` through the loop, then write `out/model.pt` (the resulting model's
    encoder), labels.npz (the final labels and the classifier's rows), history.json and
    compute.json; returns the compute record. `teacher`: the run has an EMA teacher (its
    momentum schedule is logged as what ran)."""
    tracker.log_params(effective_params(run.cfg, run.device, "ssrl",
                                        run.momentum_at if teacher else None))
    ckpt = Checkpoints(out / "checkpoint", inputs.fingerprint(run.cfg), run.d)
    history = train(run, ckpt, run.epochs, tracker, step_offset)
    compute = compute_record(history, run.steps, run.c.batch_size, len(run.store))
    if run.d.main:
        result = run.result()
        save_model_file(out / "model.pt", result.encoder, run.cfg["model"], run.frontend,
                        {"stage": run.name, "seed": run.cfg["seed"]})
        save_npz(out / "labels.npz", utt_ids=np.array(run.store.utt_ids),
                 labels=run.current_labels(),
                 centroids=result.classifier.weight.detach().cpu().numpy())
        write_records(out, history, compute, tracker, plot)
    return compute


def load_labels(path: Path, utt_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo labels and centroids from the clustering stage, checked against the store order."""
    with np.load(path) as z:
        ids, labels, centroids = list(z["utt_ids"]), z["labels"], z["centroids"]
    if ids != list(utt_ids):
        raise InputError(f"{path}: utterance ids do not match the training store "
                         "(was it clustered from another data set?)")
    return labels.astype(np.int64), centroids.astype(np.float32)


def _train_fixed_labels(cfg: dict, c: ClassifierConfig, inputs: Inputs, out: Path,
                        labels: np.ndarray, centroids: np.ndarray, *, name: str, epochs: int,
                        warm_start: bool, tracker: Tracking, plot: PlotHistory | None,
                        step_offset: int = 0) -> dict:
    job = open_job(cfg, c, inputs, warm_start)
    run = build_fixed_label_run(cfg, c, job.store, job.augmenter, labels, centroids, name=name,
                                epochs=epochs, init_encoder=job.init, device=job.device,
                                d=job.d, dev=job.dev)
    return train_classifier_run(run, inputs, out, tracker, plot, teacher=False,
                                step_offset=step_offset)


# --- the two entries -------------------------------------------------------------------------

def train_iterative_round(cfg: dict, inputs: Inputs, out: Path,
                          tracker: Tracking = NULL_TRACKER,
                          plot: PlotHistory | None = None) -> dict:
    """One round of the iterative baseline: AAM training on the fixed k-means labels of the
    previous round's model; a new network (`iterative.init: scratch`) or the previous one
    (`warm`). Its epochs and init come from `iterative`, the classifier's settings from `ssrl`."""
    it = cfg["iterative"]
    c = ClassifierConfig.from_section(cfg["ssrl"])
    labels, centroids = load_labels(inputs.labels, WaveStore(inputs.train).utt_ids)
    job = cfg.get("job", {})
    # a chain's rounds share one running epoch axis in MLflow: round r starts after r-1 rounds
    offset = (int(job["round"]) - 1) * it["epochs"] if job.get("round") else 0
    return _train_fixed_labels(cfg, c, inputs, out, labels, centroids, name="iterative",
                               epochs=it["epochs"], warm_start=it["init"] == "warm",
                               tracker=tracker, plot=plot, step_offset=offset)


def topline_start(inputs: Inputs, runtime: dict) -> tuple[np.ndarray, np.ndarray]:
    """The topline's labels (the true speakers) and its classifier's first rows: each
    speaker's mean L2-normalised DINO embedding, L2-normalised."""
    store = WaveStore(inputs.train)
    if store.spk is None:
        raise InputError(f"{inputs.train}: no speaker labels (utt2spk); no supervised topline")
    speakers, labels = np.unique(np.asarray(store.spk), return_inverse=True)
    device, _ = init_runtime(runtime)
    dino = load_encoder(inputs.init, device)
    with torch.no_grad():
        emb = embed_waves(dino.encoder, dino.frontend, store, device)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    centroids = np.stack([emb[labels == k].mean(axis=0) for k in range(len(speakers))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    return labels.astype(np.int64), centroids.astype(np.float32)


def train_supervised(cfg: dict, inputs: Inputs, out: Path, tracker: Tracking = NULL_TRACKER,
                     plot: PlotHistory | None = None) -> dict:
    """The supervised topline: the classifier training from the DINO model, on the TRUE
    speakers of the training set. Reporting only: nothing downstream reads it."""
    c = ClassifierConfig.from_section(cfg["ssrl"])
    labels, centroids = topline_start(inputs, cfg["runtime"])
    return _train_fixed_labels(cfg, c, inputs, out, labels, centroids, name="supervised",
                               epochs=c.epochs, warm_start=True, tracker=tracker, plot=plot)
