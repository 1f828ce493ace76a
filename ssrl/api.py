"""A small Python API over a trained model file: embed audio, score two utterances.

    import ssrl
    model = ssrl.load_model("results/builtin/ssrl/<grid point>/model.pt")
    emb = model.embed("enroll.wav")          # a file: anything `ssrl embed` reads (wav, flac, m4a)
    emb = model.embed(wave)                  # or a 1-D float waveform at 16 kHz
    emb = model.embed(wave, sample_rate=8000)  # ... or at another rate (resampled)
    model.score("enroll.wav", "test.wav")    # cosine similarity; each side a file, wave or emb

An embedding is computed exactly as `python -m ssrl embed` computes a test utterance's: the
same function (`embed_waves`) with the model's own front end, the whole utterance at once, and
recordings longer than `segment_seconds` as the mean of their segments. So embeddings from
here and from the workflow can be scored against each other, and `score` is the workflow's
cosine score (`cosine_scores`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ssrl.data.audio import SAMPLE_RATE, AudioError, check_wave, load_audio
from ssrl.data.stores import MemoryWaves
from ssrl.evaluation.embed import SEGMENT_SECONDS, embed_waves
from ssrl.evaluation.scoring import cosine_scores
from ssrl.models.model_file import LoadedModel, load_encoder

#: Waveforms shorter than this are refused: they hold no speaker information, and a 1-D array
#: of `embed_dim` values (far shorter) can then only be an embedding (see `SpeakerModel.score`).
MIN_SECONDS = 0.1

Audio = str | os.PathLike | np.ndarray | torch.Tensor | Sequence[float]


class SpeakerModel:
    """A trained encoder with its front end, ready to embed and score (see the module doc)."""

    def __init__(self, loaded: LoadedModel, device: torch.device,
                 segment_seconds: float | None = SEGMENT_SECONDS) -> None:
        self.encoder, self.frontend = loaded.encoder, loaded.frontend
        self.model_cfg, self.meta = loaded.model_cfg, loaded.meta
        self.device = device
        self.segment_seconds = segment_seconds

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    @property
    def sample_rate(self) -> int:
        """The rate a waveform must have unless `embed` is told another (16 kHz)."""
        return SAMPLE_RATE

    def embed(self, audio: Audio, sample_rate: int | None = None) -> np.ndarray:
        """The embedding (float32 `[embed_dim]`) of an audio file or a 1-D waveform.

        A path is read with `load_audio` (down-mixed, resampled to 16 kHz; InputError names a
        bad file). A waveform is float samples at `sample_rate` (default 16 kHz), any scale.
        """
        if isinstance(audio, str | os.PathLike):
            if sample_rate is not None:
                raise ValueError("sample_rate is for waveforms; a file's rate is in the file")
            wave = load_audio(audio)
        else:
            wave = self._waveform(audio, sample_rate or SAMPLE_RATE)
        emb = embed_waves(self.encoder, self.frontend, MemoryWaves(["utt"], [wave]),
                          self.device, self.segment_seconds)
        return emb[0]

    def score(self, a: Audio, b: Audio) -> float:
        """Cosine similarity of two utterances, each a file, a 16 kHz waveform, or an
        embedding (a 1-D array of exactly `embed_dim` values, as `embed` returns)."""
        emb = np.stack([self._embedding(a), self._embedding(b)])
        return float(cosine_scores(["a", "b"], emb, ["a"], ["b"])[0])

    def _embedding(self, x: Audio) -> np.ndarray:
        if not isinstance(x, str | os.PathLike):
            arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
            if arr.ndim == 1 and len(arr) == self.embed_dim:
                return arr.astype(np.float32)
        return self.embed(x)

    def _waveform(self, audio: np.ndarray | torch.Tensor | Sequence[float],
                  rate: int) -> np.ndarray:
        """A checked float32 mono waveform at 16 kHz (resampled as `load_audio` does)."""
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected a 1-D waveform [samples], got shape {wave.shape} "
                             "(mix multi-channel audio down first)")
        if len(wave) < MIN_SECONDS * rate:
            raise ValueError(f"waveform of {len(wave)} samples is shorter than {MIN_SECONDS} s "
                             f"at {rate} Hz")
        try:  # the checks and the resampling of every file load_audio reads
            return check_wave(Path("waveform"), wave[:, None], rate, SAMPLE_RATE)
        except AudioError as err:
            raise ValueError(f"waveform: {err.reason}") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               segment_seconds: float | None = SEGMENT_SECONDS) -> SpeakerModel:
    """The model of a model file (`model.pt` of any trained stage) on `device`.

    `segment_seconds` is `ssrl embed --segment-seconds`: longer recordings are embedded as the
    mean of segments this long (None: always whole)."""
    device = torch.device(device)
    return SpeakerModel(load_encoder(path, device), device, segment_seconds)
