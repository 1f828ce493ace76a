"""A deliberately crude speaker-verification baseline: cosine of utterance-mean MFCCs.

It needs no training, so it tells how hard a test set is before any network is involved: on the
built-in corpus the per-session channels shift the mean cepstrum, and this baseline must stay
well above 10% EER for the corpus to be a meaningful test of learned speaker embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.fft import dct

from ssrl.files import InputError, read_map, read_table

SAMPLE_RATE = 16000
N_FFT = 512
WIN = 400      # 25 ms
HOP = 160      # 10 ms
N_MELS = 40
N_CEPS = 20


def _mel_filterbank(n_mels: int = N_MELS, f_min: float = 20.0,
                    f_max: float = SAMPLE_RATE / 2) -> np.ndarray:
    """Triangular HTK-mel filters on the rfft grid: [n_mels, N_FFT // 2 + 1]."""
    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges_mel = np.linspace(mel(f_min), mel(f_max), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling))


_FBANK = _mel_filterbank()


def mean_mfcc(wave: np.ndarray) -> np.ndarray:
    """Mean over frames of MFCCs c1..c20 (c0, the loudness, is left out): [20]."""
    if len(wave) < WIN:
        wave = np.pad(wave, (0, WIN - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, WIN)[::HOP] * np.hamming(WIN)
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2
    log_mel = np.log(power @ _FBANK.T + 1e-10)
    ceps = dct(log_mel, type=2, norm="ortho", axis=1)[:, 1:N_CEPS + 1]
    return ceps.mean(axis=0)


def mfcc_mean_scores(test_dir: Path, trials: str = "trials") -> tuple[np.ndarray, np.ndarray]:
    """Score `test_dir/<trials>` by cosine between utterance-mean MFCC vectors.

    The vectors are centred on the mean over the trial utterances first (no labels are used),
    so the score reflects differences between utterances rather than what all share.
    Returns (scores, labels) in trial-file order; labels are 1 for target, 0 for nontarget.
    """
    test_dir = Path(test_dir)
    wavs = read_map(test_dir / "wav.scp")
    trial_file = test_dir / trials
    rows = read_table(trial_file, ncols=3)
    pairs, labels = [], []
    for lineno, (enroll, test, label) in rows:
        if label not in ("target", "nontarget"):
            raise InputError(f"{trial_file}:{lineno}: label must be target or nontarget, "
                             f"got {label!r}")
        for utt in (enroll, test):
            if utt not in wavs:
                raise InputError(f"{trial_file}:{lineno}: utterance {utt!r} not in wav.scp")
        pairs.append((enroll, test))
        labels.append(1 if label == "target" else 0)

    if not pairs:
        raise InputError(f"{trial_file}: no trials")
    needed = sorted({u for pair in pairs for u in pair})
    vectors = {}
    for utt in needed:
        path = Path(wavs[utt])
        path = path if path.is_absolute() else test_dir / path
        try:
            wave, sr = sf.read(path, dtype="float64", always_2d=True)
        except (OSError, RuntimeError) as err:
            raise InputError(f"{path}: cannot read audio ({err})") from None
        if sr != SAMPLE_RATE:
            raise InputError(f"{path}: sample rate {sr}, expected {SAMPLE_RATE}")
        vectors[utt] = mean_mfcc(wave.mean(axis=1))

    mat = np.stack([vectors[u] for u in needed])
    mat -= mat.mean(axis=0)
    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    index = {u: i for i, u in enumerate(needed)}
    enroll_idx = np.array([index[a] for a, _ in pairs], dtype=np.int64)
    test_idx = np.array([index[b] for _, b in pairs], dtype=np.int64)
    scores = np.einsum("ij,ij->i", mat[enroll_idx], mat[test_idx])
    return scores, np.array(labels, dtype=np.int64)
