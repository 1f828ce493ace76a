"""Embedding extraction: length batching, and torchrun processes agreeing with one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_corpus

from ssrl.evaluation.embed import length_batches
from ssrl.models.encoders import build_encoder
from ssrl.evaluation.scoring import load_embeddings
from ssrl.training.runtime import save_model_file

REPO = Path(__file__).resolve().parents[1]


def test_length_batches_trim_at_most_max_trim_and_cover_everything():
    lengths = np.array([100, 97, 50, 99, 49, 10, 200])
    groups = length_batches(lengths, max_trim=0.03)
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    for g in groups:
        assert lengths[g].min() >= (1 - 0.03) * lengths[g].max()
    assert [sorted(g.tolist()) for g in groups] == [[6], [0, 1, 3], [2, 4], [5]]
    assert all(len(g) == 1 for g in length_batches(lengths, max_trim=0.0)[:1])


@pytest.fixture(scope="module")
def model_and_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    tiny_corpus(root, ("train",), train_speakers=3, train_utts_per_speaker=4,
                sessions_per_speaker=2, test_speakers=2, test_utts_per_speaker=2, min_dur=1.0,
                max_dur=2.5, noise_files=3, rir_files=1, seed=5)
    torch.manual_seed(0)
    cfg = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
           "attention_channels": 8}
    encoder = build_encoder({**cfg, "n_mels": 80})
    save_model_file(root / "model.pt", encoder, cfg, {"frontend": "logmel", "n_mels": 80})
    return root


def _embed(root: Path, out: Path, processes: int) -> tuple[list[str], np.ndarray]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ssrl", "embed", "--model", str(root / "model.pt"),
           "--data", str(root / "store" / "train"), "--out", str(out)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", *cmd[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_embeddings(out)


def test_two_processes_embed_exactly_like_one(model_and_store):
    root = model_and_store
    ids1, emb1 = _embed(root, root / "one.npz", 1)
    ids2, emb2 = _embed(root, root / "two.npz", 2)
    assert ids1 == ids2 and emb1.shape == (12, 8)
    assert np.allclose(emb1, emb2, atol=1e-5)
    assert np.abs(emb1).sum(axis=1).min() > 0  # every utterance was embedded by someone
