"""TorchScript and ONNX exports of both encoder kinds match PyTorch at other batch sizes/lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ssrl.files import InputError
from ssrl.models.encoders import build_encoder, resolve_config
from ssrl.models.export import export_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import save_model_file

FEATURES = {"frontend": "logmel", "n_mels": 24}
FRONTEND = Frontend("logmel", n_mels=24)


def _model_file(path: Path, model_cfg: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    encoder = build_encoder({**model_cfg, "n_mels": FEATURES["n_mels"]})
    # Non-trivial BN statistics, so that a wrong running-stat export would show.
    encoder.train()
    with torch.no_grad():
        for _ in range(2):
            encoder(torch.randn(4, FEATURES["n_mels"], 120))
    save_model_file(path, encoder, model_cfg, FRONTEND)
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
