"""Speaker-verification metrics: EER, minDCF and DET curves from trial scores.

Everything is computed from one sort of the scores (O(n log n)), so a VoxCeleb1-E list
(580k trials) is evaluated in well under a second.

Operating points. Sort the scores and put one threshold below all scores and one just above
each distinct score value; a trial is accepted when its score is above the threshold. At the
threshold above value v

    FNR(v) = #targets with score <= v / #targets          (misses)
    FPR(v) = #non-targets with score > v / #non-targets    (false alarms)

Equal scores therefore always move together: a tie is one threshold step, never split.
Going up through the thresholds FNR rises from 0 to 1 and FPR falls from 1 to 0.
"""

from __future__ import annotations

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    labels = labels.astype(bool)
    if not labels.any():
        raise ValueError("no target trials: EER and minDCF are undefined")
    if labels.all():
        raise ValueError("no non-target trials: EER and minDCF are undefined")
    return scores, labels


def _operating_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) at the threshold below all scores and above every distinct score value."""
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    is_target = labels[order]
    # Last index of each run of equal scores: the threshold steps over the whole run at once.
    run_end = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    targets_below = np.r_[0, np.cumsum(is_target)[run_end]]
    nontargets_below = np.r_[0, np.cumsum(~is_target)[run_end]]
    n_target = targets_below[-1]
    n_nontarget = nontargets_below[-1]
    fnr = targets_below / n_target
    fpr = (n_nontarget - nontargets_below) / n_nontarget
    return fpr, fnr


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, fnr) at every threshold, ordered by rising threshold (fpr falls, fnr rises).

    `labels` are 1/True for target trials. The first point is (1, 0), the last (0, 1).
    """
    return _operating_points(scores, labels)


def _eer_from_points(fpr: np.ndarray, fnr: np.ndarray) -> float:
    # First operating point where misses have caught up with false alarms; the first point
    # (fpr 1, fnr 0) is always before it, so `i - 1` exists.
    i = int(np.argmax(fnr >= fpr))
    gap_before = fpr[i - 1] - fnr[i - 1]  # > 0
    gap_after = fnr[i] - fpr[i]  # >= 0
    alpha = gap_before / (gap_before + gap_after)
    return float(fnr[i - 1] + alpha * (fnr[i] - fnr[i - 1]))


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate as a fraction in [0, 1].

    Definition (NIST-style interpolation): take the operating points (FPR, FNR) described in
    the module docstring, join consecutive points by straight lines, and return the FNR (= FPR)
    where that polyline crosses the line FNR = FPR. Between the last point with FNR < FPR and
    the first with FNR >= FPR the crossing is found by linear interpolation, so the result
    does not depend on how finely the thresholds sample the scores. Perfectly separated scores
    give 0; scores that are all equal give 0.5. Raises ValueError without targets or
    non-targets.
    """
    return _eer_from_points(*_operating_points(scores, labels))


def _min_dcf_from_points(fpr: np.ndarray, fnr: np.ndarray, p_target: float,
                         c_miss: float, c_fa: float) -> float:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    dcf = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    # Normalised by the cost of the best trivial system (accept all or reject all).
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float,
            c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over all thresholds.

    DCF(t) = c_miss * p_target * FNR(t) + c_fa * (1 - p_target) * FPR(t), minimised over the
    operating points and divided by min(c_miss * p_target, c_fa * (1 - p_target)), so that a
    system that always accepts or always rejects scores at most 1.
    """
    fpr, fnr = _operating_points(scores, labels)
    return _min_dcf_from_points(fpr, fnr, p_target, c_miss, c_fa)


#: The metrics reported for every trial list, in table order.
METRICS = ("eer", "mindcf_0.01", "mindcf_0.05")


def metric_keys(split: str, list_name: str, all_lists: list[str]) -> dict[str, str]:
    """The one naming of a metric everywhere (history, MLflow, tables): `<split>/<metric>` when
    the split has one trial list, `<split>/<list>/<metric>` when it has several."""
    if len(all_lists) == 1:
        return {m: f"{split}/{m}" for m in METRICS}
    return {m: f"{split}/{list_name}/{m}" for m in METRICS}


def evaluate(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """The standard report: EER in percent, minDCF at p_target 0.01 and 0.05, trial counts."""
    fpr, fnr = _operating_points(scores, labels)
    labels = np.asarray(labels).astype(bool).ravel()
    return {
        "eer": 100.0 * _eer_from_points(fpr, fnr),
        "mindcf_0.01": _min_dcf_from_points(fpr, fnr, 0.01, 1.0, 1.0),
        "mindcf_0.05": _min_dcf_from_points(fpr, fnr, 0.05, 1.0, 1.0),
        "n_trials": int(labels.size),
        "n_target": int(labels.sum()),
    }
