"""Shared test fixtures: small audio files written on demand."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def _signal(seconds: float, sr: int, channels: int, seed: int, freq: float | None,
            amplitude: float) -> np.ndarray:
    n = int(round(seconds * sr))
    if freq is None:
        x = np.random.default_rng(seed).uniform(-amplitude, amplitude, (n, channels))
    else:
        x = np.repeat(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sr)[:, None],
                      channels, axis=1)
    return x.astype(np.float32)


@pytest.fixture
def make_wav() -> Callable[..., Path]:
    """make_wav(path, seconds, sr=16000, channels=1, seed=0, freq=None, amplitude=0.5,
    subtype="PCM_16") writes uniform noise (or a sine of `freq` Hz) and returns the path."""

    def make(path: str | Path, seconds: float, sr: int = 16000, channels: int = 1,
             seed: int = 0, freq: float | None = None, amplitude: float = 0.5,
             subtype: str = "PCM_16") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _signal(seconds, sr, channels, seed, freq, amplitude), sr,
                 subtype=subtype)
        return path

    return make


@pytest.fixture
def make_m4a() -> Callable[..., Path]:
    """make_m4a(path, seconds=1.0, freq=440.0, sr=16000) encodes a sine as AAC with ffmpeg."""
    import imageio_ffmpeg

    def make(path: str | Path, seconds: float = 1.0, freq: float = 440.0,
             sr: int = 16000) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pcm = (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr) * 32767)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
               "-f", "s16le", "-ar", str(sr), "-ac", "1", "-i", "-",
               "-c:a", "aac", "-b:a", "64k", str(path)]
        subprocess.run(cmd, input=pcm.astype("<i2").tobytes(), check=True,
                       capture_output=True)
        return path

    return make
