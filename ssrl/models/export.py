"""Export a trained encoder for use outside this package: TorchScript and ONNX.

Both files take log-mel features `[batch, n_mels, frames]` (the front end recorded in the model
file, written next to them as `export.json`) and return embeddings `[batch, embed_dim]`; batch
and frame counts are free. After writing, each export is run on a random input of another batch
size and length than the example it was exported with and compared with the PyTorch module, so
a file that silently froze a shape (a traced `x.shape[2]`) is caught here and not by a user.

TorchScript uses `torch.jit.script` (control flow and shapes stay symbolic). ONNX uses the
TorchScript-based exporter (`dynamo=False`, opset 17): it handles both encoders in about a second,
while the dynamo exporter gives the same result but takes 10-15 s for a tiny model.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssrl.files import atomic_path, write_json
from ssrl.models.model_file import load_encoder

log = logging.getLogger("ssrl.export")

TOLERANCE = 1e-4  # max abs difference to PyTorch (float32 rounding differs between runtimes)
EXAMPLE_SHAPE = (2, 200)  # (batch, frames) of the export example
CHECK_SHAPE = (3, 317)  # (batch, frames) of the check input: both differ from the example
OPSET = 17


def _check(name: str, got: np.ndarray, want: np.ndarray) -> float:
    diff = float(np.abs(got - want).max())
    if not diff < TOLERANCE:  # also catches NaN
        raise RuntimeError(f"{name} export disagrees with PyTorch: max abs difference {diff:g} "
                           f">= {TOLERANCE:g} on input {CHECK_SHAPE}")
    return diff


def export_torchscript(encoder: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the format
        warnings.simplefilter("ignore", DeprecationWarning)  # other runtimes (C++, TorchServe) load
        scripted = torch.jit.script(encoder)
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))


def export_onnx(encoder: nn.Module, example: torch.Tensor, path: Path) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(encoder, (example,), str(tmp), input_names=["feats"],
                          output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"feats": {0: "batch", 2: "frames"},
                                        "embedding": {0: "batch"}})


def export_encoder(model_path: Path, out_dir: Path, seed: int = 0) -> dict:
    """Write `encoder.ts`, `encoder.onnx` and `export.json` to `out_dir`; check them.

    Returns {"torchscript": path, "onnx": path, "max_abs_diff": {"torchscript": d, "onnx": d}}.
    Raises RuntimeError when either export disagrees with PyTorch by TOLERANCE or more.
    """
    import onnxruntime as ort

    out_dir = Path(out_dir)
    model = load_encoder(model_path)
    encoder = model.encoder
    n_mels = model.frontend.n_mels
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(EXAMPLE_SHAPE[0], n_mels, EXAMPLE_SHAPE[1], generator=gen)
    check = torch.randn(CHECK_SHAPE[0], n_mels, CHECK_SHAPE[1], generator=gen)
    with torch.no_grad():
        want = encoder(check).numpy()

    ts_path, onnx_path = out_dir / "encoder.ts", out_dir / "encoder.onnx"
    export_torchscript(encoder, ts_path)
    export_onnx(encoder, example, onnx_path)

    diffs = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        diffs["torchscript"] = _check("TorchScript", torch.jit.load(str(ts_path))(check).numpy(),
                                      want)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs["onnx"] = _check("ONNX", session.run(None, {"feats": check.numpy()})[0], want)

    result = {"torchscript": ts_path, "onnx": onnx_path, "max_abs_diff": diffs}
    write_json(out_dir / "export.json", {
        **result, "input": "feats [batch, n_mels, frames] (log-mel, front end below)",
        "output": f"embedding [batch, {encoder.embed_dim}]", "onnx_opset": OPSET,
        "onnx_exporter": "torchscript (dynamo=False)", "model_cfg": model.model_cfg,
        "frontend": model.frontend.describe(), "source": str(model_path)})
    log.info("exported %s -> %s (max abs diff %s)", model_path, out_dir, diffs)
    return result
