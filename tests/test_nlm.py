"""Noisy-label GMM: separation of bimodal losses, monotone posterior, degenerate input, rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssrl.training.noisy_labels import (
    LossMixture,
    clean_detection_rates,
    clean_posterior,
    fit_loss_mixture,
)


def _bimodal_losses(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = np.exp(rng.normal(-2.0, 0.4, size=800))
    noisy = np.exp(rng.normal(1.5, 0.8, size=200))  # wider: exercises the tail correction
    return np.concatenate([clean, noisy]), np.r_[np.ones(800, bool), np.zeros(200, bool)]


def test_bimodal_losses_are_separated():
    losses, _ = _bimodal_losses()
    p = clean_posterior(losses)
    log_l = np.log(losses)
    assert p.shape == losses.shape
    assert (p[log_l < -1.0] > 0.9).all()
    assert (p[log_l > 0.5] < 0.1).all()


def test_posterior_is_non_increasing_in_loss():
    losses, _ = _bimodal_losses(seed=1)
    p = clean_posterior(losses)
    p_sorted = p[np.argsort(losses, kind="stable")]
    assert (np.diff(p_sorted) <= 1e-12).all()


def test_fitted_components_near_the_generating_ones():
    losses, _ = _bimodal_losses()
    m = fit_loss_mixture(losses)
    assert m is not None
    assert abs(m.clean_mean - -2.0) < 0.1 and abs(m.noisy_mean - 1.5) < 0.2
    assert abs(m.clean_weight - 0.8) < 0.03


def test_tail_beyond_turning_point_is_flat():
    # Noisy component wider (var 4 vs 1): the raw posterior would fall again left of
    # x* = (2*1 - 0*4) / (1 - 4) = -2/3. Hand-computed: r(x*) = ln2 + 2/3, r(0) = ln2 + 1/2.
    m = LossMixture(clean_mean=0.0, clean_var=1.0, clean_weight=0.5, noisy_mean=2.0,
                    noisy_var=4.0, noisy_weight=0.5, lo=-10.0, hi=10.0)
    p = m.posterior(np.exp([-3.0, -2.0 / 3.0, 0.0]))
    at_turn = 1 / (1 + 0.5 * math.exp(-2 / 3))
    np.testing.assert_allclose(p, [at_turn, at_turn, 1 / (1 + 0.5 * math.exp(-0.5))], rtol=1e-12)


def test_clean_component_wider_flattens_the_upper_tail():
    # Clean wider (var 4 vs 1): x* = (2*4 - 0*1) / (4 - 1) = 8/3; above it p stays at p(x*).
    m = LossMixture(clean_mean=0.0, clean_var=4.0, clean_weight=0.5, noisy_mean=2.0,
                    noisy_var=1.0, noisy_weight=0.5, lo=-10.0, hi=10.0)
    p = m.posterior(np.exp([8.0 / 3.0, 6.0]))
    assert p[0] == pytest.approx(p[1], rel=1e-12)
    # r(8/3) = -ln2 - (8/3)^2/8 + (2/3)^2/2 = -ln2 - 2/3
    assert p[0] == pytest.approx(1 / (1 + 2 * math.exp(2 / 3)), rel=1e-12)


def test_deterministic_for_a_seed():
    losses, _ = _bimodal_losses()
    np.testing.assert_array_equal(clean_posterior(losses, seed=3), clean_posterior(losses, seed=3))


def test_constant_losses_give_all_ones():
    np.testing.assert_array_equal(clean_posterior(np.full(50, 2.5)), np.ones(50))
    np.testing.assert_array_equal(clean_posterior(np.array([1.0])), [1.0])


def test_non_positive_and_infinite_losses_do_not_crash():
    losses, _ = _bimodal_losses()
    losses[:3] = [0.0, -1.0, np.inf]
    p = clean_posterior(losses)
    assert np.isfinite(p).all()
    assert p[0] > 0.9 and p[1] > 0.9 and p[2] < 0.1


def test_nan_loss_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        clean_posterior(np.array([1.0, np.nan, 2.0]))


def test_detection_rates_hand_computed():
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.51])
    truth = np.array([True, True, False, False, False])
    # detected = [T, F, T, F, T]: clean 1 of 2 found, noisy 2 of 3 taken as clean, 2/5 agree.
    rates = clean_detection_rates(p, truth)
    assert rates == {"tp_rate": 0.5, "fp_rate": 2 / 3, "agreement": 0.4}


def test_detection_rates_threshold_is_strict_and_empty_group_is_nan():
    rates = clean_detection_rates(np.array([0.5, 0.7]), np.array([True, True]))
    assert rates["tp_rate"] == 0.5 and rates["agreement"] == 0.5
    assert math.isnan(rates["fp_rate"])
