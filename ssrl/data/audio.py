"""Reading audio files: every format the workflow accepts, as float32 mono at 16 kHz.

wav/flac (anything libsndfile reads) go through soundfile; m4a/aac/mp4 (VoxCeleb2) through the
ffmpeg binary that `imageio-ffmpeg` ships. Problems are `AudioError`s naming the file, so the
caller can add the list and line that named it.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ssrl.files import InputError

log = logging.getLogger("ssrl.data")

#: The one sample rate of the whole workflow (SSRL-NOTES, stage 0).
SAMPLE_RATE = 16000
#: Containers libsndfile cannot read; these are decoded by the ffmpeg binary of imageio-ffmpeg.
FFMPEG_SUFFIXES = frozenset({".m4a", ".aac", ".mp4"})


class AudioError(InputError):
    """An audio file that cannot be used. Keeps the reason apart so reports can list it alone."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


#: int16 full scale: samples are stored as round(x * 32768), clipped to [-32768, 32767].
INT16_SCALE = 32768.0


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Quantise float samples in [-1, 1] to little-endian int16 (x * 32768, rounded and
    clipped): the one quantisation of the wave store (and of the benchmarks' synthetic audio)."""
    return np.clip(np.rint(wave * INT16_SCALE), -32768, 32767).astype("<i2")


def _decode_ffmpeg(path: Path, sample_rate: int) -> np.ndarray:
    """Decode through ffmpeg straight to mono s16le at `sample_rate` (it mixes and resamples)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path),
           "-vn", "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(sample_rate), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(path, "cannot decode audio"
                         + (f" (ffmpeg: {detail[-1]})" if detail else ""))
    pcm = np.frombuffer(proc.stdout, dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0)[:, None]


def wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF/WAVE file's data chunk when the file is cut short.

    libsndfile reads a truncated WAV without complaint, returning the samples that are there;
    the header still says how many there should be. None when the file is whole, is not a
    plain RIFF WAVE file, or declares no size (streamed files write 0 or 0xFFFFFFFF).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                present = size - offset - 8
                if length in (0, 0xFFFFFFFF) or present >= length:
                    return None
                return length, present
            offset += 8 + length + (length & 1)  # chunks are word aligned
    return None


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load an audio file as float32 mono at `sample_rate`.

    Other rates are resampled (polyphase) and multi-channel audio is down-mixed by averaging;
    both are logged on the `ssrl.data` logger. Samples are returned as stored: float files may
    exceed [-1, 1] (the wave store rescales those and counts them). Missing, truncated,
    undecodable, empty, silent or non-finite audio raises `AudioError`.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio file not found")
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        data, rate = _decode_ffmpeg(path, sample_rate), sample_rate
    else:
        cut = wav_shortfall(path)
        if cut is not None:
            raise AudioError(path, f"truncated WAV file (header declares {cut[0]} bytes of "
                                   f"audio, {cut[1]} present)")
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise AudioError(path, f"cannot decode audio ({err})") from None
    return check_wave(path, data, rate, sample_rate)


def check_wave(path: Path, data: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Decoded samples `[frames, channels]` at `rate` -> the checked mono wave of load_audio."""
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    if not data.any():
        raise AudioError(path, "silent audio (all samples are zero)")

    wave = data.mean(axis=1, dtype=np.float32)
    if not wave.any():  # checked after the down-mix: channels in opposite phase cancel
        raise AudioError(path, f"silent audio after down-mixing {data.shape[1]} channels to "
                         "mono (the channels cancel: one is the other inverted)")
    if data.shape[1] > 1:
        log.info("%s: down-mixed %d channels to mono", path, data.shape[1])
    if rate != sample_rate:
        log.info("%s: resampled %d Hz -> %d Hz", path, rate, sample_rate)
        g = math.gcd(int(rate), int(sample_rate))
        from scipy.signal import resample_poly  # 1-2 s to import: only jobs that resample

        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return wave


#: Files one ffmpeg process decodes in `load_audio_many`: starting imageio-ffmpeg's static
#: binary costs more CPU than decoding a whole VoxCeleb2 utterance (docs/benchmarks.md).
FFMPEG_BATCH = 32


def _decode_ffmpeg_batch(paths: Sequence[Path], sample_rate: int) -> list[np.ndarray] | None:
    """Decode several files in one ffmpeg process, each to its own raw mono s16le output (the
    same conversion as `_decode_ffmpeg`). None when ffmpeg reports any error (`-xerror`: a
    decoding error stops it), so that the caller decodes the files one by one instead."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="ssrl-ffmpeg-") as tmp:
        outs = [Path(tmp) / f"{i}.raw" for i in range(len(paths))]
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-xerror", "-y"]
        for path in paths:
            cmd += ["-i", str(path)]
        for i, out in enumerate(outs):
            # every audio stream of input i: a file with several fails here (s16le holds one),
            # and is then decoded alone, where ffmpeg picks one as `_decode_ffmpeg` does
            cmd += ["-map", f"{i}:a", "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1",
                    "-ar", str(sample_rate), str(out)]
        failed = subprocess.run(cmd, capture_output=True, check=False).returncode != 0
        if failed or not all(out.is_file() for out in outs):
            return None
        return [(np.fromfile(out, dtype="<i2").astype(np.float32) / 32768.0)[:, None]
                for out in outs]


def load_audio_many(paths: Sequence[str | os.PathLike],
                    sample_rate: int = SAMPLE_RATE) -> list[np.ndarray | AudioError]:
    """`load_audio` of each path, in order, with each file's `AudioError` returned in place of
    its wave. Files ffmpeg decodes (m4a) share one ffmpeg process per `FFMPEG_BATCH` files;
    when that process fails they are decoded one by one, so every result, error included, is
    the one `load_audio` gives for that file alone."""
    paths = [Path(p) for p in paths]
    results: list[np.ndarray | AudioError | None] = [None] * len(paths)
    batch = [i for i, p in enumerate(paths) if p.suffix.lower() in FFMPEG_SUFFIXES
             and p.is_file()]
    parts = [batch[s:s + FFMPEG_BATCH] for s in range(0, len(batch), FFMPEG_BATCH)]
    for part in parts if len(batch) > 1 else []:  # a lone file gains nothing from a batch
        decoded = _decode_ffmpeg_batch([paths[i] for i in part], sample_rate)
        for i, data in zip(part, decoded or []):
            try:
                results[i] = check_wave(paths[i], data, sample_rate, sample_rate)
            except AudioError as err:
                results[i] = err
    for i, path in enumerate(paths):
        if results[i] is None:
            try:
                results[i] = load_audio(path, sample_rate)
            except AudioError as err:
                results[i] = err
    return results  # type: ignore[return-value]
