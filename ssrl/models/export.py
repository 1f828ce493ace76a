"""Export a trained encoder for use outside this package: TorchScript and ONNX.

Two inputs. By default the files take log-mel features `[batch, n_mels, frames]` (the front end
recorded in the model file, written next to them as `export.json`). With `with_frontend` they
take the 16 kHz waveform `[batch, samples]` itself and compute the features inside, so no user
has to re-implement the front end. Both return embeddings `[batch, embed_dim]`; batch, frame and
sample counts are free. After writing, each export is run on a random input of another batch
size and length than the example it was exported with and compared with the PyTorch model (the
package's own `Frontend` and encoder), so a file that silently froze a shape (a traced
`x.shape[2]`) or computes other features is caught here and not by a user.

The front end inside an export is `ExportFrontend`, an export-only twin of `Frontend`: its
STFT (or Kaldi's framing, DC removal, pre-emphasis, window and FFT, which are all linear in a
frame's samples) is one strided convolution with fixed real and imaginary DFT kernels, which
every runtime runs; `torch.stft` of complex numbers does not export to ONNX. `Frontend` itself
stays the one definition the workflow trains and embeds with.

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
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import load_encoder

log = logging.getLogger("ssrl.export")

TOLERANCE = 1e-4  # max abs difference to PyTorch (float32 rounding differs between runtimes)
#: (batch, frames) of the feature input's export example and check input, and (batch, samples)
#: of the waveform input's: the check differs from the example in both sizes (an odd length,
#: so that the last frame's rounding is exercised too).
EXAMPLE_SHAPE = {"feats": (2, 200), "wave": (2, 32_000)}
CHECK_SHAPE = {"feats": (3, 317), "wave": (3, 50_731)}
OPSET = 17
#: What export.json says the files take, per input kind.
INPUTS = {
    "feats": "feats [batch, n_mels, frames]: features of the front end below (not included)",
    "wave": "wave [batch, samples]: mono waveform at sample_rate, any scale (the front end "
            "below is included)",
}
KALDI_EPSILON = float(torch.finfo(torch.float32).eps)  # Kaldi's log floor (torchaudio's too)


def _dft(n_fft: int, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary DFT rows `[n_fft // 2 + 1, len(n)]` at sample positions `n` (float64):
    X[k] = sum_n x[n] exp(-2 pi i k n / n_fft)."""
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    phase = 2 * torch.pi * k[:, None] * n[None, :] / n_fft
    return torch.cos(phase), -torch.sin(phase)


def _stft_kernels(frontend: Frontend) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv kernels `[2 F, 1, n_fft]` and mel matrix `[F, n_mels]` of the log-mel front end:
    `torch.stft` with the Hamming window zero-padded to n_fft in the middle, as stft pads it."""
    window = torch.zeros(frontend.n_fft, dtype=torch.float64)
    left = (frontend.n_fft - frontend.win_length) // 2
    window[left:left + frontend.win_length] = frontend.window.double().cpu()
    real, imag = _dft(frontend.n_fft, torch.arange(frontend.n_fft, dtype=torch.float64))
    kernel = torch.cat([real * window, imag * window])
    return kernel.float()[:, None, :], frontend.mel_fb.cpu()


def _kaldi_frames(frontend: Frontend) -> tuple[int, int]:
    """(window, shift) in samples of Kaldi's framing, rounded as torchaudio rounds the
    milliseconds `Frontend` passes it."""
    sr = frontend.sample_rate
    return (int(sr * (1000.0 * frontend.win_length / sr) * 0.001),
            int(sr * (1000.0 * frontend.hop_length / sr) * 0.001))


def _kaldi_kernels(frontend: Frontend) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv kernels `[2 F, 1, window]` and mel matrix `[F, n_mels]` of the "fbank" front end
    (`torchaudio.compliance.kaldi.fbank` as `Frontend` calls it). Per frame, Kaldi removes the
    DC offset, pre-emphasises (the first sample against itself), applies the povey window and
    zero-pads to a power of two before the FFT: one linear map of the frame's samples."""
    from torchaudio.compliance import kaldi

    size, _ = _kaldi_frames(frontend)
    padded = 1 << (size - 1).bit_length()
    eye = torch.eye(size, dtype=torch.float64)
    dc = eye - 1.0 / size
    pre = eye - frontend.preemphasis * torch.diag(torch.ones(size - 1, dtype=torch.float64), -1)
    pre[0, 0] = 1.0 - frontend.preemphasis
    povey = torch.hann_window(size, periodic=False, dtype=torch.float64).pow(0.85)
    frame_map = povey[:, None] * pre @ dc  # [size, size]: samples -> windowed frame
    real, imag = _dft(padded, torch.arange(size, dtype=torch.float64))
    kernel = torch.cat([real @ frame_map, imag @ frame_map])
    banks, _ = kaldi.get_mel_banks(frontend.n_mels, padded, float(frontend.sample_rate),
                                   frontend.f_min, frontend.f_max, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks.float(), (0, 1))  # no filter uses the Nyquist bin
    return kernel.float()[:, None, :], banks.T.contiguous()


