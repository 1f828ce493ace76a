"""Noisy-label modelling: how likely is each utterance's pseudo label to be right?

Utterances whose label is wrong tend to have a high teacher loss. SSRL fits a 2-component
Gaussian mixture to log(teacher loss) over all utterances and uses the posterior of the
low-mean ("clean") component as a per-utterance weight in the next epoch's student loss.

Fitting: scikit-learn's `GaussianMixture` (k-means initialisation, seeded, one init), so the
result is deterministic for a given seed. The posterior is then computed here in closed form
from the fitted parameters, with one change: when the two variances differ, a Gaussian
posterior turns around in a tail (far enough out, the wider component wins on BOTH sides), and
then a larger loss would look cleaner. Log-losses beyond that turning point are evaluated at the
turning point, which makes p_clean non-increasing in the loss by construction and leaves it
unchanged everywhere else (the turning point always lies outside the two means).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

LOSS_FLOOR = 1e-8


@dataclass(frozen=True)
class LossMixture:
    """A fitted 2-component mixture over log-loss, "clean" = the component with the lower mean.

    `lo`/`hi` are the clip bounds (log-loss percentiles) used for fitting and evaluation.
    """

    clean_mean: float
    clean_var: float
    clean_weight: float
    noisy_mean: float
    noisy_var: float
    noisy_weight: float
    lo: float
    hi: float

    def posterior(self, losses: np.ndarray) -> np.ndarray:
        """p_clean for each loss (float64), non-increasing in the loss."""
        x = np.clip(log_losses(losses), self.lo, self.hi)
        vc, vn = self.clean_var, self.noisy_var
        if vc != vn:
            # Extremum of the log posterior ratio; outside [clean_mean, noisy_mean].
            turn = (self.noisy_mean * vc - self.clean_mean * vn) / (vc - vn)
            x = np.maximum(x, turn) if vn > vc else np.minimum(x, turn)
        log_ratio = (np.log(self.clean_weight) + _log_normal(x, self.clean_mean, vc)
                     - np.log(self.noisy_weight) - _log_normal(x, self.noisy_mean, vn))
        return expit(log_ratio)


def _log_normal(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return -0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)


def log_losses(losses: np.ndarray) -> np.ndarray:
    """log(loss) with losses <= 0 floored at LOSS_FLOOR; NaN is rejected (+inf stays +inf)."""
    losses = np.asarray(losses, dtype=np.float64)
    if np.isnan(losses).any():
        raise ValueError(f"{int(np.isnan(losses).sum())} losses are NaN")
    return np.log(np.maximum(losses, LOSS_FLOOR))


def fit_loss_mixture(losses: np.ndarray, clip_percentiles: tuple[float, float] = (0.1, 99.9),
                     seed: int = 0, max_iter: int = 100) -> LossMixture | None:
    """Fit the mixture to clipped log-losses; None when the losses do not vary (nothing to fit)."""
    from sklearn.mixture import GaussianMixture

    x = log_losses(losses)
    finite = x[np.isfinite(x)]
    if finite.size < 2:
        return None
    lo, hi = np.percentile(finite, clip_percentiles)
    x = np.clip(x, lo, hi)
    if np.unique(x).size < 2:
        return None
    gmm = GaussianMixture(n_components=2, covariance_type="full", max_iter=max_iter,
                          random_state=seed, n_init=1, init_params="kmeans")
    with warnings.catch_warnings():
        # Not converging within max_iter is fine here: the weights are soft anyway.
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        gmm.fit(x.reshape(-1, 1))
    means = gmm.means_.ravel()
    variances = gmm.covariances_.ravel()
    weights = gmm.weights_.ravel()
    c, n = (0, 1) if means[0] <= means[1] else (1, 0)
    return LossMixture(clean_mean=float(means[c]), clean_var=float(variances[c]),
                       clean_weight=float(weights[c]), noisy_mean=float(means[n]),
                       noisy_var=float(variances[n]), noisy_weight=float(weights[n]),
                       lo=float(lo), hi=float(hi))


def clean_posterior(losses: np.ndarray, clip_percentiles: tuple[float, float] = (0.1, 99.9),
                    seed: int = 0, max_iter: int = 100) -> np.ndarray:
    """p_clean per utterance: posterior of the low-mean component of a GMM on log(loss).

    When all (clipped) losses are equal there is nothing to tell apart: every utterance gets
    p_clean = 1, so the weighted loss reduces to the plain mean.
    """
    losses = np.asarray(losses, dtype=np.float64)
    mixture = fit_loss_mixture(losses, clip_percentiles, seed=seed, max_iter=max_iter)
    if mixture is None:
        log_losses(losses)  # still reject NaN
        return np.ones(losses.shape, dtype=np.float64)
    return mixture.posterior(losses)


def clean_detection_rates(p_clean: np.ndarray, is_clean_true: np.ndarray) -> dict[str, float]:
    """How well `p_clean > 0.5` detects correctly labelled utterances (diagnostics only).

    tp_rate: fraction of truly clean detected as clean; fp_rate: fraction of truly noisy
    detected as clean; agreement: fraction where detection equals truth. NaN for an empty group.
    """
    detected = np.asarray(p_clean) > 0.5
    truth = np.asarray(is_clean_true, dtype=bool)
    if detected.shape != truth.shape:
        raise ValueError(f"shape mismatch: p_clean {detected.shape}, truth {truth.shape}")
    return {
        "tp_rate": _mean(detected[truth]),
        "fp_rate": _mean(detected[~truth]),
        "agreement": _mean(detected == truth),
    }


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")
