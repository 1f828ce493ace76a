"""Waveform augmentation: additive noise / music / babble and reverberation, before features.

Each item of a batch is, independently, left clean, reverberated, or mixed with an additive
source, with probabilities 1 - p_reverb - p_noise, p_reverb, p_noise. The additive kind is drawn
uniformly among those the noise set can provide:

- "noise", "music": one random crop of a file of that category;
- "babble": 3-8 speech files (drawn without replacement where there are enough), each crop
  scaled to unit power, summed, and the sum scaled back to unit power;
- "babble+music": a unit-power babble plus a unit-power music crop.
The additive signal is then scaled so that 10 log10(P_speech / P_added) equals an SNR drawn
uniformly from `snr_db`. Crops start at a random offset; files shorter than the crop are tiled.
A noise set without categories counts as all "noise".

Reverberation convolves with a room impulse response cut at its direct-path peak (samples before
argmax |h| dropped, so the output is not delayed) and scaled to unit energy (h / ||h||_2). The
output keeps the input's length and is re-scaled to the input's RMS, so reverberation changes
the sound but not the level.

Random draws are separated from the arithmetic: `plan()` does all the drawing with a numpy
Generator and returns the chosen crops as float32 numpy arrays; `apply()` is deterministic torch
on the wave's device. So a data-loader worker (CPU, one item) and the GPU (whole batch) give the
same result for the same plan. `Augmenter(...)(wave, rng)` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

ADDITIVE_KINDS = ("noise", "music", "babble", "babble+music")


class WaveSource(Protocol):
    """What the augmenter needs from a set of recordings (`ssrl.store.WaveStore` is one)."""

    categories: list[str] | None

    def __len__(self) -> int: ...

    def wave(self, i: int) -> np.ndarray: ...


class ArraySource:
    """An in-memory wave source: a list of 1-D int16 or float arrays, optional categories."""

    def __init__(self, waves: list[np.ndarray], categories: list[str] | None = None) -> None:
        if categories is not None and len(categories) != len(waves):
            raise ValueError(f"{len(waves)} waves but {len(categories)} categories")
        self.waves = waves
        self.categories = categories

    def __len__(self) -> int:
        return len(self.waves)

    def wave(self, i: int) -> np.ndarray:
        return self.waves[i]


@dataclass
class AugPlan:
    """The random choices for a batch, one entry per item.

    mode: "clean", "reverb" or one of ADDITIVE_KINDS. snr_db: NaN unless additive.
    noise: the additive signal (float32, unit power, exactly the wave's length) or None.
    rir: the cut, unit-energy impulse response (float32, any length) or None.
    sources: indices into the noise or rir source that were used (for logging and tests).
    """

    mode: list[str]
    snr_db: np.ndarray
    noise: list[np.ndarray | None]
    rir: list[np.ndarray | None]
    sources: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.mode)

    def item(self, i: int) -> AugPlan:
        """The one-item plan for item i (e.g. to augment items one by one)."""
        return AugPlan(
            [self.mode[i]],
            self.snr_db[i : i + 1],
            [self.noise[i]],
            [self.rir[i]],
            [self.sources[i]],
        )

    @staticmethod
    def cat(plans: list[AugPlan]) -> AugPlan:
        """Concatenate plans (e.g. per-item plans drawn in data-loader workers into a batch)."""
        return AugPlan(
            [m for p in plans for m in p.mode],
            np.concatenate([p.snr_db for p in plans]),
            [x for p in plans for x in p.noise],
            [x for p in plans for x in p.rir],
            [s for p in plans for s in p.sources],
        )


def to_float(wave: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1); float input is just made float32."""
    if wave.dtype == np.int16:
        return wave.astype(np.float32) / 32768.0
    return np.asarray(wave, dtype=np.float32)


def random_crop(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A length-n piece at a random offset; a shorter wave is tiled first (random phase)."""
    if len(wave) == 0:
        raise ValueError("cannot crop an empty recording")
    if len(wave) < n:
        reps = -(-(n + len(wave)) // len(wave))  # room for any start inside the first period
        start = int(rng.integers(0, len(wave)))
        return np.tile(wave, reps)[start : start + n]
    start = int(rng.integers(0, len(wave) - n + 1))
    return wave[start : start + n]


def _unit_power(x: np.ndarray) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    return (x / np.sqrt(power)).astype(np.float32) if power > 0 else x.astype(np.float32)


def prepare_rir(h: np.ndarray) -> np.ndarray:
    """Cut an impulse response at its direct-path peak and scale it to unit energy."""
    h = to_float(h)
    h = h[int(np.argmax(np.abs(h))) :]
    energy = float(np.sqrt(np.sum(h.astype(np.float64) ** 2)))
    if energy == 0:
        raise ValueError("impulse response is all zeros")
    return (h / energy).astype(np.float32)


class Augmenter:
    def __init__(
        self,
        noise: WaveSource | None,
        rir: WaveSource | None,
        p_reverb: float,
        p_noise: float,
        snr_db: tuple[float, float] = (0.0, 20.0),
        babble_speakers: tuple[int, int] = (3, 8),
        sample_rate: int = 16000,
    ) -> None:
        if not (0 <= p_reverb <= 1 and 0 <= p_noise <= 1):
            raise ValueError(f"probabilities must be in [0, 1], got {p_reverb}, {p_noise}")
        if p_reverb + p_noise > 1 + 1e-9:
            raise ValueError(f"p_reverb + p_noise = {p_reverb + p_noise} > 1: P(clean) < 0")
        if p_reverb > 0 and (rir is None or len(rir) == 0):
            raise ValueError("p_reverb > 0 needs a non-empty RIR set")
        if p_noise > 0 and (noise is None or len(noise) == 0):
            raise ValueError("p_noise > 0 needs a non-empty noise set")
        if snr_db[0] > snr_db[1] or babble_speakers[0] > babble_speakers[1]:
            raise ValueError(f"bad ranges snr_db={snr_db}, babble_speakers={babble_speakers}")
        if babble_speakers[0] < 1:
            raise ValueError(f"babble needs at least one speaker, got {babble_speakers}")
        self.noise = noise
        self.rir = rir
        self.p_reverb = p_reverb
        self.p_noise = p_noise
        self.snr_db = snr_db
        self.babble_speakers = babble_speakers
        self.sample_rate = sample_rate
        # Indices of the noise set by category, and the additive kinds they make possible.
        self.by_category: dict[str, list[int]] = {"noise": [], "music": [], "speech": []}
        if noise is not None:
            cats = noise.categories or ["noise"] * len(noise)
            for i, c in enumerate(cats):
                if c not in self.by_category:
                    raise ValueError(f"noise item {i}: unknown category {c!r}")
                self.by_category[c].append(i)
        has = {c: bool(idx) for c, idx in self.by_category.items()}
        possible = {
            "noise": has["noise"],
            "music": has["music"],
            "babble": has["speech"],
            "babble+music": has["speech"] and has["music"],
        }
        self.kinds = [kind for kind in ADDITIVE_KINDS if possible[kind]]

    # ---- drawing -------------------------------------------------------------------------

    def _crop_file(self, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
        return _unit_power(random_crop(to_float(self.noise.wave(i)), n, rng))

    def _babble(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
        speech = self.by_category["speech"]
        k = int(rng.integers(self.babble_speakers[0], self.babble_speakers[1] + 1))
        picks = rng.choice(len(speech), size=k, replace=k > len(speech))
        idx = tuple(speech[j] for j in picks)
        return _unit_power(sum(self._crop_file(i, n, rng) for i in idx)), idx

    def _additive(
        self, kind: str, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        if kind in ("noise", "music"):
            pool = self.by_category[kind]
            i = pool[int(rng.integers(len(pool)))]
            return self._crop_file(i, n, rng), (i,)
        babble, idx = self._babble(n, rng)
        if kind == "babble":
            return babble, idx
        music = self.by_category["music"]
        i = music[int(rng.integers(len(music)))]
        return babble + self._crop_file(i, n, rng), idx + (i,)

    def plan(self, batch: int, n_samples: int, rng: np.random.Generator) -> AugPlan:
        """Draw the augmentation of `batch` waves of `n_samples` samples each."""
        plan = AugPlan([], np.full(batch, np.nan), [None] * batch, [None] * batch, [])
        for b in range(batch):
            u = rng.random()
            if u < self.p_reverb:
                i = int(rng.integers(len(self.rir)))
                plan.mode.append("reverb")
                plan.rir[b] = prepare_rir(self.rir.wave(i))
                plan.sources.append((i,))
            elif u < self.p_reverb + self.p_noise:
                kind = self.kinds[int(rng.integers(len(self.kinds)))]
                plan.mode.append(kind)
                plan.snr_db[b] = rng.uniform(*self.snr_db)
                plan.noise[b], idx = self._additive(kind, n_samples, rng)
                plan.sources.append(idx)
            else:
                plan.mode.append("clean")
                plan.sources.append(())
        return plan

    # ---- applying ------------------------------------------------------------------------

    def apply(self, wave: Tensor, plan: AugPlan) -> Tensor:
        """Apply a plan to waves `[B, T]` on their device; float32 math, input dtype returned."""
        if wave.dim() != 2 or wave.shape[0] != len(plan):
            raise ValueError(f"waves {tuple(wave.shape)} do not match a plan of {len(plan)} items")
        dtype, device = wave.dtype, wave.device
        out = wave.float().clone()
        T = out.shape[1]
        with torch.autocast(device_type=device.type, enabled=False):
            rev = [b for b, m in enumerate(plan.mode) if m == "reverb"]
            if rev:
                rirs = [plan.rir[b] for b in rev]
                h = np.zeros((len(rev), max(len(r) for r in rirs)), dtype=np.float32)
                for j, r in enumerate(rirs):
                    h[j, : len(r)] = r
                idx = torch.tensor(rev, device=device)
                out[idx] = reverberate(out[idx], torch.from_numpy(h).to(device))
            add = [b for b, m in enumerate(plan.mode) if m in ADDITIVE_KINDS]
            if add:
                for b in add:
                    if len(plan.noise[b]) != T:
                        raise ValueError(f"plan noise has {len(plan.noise[b])} samples, wave {T}")
                noise = torch.from_numpy(np.stack([plan.noise[b] for b in add])).to(device)
                snr = torch.from_numpy(plan.snr_db[add].astype(np.float32)).to(device)
                idx = torch.tensor(add, device=device)
                out[idx] = add_at_snr(out[idx], noise, snr)
        return out.to(dtype)

    def __call__(self, wave: Tensor, rng: np.random.Generator) -> Tensor:
        return self.apply(wave, self.plan(wave.shape[0], wave.shape[1], rng))


def reverberate(wave: Tensor, rir: Tensor) -> Tensor:
    """Convolve each wave `[B, T]` with its RIR `[B, L]` (FFT), keep T samples, keep the RMS."""
    T, L = wave.shape[1], rir.shape[1]
    n_fft = 1 << (T + L - 1 - 1).bit_length()  # power of two >= full convolution length
    spec = torch.fft.rfft(wave, n=n_fft) * torch.fft.rfft(rir, n=n_fft)
    out = torch.fft.irfft(spec, n=n_fft)[:, :T]
    rms_in = wave.square().mean(dim=1, keepdim=True).sqrt()
    rms_out = out.square().mean(dim=1, keepdim=True).sqrt()
    return out * (rms_in / rms_out.clamp(min=1e-10))


def add_at_snr(wave: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """wave + noise scaled so that 10 log10(P_wave / P_scaled_noise) = snr_db, per row."""
    p_wave = wave.square().mean(dim=1)
    p_noise = noise.square().mean(dim=1).clamp(min=1e-12)
    gain = torch.sqrt(p_wave / (p_noise * 10.0 ** (snr_db / 10.0)))
    return wave + gain[:, None] * noise
