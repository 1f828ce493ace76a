"""Built-in procedural speech-like corpus, so the whole workflow runs without downloading data.

Every speaker is a persistent *voice* (F0 level, range and contour style, vocal-tract length,
spectral tilt, breathiness, jitter/shimmer, speaking rate and a small per-phone "accent"). Every
utterance is a random sequence of phones from ONE shared inventory, so content never identifies
the speaker. Speech is made with a source-filter model evaluated in the STFT domain (a jittered
glottal pulse train and noise, shaped per frame by a formant cascade, a tilt and fricative bands),
which keeps the generator vectorised and fast.

Utterances are grouped into sessions, like VoxCeleb videos. Each session has its own channel
(reverberation, additive noise at 5-20 dB SNR, EQ/band-limiting) drawn around one of a small pool
of shared channel archetypes, so the same speaker is heard through different channels and
different speakers through similar ones: channel is a partial cue only, which is what defeats a
crude utterance-mean MFCC baseline while leaving speaker traits learnable.

A real voice is not the same in every recording: with `session_voice_var` > 0 each session
shifts the speaker's F0 level, vocal effort (spectral tilt, breathiness) and speaking rate a
little, so no trait is a perfect fingerprint. `voice_colour_db` bounds the speaker-specific
spectral colouring, a static cue real voices offer far less of than a synthesiser can.

Dev and test speakers can come from shifted *domains* (`dev_domain`, `test_domain`): domain d > 0
redraws the shared phone inventory's formant targets (another "language"), the channel
archetypes (other rooms, devices and noise colours), from its own seed stream. A model
trained in domain 0 and evaluated in domain 2 is tested on what transfers.

Everything is deterministic from `CorpusSpec.seed`: each speaker, session and utterance draws from
its own generator keyed by (seed, part, indices), so the output never depends on loop order.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.fft import next_fast_len
from scipy.signal import fftconvolve

from ssrl.data.audio import SAMPLE_RATE
from ssrl.data.kaldi import make_trials
from ssrl.files import InputError, atomic_dir, write_json, write_table

#: Bumped whenever the generator's output changes for the same spec.
GENERATOR_VERSION = 2

_N_FFT = 512
_HOP = 128
_FREQS = np.fft.rfftfreq(_N_FFT, 1.0 / SAMPLE_RATE)
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)  # periodic Hann
#: Sum of the squared periodic Hann window over overlapping frames at hop N/4.
_OLA_NORM = 1.5

#: Seed-stream keys of the corpus parts, so no two parts ever share random numbers.
_PART = {"train": 1, "test": 2, "babble": 3, "noise": 4, "music": 5, "rir": 6, "archetypes": 7,
         "dev": 8, "domain": 9}
#: Number of shared channel archetypes (rooms x devices) sessions are drawn around.
N_ARCHETYPES = 6
#: Largest EQ bell gain in dB; sets how much the channel shifts an utterance's mean spectrum.
EQ_STRENGTH = 3.0
#: Share of archetypes that are band-limited like a telephone (300-3400 Hz).
PHONE_LIKE = 0.1
#: Largest gain in dB of the speaker-specific spectral colouring bells.
VOICE_COLOUR_DB = 12.0


# --------------------------------------------------------------------------------------------
# Corpus specification
# --------------------------------------------------------------------------------------------

#: The spec keys each part of the corpus reads. The workflow prepares each part as its own job
#: whose config holds only these keys: changing the test set's size regenerates the test set,
#: not the training set (and so does not retrain anything).
PART_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("seed", "train_speakers", "train_utts_per_speaker", "sessions_per_speaker",
              "min_dur", "max_dur", "session_voice_var", "voice_colour_db"),
    "dev": ("seed", "dev_speakers", "dev_utts_per_speaker", "dev_domain", "sessions_per_speaker",
            "min_dur", "max_dur", "session_voice_var", "voice_colour_db",
            "nontargets_per_target"),
    "test": ("seed", "test_speakers", "test_utts_per_speaker", "test_domain",
             "sessions_per_speaker", "min_dur", "max_dur", "session_voice_var",
             "voice_colour_db", "nontargets_per_target"),
    "noise": ("seed", "noise_files", "min_dur", "max_dur"),
    "rir": ("seed", "rir_files"),
}


@dataclass(frozen=True)
class CorpusSpec:
    """Size and seed of the built-in corpus. Defaults give ~1,000 utterances (~1 h of audio)."""

    train_speakers: int = 40
    train_utts_per_speaker: int = 20
    sessions_per_speaker: int = 4
    test_speakers: int = 16
    test_utts_per_speaker: int = 12
    dev_speakers: int = 0
    dev_utts_per_speaker: int = 12
    dev_domain: int = 0
    test_domain: int = 0
    session_voice_var: float = 0.0
    voice_colour_db: float = VOICE_COLOUR_DB
    min_dur: float = 2.0
    max_dur: float = 6.0
    nontargets_per_target: int = 4
    noise_files: int = 30
    rir_files: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            wanted = float if f.type in ("float", float) else int
            ok = isinstance(value, int | float) if wanted is float else isinstance(value, int)
            if isinstance(value, bool) or not ok:
                raise InputError(f"corpus spec: {f.name} must be {wanted.__name__}, "
                                 f"got {value!r}")
        positive = ["train_speakers", "train_utts_per_speaker", "sessions_per_speaker",
                    "test_speakers", "test_utts_per_speaker", "nontargets_per_target"]
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"corpus spec: {name} must be at least 1, "
                                 f"got {getattr(self, name)}")
        for name in ("noise_files", "rir_files", "seed", "dev_speakers", "dev_domain",
                     "test_domain", "session_voice_var", "voice_colour_db"):
            if getattr(self, name) < 0:
                raise InputError(f"corpus spec: {name} must be >= 0, got {getattr(self, name)}")
        if self.test_speakers < 2:
            raise InputError("corpus spec: test_speakers must be at least 2 (non-target trials)")
        if self.dev_speakers == 1:
            raise InputError("corpus spec: dev_speakers must be 0 (no dev set) or at least 2")
        if self.sessions_per_speaker < 2:
            raise InputError("corpus spec: sessions_per_speaker must be at least 2 "
                             "(target trials are cross-session)")
        if not 0.5 <= self.min_dur <= self.max_dur:
            raise InputError(f"corpus spec: need 0.5 <= min_dur <= max_dur, got "
                             f"min_dur={self.min_dur}, max_dur={self.max_dur}")

    def check_parts(self, parts: tuple[str, ...] = ("train", "dev", "test")) -> CorpusSpec:
        """Relations between keys of the speaker parts: every speaker needs at least one
        utterance per session (checked for the parts named; returns the spec)."""
        for part in parts:
            if part not in ("train", "dev", "test") or (part == "dev" and not self.dev_speakers):
                continue
            utts = getattr(self, f"{part}_utts_per_speaker")
            if self.sessions_per_speaker > utts:
                raise InputError(f"corpus spec: sessions_per_speaker ({self.sessions_per_speaker})"
                                 f" exceeds {part}_utts_per_speaker ({utts})")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any], parts: tuple[str, ...] = ("train", "dev", "test")
                  ) -> CorpusSpec:
        """Build a spec from a config mapping; unknown keys are an error, not silently ignored.
        Keys not given take their defaults; the relations are checked for `parts`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"corpus spec: unknown key(s) {', '.join(unknown)}; "
                             f"valid keys are {', '.join(sorted(known))}")
        return cls(**d).check_parts(parts)


