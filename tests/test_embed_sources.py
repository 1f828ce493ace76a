"""`ssrl embed --data` takes what a user has: a plain folder of audio files (read recursively;
utterance ids are the paths without extension), a wav.scp-style list of any name, or a Kaldi
folder; the same audio gives the same embeddings whichever way it is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssrl.evaluation.scoring import load_embeddings
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import save_model_file

REPO = Path(__file__).resolve().parents[1]


def _embed(model: Path, data: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ssrl", "embed", "--model", str(model),
                           "--data", str(data), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
           "attention_channels": 8}
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, build_encoder({**cfg, "n_mels": 80}).eval(), cfg, Frontend("logmel"))
    return path


def test_plain_folder_list_file_and_kaldi_folder_embed_alike(model, make_wav, tmp_path):
    wavs = tmp_path / "my wavs"
    make_wav(wavs / "alice" / "a1.wav", 1.2, seed=1)
    make_wav(wavs / "alice" / "a2.flac", 1.0, seed=2)
    make_wav(wavs / "bob.wav", 1.5, seed=3)
    (wavs / "notes.txt").write_text("not audio\n")
    proc = _embed(model, wavs, tmp_path / "folder.npz")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids, emb = load_embeddings(tmp_path / "folder.npz")
    assert ids == ["alice/a1", "alice/a2", "bob"] and emb.shape == (3, 8)

    # the same files through a list not named wav.scp (relative to the list's folder)
    # (the output may sit beside such a list, not replace it)
    lst = tmp_path / "mine.scp"
    lst.write_text("x1 my wavs/alice/a1.wav\nx2 my wavs/alice/a2.flac\nx3 my wavs/bob.wav\n")
    proc = _embed(model, lst, lst)
    assert proc.returncode == 2 and "the output would overlap the input" in proc.stderr
    proc = _embed(model, lst, tmp_path / "list.npz")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids2, emb2 = load_embeddings(tmp_path / "list.npz")
    assert ids2 == ["x1", "x2", "x3"]
    np.testing.assert_allclose(emb2, emb, rtol=1e-5, atol=1e-6)

    # a Kaldi folder (wav.scp) is read as before
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {wavs / 'bob.wav'}\n")
    proc = _embed(model, kaldi, tmp_path / "kaldi.npz")
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(load_embeddings(tmp_path / "kaldi.npz")[1], emb[2:],
                               rtol=1e-5, atol=1e-6)


def test_bad_sources_are_one_line_naming_the_file(model, make_wav, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    proc = _embed(model, empty, tmp_path / "e.npz")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ssrl embed: error: {empty}: no wav.scp and no audio files (.aac, .flac, .m4a, .mp4, "
        ".ogg, .wav) in the folder"]
    twice = tmp_path / "twice"
    make_wav(twice / "a.wav", 1.0)
    make_wav(twice / "a.flac", 1.0)
    proc = _embed(model, twice, tmp_path / "t.npz")
    assert proc.returncode == 2 and "same utterance id 'a'" in proc.stderr
    lst = tmp_path / "l.lst"
    lst.write_text("u1 missing.wav\n")
    proc = _embed(model, lst, tmp_path / "l.npz")
    assert proc.returncode == 2
    assert f"{lst}:1: audio file not found" in proc.stderr
    proc = _embed(model, tmp_path / "nowhere", tmp_path / "n.npz")
    assert proc.returncode == 2 and "nowhere: data not found" in proc.stderr
    assert not any((tmp_path / n).exists() for n in ("e.npz", "t.npz", "l.npz", "n.npz"))
