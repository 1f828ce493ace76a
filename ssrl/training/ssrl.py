"""Stage 2: self-supervised reflective learning (SSRL-NOTES, "Stage 2").

The student learns to classify utterances into pseudo speakers with an AAM-softmax whose rows
start as the k-means centroids. The teacher, an EMA of the student, re-labels every utterance
it sees on a long clean crop ("online clustering"); a per-utterance queue smooths those labels;
a two-component GMM on the teacher's losses down-weights utterances whose label is probably
wrong; clusters that lose all their utterances are removed for good.

Read top to bottom: the teacher's view (online clustering), the per-utterance label state
(queue, timetable, cluster removal), the noisy-label diagnostics, then the run (`SSRLRun`: the
classifier of `ssrl.training.classifier` plus the teacher and the label state) and its entry
`train_ssrl`. The loop that drives it is `ssrl.training.loop.train`; the k-means that gives
the first labels is `ssrl.training.kmeans`; Sinkhorn is `ssrl.training.sinkhorn`.

Names: the config key `ssrl.relabel` chooses how the teacher scores the prototypes
(`teacher_logits`' mode: margin / cosine / sticky); `assign_labels` turns those scores into
each utterance's new label.

Where the paper leaves details open we follow the authors' released code (facts listed in
docs/method.md, each behind a config switch):
- relabelling takes the argmax of the teacher's AAM logits with the margin applied to the
  utterance's current label (config `relabel: margin`);
- the GMM scores the teacher's loss against the label the utterance will carry next (the vote
  of its queue plus the new argmax; the plain argmax before the first update)
  (`nlm_label: next`);
- the teacher starts recording `queue_len // 2 + 1` epochs before the first update, so a new
  label can outvote the k-means seed at once (`record_from_epoch: null`);
- Sinkhorn balances exp(softmax probabilities / 0.05) (`sinkhorn_input: probs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssrl.data.augment import Augmenter
from ssrl.data.loader import View
from ssrl.data.stores import WaveStore
from ssrl.runtime import Dist, all_gather_cat, all_reduce_mean, autocast, unwrap
from ssrl.tracking.mlflow_run import NULL_TRACKER, Tracking
from ssrl.training.classifier import (
    ClassifierConfig,
    ClassifierRun,
    SpeakerClassifier,
    build_student,
    crop_batches,
    frontend_of,
    load_labels,
    lr_schedule,
    open_job,
    pseudo_label_quality,
    train_classifier_run,
)
from ssrl.training.ema import ema_update
from ssrl.training.job import Inputs, PlotHistory, mlflow_metrics
from ssrl.training.label_queue import LabelQueue
from ssrl.training.noisy_labels import clean_detection_rates, clean_posterior
from ssrl.training.optim import set_lr, teacher_momentum
from ssrl.training.sinkhorn import sinkhorn

#: The values of the config key `ssrl.relabel`: how the teacher scores the prototypes.
TEACHER_MODES = ("margin", "cosine", "sticky")

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
    raise ValueError(f"ssrl.relabel (the teacher's mode) must be one of {TEACHER_MODES}, "
                     f"got {mode!r}")


def assign_labels(logits: torch.Tensor, active: torch.Tensor, use_sinkhorn: bool,
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
    row.update(pseudo_label_quality(state.labels, speakers))
    if speakers is not None and nlm:
        rates = clean_detection_rates(state.p_clean, majority_cluster_match(state.labels, speakers))
        row.update({f"clean_{k}": float(v) for k, v in rates.items()})
    return row


# --- the run: the classifier, its EMA teacher and the label state ----------------------------

@dataclass(kw_only=True)
class SSRLRun(ClassifierRun):
    """What SSRL holds while it trains: the loop's `Method` (ssrl.training.loop)."""

    s: dict  # the `ssrl` section (the timetable, queue, GMM and teacher switches)
    teacher: SpeakerClassifier | None  # None with `ema: false` (the student judges itself)
    state: LabelState

    def result(self) -> SpeakerClassifier:
        return self.teacher if self.teacher is not None else unwrap(self.student)

    def current_labels(self) -> np.ndarray:
        return self.state.labels

    def step(self, crops: dict, epoch: int, step: int) -> float:
        return ssrl_step(self, crops, epoch, step)

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        return {**end_of_epoch(self, epoch), **self.dev_row(epoch)}

    def starting(self, tracker: Tracking) -> None:
        # epoch 0: the k-means start SSRL relabels from (K clusters, DINO's NMI)
        tracker.log_metrics(mlflow_metrics(label_diagnostics(
            self.state, self.store.spk, self.s["noisy_label_modeling"])), step=0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else {},
                **{k: torch.from_numpy(np.ascontiguousarray(v))
                   for k, v in self.state.arrays().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.state.load(state)


def build_ssrl_run(cfg: dict, store, augmenter: Augmenter, labels: np.ndarray,
                   centroids: np.ndarray, *, epochs: int, init_encoder: dict | None,
                   device: torch.device, d: Dist, dev: WaveStore | None = None) -> SSRLRun:
    """Student (encoder from `init_encoder`, AAM rows = the k-means `centroids`), its EMA
    teacher, Adam, schedules and the label state: SSRL before its first step."""
    s = cfg["ssrl"]
    c = ClassifierConfig.from_section(s, strict=False)
    student, teacher, optimizer = build_student(cfg, c, centroids, init_encoder, device, d,
                                                ema_teacher=s["ema"])
    teacher_view = View("teacher", 1, s["teacher_seconds"], augment=not s["teacher_clean_input"])
    batches, steps = crop_batches(cfg, c, store, augmenter, device, d, teacher_view)
    return SSRLRun(
        name="ssrl", cfg=cfg, c=c, epochs=epochs, device=device, d=d, store=store, dev=dev,
        frontend=frontend_of(cfg, device), student=student, optimizer=optimizer,
        batches=batches, lr_at=lr_schedule(c, epochs, steps),
        momentum_at=teacher_momentum(s, steps, steps * epochs), steps=steps, s=s,
        teacher=teacher, state=LabelState.start(labels, len(centroids), s["queue_len"]))


def ssrl_step(run: SSRLRun, crops: dict, epoch: int, step: int) -> float:
    """One optimiser step: in a recording epoch the teacher first re-labels the batch on its
    long clean crops and records its loss for the noisy-label GMM; then the student learns
    from its short augmented crops (loss weighted by p_clean), and the teacher follows it."""
    s, state, d, device = run.s, run.state, run.d, run.device
    it = epoch * run.steps + step
    set_lr(run.optimizer, float(run.lr_at[it]))
    active = torch.from_numpy(state.active).to(device)
    utts = crops["utts"].numpy()
    y = torch.from_numpy(state.labels[utts]).long().to(device)

    if epoch >= record_from_epoch(s):
        with run.phase("teacher"):
            judge = run.teacher if run.teacher is not None else unwrap(run.student).eval()
            with autocast(device, run.cfg["runtime"]["bf16"]):
                logits = teacher_logits(judge, run.frontend(crops["teacher"][0]), y, active,
                                        s["relabel"])
            unwrap(run.student).train()
            new = assign_labels(logits, active, s["sinkhorn"], s["sinkhorn_input"])
            if s["nlm_label"] == "next":  # the label the utterance will carry next
                updating = epoch >= s["hold_epochs"] - 1
                target = state.next_labels(utts, new.cpu().numpy(), updating)
                target = torch.from_numpy(target).to(device)
            else:  # "current": the label it is trained with now
                target = y
            t_loss = F.cross_entropy(logits.float(), target, reduction="none")
            all_utts = all_gather_cat(crops["utts"].to(device), d).cpu().numpy()
            state.recorded_label[all_utts] = all_gather_cat(new, d).cpu().numpy()
            state.recorded_loss[all_utts] = all_gather_cat(t_loss.float(), d).cpu().numpy()

    weights = (torch.from_numpy(state.p_clean[utts]).to(device)
               if s["noisy_label_modeling"] else None)
    loss = run.learn(crops["student"][0], y, active, weights, epoch, step)
    with run.phase("ema"):
        if run.teacher is not None:
            ema_update(run.teacher, unwrap(run.student), float(run.momentum_at[it]))
    return all_reduce_mean(loss.detach(), d).item()  # the global batch's loss


def end_of_epoch(run: SSRLRun, epoch: int) -> dict:
    """Labels, cluster removal and p_clean after a recording epoch; the row's label numbers."""
    s, state = run.s, run.state
    row: dict = {}
    if epoch >= record_from_epoch(s):
        row["changed"] = refresh_labels(s, epoch, state)
        if s["noisy_label_modeling"]:
            seen = ~np.isnan(state.recorded_loss)
            if seen.sum() > 2:
                state.p_clean[seen] = clean_posterior(state.recorded_loss[seen],
                                                      seed=run.cfg["seed"])
        state.recorded_label[:] = -1
        state.recorded_loss[:] = np.nan
    row.update(label_diagnostics(state, run.store.spk, s["noisy_label_modeling"]))
    return row


def train_ssrl(cfg: dict, inputs: Inputs, out: Path, tracker: Tracking = NULL_TRACKER,
               plot: PlotHistory | None = None) -> dict:
    """SSRL from the DINO model and its k-means labels (`inputs.init`, `inputs.labels`). Writes
    `out/model.pt` (the EMA teacher's encoder; the student's without one), labels.npz,
    history.json and compute.json; returns the compute record."""
    s = cfg["ssrl"]
    labels, centroids = load_labels(inputs.labels, WaveStore(inputs.train).utt_ids)
    job = open_job(cfg, ClassifierConfig.from_section(s, strict=False), inputs, warm_start=True)
    run = build_ssrl_run(cfg, job.store, job.augmenter, labels, centroids, epochs=s["epochs"],
                         init_encoder=job.init, device=job.device, d=job.d, dev=job.dev)
    return train_classifier_run(run, inputs, out, tracker, plot, teacher=run.teacher is not None)
