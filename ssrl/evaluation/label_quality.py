"""Pseudo-label quality against the true speakers (reporting only: NMI, purity, inverse purity,
Hungarian accuracy), for k-means labels and for SSRL's labels at every epoch."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _contingency(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Dense counts [n_classes, n_clusters] (classes / clusters that occur, sorted)."""
    true_labels = np.asarray(true_labels).ravel()
    pred_labels = np.asarray(pred_labels).ravel()
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"{true_labels.size} true labels but {pred_labels.size} predicted")
    if true_labels.size == 0:
        raise ValueError("no labels")
    _, t = np.unique(true_labels, return_inverse=True)
    _, p = np.unique(pred_labels, return_inverse=True)
    n_t, n_p = t.max() + 1, p.max() + 1
    return np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p)


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def cluster_quality(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float | int]:
    """Pseudo-label quality against the true speakers (str or int labels).

    nmi: mutual information / arithmetic mean of the two entropies (sklearn's default;
         1.0 when both labelings have a single class).
    purity: fraction of points in their cluster's majority class.
    inverse_purity: fraction of points in their class's majority cluster.
    hungarian_acc: best one-to-one class<->cluster matching (linear_sum_assignment on the
         contingency matrix); points in unmatched clusters or classes count as errors.
    n_clusters: number of non-empty predicted clusters.
    """
    table = _contingency(true_labels, pred_labels)
    n = int(table.sum())
    class_sizes, cluster_sizes = table.sum(axis=1), table.sum(axis=0)
    h_true, h_pred = _entropy(class_sizes, n), _entropy(cluster_sizes, n)
    if table.shape == (1, 1):
        nmi = 1.0
    else:
        i, j = np.nonzero(table)
        nij = table[i, j].astype(np.float64)
        mi = float(np.sum(nij / n * np.log(nij * n / (class_sizes[i] * cluster_sizes[j]))))
        denom = (h_true + h_pred) / 2
        nmi = max(mi, 0.0) / denom if denom > 0 else 0.0
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {
        "nmi": float(min(nmi, 1.0)),
        "purity": float(table.max(axis=0).sum() / n),
        "inverse_purity": float(table.max(axis=1).sum() / n),
        "hungarian_acc": float(table[rows, cols].sum() / n),
        "n_clusters": int(table.shape[1]),
    }