class ExportFrontend(nn.Module):
    """The features of `Frontend` (either kind) from waveforms `[batch, samples]`, written with
    operations TorchScript and ONNX runtimes all have (see the module doc); export only."""

    def __init__(self, frontend: Frontend) -> None:
        super().__init__()
        self.kaldi = frontend.kind == "fbank"
        self.hop = _kaldi_frames(frontend)[1] if self.kaldi else frontend.hop_length
        # Kaldi pre-emphasises each frame (inside the kernel); log-mel the whole, padded wave
        self.preemphasis = 0.0 if self.kaldi else float(frontend.preemphasis)
        self.pad = 0 if self.kaldi else frontend.n_fft // 2  # stft(center=True) reflect pad
        self.scale = 32767.0 if self.kaldi else 1.0  # Kaldi works on int16-scaled samples
        self.log_floor = KALDI_EPSILON
        kernel, mel = _kaldi_kernels(frontend) if self.kaldi else _stft_kernels(frontend)
        self.register_buffer("kernel", kernel)
        self.register_buffer("mel", mel)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float()
        wave = wave / wave.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) * self.scale
        if self.preemphasis != 0.0:
            wave = torch.cat([wave[:, :1], wave[:, 1:] - self.preemphasis * wave[:, :-1]], 1)
        x = wave.unsqueeze(1)
        if self.pad > 0:
            x = nn.functional.pad(x, (self.pad, self.pad), mode="reflect")
        spec = nn.functional.conv1d(x, self.kernel, stride=self.hop)  # [B, 2 F, frames]
        half = self.kernel.shape[0] // 2
        power = spec[:, :half].square() + spec[:, half:].square()
        mel = torch.matmul(power.transpose(1, 2), self.mel).transpose(1, 2)
        if self.kaldi:  # log with Kaldi's floor, mean normalisation over time
            feats = torch.log(mel.clamp(min=self.log_floor))
            return feats - feats.mean(dim=2, keepdim=True)
        feats = torch.log(mel + 1e-6)
        mean = feats.mean(dim=2, keepdim=True)
        std = (feats - mean).square().mean(dim=2, keepdim=True).sqrt()
        return (feats - mean) / (std + 1e-5)


class WaveformEncoder(nn.Module):
    """Front end and encoder in one module: waveform `[batch, samples]` -> embedding."""

    def __init__(self, frontend: nn.Module, encoder: nn.Module) -> None:
        super().__init__()
        self.frontend, self.encoder = frontend, encoder

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(wave))


def _check(name: str, got: np.ndarray, want: np.ndarray, shape: tuple[int, ...]) -> float:
    diff = float(np.abs(got - want).max())
    if not diff < TOLERANCE:  # also catches NaN
        raise RuntimeError(f"{name} export disagrees with PyTorch: max abs difference {diff:g} "
                           f">= {TOLERANCE:g} on input {shape}")
    return diff


def export_torchscript(module: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the format
        warnings.simplefilter("ignore", DeprecationWarning)  # other runtimes (C++, TorchServe) load
        scripted = torch.jit.script(module)
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX of `module`; its input is named "wave" `[batch, samples]` when the example is a
    2-D waveform batch, else "feats" `[batch, n_mels, frames]`."""
    name = "wave" if example.dim() == 2 else "feats"
    axes = {0: "batch", 1: "samples"} if name == "wave" else {0: "batch", 2: "frames"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(module, (example,), str(tmp), input_names=[name],
                          output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: axes, "embedding": {0: "batch"}})


def _inputs(kind: str, n_mels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The export example and the (differently shaped) check input of an input kind."""
    gen = torch.Generator().manual_seed(seed)
    (b0, n0), (b1, n1) = EXAMPLE_SHAPE[kind], CHECK_SHAPE[kind]
    if kind == "wave":  # noise at speech-like level; any scale gives the same features
        return (0.1 * torch.randn(b0, n0, generator=gen),
                0.1 * torch.randn(b1, n1, generator=gen))
    return torch.randn(b0, n_mels, n0, generator=gen), torch.randn(b1, n_mels, n1, generator=gen)


def export_encoder(model_path: Path, out_dir: Path, seed: int = 0,
                   with_frontend: bool = False) -> dict:
    """Write `encoder.ts`, `encoder.onnx` and `export.json` to `out_dir`; check them.

    With `with_frontend` both files take the waveform `[batch, samples]` at the model's sample
    rate (16 kHz) instead of features. Returns {"torchscript": path, "onnx": path,
    "max_abs_diff": {"torchscript": d, "onnx": d}}. Raises RuntimeError when either export
    disagrees with PyTorch (`Frontend` and encoder) by TOLERANCE or more.
    """
    import onnxruntime as ort

    out_dir = Path(out_dir)
    model = load_encoder(model_path)
    encoder, frontend = model.encoder, model.frontend.eval()
    kind = "wave" if with_frontend else "feats"
    example, check = _inputs(kind, frontend.n_mels, seed)
    module = WaveformEncoder(ExportFrontend(frontend), encoder).eval() if with_frontend \
        else encoder
    with torch.no_grad():
        want = (encoder(frontend(check)) if with_frontend else encoder(check)).numpy()

    ts_path, onnx_path = out_dir / "encoder.ts", out_dir / "encoder.onnx"
    export_torchscript(module, ts_path)
    export_onnx(module, example, onnx_path)

    diffs = {}
    shape = tuple(check.shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        diffs["torchscript"] = _check("TorchScript", torch.jit.load(str(ts_path))(check).numpy(),
                                      want, shape)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs["onnx"] = _check("ONNX", session.run(None, {kind: check.numpy()})[0], want, shape)

    result = {"torchscript": ts_path, "onnx": onnx_path, "max_abs_diff": diffs}
    write_json(out_dir / "export.json", {
        **result, "input": INPUTS[kind], "input_kind": kind, "frontend_included": with_frontend,
        "sample_rate": frontend.sample_rate, "output": f"embedding [batch, {encoder.embed_dim}]",
        "check_shape": list(shape), "tolerance": TOLERANCE, "onnx_opset": OPSET,
        "onnx_exporter": "torchscript (dynamo=False)", "model_cfg": model.model_cfg,
        "frontend": frontend.describe(), "source": str(model_path)})
    log.info("exported %s (%s input) -> %s (max abs diff %s)", model_path, kind, out_dir, diffs)
    return result
