"""The Python API (`ssrl.load_model(path).embed(...)`, `.score(a, b)`): the same embeddings
and scores as `python -m ssrl embed` / `score`, from files, waveforms and embeddings."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ssrl_env

import ssrl
from ssrl.cli import main
from ssrl.evaluation.scoring import load_embeddings
from ssrl.files import InputError
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import save_model_file

TINY = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
        "attention_channels": 8}


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """`ssrl.cli.main` installs a SIGTERM handler; give the test process its own back."""
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model file and a Kaldi folder of three recordings: 2 s and 5 s at 16 kHz, and
    1.5 s at 8 kHz (resampled on reading)."""
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    save_model_file(root / "model.pt", build_encoder({**TINY, "n_mels": 80}), TINY,
                    Frontend("logmel"), {"stage": "test"})
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    for name, seconds, rate in (("a", 2.0, 16000), ("long", 5.0, 16000), ("low", 1.5, 8000)):
        wave = (0.3 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
        sf.write(data / f"{name}.wav", wave, rate, subtype="PCM_16")
    (data / "wav.scp").write_text("a a.wav\nlong long.wav\nlow low.wav\n")
    return root


def _cli_embeddings(files: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    rc = main(["embed", "--model", str(files / "model.pt"), "--data", str(files / "data"),
               "--out", str(out), "--device", "cpu", *extra])
    assert rc == 0
    ids, emb = load_embeddings(out)
    return dict(zip(ids, emb))


def test_embed_of_a_file_is_what_ssrl_embed_writes(files: Path, tmp_path: Path):
    model = ssrl.load_model(files / "model.pt")
    assert isinstance(model, ssrl.api.SpeakerModel)
    assert model.embed_dim == 8 and model.sample_rate == 16000 and model.meta == {"stage": "test"}
    want = _cli_embeddings(files, tmp_path / "emb.npz")
    for utt in ("a", "long", "low"):
        got = model.embed(files / "data" / f"{utt}.wav")
        assert got.shape == (8,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[utt], rtol=1e-6, atol=1e-7)
    # a string path too
    np.testing.assert_allclose(model.embed(str(files / "data" / "a.wav")), want["a"],
                               rtol=1e-6, atol=1e-7)


def test_long_recordings_are_segmented_as_the_workflow_does(files: Path, tmp_path: Path):
    """`segment_seconds` is `ssrl embed --segment-seconds`: the 5 s file in 2 s segments."""
    want = _cli_embeddings(files, tmp_path / "emb.npz", "--segment-seconds", "2")
    whole = ssrl.load_model(files / "model.pt").embed(files / "data" / "long.wav")
    model = ssrl.load_model(files / "model.pt", segment_seconds=2.0)
    got = model.embed(files / "data" / "long.wav")
    np.testing.assert_allclose(got, want["long"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(got, whole)  # the segments do change it


def test_waveforms_at_16k_and_other_rates(files: Path):
    model = ssrl.load_model(files / "model.pt")
    wave, _ = sf.read(files / "data" / "a.wav", dtype="float32")
    from_file = model.embed(files / "data" / "a.wav")
    np.testing.assert_array_equal(model.embed(wave), from_file)
    np.testing.assert_array_equal(model.embed(torch.from_numpy(wave)), from_file)
    np.testing.assert_allclose(model.embed(list(map(float, wave))), from_file, rtol=1e-6)
    # an 8 kHz waveform with its rate: resampled exactly as the 8 kHz file is on reading
    low, rate = sf.read(files / "data" / "low.wav", dtype="float32")
    assert rate == 8000
    np.testing.assert_array_equal(model.embed(low, sample_rate=8000),
                                  model.embed(files / "data" / "low.wav"))


def test_score_is_the_cosine_of_the_embeddings(files: Path, tmp_path: Path):
    model = ssrl.load_model(files / "model.pt")
    a, low = files / "data" / "a.wav", files / "data" / "low.wav"
    ea, el = model.embed(a), model.embed(low)
    want = float(ea @ el / np.linalg.norm(ea) / np.linalg.norm(el))
    wave, _ = sf.read(a, dtype="float32")
    for x, y in ((a, low), (ea, el), (wave, el), (ea, low), (str(a), torch.from_numpy(el))):
        assert model.score(x, y) == pytest.approx(want, abs=1e-6)
    assert model.score(a, a) == pytest.approx(1.0, abs=1e-6)
    # the same number `ssrl score` writes for the trial `a low`
    (tmp_path / "trials").write_text("a low\n")
    _cli_embeddings(files, tmp_path / "emb.npz")
    assert main(["score", "--embeddings", str(tmp_path / "emb.npz"), "--trials",
                 str(tmp_path / "trials"), "--out", str(tmp_path / "metrics.json")]) == 0
    written = float((tmp_path / "scores_trials.txt").read_text().split()[2])
    assert model.score(a, low) == pytest.approx(written, abs=1e-6)


def test_bad_input_is_named(files: Path, tmp_path: Path):
    model = ssrl.load_model(files / "model.pt")
    with pytest.raises(InputError, match=r"none\.wav: audio file not found"):
        model.embed(tmp_path / "none.wav")
    with pytest.raises(ValueError, match=r"expected a 1-D waveform \[samples\], got shape "
                                         r"\(2, 16000\)"):
        model.embed(np.ones((2, 16000), dtype=np.float32))
    with pytest.raises(ValueError, match="shorter than 0.1 s"):
        model.embed(np.ones(1000, dtype=np.float32))
    with pytest.raises(ValueError, match="waveform: audio contains NaN or infinite samples"):
        model.embed(np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"waveform: silent audio \(all samples are zero\)"):
        model.embed(np.zeros(16000, dtype=np.float32))
    with pytest.raises(ValueError, match="sample_rate is for waveforms"):
        model.embed(files / "data" / "a.wav", sample_rate=8000)
    with pytest.raises(InputError, match=r"nope\.pt: model file not found"):
        ssrl.load_model(tmp_path / "nope.pt")


def test_importing_ssrl_does_not_import_torch():
    code = "import sys, ssrl; print(callable(ssrl.load_model), 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ssrl_env(), timeout=60, check=True)
    assert proc.stdout.split() == ["True", "False"]
