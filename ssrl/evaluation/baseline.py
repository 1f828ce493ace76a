"""The classical floor every learned system is compared with: MFCC statistics + cosine.

No training and no labels: each utterance becomes the mean and standard deviation of its MFCCs
(c1..c20 of 40 mel bands, from the shared front end's filterbank and pre-emphasis) over its
energy-selected frames (within `VAD_DB` of its loudest frame), and each of those 40 dimensions
is normalised to zero mean and unit variance over the evaluated set. The result is written as an
ordinary embeddings file and scored by `ssrl score` like every other system, so its numbers
carry the same intervals and paired comparisons.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.fft import dct

from ssrl.models.frontend import Frontend

N_MELS = 40
N_CEPS = 20
VAD_DB = 30.0


def mfcc_statistics(wave: np.ndarray, frontend: Frontend) -> np.ndarray:
    """[mean, std] of c1..c20 over the energy-selected frames of one utterance: `[40]`."""
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
    x = x / x.abs().amax().clamp(min=1e-8)
    with torch.no_grad():
        power = frontend.mel_power(x)[0].double().numpy().T  # [frames, mels]
    energy_db = 10.0 * np.log10(power.sum(axis=1) + 1e-12)
    keep = energy_db > energy_db.max() - VAD_DB
    ceps = dct(np.log(power[keep] + 1e-10), type=2, norm="ortho", axis=1)[:, 1:N_CEPS + 1]
    return np.concatenate([ceps.mean(axis=0), ceps.std(axis=0)])


def statistics_embeddings(store) -> np.ndarray:
    """MFCC statistics of every utterance of a wave store, normalised over the store: `[N, 40]`."""
    frontend = Frontend("logmel", n_mels=N_MELS)
    stats = np.stack([mfcc_statistics(store.full(i), frontend) for i in range(len(store))])
    stats -= stats.mean(axis=0)
    stats /= np.maximum(stats.std(axis=0), 1e-12)
    return stats.astype(np.float32)
