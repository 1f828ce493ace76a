"""Augmentation: identity, exact SNR, reverberation, batch = per item, mode frequencies, babble."""

import numpy as np
import pytest
import torch

from ssrl.data.augment import ArraySource, Augmenter, AugPlan, prepare_rir, random_crop

T = 1600


def _noise_set(seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    waves, cats = [], []
    for i in range(12):
        cat = ("noise", "music", "speech")[i % 3]
        n = int(rng.integers(300, 3000))
        x = rng.normal(0, 0.1 * (i + 1), n)
        waves.append((x * 3000).astype(np.int16) if i % 2 else x.astype(np.float32))
        cats.append(cat)
    return ArraySource(waves, cats)


def _rir_set(seed: int = 1) -> ArraySource:
    rng = np.random.default_rng(seed)
    rirs = []
    for n in (400, 900, 1500):
        h = rng.normal(0, 1, n) * np.exp(-np.arange(n) / 200.0)
        h[:20] *= 0.01  # a quiet onset before the direct path peak
        h[20] = 5.0
        rirs.append(h.astype(np.float32))
    return ArraySource(rirs)


def _waves(batch: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, T, generator=g)


def test_no_augmentation_is_identity():
    aug = Augmenter(None, None, p_reverb=0.0, p_noise=0.0)
    wave = _waves(5)
    assert torch.equal(aug(wave, np.random.default_rng(0)), wave)


def test_additive_noise_hits_requested_snr():
    aug = Augmenter(_noise_set(), None, p_reverb=0.0, p_noise=1.0)
    wave = _waves(4)
    plan = aug.plan(4, T, np.random.default_rng(3))
    plan.snr_db[:] = [0.0, 5.0, 12.5, 20.0]
    added = aug.apply(wave, plan).double() - wave.double()
    snr = 10 * torch.log10(wave.double().square().mean(1) / added.square().mean(1))
    torch.testing.assert_close(
        snr, torch.tensor([0.0, 5.0, 12.5, 20.0]).double(), atol=0.01, rtol=0
    )


def test_delta_rir_returns_input():
    rir = ArraySource([np.array([0.0, 0.1, -0.5, 0.0, 0.0], dtype=np.float32)])
    assert np.array_equal(prepare_rir(rir.wave(0)), np.array([-1.0, 0.0, 0.0], dtype=np.float32))
    aug = Augmenter(None, rir, p_reverb=1.0, p_noise=0.0)
    wave = _waves(3)
    torch.testing.assert_close(aug(wave, np.random.default_rng(0)), -wave, atol=1e-5, rtol=0)
    rir = ArraySource([np.array([0.0, 0.0, 0.5, 0.0], dtype=np.float32)])
    aug = Augmenter(None, rir, p_reverb=1.0, p_noise=0.0)
    torch.testing.assert_close(aug(wave, np.random.default_rng(0)), wave, atol=1e-5, rtol=0)


def test_reverb_matches_numpy_convolution():
    aug = Augmenter(None, _rir_set(), p_reverb=1.0, p_noise=0.0)
    wave = _waves(2)
    plan = aug.plan(2, T, np.random.default_rng(4))
    out = aug.apply(wave, plan)
    for b in range(2):
        h = plan.rir[b]
        assert h[0] == np.abs(h).max() and np.isclose(np.sum(h.astype(np.float64) ** 2), 1.0)
        x = wave[b].double().numpy()
        y = np.convolve(x, h.astype(np.float64))[:T]
        y *= np.sqrt(np.mean(x**2) / np.mean(y**2))  # the input's RMS is kept
        np.testing.assert_allclose(out[b].double().numpy(), y, atol=1e-5)


def _mixed() -> tuple[Augmenter, torch.Tensor, AugPlan]:
    aug = Augmenter(_noise_set(), _rir_set(), p_reverb=0.4, p_noise=0.4)
    wave = _waves(16)
    plan = aug.plan(16, T, np.random.default_rng(5))
    assert {"clean", "reverb"} <= set(plan.mode) and len(set(plan.mode)) >= 4
    return aug, wave, plan


def test_batch_apply_equals_per_item_apply():
    aug, wave, plan = _mixed()
    batch = aug.apply(wave, plan)
    single = torch.cat([aug.apply(wave[i : i + 1], plan.item(i)) for i in range(16)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    # per-item plans (as drawn by data-loader workers) concatenate into the batch plan
    again = aug.apply(wave, AugPlan.cat([plan.item(i) for i in range(16)]))
    assert torch.equal(again, batch)
    clean = [i for i, m in enumerate(plan.mode) if m == "clean"]
    assert torch.equal(batch[clean], wave[clean])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    aug, wave, plan = _mixed()
    cpu = aug.apply(wave, plan)
    gpu = aug.apply(wave.cuda(), plan)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_same_rng_same_plan():
    aug = Augmenter(_noise_set(), _rir_set(), p_reverb=0.4, p_noise=0.4)
    wave = _waves(6)
    a = aug(wave, np.random.default_rng(9))
    b = aug(wave, np.random.default_rng(9))
    assert torch.equal(a, b)


def test_mode_frequencies():
    aug = Augmenter(_noise_set(), _rir_set(), p_reverb=0.4, p_noise=0.4)
    plan = aug.plan(3000, 64, np.random.default_rng(6))
    modes = np.array(plan.mode)
    freq = {m: np.mean(modes == m) for m in ("clean", "reverb")}
    freq["additive"] = np.mean(np.isin(modes, ["noise", "music", "babble", "babble+music"]))
    assert abs(freq["clean"] - 0.2) < 0.03
    assert abs(freq["reverb"] - 0.4) < 0.03
    assert abs(freq["additive"] - 0.4) < 0.03
    for kind in ("noise", "music", "babble", "babble+music"):  # uniform among the four
        assert abs(np.mean(modes == kind) - 0.1) < 0.03
    additive = np.isin(modes, ["noise", "music", "babble", "babble+music"])
    assert np.isnan(plan.snr_db[~additive]).all()
    assert (plan.snr_db[additive] >= 0).all() and (plan.snr_db[additive] <= 20).all()


def test_babble_uses_three_to_eight_speech_files():
    noise = _noise_set()
    aug = Augmenter(noise, None, p_reverb=0.0, p_noise=1.0)
    plan = aug.plan(400, 64, np.random.default_rng(7))
    sizes = set()
    for mode, src in zip(plan.mode, plan.sources):
        cats = [noise.categories[i] for i in src]
        if mode == "babble":
            assert 3 <= len(src) <= 8 and set(cats) == {"speech"}
            sizes.add(len(src))
        elif mode == "babble+music":
            assert 3 <= len(src) - 1 <= 8 and set(cats[:-1]) == {"speech"}
            assert cats[-1] == "music"
        else:
            assert cats == [mode]
    assert sizes == set(range(3, 9))


def test_uncategorised_noise_and_errors():
    noise = ArraySource([np.ones(100, dtype=np.float32)])
    aug = Augmenter(noise, None, p_reverb=0.0, p_noise=1.0)
    assert aug.kinds == ["noise"]
    assert set(aug.plan(20, 10, np.random.default_rng(0)).mode) == {"noise"}
    with pytest.raises(ValueError, match="P\\(clean\\)"):
        Augmenter(noise, _rir_set(), p_reverb=0.6, p_noise=0.5)
    with pytest.raises(ValueError, match="RIR"):
        Augmenter(noise, None, p_reverb=0.5, p_noise=0.0)


def test_short_file_is_tiled():
    x = np.arange(50, dtype=np.float32)
    crop = random_crop(x, 300, np.random.default_rng(0))
    assert len(crop) == 300
    assert np.array_equal(crop[50:], crop[:-50])  # periodic with the file's length
    assert set(np.diff(crop).tolist()) <= {1.0, -49.0}
