"""What several benchmark scripts share: synthetic embeddings, trial lists and augmentation
sources, and the speaker-bootstrap intervals as the workflow computes them. A script imports
it as `common` (the script's own folder is on sys.path when run as `python bench/<x>.py`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssrl

from ssrl.data.augment import ArraySource, Augmenter  # noqa: E402
from ssrl.evaluation.bootstrap import (  # noqa: E402
    SortedTrials,
    interval,
    replicate_metrics,
    trial_resamples,
)

SR = 16000


def synthetic_embeddings(n: int, k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit-norm points around k random directions (like L2-normalised embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(scale=0.6, size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def synthetic_augmenter(rng: np.random.Generator, cls: type[Augmenter] = Augmenter
                        ) -> Augmenter:
    """Random noise / music / babble sources and decaying-noise RIRs (in memory), as an
    Augmenter (or a subclass `cls`) drawing as the SSRL defaults do."""
    cats = ["noise", "music", "speech"] * 4
    noise = ArraySource([(rng.standard_normal(5 * SR) * 0.1).astype(np.float32) for _ in cats],
                        cats)
    decay = np.exp(-np.arange(SR // 4) / (0.05 * SR))
    rirs = ArraySource([(rng.standard_normal(len(decay)) * decay).astype(np.float32)
                        for _ in range(4)])
    return cls(noise, rirs, p_reverb=1 / 3, p_noise=1 / 3)


UTTS_PER_SPEAKER = 116  # VoxCeleb1: 153,516 utterances of 1,251 speakers


@dataclass
class TrialSet:
    """Synthetic embeddings and a trial list over them (half target trials, as VoxCeleb1-E)."""

    utt_ids: list[str]
    emb: np.ndarray
    enroll: list[str]
    test: list[str]
    labels: np.ndarray
    utt2spk: dict[str, str]


def synthetic_trials(utts: int, dim: int, trials: int, seed: int) -> TrialSet:
    rng = np.random.default_rng(seed)
    n_spk = max(2, round(utts / UTTS_PER_SPEAKER))
    spk = rng.integers(0, n_spk, utts)
    centres = rng.normal(size=(n_spk, dim)).astype(np.float32)
    emb = centres[spk] + rng.normal(scale=3.0, size=(utts, dim)).astype(np.float32)
    utt_ids = [f"id{s:05d}/utt{i:06d}.wav" for i, s in enumerate(spk)]
    # the test utterance of a target trial is drawn from the enrolment utterance's speaker
    by_spk = np.argsort(spk, kind="stable")
    first = np.r_[0, np.cumsum(np.bincount(spk, minlength=n_spk))[:-1]]
    count = np.bincount(spk, minlength=n_spk)
    ie = rng.integers(0, utts, trials)
    same = by_spk[first[spk[ie]] + (rng.random(trials) * count[spk[ie]]).astype(np.int64)]
    it = np.where(rng.random(trials) < 0.5, same, rng.integers(0, utts, trials))
    return TrialSet(utt_ids, emb, [utt_ids[i] for i in ie], [utt_ids[i] for i in it],
                    spk[ie] == spk[it], {u: u.split("/")[0] for u in utt_ids})


def bootstrap_intervals(t: TrialSet, scores: np.ndarray, replicates: int,
                        threads: int) -> dict[str, tuple[float, float]]:
    """95 % intervals of EER and minDCF from `replicates` speaker resamples, as `score_lists`
    computes them (draw the replicates, sort once, every replicate's metrics, percentiles)."""
    resamples, ue, ut, _ = trial_resamples(t.enroll, t.test, t.utt2spk, replicates, seed=0)
    boot = replicate_metrics(SortedTrials(scores, t.labels, ue, ut), resamples, threads)
    return {k: interval(v) for k, v in boot.items()}
