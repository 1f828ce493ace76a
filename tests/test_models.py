"""Encoders: exact parameter counts, output shapes, batch/single equivalence, config handling."""

import pytest
import torch

from ssrl.models.encoders import PRESETS, build_encoder, count_parameters, resolve_config

# Exact counts (BatchNorm affine weights included, running statistics are buffers).
# ECAPA c1024/512 is the SSRL encoder ("about 22.7 M"); c1024/192 would be 20,767,936 and
# c512/192 6,194,432, the familiar SpeechBrain / WeSpeaker sizes.
EXPECTED_PARAMS = {
    "ecapa_c1024": 22_734_976,
    "ecapa_c512": 7_178_432,
    "ecapa_c256": 2_542_816,
    "ecapa_tiny": 184_048,
    "resnet34": 7_945_312,
}


def test_presets_are_pinned():
    assert set(PRESETS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("preset", sorted(EXPECTED_PARAMS))
def test_parameter_count(preset):
    assert count_parameters(build_encoder({"preset": preset})) == EXPECTED_PARAMS[preset]


def test_ecapa_c1024_by_hand():
    """The c1024/512 count, part by part (conv+bias, BN weight+bias)."""
    c, mfa, mels, emb = 1024, 3072, 80, 512
    layer1 = mels * c * 5 + c + 2 * c
    tdnn1x1 = c * c + c + 2 * c
    res2 = 7 * (128 * 128 * 3 + 128 + 2 * 128)
    se = (c * 128 + 128) + (128 * c + c)
    block = 2 * tdnn1x1 + res2 + se
    mfa_layer = 3 * c * mfa + mfa + 2 * mfa
    pool = (3 * mfa * 128 + 128 + 2 * 128) + (128 * mfa + mfa)
    head = 2 * (2 * mfa) + (2 * mfa * emb + emb) + 2 * emb
    total = layer1 + 3 * block + mfa_layer + pool + head
    assert total == EXPECTED_PARAMS["ecapa_c1024"]


def test_c1024_tiny_forward():
    model = build_encoder({"preset": "ecapa_c1024"}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 80, 20)).shape == (1, 512)
    assert model.embed_dim == 512


@pytest.mark.parametrize("preset", ["ecapa_tiny", "resnet34"])
def test_shapes_and_batch_equals_single(preset):
    torch.manual_seed(0)
    model = build_encoder({"preset": preset})
    D = model.embed_dim
    model.train()
    with torch.no_grad():  # a few training batches so BN running stats are not the identity
        for _ in range(2):
            model(torch.randn(4, 80, 60))
    model.eval()
    with torch.no_grad():
        for T in (50, 151, 400):
            x = torch.randn(3, 80, T)
            out = model(x)
            assert out.shape == (3, D)
            assert torch.isfinite(out).all()
            single = torch.cat([model(x[i : i + 1]) for i in range(3)])
            torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-4)


def test_config_defaults_preset_and_overrides():
    assert resolve_config({})["channels"] == 1024
    cfg = resolve_config({"preset": "ecapa_tiny", "embed_dim": 96})
    assert (cfg["channels"], cfg["scale"], cfg["embed_dim"]) == (64, 4, 96)
    model = build_encoder({"preset": "ecapa_tiny", "embed_dim": 96, "mfa_channels": 100})
    assert model.embed_dim == 96
    assert model.fc.in_features == 200
    with pytest.raises(ValueError, match="'chanels'"):
        build_encoder({"chanels": 512})
    with pytest.raises(ValueError, match="preset"):
        build_encoder({"preset": "ecapa_c9999"})
    with pytest.raises(ValueError, match="arch"):
        build_encoder({"arch": "xvector"})
    with pytest.raises(ValueError, match="divisible"):
        build_encoder({"preset": "ecapa_tiny", "scale": 5})
