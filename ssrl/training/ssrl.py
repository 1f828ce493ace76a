"""Stage 2: self-supervised reflective learning (SSRL-NOTES, "Stage 2"), and the classifier
training of one round of the iterative baseline, which is the same loop with the labels fixed.

The student learns to classify utterances into pseudo speakers with an AAM-softmax whose rows
start as the k-means centroids. The teacher, an EMA of the student, re-labels every utterance
it sees ("online clustering"); a per-utterance queue smooths those labels; a two-component
GMM on the teacher's losses down-weights utterances whose label is probably wrong; clusters
that lose all their utterances are removed for good.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssrl.training.clustering import cluster_quality, sinkhorn
from ssrl.evaluation.embed import evaluate_store
from ssrl.models.frontend import Frontend
from ssrl.models.heads import AAMSoftmax
from ssrl.files import InputError, save_npz, write_json
from ssrl.data.loader import CropBatches, View, augmenter_from_config, open_store
from ssrl.models.encoders import build_encoder
from ssrl.training.noisy_labels import clean_detection_rates, clean_posterior
from ssrl.training.label_queue import LabelQueue
from ssrl.tracking.mlflow_run import Tracker
from ssrl.training.runtime import (
    Checkpoints,
    Dist,
    all_gather_cat,
    all_reduce_mean,
    autocast,
    batches_per_epoch,
    cosine_schedule,
    ema_update,
    finite_or_raise,
    frozen_copy,
    init_runtime,
    linear_schedule,
    load_model_file,
    load_state_checked,
    maybe_compile,
    param_groups,
    save_model_file,
    set_lr,
    unwrap,
)

log = logging.getLogger("ssrl.ssrl")


class SpeakerClassifier(nn.Module):
    """Encoder → (optional dropout, the "model noise") → AAM-softmax over pseudo speakers."""

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


def load_labels(path: Path, utt_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo labels and centroids from the clustering stage, checked against the store order."""
    with np.load(path) as z:
        ids, labels, centroids = list(z["utt_ids"]), z["labels"], z["centroids"]
    if ids != list(utt_ids):
        raise InputError(f"{path}: utterance ids do not match the training store "
                         "(was it clustered from another data set?)")
    return labels.astype(np.int64), centroids.astype(np.float32)


def lr_schedule(c: dict, epochs: int, steps: int) -> np.ndarray:
    """Two cosine cycles: warm_lr → min_lr over the warm epochs, then restart at lr → min_lr."""
    warm = min(c["warm_epochs"], epochs)
    first = cosine_schedule(c["warm_lr"], c["min_lr"], warm * steps)
    second = cosine_schedule(c["lr"], c["min_lr"], (epochs - warm) * steps)
    return np.concatenate([first, second])