# --------------------------------------------------------------------------------------------
# Shared phone inventory (reference vocal tract; every speaker scales it)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phone:
    """One phone of the shared inventory.

    `voice` is the glottal amplitude, `fric` the level of a noise band centred at `band` Hz with
    width `band_bw`, `asp` aspiration (noise through the formants). Stops get a closure first.
    """

    name: str
    formants: tuple[float, float, float, float] | None = None
    voice: float = 0.0
    fric: float = 0.0
    band: float = 0.0
    band_bw: float = 0.0
    asp: float = 0.0
    stop: bool = False
    dur: float = 0.08


_VOWELS = [
    Phone("i", (280, 2250, 2900, 3600), 1.0), Phone("I", (400, 1900, 2550, 3550), 1.0),
    Phone("e", (500, 1800, 2500, 3550), 1.0), Phone("ae", (660, 1700, 2400, 3500), 1.0),
    Phone("a", (730, 1100, 2450, 3500), 1.0), Phone("o", (570, 850, 2400, 3400), 1.0),
    Phone("U", (450, 1030, 2250, 3400), 1.0), Phone("u", (310, 870, 2250, 3400), 1.0),
    Phone("V", (640, 1200, 2400, 3500), 1.0), Phone("er", (490, 1350, 1700, 3300), 1.0),
]
_CONSONANTS = [
    Phone("m", (270, 1000, 2200, 3300), 0.35, dur=0.07),
    Phone("n", (270, 1500, 2500, 3400), 0.35, dur=0.06),
    Phone("l", (360, 1300, 2800, 3500), 0.6, dur=0.06),
    Phone("r", (420, 1300, 1600, 3200), 0.6, dur=0.06),
    Phone("w", (300, 700, 2200, 3300), 0.6, dur=0.05),
    Phone("j", (280, 2200, 3000, 3600), 0.6, dur=0.05),
    Phone("s", fric=0.6, band=6000, band_bw=2500, dur=0.10),
    Phone("sh", fric=0.6, band=3000, band_bw=1800, dur=0.10),
    Phone("f", fric=0.2, band=5000, band_bw=8000, dur=0.09),
    Phone("th", fric=0.15, band=5500, band_bw=6000, dur=0.08),
    Phone("h", asp=0.35, dur=0.07),
    Phone("z", voice=0.3, fric=0.4, band=6000, band_bw=2500, dur=0.08),
    Phone("v", voice=0.3, fric=0.15, band=5000, band_bw=8000, dur=0.07),
    Phone("p", fric=0.5, band=1000, band_bw=1500, asp=0.2, stop=True, dur=0.03),
    Phone("t", fric=0.6, band=4500, band_bw=3000, asp=0.2, stop=True, dur=0.03),
    Phone("k", fric=0.6, band=2000, band_bw=1200, asp=0.2, stop=True, dur=0.035),
    Phone("b", voice=0.25, fric=0.3, band=1000, band_bw=1500, stop=True, dur=0.02),
    Phone("d", voice=0.25, fric=0.35, band=4000, band_bw=3000, stop=True, dur=0.02),
    Phone("g", voice=0.25, fric=0.35, band=2000, band_bw=1200, stop=True, dur=0.02),
]
INVENTORY: tuple[Phone, ...] = tuple(_VOWELS + _CONSONANTS)
_SILENCE = Phone("sil")
_N_VOWELS = len(_VOWELS)
_N_PHONES = len(INVENTORY)
_BASE_BW = np.array([60.0, 85.0, 120.0, 170.0])


