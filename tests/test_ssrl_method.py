"""SSRL as its authors run it (the released code, read for facts): relabelling with the AAM margin
on the current label, the noisy-label GMM scored against the label an utterance carries next,
the recording timetable, Sinkhorn's input, and the EMA teacher's lag as a time constant. Each
detail has a switch; each test shows what the switch changes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssrl.config import load_config
from ssrl.data.augment import Augmenter
from ssrl.data.stores import MemoryWaves
from ssrl.runtime import Dist
from ssrl.training.classifier import ClassifierConfig, SpeakerClassifier, build_fixed_label_run
from ssrl.training.loop import run_epoch
from ssrl.training.optim import momentum_from_lag, teacher_momentum
from ssrl.training.ssrl import (
    LabelState,
    assign_labels,
    build_ssrl_run,
    record_from_epoch,
    ssrl_step,
    teacher_logits,
)


class _Identity(nn.Module):
    """An 'encoder' whose embedding is its input: the geometry of a test is set by hand."""

    embed_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _at(*angles: float) -> torch.Tensor:
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float32)


def _classifier(prototype_angles: list[float], margin: float = 0.2) -> SpeakerClassifier:
    head = SpeakerClassifier(_Identity(), len(prototype_angles), 32.0, margin)
    with torch.no_grad():
        head.classifier.weight.copy_(_at(*prototype_angles))
    return head.eval()


# --- (a) relabelling ---------------------------------------------------------------------------
def test_margin_relabelling_lets_a_runner_up_within_the_margin_take_the_label():
    """The authors' teacher computes its logits as in training (ArcFace with the margin on the
    utterance's current label), so the current label must beat every runner-up by the margin
    angle to stay. Prototypes at 0 and 0.4 rad; the utterance at 0.15 rad, labelled 0: nearer
    to 0 (0.15 rad) than to 1 (0.25 rad), but not by the margin 0.2."""
    head = _classifier([0.0, 0.4])
    emb, label = _at(0.15), torch.tensor([0])
    active = torch.ones(2, dtype=torch.bool)
    margin = teacher_logits(head, emb, label, active, "margin")
    cosine = teacher_logits(head, emb, label, active, "cosine")
    sticky = teacher_logits(head, emb, label, active, "sticky")
    assert margin.argmax(1).item() == 1  # the runner-up takes the label
    assert cosine.argmax(1).item() == 0  # the nearest prototype keeps it
    assert sticky.argmax(1).item() == 0  # the margin in favour of the current label
    assert margin[0, 0].item() == pytest.approx(32 * math.cos(0.15 + 0.2), rel=1e-5)
    assert margin[0, 1].item() == pytest.approx(32 * math.cos(0.25), rel=1e-5)
    # A runner-up closer than the current prototype by more than the margin: every mode moves.
    emb = _at(0.34)  # 0.34 rad from 0, 0.06 from 1
    for mode in ("margin", "cosine", "sticky"):
        assert teacher_logits(head, emb, label, active, mode).argmax(1).item() == 1, mode
    # ...and by less: "sticky" keeps the label, the authors' "margin" does not.
    emb = _at(0.22)  # 0.22 from 0, 0.18 from 1
    assert teacher_logits(head, emb, label, active, "sticky").argmax(1).item() == 0
    assert teacher_logits(head, emb, label, active, "margin").argmax(1).item() == 1


def test_removed_clusters_are_never_chosen():
    head = _classifier([0.0, 0.1, 1.5])
    active = torch.tensor([True, False, True])
    logits = teacher_logits(head, _at(0.1, 0.05), torch.tensor([0, 2]), active, "margin")
    assert torch.isinf(logits[:, 1]).all()
    assert (assign_labels(logits, active, False) != 1).all()
    assert (assign_labels(logits, active, True, "probs") != 1).all()


# --- (b) what the noisy-label GMM scores ------------------------------------------------------
def test_next_label_is_the_queue_vote_with_the_new_label():
    state = LabelState.start(np.array([0, 0, 1, 1]), 3, queue_len=5)  # two k-means copies
    state.queue.push(np.array([2, 2, 0, 1]))  # two earlier teacher labels each
    state.queue.push(np.array([2, 1, 0, 1]))
    new = np.array([2, 1, 0, 2])
    utts = np.arange(4)
    # before the first update the next label is the teacher's argmax itself
    assert state.next_labels(utts, new, updating=False).tolist() == [2, 1, 0, 2]
    # once labels follow the queue: [0,0,2,2]+2 -> 2; [0,0,2,1]+1 -> 0 (2 votes to 2 for 1,
    # the older wins); [1,1,0,0]+0 -> 0; [1,1,1,1]+2 -> 1
    assert state.next_labels(utts, new, updating=True).tolist() == [2, 0, 0, 1]
    # a vote for a cluster removed since falls back to the teacher's new (active) label
    state = LabelState.start(np.array([2]), 3, queue_len=3)
    state.queue.push(np.array([2]))
    state.active[2] = False
    assert state.next_labels(np.array([0]), np.array([1]), updating=True).tolist() == [1]


def _tiny_run(nlm_label: str, relabel_mode: str = "margin"):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(8)]
    cfg = load_config(overrides={"experiment": "t", "model": {
        "preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "scale": 2, "se_channels": 8,
        "attention_channels": 8}})
    cfg["seed"] = 0
    cfg["runtime"]["device"] = "cpu"
    cfg["ssrl"].update({"batch_size": 8, "steps_per_epoch": 1, "epochs": 2,
                        "student_seconds": 0.5, "teacher_seconds": 0.8, "queue_len": 1,
                        "hold_epochs": 1, "relabel": relabel_mode, "nlm_label": nlm_label})
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    centroids = rng.standard_normal((3, 8)).astype(np.float32)
    return build_ssrl_run(cfg, MemoryWaves([f"u{i}" for i in range(8)], waves),
                          Augmenter(None, None, p_reverb=0.0, p_noise=0.0), labels, centroids,
                          epochs=2, init_encoder=None, device=torch.device("cpu"), d=Dist())


@pytest.mark.parametrize("nlm_label", ["next", "current"])
def test_gmm_losses_are_measured_against_the_next_label(nlm_label):
    """With a queue of 1 in an updating epoch, the next label is the teacher's argmax: the
    recorded loss is CE(teacher logits, argmax), not CE against the label trained with now."""
    run = _tiny_run(nlm_label)
    step, crops = next(iter(run.batches.epoch(0)))
    teacher = copy.deepcopy(run.teacher)  # the teacher as it is before the step's EMA update
    utts = crops["utts"].numpy()
    current = torch.from_numpy(run.state.labels[utts])
    ssrl_step(run, crops, 0, step)
    with torch.no_grad():
        logits = teacher_logits(teacher, run.frontend(crops["teacher"][0]), current,
                                torch.ones(3, dtype=torch.bool), "margin")
    new = logits.argmax(1)
    assert run.state.recorded_label[utts].tolist() == new.tolist()
    want = F.cross_entropy(logits, new if nlm_label == "next" else current, reduction="none")
    np.testing.assert_allclose(run.state.recorded_loss[utts], want.numpy(), rtol=1e-4)
    assert (new != current).any()  # so the two choices differ in this batch


# --- (c) the timetable ---------------------------------------------------------------------------
@pytest.mark.parametrize("hold, queue, start", [(5, 5, 2), (5, 1, 4), (5, 7, 1), (3, 5, 0),
                                                (2, 3, 0)])
def test_recording_starts_queue_len_over_two_plus_one_epochs_before_the_first_update(
        hold, queue, start):
    """The authors record from epoch hold - (Q // 2 + 1): by the first update (the end of
    epoch hold - 1) the queue holds Q // 2 + 1 teacher labels, one more than the k-means
    copies it was seeded with, so a consistent new label can win at once."""
    c = {"hold_epochs": hold, "queue_len": queue, "record_from_epoch": None}
    assert record_from_epoch(c) == start
    votes = hold - start  # recording epochs up to and including the first update
    assert votes == queue // 2 + 1
    assert record_from_epoch({**c, "record_from_epoch": 0}) == 0  # an explicit earlier start


# --- (d) Sinkhorn's input ---------------------------------------------------------------------
def test_sinkhorn_balances_probabilities_as_the_authors_do():
    """The authors balance exp(softmax(logits) / 0.05), not exp(logits / 0.05): two different
    assignments of the same batch, both more balanced than the plain argmax."""
    from ssrl.training.sinkhorn import sinkhorn

    logits = 32 * torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    active = torch.ones(4, dtype=torch.bool)
    probs = assign_labels(logits, active, True, "probs")
    raw = assign_labels(logits, active, True, "logits")
    assert probs.tolist() == sinkhorn(F.softmax(logits, dim=1), active=active).argmax(1).tolist()
    assert raw.tolist() == sinkhorn(logits, active=active).argmax(1).tolist()
    assert probs.tolist() != raw.tolist()
    plain = assign_labels(logits, active, False)
    assert plain.tolist() == logits.argmax(1).tolist()
    for balanced in (probs, raw):
        assert np.bincount(balanced, minlength=4).max() < np.bincount(plain, minlength=4).max()


# --- the EMA teacher's lag --------------------------------------------------------------------
def test_teacher_lag_is_a_time_constant_in_epochs():
    """The paper's 0.999 -> 0.9999 at VoxCeleb2's 2,275 steps per epoch is a lag of 0.44 ->
    4.4 epochs; stated as a lag, the same dynamics hold when data size or batch changes."""
    assert momentum_from_lag(0.44, 2275) == pytest.approx(0.999, abs=2e-6)
    assert momentum_from_lag(4.4, 2275) == pytest.approx(0.9999, abs=2e-7)
    c = {"teacher_lag_epochs": [0.5, 2.0], "momentum_start": 0.9, "momentum_end": 0.95}
    small, large = teacher_momentum(c, 50, 500), teacher_momentum(c, 200, 2000)
    assert small[0] == pytest.approx(1 - 1 / 25) and small[-1] == pytest.approx(1 - 1 / 100)
    assert large[0] == pytest.approx(1 - 1 / 100) and large[-1] == pytest.approx(1 - 1 / 400)
    direct = teacher_momentum({**c, "teacher_lag_epochs": None}, 50, 500)
    assert direct[0] == pytest.approx(0.9) and direct[-1] == pytest.approx(0.95)


# --- the mechanism: over-split clusters merge, pseudo labels improve ----------------------------
def _tone_speakers(rng: np.random.Generator, n_spk: int = 4, n_utt: int = 16) -> MemoryWaves:
    """Clearly separable 'speakers': harmonic tones at their own F0, 2.5-3.5 s, light noise."""
    waves, spk = [], []
    for s, f0 in enumerate([110.0, 180.0, 290.0, 470.0][:n_spk]):
        for _ in range(n_utt):
            t = np.arange(int(16000 * rng.uniform(2.5, 3.5))) / 16000
            x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
            waves.append((0.2 * (x + 0.05 * rng.standard_normal(len(t)))).astype(np.float32))
            spk.append(f"s{s}")
    return MemoryWaves([f"u{i}" for i in range(len(waves))], waves, spk)


def test_over_split_clusters_merge_and_pseudo_labels_improve():
    """Four speakers, each split into two clusters (12 + 4 utterances): a few SSRL epochs with
    the built-in default's relabelling must remove clusters and raise NMI toward 1."""
    from ssrl.evaluation.embed import embed_waves
    from ssrl.evaluation.label_quality import cluster_quality

    rng = np.random.default_rng(0)
    store = _tone_speakers(rng)
    cfg = load_config(overrides={"experiment": "m", "model": {
        "preset": "ecapa_tiny", "channels": 16, "embed_dim": 16, "scale": 2, "se_channels": 8,
        "attention_channels": 8}})
    cfg["seed"] = 1
    cfg["runtime"]["device"] = "cpu"
    cfg["ssrl"].update({"batch_size": 16, "steps_per_epoch": None, "student_seconds": 1.0,
                        "teacher_seconds": 2.0, "queue_len": 3, "hold_epochs": 2,
                        "warm_epochs": 0, "lr": 3e-3, "min_lr": 1e-4, "p_noise": 0.0,
                        "p_reverb": 0.0, "teacher_lag_epochs": [0.3, 1.0], "eval_every": 0})
    assert cfg["ssrl"]["relabel"] == load_config()["ssrl"]["relabel"] == "cosine"
    quiet = Augmenter(None, None, p_reverb=0.0, p_noise=0.0)
    cpu = torch.device("cpu")
    # A speaker-discriminative start, as DINO gives: a few epochs on the true speakers.
    true = np.repeat(np.arange(4), 16)
    start = build_fixed_label_run(cfg, ClassifierConfig.from_section(cfg["ssrl"], strict=False),
                                  store, quiet, true,
                                  rng.standard_normal((4, 16)).astype(np.float32),
                                  name="iterative", epochs=20, init_encoder=None, device=cpu,
                                  d=Dist())
    for epoch in range(20):
        run_epoch(start, epoch, 0, [])
    encoder = start.student.encoder.eval()
    emb = embed_waves(encoder, start.frontend, store, cpu)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    over = np.array([2 * s + (u >= 12) for s in range(4) for u in range(16)])
    centroids = np.stack([emb[over == k].mean(axis=0) for k in range(8)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    nmi0 = cluster_quality(store.spk, over)["nmi"]

    run = build_ssrl_run(cfg, store, quiet, over, centroids.astype(np.float32), epochs=12,
                         init_encoder=encoder.state_dict(), device=cpu, d=Dist())
    rows = []
    for epoch in range(12):
        run_epoch(run, epoch, 0, [])
        rows.append(run.end_of_epoch(epoch))
    counts = [r["n_clusters"] for r in rows]
    assert counts == sorted(counts, reverse=True)  # clusters are only ever removed
    assert counts[-1] <= 6, counts
    assert rows[-1]["nmi"] > nmi0 + 0.05, [r["nmi"] for r in rows]
