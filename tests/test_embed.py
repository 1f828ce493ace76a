"""Embedding extraction: exact-length batches (an embedding never depends on the batch), long
recordings in bounded memory, and torchrun processes agreeing with one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_corpus

from ssrl.data.stores import MemoryWaves
from ssrl.evaluation.embed import embed_waves, exact_length_batches, segment_bounds
from ssrl.evaluation.scoring import load_embeddings
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import load_encoder, save_model_file

REPO = Path(__file__).resolve().parents[1]


def test_batches_hold_only_equal_lengths_and_cover_everything():
    frames = np.array([100, 97, 100, 99, 97, 10, 200, 100])
    batches = exact_length_batches(frames, np.arange(8))
    assert [sorted(b.tolist()) for b in batches] == [[6], [0, 2, 7], [3], [1, 4], [5]]
    capped = exact_length_batches(frames, np.arange(8), max_frames=250)
    assert [sorted(b.tolist()) for b in capped] == [[6], [0, 2], [7], [3], [1, 4], [5]]


def test_segments_are_near_equal_and_bounded():
    assert segment_bounds(100, 100) == [(0, 100)]
    assert segment_bounds(101, 100) == [(0, 50), (50, 101)]
    bounds = segment_bounds(1000, 300)
    assert len(bounds) == 4 and bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert max(b - a for a, b in bounds) <= 300 and min(b - a for a, b in bounds) >= 249


def _tiny_encoder(seed: int = 0) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    cfg = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
           "attention_channels": 8}
    return build_encoder({**cfg, "n_mels": 80}).eval(), cfg


def test_an_embedding_does_not_depend_on_the_utterances_beside_it():
    """The same utterance alone and inside a set of 12 (four of its exact length): cosine
    >= 1 - 1e-6 on CPU in fp32 (the old length batching trimmed it: 0.99995)."""
    encoder, _ = _tiny_encoder()
    rng = np.random.default_rng(3)
    target = (0.3 * rng.standard_normal(24000)).astype(np.float32)
    others = [(0.3 * rng.standard_normal(n)).astype(np.float32)
              for n in (24000, 24000, 24000, 23500, 23990, 20000, 30000, 24100, 8000, 16000,
                        24001)]
    frontend = Frontend("logmel")
    alone = embed_waves(encoder, frontend, MemoryWaves(["t"], [target]), torch.device("cpu"))
    many = embed_waves(encoder, frontend, MemoryWaves([f"u{i}" for i in range(12)],
                                                      [*others[:5], target, *others[5:]]),
                       torch.device("cpu"))
    a, b = alone[0], many[5]
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 1 - 1e-6


def test_long_recording_is_the_mean_of_its_segments():
    encoder, _ = _tiny_encoder()
    frontend = Frontend("logmel")
    wave = (0.3 * np.random.default_rng(4).standard_normal(16000 * 25)).astype(np.float32)
    source = MemoryWaves(["long"], [wave])
    whole = embed_waves(encoder, frontend, source, torch.device("cpu"), segment_seconds=None)
    cut = embed_waves(encoder, frontend, source, torch.device("cpu"), segment_seconds=10)
    feats = frontend.utterance(torch.from_numpy(wave))
    parts = segment_bounds(feats.shape[1], 1000)
    assert len(parts) == 3
    with torch.no_grad():
        seg = torch.cat([encoder(feats[None, :, a:b]) for a, b in parts]).numpy()
    seg /= np.linalg.norm(seg, axis=1, keepdims=True)
    w = np.array([b - a for a, b in parts], dtype=np.float64)
    np.testing.assert_allclose(cut[0], w @ seg / w.sum(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(cut[0], whole[0])  # segments change a long file's embedding


def test_ten_minute_file_embeds_in_bounded_memory(tmp_path):
    """`ssrl embed` of a 10-minute recording: its peak memory is within 300 MB of a
    10-second one (embedding the whole file at once took 420 MB more), and a short file's embedding
    is what it always was."""
    encoder, cfg = _tiny_encoder()
    save_model_file(tmp_path / "model.pt", encoder, cfg, Frontend("logmel"))
    rng = np.random.default_rng(5)
    peaks = {}
    for name, seconds in (("short", 10), ("long", 600)):
        folder = tmp_path / name
        folder.mkdir()
        import soundfile as sf

        sf.write(folder / "a.wav", (0.3 * rng.standard_normal(16000 * seconds)).astype(
            np.float32), 16000, subtype="PCM_16")
        (folder / "wav.scp").write_text("a a.wav\n")
        code = ("import resource, sys; from ssrl.cli import main; rc = main(sys.argv[1:]); "
                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
                "sys.exit(rc)")
        proc = subprocess.run([sys.executable, "-c", code, "embed", "--model",
                               str(tmp_path / "model.pt"), "--data", str(folder), "--out",
                               str(tmp_path / f"emb_{name}.npz")], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1",
                                   "PYTHONPATH": str(REPO)}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[name] = int(proc.stdout.split("PEAK")[1]) / 1024  # MiB
    assert peaks["long"] - peaks["short"] < 300, peaks
    _, short = load_embeddings(tmp_path / "emb_short.npz")
    model = load_encoder(tmp_path / "model.pt")
    import soundfile as sf

    wave, _ = sf.read(tmp_path / "short" / "a.wav", dtype="float32")
    with torch.no_grad():
        direct = model.encoder(model.frontend(torch.from_numpy(wave)[None])).numpy()
    np.testing.assert_allclose(short, direct, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def model_and_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    tiny_corpus(root, ("train",), train_speakers=3, train_utts_per_speaker=4,
                sessions_per_speaker=2, test_speakers=2, test_utts_per_speaker=2, min_dur=1.0,
                max_dur=2.5, noise_files=3, rir_files=1, seed=5)
    encoder, cfg = _tiny_encoder()
    save_model_file(root / "model.pt", encoder, cfg, Frontend("logmel"))
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