# --------------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Voice:
    """The persistent traits of one speaker (kept in `speakers.json` for analysis)."""

    f0_median: float         # Hz, 80-250 (log-uniform)
    f0_range: float          # semitones, std of the intonation movement
    f0_rate: float           # Hz, speed of the intonation movement
    f0_decl: float           # semitones per second (declination; <= 0)
    formant_scale: float     # 1 / vocal-tract length factor, 0.8-1.2
    bw_scale: float          # formant bandwidth factor
    tilt: float              # dB per octave source roll-off
    breath: float            # aspiration noise level during voicing
    jitter: float            # relative std of pulse periods
    shimmer: float           # relative std of pulse amplitudes
    rate: float              # duration factor (>1 is slower)
    accent: np.ndarray = field(repr=False)  # [phones, 4] per-phone formant factors
    colour: np.ndarray = field(repr=False)  # [k, 3] bells (Hz, dB, octaves): cavities, nasality


def draw_voice(rng: np.random.Generator, colour_db: float = VOICE_COLOUR_DB) -> Voice:
    """Draw a speaker. Formant scale correlates loosely with F0, as it does in real voices."""
    f0 = float(np.exp(rng.uniform(np.log(80.0), np.log(250.0))))
    pos = (np.log(f0) - np.log(80.0)) / (np.log(250.0) - np.log(80.0))
    scale = float(np.clip(0.86 + 0.26 * pos + rng.normal(0, 0.06), 0.8, 1.2))
    return Voice(
        f0_median=f0,
        f0_range=float(rng.uniform(0.8, 3.5)),
        f0_rate=float(rng.uniform(0.6, 3.0)),
        f0_decl=float(-rng.uniform(0.0, 2.5)),
        formant_scale=scale,
        bw_scale=float(rng.uniform(0.8, 1.5)),
        tilt=float(rng.uniform(3.0, 15.0)),
        breath=float(rng.uniform(0.02, 0.25)),
        jitter=float(rng.uniform(0.003, 0.025)),
        shimmer=float(rng.uniform(0.02, 0.12)),
        rate=float(rng.uniform(0.75, 1.35)),
        accent=np.exp(rng.normal(0.0, 0.05, size=(_N_PHONES, 4))),
        colour=np.stack([np.exp(rng.uniform(np.log(300), np.log(5000), 3)),
                         rng.uniform(-colour_db, colour_db, 3),
                         rng.uniform(0.5, 1.5, 3)], axis=1),
    )


def session_voice(v: Voice, rng: np.random.Generator, var: float) -> Voice:
    """The speaker as heard in one session: F0 level (sd `var` semitones), vocal effort (tilt
    sd 2 `var` dB/octave, breathiness sd 30 `var` %) and rate (sd 8 `var` %) shifted."""
    if var <= 0:
        return v
    return dataclasses.replace(
        v,
        f0_median=float(v.f0_median * 2 ** (rng.normal(0, var) / 12)),
        tilt=float(np.clip(v.tilt + rng.normal(0, 2.0 * var), 1.0, 20.0)),
        breath=float(np.clip(v.breath * np.exp(rng.normal(0, 0.3 * var)), 0.01, 0.4)),
        rate=float(v.rate * np.exp(rng.normal(0, 0.08 * var))),
    )


@dataclass(frozen=True, eq=False)
class Domain:
    """What a corpus domain shares: the phone inventory's formant factors `[phones, 4]` and the
    channel archetypes (rooms, devices, and each archetype's noise colour)."""

    index: int
    formants: np.ndarray
    archetypes: list


def draw_domain(seed: int, index: int) -> Domain:
    """Domain 0 is the reference inventory and the corpus's archetypes; d > 0 redraws both."""
    if index == 0:
        arch_rng = _rng(seed, _PART["archetypes"])
        return Domain(0, np.ones((_N_PHONES, 4)),
                      [_draw_archetype(arch_rng, i) for i in range(N_ARCHETYPES)])
    rng = _rng(seed, _PART["domain"], index)
    formants = np.exp(rng.normal(0.0, 0.08, size=(_N_PHONES, 4)))
    return Domain(index, formants, [_draw_archetype(rng, i) for i in range(N_ARCHETYPES)])


def voice_dict(v: Voice) -> dict[str, Any]:
    """A JSON-friendly view of a voice (the accent matrix is left out: it is bulky)."""
    return {f.name: round(getattr(v, f.name), 5) for f in dataclasses.fields(v)
            if f.name not in ("accent", "colour")}


# --------------------------------------------------------------------------------------------
# Speech synthesis
# --------------------------------------------------------------------------------------------

