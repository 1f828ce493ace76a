"""The classical floor: MFCC statistics over energy-selected frames, normalised over the set,
scored by `ssrl score` like any other system (shared readers: any rate, any trial format)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ssrl_env

from ssrl.data.stores import MemoryWaves
from ssrl.evaluation.baseline import N_CEPS, mfcc_statistics, statistics_embeddings
from ssrl.models.frontend import Frontend

FRONT = Frontend("logmel", n_mels=40)


def test_statistics_ignore_loudness_and_silence_and_see_colour() -> None:
    rng = np.random.default_rng(0)
    white = rng.standard_normal(16000).astype(np.float32)
    v = mfcc_statistics(white, FRONT)
    assert v.shape == (2 * N_CEPS,)
    np.testing.assert_allclose(mfcc_statistics(10 * white, FRONT), v, rtol=1e-5, atol=1e-5)
    # 1 s of near-silence around the signal: those frames are 60 dB down and left out
    quiet = np.concatenate([1e-3 * white[:8000], white, 1e-3 * white[8000:]])
    np.testing.assert_allclose(mfcc_statistics(quiet, FRONT)[:N_CEPS], v[:N_CEPS], atol=0.15)
    brown = np.cumsum(white).astype(np.float32)
    assert mfcc_statistics(brown, FRONT)[0] > v[0] + 5  # low-pass colour raises c1 a lot


def test_embeddings_are_standardised_over_the_set() -> None:
    rng = np.random.default_rng(1)
    waves = [(rng.standard_normal(8000) * rng.uniform(0.1, 1)).astype(np.float32)
             for _ in range(6)]
    emb = statistics_embeddings(MemoryWaves([f"u{i}" for i in range(6)], waves))
    assert emb.shape == (6, 2 * N_CEPS) and emb.dtype == np.float32
    np.testing.assert_allclose(emb.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(emb.std(axis=0), 1.0, atol=1e-4)


def test_cli_on_a_kaldi_folder_at_8khz_with_voxceleb_trials(tmp_path: Path) -> None:
    """The old baseline rejected non-16 kHz audio and VoxCeleb's `1 a b` trial lines; now it
    reads through the same readers as every system: two 'speakers' (tones) are separated."""
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    (data / "wav").mkdir(parents=True)
    rows = []
    for spk, f0 in (("a", 200.0), ("b", 1200.0)):
        for i in range(3):
            t = np.arange(8000) / 8000
            x = np.sin(2 * np.pi * f0 * (1 + 0.02 * i) * t) + 0.05 * rng.standard_normal(8000)
            sf.write(data / "wav" / f"{spk}{i}.wav", (0.3 * x).astype(np.float32), 8000)
            rows.append(f"{spk}{i} wav/{spk}{i}.wav")
    (data / "wav.scp").write_text("\n".join(rows) + "\n")
    (data / "utt2spk").write_text("".join(f"{r.split()[0]} {r[0]}\n" for r in rows))
    (data / "trials").write_text("1 a0 a1\n1 b0 b2\n0 a0 b1\n0 a2 b0\n1 a1 a2\n0 b1 a1\n")
    emb = tmp_path / "emb.npz"
    for cmd in (["baseline", "--store", str(data), "--out", str(emb)],
                ["score", "--embeddings", str(emb), "--test-dir", str(data), "--replicates",
                 "50", "--out", str(tmp_path / "metrics.json")]):
        proc = subprocess.run([sys.executable, "-m", "ssrl", *cmd], capture_output=True,
                              text=True, env=ssrl_env(), timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())["trials"]["trials"]
    assert metrics["n_trials"] == 6 and metrics["n_target"] == 3
    assert metrics["eer"] == pytest.approx(0.0)
    assert (tmp_path / "scores_trials.txt").read_text().splitlines()[0].startswith("a0 a1 ")
