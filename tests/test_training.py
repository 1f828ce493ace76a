"""DINO and SSRL mechanisms: loss, centre, EMA, schedules, queue timetable, cluster removal,
noisy-label weighting, and short real runs on a tiny built-in corpus."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import tiny_corpus
from torch import nn

from ssrl.config import CLASSIFIER_KEYS, load_config
from ssrl.data.stores import WaveStore
from ssrl.files import InputError
from ssrl.models.heads import AAMSoftmax
from ssrl.training.classifier import (
    ClassifierConfig,
    SpeakerClassifier,
    lr_schedule,
    weighted_loss,
)
from ssrl.training.dino import DINOLoss, train_dino
from ssrl.training.ema import ema_update, frozen_copy
from ssrl.training.job import Inputs
from ssrl.training.optim import cosine_schedule, linear_schedule
from ssrl.training.ssrl import LabelState, refresh_labels, train_ssrl

# --- DINO -----------------------------------------------------------------------------------


def test_dino_loss_matches_hand_computation():
    t = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])]
    s = [torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]]),
         torch.tensor([[1.0, 1.0, 1.0]])]
    center = torch.tensor([[0.5, 0.5, 0.5]])
    tt, st = 0.5, 0.25

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    pt = [softmax((x.numpy()[0] - center.numpy()[0]) / tt) for x in t]
    ls = [np.log(softmax(x.numpy()[0] / st)) for x in s]
    pairs = [(i, j) for i in range(2) for j in range(3) if i != j]
    expected = np.mean([-(pt[i] * ls[j]).sum() for i, j in pairs])
    assert len(pairs) == 4  # 2 teacher crops x 3 student crops, minus the 2 identical ones
    loss = DINOLoss(3, student_temp=st, teacher_temp=tt, center_momentum=0.9)
    loss.load_state_dict({"center": center})
    assert loss(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_dino_center_is_a_buffer_and_an_ema_of_teacher_batch_means():
    loss = DINOLoss(2, student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)
    assert list(loss.state_dict()) == ["center"]  # saved with a checkpoint, no parameter
    assert not list(loss.parameters()) and loss.center.tolist() == [[0.0, 0.0]]
    out = [torch.tensor([[1.0, 3.0], [3.0, 5.0]]), torch.tensor([[2.0, 4.0], [2.0, 4.0]])]
    loss.update_center(out)  # batch mean over both crops: (2, 4)
    assert torch.allclose(loss.center, torch.tensor([[0.2, 0.4]]))  # 0.9 * 0 + 0.1 * (2, 4)
    loss.update_center([torch.tensor([[12.0, -6.0]])])  # batch mean (12, -6)
    # 0.9 * (0.2, 0.4) + 0.1 * (12, -6) = (1.38, -0.24), by hand
    assert torch.allclose(loss.center, torch.tensor([[1.38, -0.24]]))
    assert torch.equal(loss.state_dict()["center"], loss.center)
    again = DINOLoss(2, 0.1, 0.04, 0.9)
    again.load_state_dict(loss.state_dict())  # a resumed job continues from the same centre
    assert torch.equal(again.center, loss.center)


def test_ema_update_moves_parameters_and_batchnorm_statistics():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = frozen_copy(student)
    for p in teacher.parameters():
        p.data.zero_()
    teacher[1].running_mean.zero_()
    for p in student.parameters():
        p.data.fill_(1.0)
    student[1].running_mean.fill_(1.0)
    ema_update(teacher, student, momentum=0.9)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.1))


def test_teacher_receives_no_gradient():
    student = SpeakerClassifier(_Enc(), 3, 32.0, 0.2)
    teacher = frozen_copy(student)
    x = torch.randn(5, 2, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    active = torch.ones(3, dtype=torch.bool)
    loss = student(x, y, active).mean() + teacher(x, y, active).mean()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.training


class _Enc(nn.Module):
    embed_dim = 4

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_schedules_endpoints():
    m = linear_schedule(0.999, 0.9999, 100)
    assert m[0] == pytest.approx(0.999) and m[-1] == pytest.approx(0.9999) and len(m) == 100
    lr = cosine_schedule(0.25, 1e-5, 100, warmup_steps=10)
    assert lr[0] == 0.0 and lr[10] == pytest.approx(0.25)
    assert lr[-1] == pytest.approx(1e-5, abs=1e-4) and np.all(np.diff(lr[10:]) <= 0)
    c = _classifier_config(warm_epochs=5, warm_lr=1e-4, lr=5e-4, min_lr=1e-5)
    two = lr_schedule(c, epochs=105, steps=10)
    assert len(two) == 1050
    assert two[0] == pytest.approx(1e-4) and two[50] == pytest.approx(5e-4)  # restart at epoch 5
    assert two[49] < 2e-5


def _classifier_config(**values) -> ClassifierConfig:
    ssrl = load_config()["ssrl"]
    return ClassifierConfig.from_section({k: ssrl[k] for k in CLASSIFIER_KEYS} | values)


def test_classifier_config_is_typed_and_refuses_keys_it_does_not_read():
    ssrl = load_config()["ssrl"]
    classifier = {k: ssrl[k] for k in CLASSIFIER_KEYS}  # what a round's job config holds
    c = ClassifierConfig.from_section(classifier)
    assert c.epochs == ssrl["epochs"] and c.margin == ssrl["margin"]
    assert tuple(f for f in c.as_dict()) == CLASSIFIER_KEYS  # one list, in config.py's order
    with pytest.raises(InputError, match="queue_len: not read by a classifier training"):
        ClassifierConfig.from_section({**classifier, "queue_len": 5})
    with pytest.raises(InputError, match="missing margin"):
        ClassifierConfig.from_section({k: v for k, v in classifier.items() if k != "margin"})
    # SSRL's own section holds more keys; it reads the classifier's part of it
    assert ClassifierConfig.from_section(ssrl, strict=False) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]


# --- SSRL mechanisms ------------------------------------------------------------------------

SCHEDULE = {"hold_epochs": 5}


def test_noisy_label_weighting_and_plain_mean():
    ce = torch.tensor([1.0, 2.0, 6.0])
    assert weighted_loss(ce, None).item() == pytest.approx(3.0)
    assert weighted_loss(ce, torch.ones(3)).item() == pytest.approx(3.0)
    w = torch.tensor([1.0, 1.0, 0.0])  # the noisy third utterance is ignored
    assert weighted_loss(ce, w).item() == pytest.approx(1.5)
    w = torch.tensor([0.5, 0.25, 0.25])
    assert weighted_loss(ce, w).item() == pytest.approx((0.5 + 0.5 + 1.5) / 1.0)


def _state(kmeans, queue_len, n_classes=None) -> LabelState:
    kmeans = np.asarray(kmeans)
    return LabelState.start(kmeans, n_classes or int(kmeans.max()) + 1, queue_len)


def _refresh(c, epoch, state, teacher) -> float:
    state.recorded_label = np.asarray(teacher, dtype=np.int64)
    return refresh_labels(c, epoch, state)


def test_labels_stay_frozen_during_hold_epochs_then_follow_the_vote():
    state = _state([0, 0, 1, 1], 1)
    teacher = [1, 0, 1, 0]
    for epoch in range(4):  # epochs 0..3 of a 5-epoch hold: unchanged
        changed = _refresh(SCHEDULE, epoch, state, teacher)
        assert state.labels.tolist() == [0, 0, 1, 1] and changed == 0.0
    changed = _refresh(SCHEDULE, 4, state, teacher)
    assert state.labels.tolist() == [1, 0, 1, 0]  # Q=1: plain relabelling with the teacher's
    assert changed == 0.5


def test_queue_smooths_labels_by_majority():
    state = _state([0, 0, 0], 5, n_classes=3)  # starts with two copies of the k-means label
    hold = {"hold_epochs": 1}
    _refresh(hold, 0, state, [1, 0, 2])
    assert state.labels.tolist() == [0, 0, 0]  # one new vote cannot outvote two k-means copies
    _refresh(hold, 1, state, [1, 0, 2])
    assert state.labels.tolist() == [0, 0, 0]  # 2 vs 2: the tie goes to the older label
    _refresh(hold, 2, state, [1, 0, 2])
    assert state.labels.tolist() == [1, 0, 2]  # 3 vs 2


def test_emptied_cluster_is_removed_for_good_and_masked():
    state = _state([0, 1, 2, 2], 3)  # one k-means copy each
    hold = {"hold_epochs": 1}
    _refresh(hold, 0, state, [0, 1, 1, 1])
    # queues: [0,0] [1,1] [2,1] [2,1] -> ties to the older label keep cluster 2 alive
    assert state.labels.tolist() == [0, 1, 2, 2] and state.active.all()
    _refresh(hold, 1, state, [0, 1, 1, 1])
    assert state.labels.tolist() == [0, 1, 1, 1]
    assert state.active.tolist() == [True, True, False]  # cluster 2 emptied: removed
    # Even if the queue still votes for cluster 2, it never comes back.
    state.queue.queue[3] = [2, 2, 2]
    _refresh(hold, 2, state, [0, 1, 1, -1])
    assert 2 not in state.labels.tolist() and state.active.tolist() == [True, True, False]
    # ...and the teacher and student cannot pick or train on it: its logit is -inf.
    head = AAMSoftmax(4, 3)
    cos = head.cosine(torch.randn(6, 4), torch.from_numpy(state.active))
    assert torch.isinf(cos[:, 2]).all() and (cos.argmax(dim=1) != 2).all()


# --- short real runs on a tiny corpus -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny_corpus(root, train_speakers=4, train_utts_per_speaker=4, sessions_per_speaker=2,
                test_speakers=2, test_utts_per_speaker=3, min_dur=1.0, max_dur=2.0,
                noise_files=3, rir_files=2, seed=3)
    cfg = load_config(overrides={
        "experiment": "tiny",
        "dino": {"epochs": 4, "steps_per_epoch": 3, "batch_size": 8, "global_seconds": 1.0,
                 "local_seconds": 0.5, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                 "warmup_epochs": 1, "lr": 0.05},
        "ssrl": {"epochs": 3, "steps_per_epoch": 2, "batch_size": 8, "student_seconds": 1.0,
                 "teacher_seconds": 1.5, "warm_epochs": 1, "hold_epochs": 2, "queue_len": 3,
                 "eval_every": 3},
    })
    cfg["seed"] = 0
    cfg["model"] = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 16, "scale": 2,
                    "se_channels": 8, "attention_channels": 8}
    return root, cfg


def test_short_dino_run_lowers_the_loss(tiny):
    root, cfg = tiny
    s = root / "store"
    compute = train_dino(cfg, Inputs(s / "train", s / "noise", s / "rir"), root / "dino")
    history = __import__("json").loads((root / "dino" / "history.json").read_text())
    assert len(history) == 4 and [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert compute["epochs"] == 4 and compute["steps"] == 12
    assert compute["utterance_passes"] == pytest.approx(12 * 8 / 16)
    # a finished job keeps a finished resume point (no optimiser) until it runs again
    assert (root / "dino" / "model.pt").exists()
    final = torch.load(root / "dino/checkpoint/last.pt", map_location="cpu", weights_only=True)
    assert final["finished"] and final["epoch"] == 4 and "optimizer" not in final


def test_short_ssrl_run_tracks_clusters_and_evaluates(tiny):
    root, cfg = tiny
    s = root / "store"
    if not (root / "dino" / "model.pt").exists():
        train_dino(cfg, Inputs(s / "train", s / "noise", s / "rir"), root / "dino")
    store = WaveStore(s / "train")
    k = 6
    rng = np.random.default_rng(0)
    labels = np.arange(len(store)) % k
    centroids = rng.standard_normal((k, 16)).astype(np.float32)
    np.savez(root / "labels.npz", utt_ids=np.array(store.utt_ids), labels=labels,
             centroids=centroids)
    train_ssrl(cfg, Inputs(s / "train", s / "noise", s / "rir", dev=s / "test",
                           init=root / "dino" / "model.pt", labels=root / "labels.npz"),
               root / "ssrl")
    history = __import__("json").loads((root / "ssrl" / "history.json").read_text())
    counts = [row["n_clusters"] for row in history]
    assert len(history) == 3 and counts[0] <= k
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # only ever falls
    assert 0.0 <= history[-1]["nmi"] <= 1.0 and math.isfinite(history[-1]["dev/eer"])
    assert "changed" in history[-1] and 0.0 < history[-1]["p_clean_mean"] <= 1.0
    with np.load(root / "ssrl" / "labels.npz") as z:
        final = z["labels"]
    assert len(np.unique(final)) == counts[-1]
