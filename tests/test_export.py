"""TorchScript and ONNX exports of both encoder kinds match PyTorch at other batch sizes/lengths,
with feature input and, with the front end included, with waveform input (both front ends)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import ssrl_env

import ssrl
from ssrl.data.audio import load_audio
from ssrl.files import InputError
from ssrl.models.encoders import build_encoder, resolve_config
from ssrl.models.export import ExportFrontend, export_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import save_model_file

FEATURES = {"frontend": "logmel", "n_mels": 24}
FRONTEND = Frontend("logmel", n_mels=24)


def _model_file(path: Path, model_cfg: dict, frontend: Frontend = FRONTEND) -> torch.nn.Module:
    torch.manual_seed(0)
    encoder = build_encoder({**model_cfg, "n_mels": FEATURES["n_mels"]})
    # Non-trivial BN statistics, so that a wrong running-stat export would show.
    encoder.train()
    with torch.no_grad():
        for _ in range(2):
            encoder(torch.randn(4, FEATURES["n_mels"], 120))
    save_model_file(path, encoder, model_cfg, frontend)
    return encoder.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("model_cfg", [{"preset": "ecapa_tiny"},
                                       {"preset": "resnet34", "base_channels": 8}],
                         ids=["ecapa_tiny", "resnet34_c8"])
def test_exports_match_pytorch(tmp_path: Path, model_cfg: dict):
    encoder = _model_file(tmp_path / "model.pt", model_cfg)
    result = export_encoder(tmp_path / "model.pt", tmp_path / "export")
    assert result["torchscript"] == tmp_path / "export" / "encoder.ts"
    assert result["onnx"] == tmp_path / "export" / "encoder.onnx"
    assert set(result["max_abs_diff"]) == {"torchscript", "onnx"}
    assert all(0 <= d < 1e-4 for d in result["max_abs_diff"].values())
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    assert meta["frontend"] == FRONTEND.describe()
    assert meta["input_kind"] == "feats" and meta["frontend_included"] is False
    assert meta["model_cfg"] == resolve_config({**model_cfg, "n_mels": 24})

    scripted = torch.jit.load(str(result["torchscript"]))
    session = ort.InferenceSession(str(result["onnx"]), providers=["CPUExecutionProvider"])
    for batch, frames in ((1, 90), (5, 263)):
        x = torch.randn(batch, FEATURES["n_mels"], frames, generator=torch.Generator()
                        .manual_seed(frames))
        with torch.no_grad():
            want = encoder(x).numpy()
            got_ts = scripted(x).numpy()
        got_onnx = session.run(None, {"feats": x.numpy()})[0]
        assert want.shape == (batch, encoder.embed_dim)
        np.testing.assert_allclose(got_ts, want, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_onnx, want, atol=1e-4, rtol=0)
    assert not list((tmp_path / "export").glob(".*.tmp"))  # atomic writes left no temp files


def test_missing_model_file_is_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="model file not found"):
        export_encoder(tmp_path / "nope.pt", tmp_path / "export")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_disagreeing_export_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A runtime that computes something else must fail the export, not pass silently."""
    import ssrl.models.export as export

    _model_file(tmp_path / "model.pt", {"preset": "ecapa_tiny"})

    def broken_onnx(encoder, example, path):
        class Shifted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = encoder

            def forward(self, x):
                return self.encoder(x) + 1e-3

        torch.onnx.export(Shifted(), (example,), str(path), input_names=["feats"],
                          output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"feats": {0: "batch", 2: "frames"}})

    monkeypatch.setattr(export, "export_onnx", broken_onnx)
    with pytest.raises(RuntimeError, match="ONNX export disagrees"):
        export_encoder(tmp_path / "model.pt", tmp_path / "export")


@pytest.mark.parametrize("kind", ["logmel", "fbank"])
def test_export_frontend_computes_the_features_of_frontend(kind: str):
    """The export-only front end (DFT as a convolution) against `Frontend` itself: same frame
    count at every length (an odd one, one frame, a hop boundary) and the same features up to
    float32 FFT rounding (torch.stft's own error against float64 is ~3e-4 relative in the
    quietest mel bands: the tolerance is about that, on features of unit variance)."""
    for n_mels in (24, 80):
        frontend = Frontend(kind, n_mels=n_mels)
        twin = ExportFrontend(frontend)
        for samples in (400, 16_000, 16_159, 16_160, 50_731):
            wave = 0.1 * torch.randn(3, samples, generator=torch.Generator().manual_seed(samples))
            with torch.no_grad():
                want, got = frontend(wave), twin(wave)
            assert got.shape == want.shape == (3, n_mels, frontend.n_frames(samples))
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-3, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind,model_cfg", [("logmel", {"preset": "ecapa_tiny"}),
                                            ("fbank", {"preset": "resnet34", "base_channels": 8})],
                         ids=["logmel_ecapa_tiny", "fbank_resnet34_c8"])
def test_waveform_exports_match_pytorch(tmp_path: Path, kind: str, model_cfg: dict):
    """`--with-frontend`: the files take 16 kHz waveforms and give what the workflow's
    embedding of each utterance gives (`Frontend.utterance`, then the encoder)."""
    frontend = Frontend(kind, n_mels=24)
    encoder = _model_file(tmp_path / "model.pt", model_cfg, frontend)
    result = export_encoder(tmp_path / "model.pt", tmp_path / "export", with_frontend=True)
    assert all(0 <= d < 1e-4 for d in result["max_abs_diff"].values())
    meta = json.loads((tmp_path / "export" / "export.json").read_text())
    assert meta["input_kind"] == "wave" and meta["frontend_included"] is True
    assert meta["sample_rate"] == 16000 and meta["input"].startswith("wave [batch, samples]")
    assert meta["frontend"] == frontend.describe()  # every front-end parameter
    assert set(meta["frontend"]) >= {"kind", "sample_rate", "n_mels", "n_fft", "win_length",
                                     "hop_length", "f_min", "f_max", "preemphasis"}

    scripted = torch.jit.load(str(result["torchscript"]))
    session = ort.InferenceSession(str(result["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["wave"]
    for batch, samples in ((1, 8_000), (4, 37_123)):
        wave = 0.2 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples))
        with torch.no_grad():
            want = torch.cat([encoder(frontend.utterance(w)[None]) for w in wave]).numpy()
            got_ts = scripted(wave).numpy()
        got_onnx = session.run(None, {"wave": wave.numpy()})[0]
        assert want.shape == (batch, encoder.embed_dim)
        np.testing.assert_allclose(got_ts, want, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_onnx, want, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_command_with_frontend_embeds_a_file_like_the_api(tmp_path: Path, make_wav):
    """`python -m ssrl export --with-frontend`: the ONNX file, given a 16 kHz recording's
    samples, gives the embedding `ssrl.load_model(...).embed(file)` gives."""
    _model_file(tmp_path / "model.pt", {"preset": "ecapa_tiny"})
    proc = subprocess.run([sys.executable, "-m", "ssrl", "export", "--model",
                           str(tmp_path / "model.pt"), "--out-dir", str(tmp_path / "exp"),
                           "--with-frontend"], capture_output=True, text=True, env=ssrl_env(),
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    wav = make_wav(tmp_path / "a.wav", 2.3, seed=4)
    session = ort.InferenceSession(str(tmp_path / "exp" / "encoder.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"wave": load_audio(wav)[None]})[0][0]
    want = ssrl.load_model(tmp_path / "model.pt").embed(wav)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