def _stft(x: np.ndarray) -> np.ndarray:
    """Hann STFT, frames centred at multiples of the hop: [frames, bins]."""
    pad = np.pad(x, (_N_FFT // 2, _N_FFT // 2 + (-len(x)) % _HOP))
    frames = np.lib.stride_tricks.sliding_window_view(pad, _N_FFT)[::_HOP]
    return np.fft.rfft(frames * _WINDOW, axis=1)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft` (4 strided adds instead of a per-frame loop)."""
    frames = np.fft.irfft(spec, n=_N_FFT, axis=1) * _WINDOW
    n = len(frames)
    out = np.zeros((n + 3) * _HOP)
    for k in range(_N_FFT // _HOP):
        out[k * _HOP:k * _HOP + n * _HOP] += frames[:, k * _HOP:(k + 1) * _HOP].reshape(-1)
    return out[_N_FFT // 2:_N_FFT // 2 + length] / _OLA_NORM


def _phone_sequence(rng: np.random.Generator, total: float, rate: float
                    ) -> list[tuple[Phone, float, int]]:
    """Random syllables (C)(C)V(C) with pauses: (phone, duration s, phone index or -1)."""
    seq: list[tuple[Phone, float, int]] = [(_SILENCE, rng.uniform(0.08, 0.2), -1)]
    t = seq[0][1]
    n_cons = len(_CONSONANTS)
    while t < total:
        syll: list[int] = []
        n_onset = rng.choice(3, p=[0.25, 0.55, 0.2])
        syll += list(_N_VOWELS + rng.integers(0, n_cons, n_onset))
        syll.append(int(rng.integers(0, _N_VOWELS)))
        if rng.random() < 0.4:
            syll.append(int(_N_VOWELS + rng.integers(0, n_cons)))
        stressed = rng.random() < 0.35
        for idx in syll:
            ph = INVENTORY[idx]
            dur = (0.11 if idx < _N_VOWELS else ph.dur) * rate * rng.lognormal(0.0, 0.2)
            if idx < _N_VOWELS and stressed:
                dur *= 1.4
            if ph.stop:
                closure = rng.uniform(0.03, 0.07) * rate
                seq.append((_SILENCE, closure, -1))
                t += closure
            seq.append((ph, dur, idx))
            t += dur
        if rng.random() < 0.18:
            pause = rng.uniform(0.1, 0.35) * rate
            seq.append((_SILENCE, pause, -1))
            t += pause
    return seq


def _f0_track(v: Voice, rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-sample F0: speaker level, per-utterance offset, declination, smooth intonation.

    Computed every 80 samples (5 ms) and interpolated: the contour is far smoother than that.
    """
    t = np.arange(0, n + 80, 80) / SAMPLE_RATE
    freqs = v.f0_rate * rng.uniform(0.5, 1.5, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    movement = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None]).sum(0)
    movement *= v.f0_range / np.sqrt(1.5)
    semitones = rng.normal(0.0, 0.8) + v.f0_decl * (t - n / SAMPLE_RATE / 2) + movement
    coarse = v.f0_median * 2.0 ** (semitones / 12.0)
    return np.interp(np.arange(n) / SAMPLE_RATE, t, coarse)


def _pulse_train(v: Voice, rng: np.random.Generator, f0: np.ndarray) -> np.ndarray:
    """Glottal impulses at the F0 track, with jittered positions and shimmered amplitudes."""
    n = len(f0)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    idx = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    period = SAMPLE_RATE / f0[idx]
    idx = np.clip(np.round(idx + rng.normal(0, v.jitter, len(idx)) * period), 0, n - 1)
    amp = np.clip(1.0 + rng.normal(0, v.shimmer, len(idx)), 0.3, None)
    out = np.zeros(n)
    np.add.at(out, idx.astype(np.int64), amp)
    return out


def _resonance_gain(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """|H(f)| of a cascade of 2-pole resonators (unit gain at DC): [frames, bins].

    |1 - c e^-jw + r^2 e^-2jw|^2 expanded into real cosines, which is several times cheaper than
    evaluating the complex polynomial.
    """
    r2 = np.exp(-2 * np.pi * bandwidths / SAMPLE_RATE)[..., None]
    c = 2 * np.sqrt(r2) * np.cos(2 * np.pi * formants / SAMPLE_RATE)[..., None]
    w = 2 * np.pi * _FREQS / SAMPLE_RATE
    power = 1 + c ** 2 + r2 ** 2 - 2 * c * (1 + r2) * np.cos(w) + 2 * r2 * np.cos(2 * w)
    dc = (1 - c + r2)[..., 0] ** 2
    return np.sqrt(np.prod(dc, axis=1)[:, None] / np.prod(power, axis=1))


def _bells(freqs: np.ndarray, bells: np.ndarray) -> np.ndarray:
    """Linear gain of a sum of log-frequency Gaussian bells (centre Hz, gain dB, width octaves)."""
    octs = np.log2(np.maximum(freqs, 1.0) / 1000.0)
    gain_db = np.zeros_like(octs)
    for fc, g, width in bells:
        gain_db += g * np.exp(-0.5 * ((octs - np.log2(fc / 1000.0)) / (width / 2)) ** 2)
    return 10 ** (gain_db / 20)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along frames, so amplitudes ramp instead of clicking."""
    kernel = np.ones(width) / width
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 0, x)


def synth_speech(v: Voice, duration: float, rng: np.random.Generator,
                 inventory: np.ndarray | None = None) -> np.ndarray:
    """Clean speech-like audio of `duration` seconds for voice `v` (RMS 0.05, float64);
    `inventory` scales the shared phones' formant targets (a domain's "language")."""
    n = int(round(duration * SAMPLE_RATE))
    seq = _phone_sequence(rng, duration, v.rate)
    durs = np.array([d for _, d, _ in seq])
    starts = np.concatenate([[0.0], np.cumsum(durs)[:-1]])
    mids = starts + durs / 2

    n_frames = (n + (-n) % _HOP) // _HOP + 1
    t = np.arange(n_frames) * _HOP / SAMPLE_RATE
    seg = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(seq) - 1)

    # Formant targets: the shared inventory, scaled by the speaker's VTL and accent, glide
    # linearly between the midpoints of sonorant phones (coarticulation).
    son = [i for i, (ph, _, _) in enumerate(seq) if ph.formants is not None]
    if not son:  # a very short utterance of obstruents only: use a neutral vowel
        targets = np.array([[500.0, 1500.0, 2500.0, 3500.0]]) * v.formant_scale
        anchor_t = np.array([duration / 2])
    else:
        factors = inventory if inventory is not None else np.ones((_N_PHONES, 4))
        targets = np.array([np.array(seq[i][0].formants) * v.accent[seq[i][2]]
                            * factors[seq[i][2]] for i in son])
        targets *= v.formant_scale
        anchor_t = mids[son]
    formants = np.stack([np.interp(t, anchor_t, targets[:, k]) for k in range(4)], axis=1)
    formants = np.minimum(formants, 0.95 * SAMPLE_RATE / 2 - 200 * np.arange(4)[::-1])
    bws = _BASE_BW * v.bw_scale * (1 + formants / 4000)
    tract = _resonance_gain(formants, bws)

    phones = [ph for ph, _, _ in seq]
    voice_amp = np.array([ph.voice for ph in phones])[seg]
    fric_amp = np.array([ph.fric for ph in phones])[seg]
    asp_amp = np.array([ph.asp for ph in phones])[seg]
    band = np.array([ph.band for ph in phones])[seg] * np.sqrt(v.formant_scale)
    band_bw = np.array([max(ph.band_bw, 1.0) for ph in phones])[seg]
    voice_amp, fric_amp, asp_amp = _smooth(np.stack([voice_amp, fric_amp, asp_amp], 1), 3).T

    f0 = _f0_track(v, rng, n)
    pulses = _pulse_train(v, rng, f0)
    noise = rng.standard_normal(n) * np.sqrt(v.f0_median / SAMPLE_RATE)  # pulse-train power

    tilt = 10 ** (-v.tilt * np.log2(1 + _FREQS / 200.0) / 20)
    highpass = (_FREQS / (_FREQS + 1500.0)) ** 2
    fric_shape = np.exp(-0.5 * ((_FREQS - band[:, None]) / (band_bw[:, None] / 2)) ** 2) + 0.03
    tract = tract * _bells(_FREQS, v.colour)
    voiced_gain = tract * tilt * voice_amp[:, None]
    noise_gain = (tract * highpass * (v.breath * voice_amp + asp_amp)[:, None]
                  + fric_shape * fric_amp[:, None])
    spec = _stft(pulses) * voiced_gain + _stft(noise) * noise_gain
    y = _istft(spec, n)

    fade = min(n // 4, int(0.02 * SAMPLE_RATE))
    y[-fade:] *= np.linspace(1.0, 0.0, fade)
    y += rng.standard_normal(n) * 1e-3 * np.sqrt(np.mean(y ** 2))  # -60 dB floor, never digital 0
    return y * (0.05 / max(float(np.sqrt(np.mean(y ** 2))), 1e-9))


# --------------------------------------------------------------------------------------------
# Rooms, channels, noises, music
# --------------------------------------------------------------------------------------------

def synth_rir(rng: np.random.Generator, rt60: float, drr_db: float = 3.0) -> np.ndarray:
    """Room impulse response: direct-path peak, sparse early reflections, decaying diffuse tail.

    Higher frequencies decay faster (a one-pole low-pass whose cut-off falls along the tail).
    Normalised to unit peak (the direct path).
    """
    n = int(max(rt60 * 1.2, 0.1) * SAMPLE_RATE)
    delay = int(rng.uniform(0.001, 0.006) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    decay = np.exp(-6.9 * t / rt60)
    tail = rng.standard_normal(n) * decay
    # Frequency-dependent decay: blend the tail with a smoothed copy as time goes on.
    smooth = np.convolve(tail, np.ones(4) / 4, mode="same")
    blend = np.clip(t / rt60, 0, 1)
    tail = (1 - blend) * tail + blend * smooth
    tail[: delay + 1] = 0.0
    early = np.zeros(n)
    n_refl = int(rng.integers(4, 12))
    pos = delay + (rng.uniform(0.002, 0.03, n_refl) * SAMPLE_RATE).astype(int)
    pos = pos[pos < n]
    early[pos] = rng.uniform(-0.6, 0.6, len(pos)) * decay[pos]
    reverb = tail + early
    direct_energy = 1.0
    reverb *= np.sqrt(direct_energy / max(np.sum(reverb ** 2), 1e-12) / 10 ** (drr_db / 10))
    rir = reverb
    rir[delay] = 1.0
    return rir / np.max(np.abs(rir))


def _coloured_noise(rng: np.random.Generator, n: int, slope_db_oct: float) -> np.ndarray:
    """Stationary noise whose spectrum falls (or rises) by `slope_db_oct` dB per octave."""
    m = next_fast_len(n, real=True)  # draw a little more noise: FFTs of awkward lengths are slow
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / SAMPLE_RATE)
    spec *= 10 ** (slope_db_oct * np.log2(np.maximum(f, 50.0) / 1000.0) / 20)
    x = np.fft.irfft(spec, n=m)[:n]
    return x / max(float(np.std(x)), 1e-12)


def _band_response(n: int, lo: float, hi: float, bells: np.ndarray, tilt: float) -> np.ndarray:
    """Magnitude response on the rfft grid of length n: band-pass, bells (fc, gain dB, octaves)."""
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 1.0)
    mag = 1 / np.sqrt(1 + (lo / f) ** 8) / np.sqrt(1 + (f / hi) ** 8)
    return mag * 10 ** (tilt * np.log2(f / 1000.0) / 20) * _bells(f, bells)


@dataclass(frozen=True, eq=False)
class Channel:
    """Recording conditions of one session (room, microphone/codec EQ, background noise)."""

    rt60: float              # 0 = no reverberation
    drr_db: float            # direct-to-reverberant ratio
    lo: float                # band-limit, Hz
    hi: float
    tilt: float              # dB per octave around 1 kHz
    bells: np.ndarray        # [k, 3]: centre Hz, gain dB, width octaves
    noise_slope: float       # dB per octave of the background noise
    hum: float               # relative level of mains hum in the noise
    snr_db: float
    archetype: int


def _draw_archetype(rng: np.random.Generator, index: int) -> Channel:
    """One shared recording condition; sessions are drawn around these."""
    phone_like = rng.random() < PHONE_LIKE
    k = int(rng.integers(2, 5))
    bells = np.stack([np.exp(rng.uniform(np.log(150), np.log(6000), k)),
                      EQ_STRENGTH * rng.uniform(-1, 1, k), rng.uniform(0.5, 2.0, k)], axis=1)
    return Channel(
        rt60=0.0 if rng.random() < 0.25 else float(rng.uniform(0.15, 0.7)),
        drr_db=float(rng.uniform(-2, 10)),
        lo=float(rng.uniform(250, 400) if phone_like else rng.uniform(20, 60)),
        hi=float(rng.uniform(3200, 3800) if phone_like else rng.uniform(11000, 16000)),
        tilt=float(EQ_STRENGTH / 12 * rng.uniform(-4, 3)),
        bells=bells,
        noise_slope=float(rng.uniform(-4.5, -1.5)),
        hum=float(rng.uniform(0, 1) if rng.random() < 0.3 else 0.0),
        snr_db=float(rng.uniform(5, 20)),
        archetype=index,
    )


def _draw_session(rng: np.random.Generator, archetypes: list[Channel]) -> Channel:
    """A session channel: a random archetype, perturbed, with its own SNR."""
    a = archetypes[int(rng.integers(0, len(archetypes)))]
    bells = a.bells.copy()
    bells[:, 1] += rng.normal(0, EQ_STRENGTH / 4, len(bells))
    return dataclasses.replace(
        a,
        rt60=0.0 if a.rt60 == 0 else float(a.rt60 * rng.uniform(0.8, 1.25)),
        drr_db=a.drr_db + float(rng.normal(0, 1.5)),
        lo=a.lo * float(rng.uniform(0.85, 1.15)),
        hi=a.hi * float(rng.uniform(0.9, 1.1)),
        tilt=a.tilt + float(rng.normal(0, EQ_STRENGTH / 24)),
        bells=bells,
        noise_slope=a.noise_slope + float(rng.normal(0, 0.3)),
        snr_db=float(rng.uniform(5, 20)),
    )


def apply_channel(x: np.ndarray, ch: Channel, rir: np.ndarray | None,
                  rng: np.random.Generator) -> np.ndarray:
    """Reverberate, add background noise at the session SNR, then the device EQ/band-limit."""
    n = len(x)
    y = fftconvolve(x, rir)[:n] if rir is not None else x
    noise = _coloured_noise(rng, n, ch.noise_slope)
    if ch.hum > 0:
        t = np.arange(n) / SAMPLE_RATE
        f_mains = 50.0 if ch.archetype % 2 else 60.0
        hum = sum(np.sin(2 * np.pi * f_mains * h * t) / h for h in (1, 2, 3, 5))
        noise = noise + ch.hum * 2 * hum
    snr = float(np.clip(ch.snr_db + rng.normal(0, 1.0), 5.0, 20.0))
    p_sig = np.mean(y ** 2)
    noise *= np.sqrt(p_sig / max(float(np.mean(noise ** 2)), 1e-12) / 10 ** (snr / 10))
    y = y + noise
    m = next_fast_len(n, real=True)  # zero padding: a fast FFT length, less wrap-around
    spec = np.fft.rfft(y, n=m) * _band_response(m, ch.lo, ch.hi, ch.bells, ch.tilt)
    return np.fft.irfft(spec, n=m)[:n]


def synth_noise(rng: np.random.Generator, duration: float) -> np.ndarray:
    """MUSAN-like 'noise': coloured stationary, modulated, bursty/impulsive or hum noise."""
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    kind = int(rng.integers(0, 4))
    x = _coloured_noise(rng, n, float(rng.uniform(-9, 3)))
    if kind == 1:  # slowly fluctuating (wind, traffic)
        rate = rng.uniform(0.2, 2.0)
        x *= 1 + 0.8 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    elif kind == 2:  # bursts and clicks on a quiet floor (typing, hammering, doors)
        env = np.full(n, 0.05)
        for start in rng.integers(0, n, int(rng.integers(5, 40))):
            length = int(rng.uniform(0.005, 0.15) * SAMPLE_RATE)
            seg = env[start:start + length]
            env[start:start + length] = np.maximum(seg, np.exp(-np.arange(len(seg)) / (length / 4)))
        x *= env
    elif kind == 3:  # machine hum with harmonics over noise
        f = rng.uniform(40, 300)
        hum = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 8))
        x = 0.3 * x + hum / np.std(hum)
    return x


def synth_music(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Tonal 'music': a melody of harmonic notes over a sustained chord, optional percussion."""
    n = int(duration * SAMPLE_RATE)
    out = np.zeros(n)
    tonic = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    n_harm = int(rng.integers(3, 9))
    roll = rng.uniform(0.4, 0.9)
    beat = rng.uniform(0.15, 0.5)
    pos = 0
    while pos < n:
        length = int(beat * rng.choice([1, 1, 2, 3]) * SAMPLE_RATE)
        f = tonic * 2 ** (rng.choice(scale) / 12 + int(rng.integers(0, 2)))
        tt = np.arange(min(length, n - pos)) / SAMPLE_RATE
        h = np.arange(1, n_harm + 1)[:, None]
        note = ((roll ** h) * np.sin(2 * np.pi * f * h * tt[None, :])).sum(0)
        envelope = np.exp(-tt / (length / SAMPLE_RATE / 2)) * (1 - np.exp(-tt * 200))
        out[pos:pos + len(tt)] += note * envelope
        pos += length
    t = np.arange(n) / SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * tonic * 2 ** (k / 12) * t) for k in (0, 4, 7))
    out += 0.3 * chord
    if rng.random() < 0.5:
        step = int(beat * 2 * SAMPLE_RATE)
        k = np.arange(1600)
        kick = np.exp(-k / 300) * np.sin(2 * np.pi * 60 * k / SAMPLE_RATE)
        for start in range(0, n - 1600, step):
            out[start:start + 1600] += 2 * kick
    return out


# --------------------------------------------------------------------------------------------
# Corpus assembly
# --------------------------------------------------------------------------------------------

def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _write_wav(path: Path, x: np.ndarray, peak: float = 0.9) -> float:
    """Peak-normalise, write 16-bit PCM, return the duration in seconds."""
    x = x * (peak / max(float(np.max(np.abs(x))), 1e-9))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Encoded in memory, then written: libsndfile's close calls fsync on a file it wrote, which
    # took a fifth of the corpus's synthesis time (same bytes either way).
    buffer = io.BytesIO()
    sf.write(buffer, x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getvalue())
    return len(x) / SAMPLE_RATE


def _sessions(n_utts: int, n_sess: int) -> list[int]:
    """Session index of each utterance: contiguous, near-equal groups."""
    return [i * n_sess // n_utts for i in range(n_utts)]


def _write_speaker_split(root: Path, split: str, prefix: str, n_spk: int, n_utts: int,
                         spec: CorpusSpec, domain: Domain
                         ) -> tuple[dict[str, str], dict[str, str], dict[str, Any], float]:
    """Synthesise one split; returns utt2spk, utt2sess, per-speaker traits, total seconds."""
    wav_rows, utt2spk, utt2sess = [], {}, {}
    traits: dict[str, Any] = {}
    total = 0.0
    part = _PART[split]
    for s in range(n_spk):
        spk = f"{prefix}-spk{s:04d}"
        voice = draw_voice(_rng(spec.seed, part, s, 0), spec.voice_colour_db)
        sessions = []
        for k in range(spec.sessions_per_speaker):
            srng = _rng(spec.seed, part, s, 1, k)
            ch = _draw_session(srng, domain.archetypes)
            rir = synth_rir(srng, ch.rt60, ch.drr_db) if ch.rt60 > 0 else None
            heard = session_voice(voice, _rng(spec.seed, part, s, 3, k), spec.session_voice_var)
            sessions.append((ch, rir, heard))
        traits[spk] = voice_dict(voice) | {
            "session_archetypes": [ch.archetype for ch, _, _ in sessions], "domain": domain.index}
        for u, k in enumerate(_sessions(n_utts, spec.sessions_per_speaker)):
            urng = _rng(spec.seed, part, s, 2, u)
            utt = f"{spk}-s{k + 1}-u{u:03d}"
            dur = float(urng.uniform(spec.min_dur, spec.max_dur))
            ch, rir, heard = sessions[k]
            x = apply_channel(synth_speech(heard, dur, urng, domain.formants), ch, rir, urng)
            rel = f"wav/{spk}/{utt}.wav"
            total += _write_wav(root / rel, x, peak=float(urng.uniform(0.3, 0.95)))
            wav_rows.append((utt, rel))
            utt2spk[utt] = spk
            utt2sess[utt] = f"{spk}-s{k + 1}"
    write_table(root / "wav.scp", sorted(wav_rows))
    write_table(root / "utt2spk", sorted(utt2spk.items()))
    write_table(root / "utt2sess", sorted(utt2sess.items()))
    return utt2spk, utt2sess, traits, total


def _write_noise_set(root: Path, spec: CorpusSpec) -> dict[str, Any]:
    """MUSAN-like augmentation set: noise, music and speech (extra speakers, for babble)."""
    n_music = spec.noise_files // 3
    n_speech = spec.noise_files // 3
    n_noise = spec.noise_files - n_music - n_speech
    rows, cats, total = [], {}, 0.0
    for cat, count in (("noise", n_noise), ("music", n_music), ("speech", n_speech)):
        for i in range(count):
            rng = _rng(spec.seed, _PART["babble" if cat == "speech" else cat], i)
            if cat == "noise":
                x = synth_noise(rng, 8.0)
            elif cat == "music":
                x = synth_music(rng, 8.0)
            else:
                x = synth_speech(draw_voice(rng), float(rng.uniform(spec.min_dur, spec.max_dur)),
                                 rng)
            utt = f"{cat}-{i:04d}"
            rel = f"wav/{utt}.wav"
            total += _write_wav(root / rel, x)
            rows.append((utt, rel))
            cats[utt] = cat
    write_table(root / "wav.scp", sorted(rows))
    write_table(root / "utt2category", sorted(cats.items()))
    return {"files": len(rows), "noise": n_noise, "music": n_music, "speech": n_speech,
            "seconds": round(total, 3)}


def _write_rir_set(root: Path, spec: CorpusSpec) -> dict[str, Any]:
    """Simulated RIRs for augmentation; wider rooms than the sessions' and their own seeds."""
    rows = []
    for i in range(spec.rir_files):
        rng = _rng(spec.seed, _PART["rir"], i)
        rir = synth_rir(rng, float(rng.uniform(0.2, 1.0)), float(rng.uniform(-5, 8)))
        utt = f"rir-{i:04d}"
        _write_wav(root / f"wav/{utt}.wav", rir, peak=0.9)
        rows.append((utt, f"wav/{utt}.wav"))
    write_table(root / "wav.scp", rows)
    return {"files": len(rows)}


def _write_part(folder: Path, part: str, spec: CorpusSpec) -> dict[str, Any]:
    """One part of the corpus into `folder` (which exists): a speaker split with its
    speakers.json (and trials for dev/test), or the noise or RIR set. Returns its summary."""
    if part in ("noise", "rir"):
        return (_write_noise_set if part == "noise" else _write_rir_set)(folder, spec)
    n_spk = getattr(spec, f"{part}_speakers")
    if n_spk == 0:  # no dev set: an empty folder
        write_table(folder / "wav.scp", [])
        return {"speakers": 0, "utterances": 0}
    domain = draw_domain(spec.seed, {"train": 0, "dev": spec.dev_domain,
                                     "test": spec.test_domain}[part])
    prefix = {"train": "tr", "dev": "dv", "test": "te"}[part]
    utt2spk, utt2sess, traits, seconds = _write_speaker_split(
        folder, part, prefix, n_spk, getattr(spec, f"{part}_utts_per_speaker"), spec, domain)
    write_json(folder / "speakers.json", traits)
    summary = {"speakers": n_spk, "domain": domain.index, "utterances": len(utt2spk),
               "sessions": len(set(utt2sess.values())), "seconds": round(seconds, 3)}
    if part in ("dev", "test"):
        trials = make_trials(utt2spk, utt2sess, spec.nontargets_per_target,
                             _rng(spec.seed, _PART[part], 99))
        write_table(folder / "trials", trials)
        n_target = sum(r[2] == "target" for r in trials)
        summary |= {"trials": len(trials), "target": n_target,
                    "nontarget": len(trials) - n_target}
    return summary


def generate_part(out_dir: Path, part: str, keys: dict[str, Any]) -> dict[str, Any]:
    """The workflow's `prepare` of one built-in part (train, dev, test, noise or rir) from the
    spec keys it reads (`PART_KEYS[part]`; the others keep their defaults), written whole and
    renamed into place. Returns the part's summary (also in its summary.json)."""
    spec = CorpusSpec.from_dict(keys, parts=(part,))
    with atomic_dir(out_dir) as tmp:
        summary = {"generator_version": GENERATOR_VERSION, "sample_rate": SAMPLE_RATE,
                   "part": part, "spec": {k: getattr(spec, k) for k in PART_KEYS[part]},
                   part: _write_part(tmp, part, spec)}
        write_json(tmp / "summary.json", summary)
    return summary


def generate_corpus(out_dir: Path, spec: CorpusSpec) -> dict[str, Any]:
    """Write the whole corpus (train/, dev/, test/, noise/, rir/, summary.json) in one folder,
    built next to `out_dir` and renamed into place (tests and benchmarks use this; the workflow
    prepares each part on its own with `generate_part`, with the same content).

    dev/ has its own speakers (none of train or test) and a trial list; with `dev_speakers` 0
    it is an empty folder."""
    out_dir = Path(out_dir)
    spec.check_parts()
    with atomic_dir(out_dir) as tmp:
        summary: dict[str, Any] = {"generator_version": GENERATOR_VERSION,
                                   "sample_rate": SAMPLE_RATE, "seed": spec.seed,
                                   "spec": dataclasses.asdict(spec)}
        for part in PART_KEYS:
            (tmp / part).mkdir()
            summary[part] = _write_part(tmp / part, part, spec)
        write_json(tmp / "summary.json", summary)
    return summary
