"""Read and validate Kaldi-style data folders, trial lists and audio files.

Everything a user hands the workflow passes through here first, so every problem is reported as
an `InputError` naming the file and line the user has to fix, before any long job starts.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from ssrl.files import InputError, read_table

log = logging.getLogger("ssrl.data")

#: Containers libsndfile cannot read; these are decoded by the ffmpeg binary of imageio-ffmpeg.
FFMPEG_SUFFIXES = frozenset({".m4a", ".aac", ".mp4"})
#: Optional per-utterance maps of a data folder (file name -> KaldiDir attribute).
UTT_MAPS = ("utt2spk", "utt2sess", "utt2category")
TRIAL_LABELS = {"target": 1, "nontarget": 0}


class AudioError(InputError):
    """An audio file that cannot be used. Keeps the reason apart so reports can list it alone."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class KaldiDir:
    """A validated data folder. `wavs` keeps wav.scp order and holds absolute paths."""

    path: Path
    wavs: dict[str, Path]
    utt2spk: dict[str, str] | None = None
    utt2sess: dict[str, str] | None = None
    utt2category: dict[str, str] | None = None
    #: trial list name -> file: `trials` -> "trials", `trials_O` -> "O".
    trials: dict[str, Path] = field(default_factory=dict)
    #: wav.scp line of each utterance, so later errors can point at it.
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def scp(self) -> Path:
        return self.path / "wav.scp"


@dataclass
class Trials:
    """A trial list: parallel enroll/test utterance ids and labels (1 target, 0 non-target)."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.labels)


def _read_keyed(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Read a two-column map keeping line numbers; duplicate keys are an error."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, (key, value) in read_table(path, ncols=2):
        if key in values:
            raise InputError(
                f"{path}:{lineno}: duplicate utterance id {key!r} (first on line {lines[key]})")
        values[key] = value
        lines[key] = lineno
    return values, lines


def trial_name(file: Path) -> str | None:
    """Name of the trial list stored in `file` (`trials` -> "trials", `trials_O` -> "O")."""
    if file.name == "trials":
        return "trials"
    if file.name.startswith("trials_") and len(file.name) > len("trials_"):
        return file.name[len("trials_"):]
    return None


def read_kaldi_dir(path: str | os.PathLike, check_files: bool = True) -> KaldiDir:
    """Read and validate a data folder (see docs/architecture.md for the format).

    Relative audio paths are taken relative to the folder. With `check_files` every audio file
    must exist (only existence is checked; decoding problems surface when the store is built).
    Trial lists are validated against the folder's utterances. An empty wav.scp is an empty
    set (see `ssrl.prepare.empty_dir`), not an error.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: data folder not found")
    scp = folder / "wav.scp"
    if not scp.is_file():
        raise InputError(f"{scp}: file not found (every data folder needs a wav.scp)")
    raw, lines = _read_keyed(scp)
    if not raw:  # an empty set is legal (no noise or RIR set); its users check what they need
        log.warning("%s: no utterances listed (an empty set)", scp)

    wavs: dict[str, Path] = {}
    for utt, value in raw.items():
        if value.endswith("|"):
            raise InputError(f"{scp}:{lines[utt]}: piped commands are not supported; "
                             "give the path of an audio file")
        wav = Path(os.path.abspath(folder / value))  # an absolute value stays as it is
        if check_files and not wav.is_file():
            raise InputError(f"{scp}:{lines[utt]}: audio file not found: {wav}")
        wavs[utt] = wav

    maps: dict[str, dict[str, str] | None] = {}
    for name in UTT_MAPS:
        file = folder / name
        if not file.is_file():
            maps[name] = None
            continue
        values, map_lines = _read_keyed(file)
        for utt, lineno in map_lines.items():
            if utt not in wavs:
                raise InputError(f"{file}:{lineno}: unknown utterance {utt!r} (not in wav.scp)")
        for utt in wavs:
            if utt not in values:
                raise InputError(f"{file}: no entry for utterance {utt!r} "
                                 f"(wav.scp line {lines[utt]})")
        maps[name] = values

    trials: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        name = trial_name(file)
        if name is not None and file.is_file():
            read_trials(file, known=wavs)
            trials[name] = file
    return KaldiDir(path=folder, wavs=wavs, trials=trials, lines=lines, **maps)


def read_trials(path: str | os.PathLike, known: Collection[str] | None = None) -> Trials:
    """Read a trial list: `enroll test target|nontarget` or VoxCeleb's `1|0 enroll test`.

    VoxCeleb paths such as `id10270/x6uYqmx31kE/00001.wav` are used as utterance ids as they are.
    With `known`, every trial must name known utterances.
    """
    path = Path(path)
    enroll: list[str] = []
    test: list[str] = []
    labels: list[int] = []
    for lineno, fields in read_table(path, ncols=None):
        if len(fields) != 3:
            raise InputError(f"{path}:{lineno}: expected 3 fields, got {len(fields)}: "
                             f"{' '.join(fields)!r}")
        if fields[2] in TRIAL_LABELS:
            e, t, label = fields[0], fields[1], TRIAL_LABELS[fields[2]]
        elif fields[0] in ("0", "1"):
            label, e, t = int(fields[0]), fields[1], fields[2]
        else:
            raise InputError(f"{path}:{lineno}: bad trial label {fields[2]!r} (expected "
                             "'enroll test target|nontarget' or '1|0 enroll test')")
        if known is not None:
            for utt in (e, t):
                if utt not in known:
                    raise InputError(f"{path}:{lineno}: trial names unknown utterance {utt!r}")
        enroll.append(e)
        test.append(t)
        labels.append(label)
    if not labels:
        raise InputError(f"{path}: no trials listed")
    return Trials(enroll=enroll, test=test, labels=np.asarray(labels, dtype=np.int8))


def trial_rows(trials: Trials) -> list[tuple[str, str, str]]:
    """Rows of `trials` in this workflow's own `enroll test target|nontarget` format."""
    words = {1: "target", 0: "nontarget"}
    return [(e, t, words[int(lab)]) for e, t, lab in zip(trials.enroll, trials.test,
                                                        trials.labels)]


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


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Load an audio file as float32 mono in [-1, 1] at `sample_rate`.

    wav/flac (anything libsndfile reads) go through soundfile; m4a/aac/mp4 through ffmpeg.
    Other rates are resampled (polyphase) and multi-channel audio is down-mixed by averaging;
    both are logged on the `ssrl.data` logger. Missing, undecodable, empty, silent or
    non-finite audio raises `AudioError` (an `InputError`) whose message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio file not found")
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        data, rate = _decode_ffmpeg(path, sample_rate), sample_rate
    else:
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise AudioError(path, f"cannot decode audio ({err})") from None

    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    if not data.any():
        raise AudioError(path, "silent audio (all samples are zero)")

    if data.shape[1] > 1:
        log.info("%s: down-mixed %d channels to mono", path, data.shape[1])
    wave = data.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        log.info("%s: resampled %d Hz -> %d Hz", path, rate, sample_rate)
        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.clip(wave, -1.0, 1.0, out=wave)
