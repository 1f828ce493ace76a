"""Front end: raw 16 kHz waveforms -> normalised log-mel features `[batch, n_mels, frames]`.

Two kinds, chosen by config and recorded with every model (`Frontend.describe()`), because a
model is only valid with the exact front end it was trained with:

- "logmel" (default, the SSRL recipe): peak-normalise each waveform, pre-emphasis 0.97,
  power STFT (n_fft 512, 25 ms Hamming window, 10 ms hop, centred frames with reflect padding),
  HTK-scale triangular mel filterbank without area normalisation, log(x + 1e-6), then
  per-utterance mean/variance normalisation over time. The window is Hamming, as in most speaker
  toolkits (torchaudio's `MelSpectrogram` defaults to Hann). The STFT and filterbank are written
  out here so the filterbank is a buffer that moves with the module to the GPU.
- "fbank": Kaldi-compatible filterbank (`torchaudio.compliance.kaldi.fbank`, as WeSpeaker does),
  one utterance at a time: the peak-normalised waveform is scaled to the int16 range Kaldi
  expects, Kaldi's own pre-emphasis and "povey" window, 25 ms / 10 ms frames with
  `snip_edges=True`, no dither; then mean normalisation over time (no variance normalisation).

The whole computation runs in float32 with autocast disabled: the log of small power values and
the variance normalisation are not safe in bfloat16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KINDS = ("logmel", "fbank")


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> Tensor:
    """Triangular HTK mel filters `[n_freqs, n_mels]`, peak 1, no area normalisation.

    The filters' corner frequencies are `n_mels + 2` points equally spaced on the mel scale
    between f_min and f_max; each filter rises linearly from its left corner to its centre and
    falls to its right corner, evaluated at the STFT bin frequencies.
    """
    bin_hz = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    corners = mel_to_hz(
        torch.linspace(
            hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
            hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
            n_mels + 2,
            dtype=torch.float64,
        )
    )
    left, centre, right = corners[:-2], corners[1:-1], corners[2:]
    rising = (bin_hz[:, None] - left) / (centre - left)
    falling = (right - bin_hz[:, None]) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class Frontend(nn.Module):
    """Waveforms `[B, T]` (float, any scale) -> features `[B, n_mels, frames]`."""

    def __init__(
        self,
        kind: str = "logmel",
        sample_rate: int = 16000,
        n_mels: int = 80,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        preemphasis: float = 0.97,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown front end kind {kind!r}; expected one of {KINDS}")
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} must not exceed n_fft {n_fft}")
        if not 0.0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}")
        self.kind = kind
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.f_min = f_min
        self.f_max = f_max
        self.preemphasis = preemphasis
        # Buffers (not parameters): they follow .to(device) and are saved, but are never trained.
        self.register_buffer(
            "window", torch.hamming_window(win_length, periodic=True), persistent=False
        )
        self.register_buffer(
            "mel_fb",
            mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max),
            persistent=False,
        )

    def describe(self) -> dict:
        """Everything needed to rebuild this front end (stored next to every model)."""
        return {
            "kind": self.kind,
            "sample_rate": self.sample_rate,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "preemphasis": self.preemphasis,
        }

    @classmethod
    def from_description(cls, d: dict) -> Frontend:
        """The front end `describe()` returned (the inverse of `describe`)."""
        return cls(**d)

    def n_frames(self, n_samples: int) -> int:
        """Number of feature frames `forward` returns for a waveform of `n_samples` samples."""
        if self.kind == "logmel":  # centred frames: one every hop, the first at sample 0
            return 1 + n_samples // self.hop_length
        if n_samples < self.win_length:  # Kaldi snip_edges: only frames that fit entirely
            return 0
        return 1 + (n_samples - self.win_length) // self.hop_length

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected waves [batch, samples], got shape {tuple(wave.shape)}")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = wave.float()
            peak = wave.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
            wave = wave / peak
            if self.kind == "fbank":
                return self._fbank(wave)
            return self._logmel(wave)

    def utterance(self, wave: Tensor, chunk_frames: int = 6000) -> Tensor:
        """Features `[n_mels, frames]` of ONE whole utterance `[samples]`, computed
        `chunk_frames` frames at a time so memory stays bounded on hour-long recordings; the
        same numbers as `self(wave[None])[0]` (frames depend only on their own samples; the
        peak and the normalisation statistics are taken over the whole utterance)."""
        if wave.dim() != 1:
            raise ValueError(f"expected one wave [samples], got shape {tuple(wave.shape)}")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = wave.float()
            wave = wave / wave.abs().amax().clamp(min=1e-8)
            n = self.n_frames(len(wave))
            if self.kind == "fbank":  # snip_edges: frame t is samples [t * hop, t * hop + win)
                parts = [self._fbank_raw(wave[a * self.hop_length:
                                              (min(n, a + chunk_frames) - 1) * self.hop_length
                                              + self.win_length])
                         for a in range(0, n, chunk_frames)]
                feats = torch.cat(parts, dim=0)
                return (feats - feats.mean(dim=0, keepdim=True)).T
            if self.preemphasis:
                wave = torch.cat([wave[:1], wave[1:] - self.preemphasis * wave[:-1]])
            pad = self.n_fft // 2  # what stft(center=True, pad_mode="reflect") adds
            padded = torch.nn.functional.pad(wave[None, None], (pad, pad), mode="reflect")[0, 0]
            parts = []
            for a in range(0, n, chunk_frames):
                b = min(n, a + chunk_frames)
                spec = torch.stft(padded[a * self.hop_length:(b - 1) * self.hop_length
                                         + self.n_fft],
                                  n_fft=self.n_fft, hop_length=self.hop_length,
                                  win_length=self.win_length, window=self.window, center=False,
                                  return_complex=True)
                power = spec.real.square() + spec.imag.square()
                parts.append(torch.log(torch.einsum("ft,fm->mt", power, self.mel_fb) + 1e-6))
            feats = torch.cat(parts, dim=1)
            mean = feats.mean(dim=1, keepdim=True)
            std = feats.std(dim=1, keepdim=True, unbiased=False)
            return (feats - mean) / (std + 1e-5)

    def mel_power(self, wave: Tensor) -> Tensor:
        """Mel power spectrogram `[B, n_mels, frames]` of an already peak-normalised waveform:
        pre-emphasis, Hamming-window power STFT, mel filterbank. Split out so it can be tested
        against torchaudio."""
        wave = wave.float()
        if self.preemphasis:
            wave = torch.cat([wave[:, :1], wave[:, 1:] - self.preemphasis * wave[:, :-1]], dim=1)
        spec = torch.stft(
            wave,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # [B, n_fft // 2 + 1, frames]
        power = spec.real.square() + spec.imag.square()
        return torch.einsum("bft,fm->bmt", power, self.mel_fb)

    def _logmel(self, wave: Tensor) -> Tensor:
        feats = torch.log(self.mel_power(wave) + 1e-6)
        mean = feats.mean(dim=2, keepdim=True)
        std = feats.std(dim=2, keepdim=True, unbiased=False)
        return (feats - mean) / (std + 1e-5)

    def _fbank_raw(self, row: Tensor) -> Tensor:
        """Kaldi fbank `[frames, n_mels]` of one peak-normalised wave `[samples]`."""
        import torchaudio.compliance.kaldi as kaldi  # ~1 s to import: fbank jobs only

        return kaldi.fbank(
            row[None] * 32767.0,  # Kaldi works on int16-scaled samples (its energy floor)
            num_mel_bins=self.n_mels,
            frame_length=1000.0 * self.win_length / self.sample_rate,
            frame_shift=1000.0 * self.hop_length / self.sample_rate,
            dither=0.0,
            preemphasis_coefficient=self.preemphasis,
            sample_frequency=float(self.sample_rate),
            low_freq=self.f_min,
            high_freq=self.f_max,
            energy_floor=0.0,
            snip_edges=True,
        )

    def _fbank(self, wave: Tensor) -> Tensor:
        out = []
        for row in wave:
            feats = self._fbank_raw(row)
            out.append(feats - feats.mean(dim=0, keepdim=True))
        return torch.stack(out).transpose(1, 2)
