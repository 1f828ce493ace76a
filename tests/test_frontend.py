"""Front end: our STFT + mel filterbank against torchaudio, normalisation, frame counts."""

import pytest
import torch
import torchaudio

from ssrl.models.frontend import Frontend, mel_filterbank


def _waves(batch: int = 3, n: int = 16000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    tones = torch.sin(2 * torch.pi * 440 * t) + 0.3 * torch.sin(2 * torch.pi * 3100 * t)
    return 0.5 * tones + 0.1 * torch.randn(batch, n, generator=g)


def test_mel_filterbank_matches_torchaudio():
    ours = mel_filterbank(257, 80, 16000, 0.0, 8000.0)
    ref = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, None, "htk")
    # ours is computed in float64, torchaudio's in float32: agreement to float32 rounding
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_mel_power_matches_torchaudio_melspectrogram():
    fe = Frontend("logmel")
    wave = _waves()
    ref = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        f_min=0.0,
        f_max=8000.0,
        n_mels=80,
        window_fn=torch.hamming_window,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    )(torchaudio.functional.preemphasis(wave, 0.97))
    ours = fe.mel_power(wave)
    assert ours.shape == ref.shape == (3, 80, 101)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6 * ref.max().item())


@pytest.mark.parametrize("kind", ["logmel", "fbank"])
def test_frame_count_batch_and_scale_invariance(kind):
    fe = Frontend(kind)
    for n in (400, 8000, 16123):
        wave = _waves(batch=2, n=n, seed=n)
        out = fe(wave)
        assert out.shape == (2, 80, fe.n_frames(n))
        # one utterance at a time gives the same features as the batch
        single = torch.cat([fe(wave[i : i + 1]) for i in range(2)])
        torch.testing.assert_close(out, single, rtol=0, atol=1e-4)
        # peak normalisation: the input gain does not matter
        torch.testing.assert_close(fe(wave * 0.01), out, rtol=0, atol=1e-3)
    assert Frontend("logmel").n_frames(16000) == 101
    assert Frontend("fbank").n_frames(16000) == 98
    assert Frontend("fbank").n_frames(399) == 0


def test_logmel_is_instance_normalised():
    out = Frontend("logmel")(_waves())
    torch.testing.assert_close(out.mean(dim=2), torch.zeros(3, 80), rtol=0, atol=1e-4)
    torch.testing.assert_close(out.std(dim=2, unbiased=False), torch.ones(3, 80), rtol=0, atol=1e-3)


def test_fbank_is_mean_normalised_kaldi():
    wave = _waves(batch=1)
    out = Frontend("fbank")(wave)
    torch.testing.assert_close(out.mean(dim=2), torch.zeros(1, 80), rtol=0, atol=1e-4)
    ref = torchaudio.compliance.kaldi.fbank(
        wave / wave.abs().max() * 32767.0,
        num_mel_bins=80,
        dither=0.0,
        energy_floor=0.0,
        low_freq=0.0,
    )
    torch.testing.assert_close(out[0], (ref - ref.mean(0)).T, rtol=0, atol=1e-4)


def test_autocast_keeps_float32():
    fe = Frontend("logmel")
    wave = _waves()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(wave.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fe(wave.bfloat16().float()), rtol=0, atol=1e-5)


def test_describe_rebuilds_and_rejects_bad_kind():
    fe = Frontend("fbank", n_mels=64)
    assert fe.describe()["kind"] == "fbank"
    assert Frontend(**fe.describe()).describe() == fe.describe()
    with pytest.raises(ValueError, match="kind"):
        Frontend("mfcc")