@torch.no_grad()
def teacher_relabel(teacher: SpeakerClassifier, feats: torch.Tensor, labels: torch.Tensor,
                    active: torch.Tensor, use_sinkhorn: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Online clustering: each utterance's nearest active prototype, and the teacher's loss
    against its current (queue-smoothed) label, which the noisy-label GMM reads."""
    emb = teacher.encoder(feats).float()
    cos = teacher.classifier.cosine(emb, active)
    scores = sinkhorn(cos * teacher.classifier.scale, active=active) if use_sinkhorn else cos
    new_labels = scores.argmax(dim=1)
    loss = teacher.classifier(emb, labels, active)
    return new_labels, loss


def majority_cluster_match(labels: np.ndarray, speakers: list[str]) -> np.ndarray:
    """True where an utterance's label is its true speaker's most common label (reporting only)."""
    spk_ids = np.unique(np.asarray(speakers), return_inverse=True)[1]
    counts = np.zeros((spk_ids.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(counts, (spk_ids, labels), 1)
    return labels == counts.argmax(axis=1)[spk_ids]


def train_ssrl(cfg: dict, train_store: Path, noise_store: Path | None, rir_store: Path | None,
               init_model: Path, labels_file: Path, out_dir: Path, test_store: Path | None = None,
               tracker: Tracker | None = None, relabel: bool = True, epochs: int | None = None,
               warm_start: bool = True) -> list[dict]:
    """Train and write `out_dir/model.pt`. `relabel=False` is one round of the iterative
    baseline: fixed labels, no teacher relabelling, the student is the result."""
    c = cfg["ssrl"]
    epochs = epochs or c["epochs"]
    device, d = init_runtime(cfg["runtime"])
    store = open_store(train_store)
    frontend = Frontend(cfg["features"]["frontend"], n_mels=cfg["features"]["n_mels"]).to(device)
    augmenter = augmenter_from_config(cfg, noise_store, rir_store, c["p_reverb"], c["p_noise"])
    kmeans_labels, centroids = load_labels(labels_file, store.utt_ids)
    n_utts, n_classes = len(store), len(centroids)

    # Initialisation: encoder from the previous model, classifier rows = cluster prototypes.
    torch.manual_seed(cfg["seed"])  # the initial weights: the same in every run and process
    encoder = build_encoder({**cfg["model"], "n_mels": cfg["features"]["n_mels"]})
    if warm_start:
        init = load_model_file(init_model)
        load_state_checked(encoder, init["encoder"], str(init_model))
    student = SpeakerClassifier(encoder, n_classes, c["scale"], c["margin"], c["dropout"])
    if warm_start:
        with torch.no_grad():
            student.classifier.weight.copy_(torch.from_numpy(centroids))
    student.to(device)
    use_ema = c["ema"] and relabel
    teacher = frozen_copy(student).to(device) if use_ema else None
    maybe_compile(cfg["runtime"], student.encoder, *([teacher.encoder] if teacher else []))
    if d.world > 1:
        if device.type == "cuda":  # SyncBatchNorm has no CPU (gloo) implementation
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        student = nn.parallel.DistributedDataParallel(student)
    optimizer = torch.optim.Adam(param_groups(student, c["weight_decay"]), lr=0.0,
                                 fused=device.type == "cuda")

    steps = batches_per_epoch(n_utts, c["batch_size"], c["steps_per_epoch"])
    total = steps * epochs
    lr_at = lr_schedule(c, epochs, steps)
    momentum_at = linear_schedule(c["momentum_start"], c["momentum_end"], total)

    # Per-utterance state: training labels, their queue, p_clean, and this epoch's records.
    labels = kmeans_labels.copy()
    queue = LabelQueue(kmeans_labels, c["queue_len"])
    p_clean = np.ones(n_utts, dtype=np.float32)
    active = np.ones(n_classes, dtype=bool)
    recorded_label = np.full(n_utts, -1, dtype=np.int64)
    recorded_loss = np.full(n_utts, np.nan, dtype=np.float32)

    ckpt = Checkpoints(out_dir / "checkpoint", d)
    history: list[dict] = []
    epoch0, step0 = 0, 0
    resumed_losses: list[float] = []
    state = ckpt.load()
    if state is not None:
        unwrap(student).load_state_dict(state["student"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        queue.load_state_dict({k[6:]: v.numpy() for k, v in state.items()
                               if k.startswith("queue.")})
        labels, p_clean, active = (state["labels"].numpy(), state["p_clean"].numpy(),
                                   state["active"].numpy())
        recorded_label, recorded_loss = (state["recorded_label"].numpy(),
                                         state["recorded_loss"].numpy())
        epoch0, step0, history = state["epoch"], state["step"], state["history"]
        resumed_losses = list(state.get("epoch_losses", []))  # this epoch's steps so far
        log.info("resuming at epoch %d step %d", epoch0, step0)

    def checkpoint(epoch: int, step: int) -> None:
        arrays = {"labels": labels, "p_clean": p_clean, "active": active,
                  "recorded_label": recorded_label, "recorded_loss": recorded_loss,
                  **{f"queue.{k}": v for k, v in queue.state_dict().items()}}
        ckpt.save({"student": unwrap(student).state_dict(),
                   "teacher": teacher.state_dict() if teacher is not None else {},
                   "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                   "history": history, "epoch_losses": losses if step else [],
                   **{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}})

    views = [View("student", 1, c["student_seconds"], augment=True)]
    if relabel:
        views.append(View("teacher", 1, c["teacher_seconds"],
                          augment=not c["teacher_clean_input"]))
    batches = CropBatches(store, views, c["batch_size"], steps, cfg["seed"], d, augmenter, device,
                          cfg["augment"]["on_gpu"], cfg["runtime"]["num_workers"])
    every = cfg["runtime"]["checkpoint_every_steps"]
    nlm = c["noisy_label_modeling"] and relabel
    result = teacher if teacher is not None else unwrap(student)  # the model this stage yields
    test = open_store(test_store) if test_store is not None and d.main else None

    for epoch in range(epoch0, epochs):
        t_epoch, losses = time.time(), (resumed_losses if epoch == epoch0 else [])
        recording = relabel and epoch >= c["record_from_epoch"]
        active_t = torch.from_numpy(active).to(device)
        for step, crops in batches.epoch(epoch, step0 if epoch == epoch0 else 0):
            it = epoch * steps + step
            set_lr(optimizer, float(lr_at[it]))
            utts = crops["utts"].numpy()
            y = torch.from_numpy(labels[utts]).long().to(device)

            if recording:  # the teacher re-labels what it sees (a long, clean crop)
                judge = teacher if teacher is not None else unwrap(student).eval()
                with autocast(device, cfg["runtime"]["bf16"]):
                    new, t_loss = teacher_relabel(judge, frontend(crops["teacher"][0]), y,
                                                  active_t, c["sinkhorn"])
                unwrap(student).train()
                all_utts = all_gather_cat(crops["utts"].to(device), d).cpu().numpy()
                recorded_label[all_utts] = all_gather_cat(new, d).cpu().numpy()
                recorded_loss[all_utts] = all_gather_cat(t_loss.float(), d).cpu().numpy()

            with autocast(device, cfg["runtime"]["bf16"]):
                per_utt = student(frontend(crops["student"][0]), y, active_t)
            weights = torch.from_numpy(p_clean[utts]).to(device) if nlm else None
            loss = weighted_loss(per_utt, weights, d)
            finite_or_raise(loss, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if teacher is not None:
                ema_update(teacher, unwrap(student), float(momentum_at[it]))
            losses.append(all_reduce_mean(loss.detach(), d).item())  # the global batch's loss
            if tracker is not None and it % 10 == 0:
                tracker.log_metrics({"loss": losses[-1], "lr": float(lr_at[it]),
                                     "teacher_momentum": float(momentum_at[it])}, step=it)
            if every and (it + 1) % every == 0 and step + 1 < steps:
                checkpoint(epoch, step + 1)

        row: dict = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}
        if recording:
            labels, active, row["changed"] = refresh_labels(c, epoch, queue, labels,
                                                            recorded_label, active)
            if nlm:
                seen = ~np.isnan(recorded_loss)
                if seen.sum() > 2:
                    p_clean[seen] = clean_posterior(recorded_loss[seen], seed=cfg["seed"])
            recorded_label[:] = -1
            recorded_loss[:] = np.nan
        row.update(label_diagnostics(labels, active, p_clean, store.spk))
        if test is not None and c["eval_every"] and (
                (epoch + 1) % c["eval_every"] == 0 or epoch + 1 == epochs):
            row.update(evaluate_store(result.encoder, frontend, test, device))
        row["seconds"] = time.time() - t_epoch
        history.append(row)
        log.info("epoch %d/%d  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()
                                            if k not in ("epoch",) and isinstance(v, float)),
                 epoch + 1, epochs)
        if tracker is not None:
            tracker.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)
        checkpoint(epoch + 1, 0)

    if d.main:
        save_model_file(out_dir / "model.pt", result.encoder, cfg["model"], cfg["features"],
                        {"stage": "ssrl" if relabel else "iterative"})
        write_json(out_dir / "history.json", history)
        save_npz(out_dir / "labels.npz", utt_ids=np.array(store.utt_ids), labels=labels,
                 centroids=result.classifier.weight.detach().cpu().numpy())
    return history


def weighted_loss(per_utt: torch.Tensor, p_clean: torch.Tensor | None,
                  d: Dist = Dist()) -> torch.Tensor:
    """Noisy-label modelling: L = Σ p_clean·CE / Σ p_clean; the plain mean when it is off.

    Under DDP each process divides by the global Σ p_clean / world, so that DDP's average of
    the processes' gradients is the gradient of L over the whole global batch."""
    if p_clean is None:
        return per_utt.mean()
    return (p_clean * per_utt).sum() / all_reduce_mean(p_clean.sum(), d).clamp_min(1e-8)


def refresh_labels(c: dict, epoch: int, queue: LabelQueue, labels: np.ndarray,
                   recorded: np.ndarray,
                   active: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """End of an epoch: push the teacher's labels into the queue; once the hold period is over
    the training labels become the queue's majority vote, and clusters left with no utterance
    are removed for good. Returns (labels, active clusters, fraction of labels changed)."""
    seen = recorded >= 0
    queue.push(np.where(seen, recorded, 0), seen)
    if epoch < c["hold_epochs"] - 1:
        return labels, active, 0.0
    voted = queue.vote().astype(np.int64)
    # A vote for a cluster removed earlier falls back to the teacher's (always active) label.
    stale = ~active[voted]
    voted[stale] = np.where(seen[stale], recorded[stale], labels[stale])
    still_used = np.bincount(voted, minlength=len(active)) > 0
    return voted, active & still_used, float(np.mean(voted != labels))


def label_diagnostics(labels: np.ndarray, active: np.ndarray, p_clean: np.ndarray,
                      speakers: list[str] | None) -> dict:
    """Cluster count, pseudo-label quality and clean-detector rates (true labels: report only)."""
    row = {"n_clusters": float(active.sum()), "p_clean_mean": float(p_clean.mean())}
    if speakers is not None:
        row.update({k: float(v) for k, v in cluster_quality(speakers, labels).items()
                    if k != "n_clusters"})
        rates = clean_detection_rates(p_clean, majority_cluster_match(labels, speakers))
        row.update({f"clean_{k}": float(v) for k, v in rates.items()})
    return row

