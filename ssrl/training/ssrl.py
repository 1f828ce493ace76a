"""Stage 2: self-supervised reflective learning (SSRL-NOTES, "Stage 2"), and the two other
classifier trainings that share its loop: one round of the iterative baseline (labels fixed)
and the supervised topline (labels = the true speakers; reporting only).

The student learns to classify utterances into pseudo speakers with an AAM-softmax whose rows
start as the k-means centroids. The teacher, an EMA of the student, re-labels every utterance
it sees on a long clean crop ("online clustering"); a per-utterance queue smooths those labels;
a two-component GMM on the teacher's losses down-weights utterances whose label is probably
wrong; clusters that lose all their utterances are removed for good.

Where the paper leaves details open we follow the authors' released code (facts listed in
docs/method.md, each behind a config switch):
- relabelling takes the argmax of the teacher's AAM logits with the margin applied to the
  utterance's current label (`relabel: margin`);
- the GMM scores the teacher's loss against the label the utterance will carry next (the vote
  of its queue plus the new argmax; the plain argmax before the first update)
  (`nlm_label: next`);
- the teacher starts recording `queue_len // 2 + 1` epochs before the first update, so a new
  label can outvote the k-means seed at once (`record_from_epoch: null`);
- Sinkhorn balances exp(softmax probabilities / 0.05) (`sinkhorn_input: probs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssrl.data.loader import CropBatches, View, augmenter_from_config, batches_per_epoch
from ssrl.data.stores import WaveStore
from ssrl.evaluation.embed import embed_waves, evaluate_waves
from ssrl.files import InputError, save_npz
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.heads import AAMSoftmax
from ssrl.models.model_file import load_model_file, load_state_checked, save_model_file
from ssrl.training.checkpoints import Checkpoints
from ssrl.training.clustering import cluster_quality, sinkhorn
from ssrl.training.ema import ema_update, frozen_copy
from ssrl.training.job import (
    Inputs,
    Progress,
    compute_record,
    effective_params,
    mlflow_metrics,
    write_records,
)
from ssrl.training.label_queue import LabelQueue
from ssrl.training.noisy_labels import clean_detection_rates, clean_posterior
from ssrl.training.optim import cosine_schedule, param_groups, set_lr, teacher_momentum
from ssrl.training.runtime import (
    Dist,
    all_gather_cat,
    all_reduce_mean,
    autocast,
    distribute,
    finite_or_raise,
    init_runtime,
    maybe_compile,
    sync_batch_norm,
    unwrap,
)

log = logging.getLogger("ssrl.ssrl")

RELABEL_MODES = ("margin", "cosine", "sticky")


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


# --- the teacher's view: online clustering ---------------------------------------------------

@torch.no_grad()
def teacher_logits(teacher: SpeakerClassifier, feats: torch.Tensor, labels: torch.Tensor,
                   active: torch.Tensor, mode: str = "margin") -> torch.Tensor:
    """Scaled cosines `[B, K]` of each utterance to the active prototypes (-inf elsewhere).

    mode "margin" (the authors' code): the AAM margin is applied to the utterance's current
        label, as in training, so a runner-up whose angle is within the margin of the
        current prototype's takes the label (the margin penalises staying);
    mode "cosine": plain scaled cosines (nearest prototype);
    mode "sticky": the margin favours the current label instead: a runner-up must be closer
        than the current prototype by the margin angle to take it.
    """
    emb = teacher.encoder(feats).float()
    head = teacher.classifier
    if mode == "margin":
        return head.logits(emb, labels, active)
    cos = head.cosine(emb, active)
    if mode == "cosine":
        return head.scale * cos
    if mode == "sticky":
        theta = torch.acos(cos.gather(1, labels[:, None]).clamp(-1.0, 1.0))
        bonus = torch.cos((theta - head.margin).clamp_min(0.0))
        return head.scale * cos.scatter(1, labels[:, None], bonus)
    raise ValueError(f"relabel mode must be one of {RELABEL_MODES}, got {mode!r}")


def relabel(logits: torch.Tensor, active: torch.Tensor, use_sinkhorn: bool,
            sinkhorn_input: str = "probs") -> torch.Tensor:
    """Each utterance's new label: the argmax of the teacher's logits, or of their
    Sinkhorn-balanced assignment (input exp(softmax / 0.05) as the authors' code, or
    exp(logits / 0.05))."""
    if not use_sinkhorn:
        return logits.argmax(dim=1)
    scores = F.softmax(logits, dim=1) if sinkhorn_input == "probs" else logits
    return sinkhorn(scores, active=active).argmax(dim=1)


# --- per-utterance label state -----------------------------------------------------------------

@dataclass
class LabelState:
    """Everything SSRL keeps per utterance and per cluster (checkpointed whole)."""

    labels: np.ndarray  # int64 [N]: training labels
    queue: LabelQueue
    p_clean: np.ndarray  # float32 [N]: weight of each utterance in the student loss
    active: np.ndarray  # bool [K]: clusters not removed
    recorded_label: np.ndarray = field(init=False)  # this epoch's teacher argmax (-1: unseen)
    recorded_loss: np.ndarray = field(init=False)  # this epoch's teacher loss (NaN: unseen)

    def __post_init__(self) -> None:
        self.recorded_label = np.full(len(self.labels), -1, dtype=np.int64)
        self.recorded_loss = np.full(len(self.labels), np.nan, dtype=np.float32)

    @classmethod
    def start(cls, labels: np.ndarray, n_classes: int, queue_len: int) -> LabelState:
        return cls(labels.copy(), LabelQueue(labels, queue_len),
                   np.ones(len(labels), dtype=np.float32), np.ones(n_classes, dtype=bool))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"labels": self.labels, "p_clean": self.p_clean, "active": self.active,
                "recorded_label": self.recorded_label, "recorded_loss": self.recorded_loss,
                **{f"queue.{k}": v for k, v in self.queue.state_dict().items()}}

    def load(self, state: dict) -> None:
        self.queue.load_state_dict({k[6:]: v.numpy() for k, v in state.items()
                                    if k.startswith("queue.")})
        for name in ("labels", "p_clean", "active", "recorded_label", "recorded_loss"):
            setattr(self, name, state[name].numpy())

    def next_labels(self, utts: np.ndarray, new: np.ndarray, updating: bool) -> np.ndarray:
        """The label each utterance will carry after this epoch, given the teacher's new label:
        the queue's vote with it once labels update, the new label itself before that. A vote
        for a removed cluster falls back to the new label (always active)."""
        if not updating:
            return new
        voted = self.queue.vote_with(utts, new).astype(np.int64)
        return np.where(self.active[voted], voted, new)


def refresh_labels(c: dict, epoch: int, state: LabelState) -> float:
    """End of a recording epoch: push the teacher's labels into the queue; once the hold period
    is over the training labels become the queue's majority vote, and clusters left with no
    utterance are removed for good. Returns the fraction of labels that changed."""
    seen = state.recorded_label >= 0
    state.queue.push(np.where(seen, state.recorded_label, 0), seen)
    if epoch < c["hold_epochs"] - 1:
        return 0.0
    voted = state.queue.vote().astype(np.int64)
    # A vote for a cluster removed earlier falls back to the teacher's (always active) label.
    stale = ~state.active[voted]
    voted[stale] = np.where(seen[stale], state.recorded_label[stale], state.labels[stale])
    changed = float(np.mean(voted != state.labels))
    state.labels = voted
    state.active &= np.bincount(voted, minlength=len(state.active)) > 0
    return changed


def record_from_epoch(c: dict) -> int:
    """First epoch the teacher records: explicit, or `queue_len // 2 + 1` epochs before the
    first update at the end of epoch `hold_epochs - 1` (the authors' timetable)."""
    if c.get("record_from_epoch") is not None:
        return int(c["record_from_epoch"])
    return max(c["hold_epochs"] - (c["queue_len"] // 2 + 1), 0)


def weighted_loss(per_utt: torch.Tensor, p_clean: torch.Tensor | None,
                  d: Dist = Dist()) -> torch.Tensor:
    """Noisy-label modelling: L = sum p_clean * CE / sum p_clean; the plain mean when off.

    Under DDP each process divides by the global sum p_clean / world, so that DDP's average of
    the processes' gradients is the gradient of L over the whole global batch."""
    if p_clean is None:
        return per_utt.mean()
    return (p_clean * per_utt).sum() / all_reduce_mean(p_clean.sum(), d).clamp_min(1e-8)


def majority_cluster_match(labels: np.ndarray, speakers: list[str]) -> np.ndarray:
    """True where an utterance's label is its true speaker's most common label (reporting only)."""
    spk_ids = np.unique(np.asarray(speakers), return_inverse=True)[1]
    counts = np.zeros((spk_ids.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(counts, (spk_ids, labels), 1)
    return labels == counts.argmax(axis=1)[spk_ids]


def label_diagnostics(state: LabelState, speakers: list[str] | None, nlm: bool = True) -> dict:
    """Cluster count, pseudo-label quality and (with noisy-label modelling, `nlm`) the mean
    p_clean and the clean detector's rates (true labels: report only)."""
    row: dict = {"n_clusters": int(state.active.sum())}
    if nlm:
        row["p_clean_mean"] = float(state.p_clean.mean())
    if speakers is not None:
        row.update({k: float(v) for k, v in cluster_quality(speakers, state.labels).items()
                    if k != "n_clusters"})
        if nlm:
            rates = clean_detection_rates(state.p_clean,
                                          majority_cluster_match(state.labels, speakers))
            row.update({f"clean_{k}": float(v) for k, v in rates.items()})
    return row


def lr_schedule(c: dict, epochs: int, steps: int) -> np.ndarray:
    """Two cosine cycles: warm_lr -> min_lr over the warm epochs, then restart at lr -> min_lr."""
    warm = min(c["warm_epochs"], epochs)
    first = cosine_schedule(c["warm_lr"], c["min_lr"], warm * steps)
    second = cosine_schedule(c["lr"], c["min_lr"], (epochs - warm) * steps)
    return np.concatenate([first, second])


def load_labels(path, utt_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo labels and centroids from the clustering stage, checked against the store order."""
    with np.load(path) as z:
        ids, labels, centroids = list(z["utt_ids"]), z["labels"], z["centroids"]
    if ids != list(utt_ids):
        raise InputError(f"{path}: utterance ids do not match the training store "
                         "(was it clustered from another data set?)")
    return labels.astype(np.int64), centroids.astype(np.float32)


# --- one training run ------------------------------------------------------------------------

def no_phase(name: str) -> contextlib.AbstractContextManager:
    """The default `Run.phase`: steps name their phases so a benchmark can time them."""
    return contextlib.nullcontext()


@dataclass
class Run:
    """What one classifier training holds while it runs (the loop's working set)."""

    cfg: dict
    c: dict  # the stage's section: ssrl, or the classifier keys of a round / the topline
    device: torch.device
    d: Dist
    store: WaveStore
    frontend: Frontend
    student: nn.Module  # DDP-wrapped under torchrun
    teacher: SpeakerClassifier | None
    optimizer: torch.optim.Optimizer
    batches: CropBatches
    lr_at: np.ndarray
    momentum_at: np.ndarray
    steps: int
    state: LabelState
    relabel: bool  # SSRL: the teacher re-labels; False: fixed labels (round, topline)
    tracker: object | None = None
    phase: Callable[[str], contextlib.AbstractContextManager] = no_phase


def build_run(cfg: dict, c: dict, store, augmenter, labels: np.ndarray, centroids: np.ndarray,
              *, epochs: int, relabel: bool, init_encoder: dict | None, device: torch.device,
              d: Dist, tracker=None) -> Run:
    """Student (encoder from `init_encoder`, AAM rows = `centroids`), EMA teacher, optimiser,
    schedules and label state: everything a classifier training needs before its first step."""
    torch.manual_seed(cfg["seed"])  # the initial weights: the same in every run and process
    encoder = build_encoder({**cfg["model"], "n_mels": cfg["features"]["n_mels"]})
    if init_encoder is not None:
        load_state_checked(encoder, init_encoder, "the initial model")
    student = SpeakerClassifier(encoder, len(centroids), c["scale"], c["margin"], c["dropout"])
    if init_encoder is not None:
        with torch.no_grad():
            student.classifier.weight.copy_(torch.from_numpy(centroids))
    student.to(device)
    teacher = frozen_copy(student).to(device) if relabel and c["ema"] else None
    student = sync_batch_norm(student, device, d)  # under torchrun: over the global batch
    teacher = sync_batch_norm(teacher, device, d) if teacher is not None else None
    maybe_compile(cfg["runtime"], student.encoder, *([teacher.encoder] if teacher else []))
    student = distribute(student, device, d)
    optimizer = torch.optim.Adam(param_groups(student, c["weight_decay"]), lr=0.0,
                                 fused=device.type == "cuda")
    steps = batches_per_epoch(len(store), c["batch_size"], c["steps_per_epoch"])
    views = [View("student", 1, c["student_seconds"], augment=True)]
    if relabel:
        views.append(View("teacher", 1, c["teacher_seconds"],
                          augment=not c["teacher_clean_input"]))
    frontend = Frontend(cfg["features"]["frontend"], n_mels=cfg["features"]["n_mels"]).to(device)
    batches = CropBatches(store, views, c["batch_size"], steps, cfg["seed"], d, augmenter, device,
                          cfg["augment"]["on_gpu"], cfg["runtime"]["num_workers"])
    return Run(cfg, c, device, d, store, frontend, student, teacher, optimizer, batches,
               lr_schedule(c, epochs, steps), teacher_momentum(c, steps, steps * epochs), steps,
               LabelState.start(labels, len(centroids), c.get("queue_len", 1)), relabel,
               tracker)


def ssrl_step(run: Run, crops: dict, epoch: int, step: int) -> float:
    """One optimiser step: in a recording epoch the teacher first re-labels the batch on its
    long clean crops and records its loss for the noisy-label GMM; then the student learns
    from its short augmented crops (loss weighted by p_clean), and the teacher follows it."""
    c, state, d, device = run.c, run.state, run.d, run.device
    it = epoch * run.steps + step
    set_lr(run.optimizer, float(run.lr_at[it]))
    bf16 = run.cfg["runtime"]["bf16"]
    active = torch.from_numpy(state.active).to(device)
    utts = crops["utts"].numpy()
    y = torch.from_numpy(state.labels[utts]).long().to(device)

    if run.relabel and epoch >= record_from_epoch(c):
        with run.phase("teacher"):
            judge = run.teacher if run.teacher is not None else unwrap(run.student).eval()
            with autocast(device, bf16):
                logits = teacher_logits(judge, run.frontend(crops["teacher"][0]), y, active,
                                        c["relabel"])
            unwrap(run.student).train()
            new = relabel(logits, active, c["sinkhorn"], c["sinkhorn_input"])
            if c["nlm_label"] == "next":  # the label the utterance will carry next
                updating = epoch >= c["hold_epochs"] - 1
                target = state.next_labels(utts, new.cpu().numpy(), updating)
                target = torch.from_numpy(target).to(device)
            else:  # "current": the label it is trained with now
                target = y
            t_loss = F.cross_entropy(logits.float(), target, reduction="none")
            all_utts = all_gather_cat(crops["utts"].to(device), d).cpu().numpy()
            state.recorded_label[all_utts] = all_gather_cat(new, d).cpu().numpy()
            state.recorded_loss[all_utts] = all_gather_cat(t_loss.float(), d).cpu().numpy()

    with run.phase("student"):
        with autocast(device, bf16):
            per_utt = run.student(run.frontend(crops["student"][0]), y, active)
        nlm = run.relabel and c["noisy_label_modeling"]
        weights = torch.from_numpy(state.p_clean[utts]).to(device) if nlm else None
        loss = weighted_loss(per_utt, weights, d)
        finite_or_raise(loss, epoch, step)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with run.phase("optim"):
        run.optimizer.step()
    with run.phase("ema"):
        if run.teacher is not None:
            ema_update(run.teacher, unwrap(run.student), float(run.momentum_at[it]))
    return all_reduce_mean(loss.detach(), d).item()  # the global batch's loss


def train_one_epoch(run: Run, epoch: int, start_step: int, losses: list[float],
                    checkpoint) -> None:
    """The student's pass over the epoch's batches (from `start_step` when resuming)."""
    every = run.cfg["runtime"]["checkpoint_every_steps"]
    for step, crops in run.batches.epoch(epoch, start_step):
        losses.append(ssrl_step(run, crops, epoch, step))
        it = epoch * run.steps + step
        if run.tracker is not None and it % 10 == 0:
            run.tracker.log_metrics({"step/loss": losses[-1], "step/lr": float(run.lr_at[it]),
                                     "step/teacher_momentum": float(run.momentum_at[it])},
                                    step=it + 1)
        if every and (it + 1) % every == 0 and step + 1 < run.steps:
            checkpoint(epoch, step + 1, losses)


def end_of_epoch(run: Run, epoch: int) -> dict:
    """Labels, cluster removal and p_clean after a recording epoch; the row's label numbers."""
    c, state = run.c, run.state
    row: dict = {}
    if run.relabel and epoch >= record_from_epoch(c):
        row["changed"] = refresh_labels(c, epoch, state)
        if c["noisy_label_modeling"]:
            seen = ~np.isnan(state.recorded_loss)
            if seen.sum() > 2:
                state.p_clean[seen] = clean_posterior(state.recorded_loss[seen],
                                                      seed=run.cfg["seed"])
        state.recorded_label[:] = -1
        state.recorded_loss[:] = np.nan
    row.update(label_diagnostics(state, run.store.spk, run.relabel and c["noisy_label_modeling"]))
    return row


def _train_classifier(cfg: dict, c: dict, inputs: Inputs, out, labels: np.ndarray,
                      centroids: np.ndarray, *, epochs: int, relabel: bool, warm_start: bool,
                      stage: str, tracker=None) -> dict:
    """The loop shared by SSRL (relabel=True) and the fixed-label trainings. Writes
    `out/model.pt` (the EMA teacher's encoder when there is one, else the student's),
    history.json, compute.json and labels.npz; returns the compute record."""
    device, d = init_runtime(cfg["runtime"])
    store = WaveStore(inputs.train)
    augmenter = augmenter_from_config(cfg, inputs.noise, inputs.rir, c["p_reverb"], c["p_noise"])
    dev = WaveStore(inputs.dev) if inputs.dev is not None and d.main else None
    init = load_model_file(inputs.init)["encoder"] if warm_start else None
    run = build_run(cfg, c, store, augmenter, labels, centroids, epochs=epochs,
                    relabel=relabel, init_encoder=init, device=device, d=d, tracker=tracker)
    student, teacher, optimizer = run.student, run.teacher, run.optimizer
    if tracker is not None:
        tracker.log_params(effective_params(cfg, device, "ssrl",
                                            run.momentum_at if teacher is not None else None))

    ckpt = Checkpoints(out / "checkpoint", inputs.fingerprint(cfg), d)
    history: list[dict] = []
    epoch0, step0, resumed_losses = 0, 0, []
    saved = ckpt.load()
    if saved is not None:
        unwrap(student).load_state_dict(saved["student"])
        if teacher is not None:
            teacher.load_state_dict(saved["teacher"])
        if not saved.get("finished"):
            optimizer.load_state_dict(saved["optimizer"])
        run.state.load(saved)
        epoch0, step0, history = saved["epoch"], saved["step"], saved["history"]
        resumed_losses = list(saved.get("epoch_losses", []))  # this epoch's steps so far
        if saved.get("finished"):
            log.info("%s finished training in an earlier run (epoch %d, %s): writing its "
                     "outputs again, no training", stage, epoch0, ckpt.path)
        else:
            log.info("resuming at epoch %d step %d", epoch0, step0)

    def checkpoint(epoch: int, step: int, losses: list[float], finished: bool = False) -> None:
        state = {"student": unwrap(student).state_dict(),
                 "teacher": teacher.state_dict() if teacher is not None else {},
                 "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                 "history": history, "epoch_losses": losses if step else [],
                 **{k: torch.from_numpy(np.ascontiguousarray(v))
                    for k, v in run.state.arrays().items()}}
        ckpt.finish(state) if finished else ckpt.save(state)

    result = teacher if teacher is not None else unwrap(student)  # the model this stage yields
    job = cfg.get("job", {})
    # a chain's rounds share one running epoch axis in MLflow: round r starts after r-1 rounds
    offset = (int(job["round"]) - 1) * epochs if stage == "iterative" and job.get("round") else 0
    progress = Progress(epochs, history, tracker, step_offset=offset)
    if tracker is not None and relabel and epoch0 == 0 and step0 == 0:
        # epoch 0: the k-means start SSRL relabels from (K clusters, DINO's NMI)
        tracker.log_metrics(mlflow_metrics(label_diagnostics(
            run.state, store.spk, c["noisy_label_modeling"])), step=0)
    for epoch in range(epoch0, epochs):
        t_epoch = time.time()
        losses = resumed_losses if epoch == epoch0 else []
        train_one_epoch(run, epoch, step0 if epoch == epoch0 else 0, losses, checkpoint)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
        if stage != "supervised":  # true labels: no pseudo labels to describe
            row.update(end_of_epoch(run, epoch))
        if dev is not None and c["eval_every"] and (
                (epoch + 1) % c["eval_every"] == 0 or epoch + 1 == epochs):
            row.update(evaluate_waves(result.encoder, run.frontend, dev, device, split="dev"))
        row["seconds"] = time.time() - t_epoch
        progress.epoch(row)
        if epoch + 1 < epochs:
            checkpoint(epoch + 1, 0, [])
    # Kept (finished, no optimiser) until the job runs again: see Checkpoints.finish.
    checkpoint(epochs, 0, [], finished=True)

    compute = compute_record(history, run.steps, c["batch_size"], len(store))
    if d.main:
        save_model_file(out / "model.pt", result.encoder, cfg["model"], run.frontend,
                        {"stage": stage, "seed": cfg["seed"]})
        save_npz(out / "labels.npz", utt_ids=np.array(store.utt_ids), labels=run.state.labels,
                 centroids=result.classifier.weight.detach().cpu().numpy())
        write_records(out, history, compute, tracker)
    return compute


# --- the three entries -------------------------------------------------------------------------

def train_ssrl(cfg: dict, inputs: Inputs, out, tracker=None) -> dict:
    """SSRL from the DINO model and its k-means labels (`inputs.init`, `inputs.labels`)."""
    c = cfg["ssrl"]
    labels, centroids = load_labels(inputs.labels, WaveStore(inputs.train).utt_ids)
    return _train_classifier(cfg, c, inputs, out, labels, centroids, epochs=c["epochs"],
                             relabel=True, warm_start=True, stage="ssrl", tracker=tracker)


def train_iterative_round(cfg: dict, inputs: Inputs, out, tracker=None) -> dict:
    """One round of the iterative baseline: AAM training on the fixed k-means labels of the
    previous round's model; a new network (`init: scratch`) or the previous one (`warm`).
    Reads its epochs and init from `iterative`, the classifier's settings from `ssrl`."""
    it = cfg["iterative"]
    c = {**cfg["ssrl"], "hold_epochs": 0, "noisy_label_modeling": False}
    labels, centroids = load_labels(inputs.labels, WaveStore(inputs.train).utt_ids)
    return _train_classifier(cfg, c, inputs, out, labels, centroids, epochs=it["epochs"],
                             relabel=False, warm_start=it["init"] == "warm", stage="iterative",
                             tracker=tracker)


def train_supervised(cfg: dict, inputs: Inputs, out, tracker=None) -> dict:
    """The supervised topline: the same classifier training from the DINO model, on the TRUE
    speakers of the training set (its rows start at each speaker's mean DINO embedding).
    Reporting only: nothing downstream reads it."""
    store = WaveStore(inputs.train)
    if store.spk is None:
        raise InputError(f"{inputs.train}: no speaker labels (utt2spk); no supervised topline")
    speakers, labels = np.unique(np.asarray(store.spk), return_inverse=True)
    device, _ = init_runtime(cfg["runtime"])
    from ssrl.models.model_file import load_encoder

    dino = load_encoder(inputs.init, device)
    with torch.no_grad():
        emb = embed_waves(dino.encoder, dino.frontend, store, device)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    centroids = np.stack([emb[labels == k].mean(axis=0) for k in range(len(speakers))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    c = {**cfg["ssrl"], "hold_epochs": 0, "noisy_label_modeling": False}
    return _train_classifier(cfg, c, inputs, out, labels.astype(np.int64),
                             centroids.astype(np.float32), epochs=cfg["ssrl"]["epochs"],
                             relabel=False, warm_start=True, stage="supervised", tracker=tracker)
