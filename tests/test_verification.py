"""EER / minDCF / DET against hand-computed values and independent computations."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from ssrl.evaluation.metrics import det_curve, eer, evaluate, min_dcf
from ssrl.report.plots import plot_det

# 3 targets / 2 non-targets, sorted: .2T .4N .6T .7N .8T. Operating points (fpr, fnr):
# (1,0) (1,1/3) (.5,1/3) (.5,2/3) (0,2/3) (0,1).
SMALL_SCORES = [0.8, 0.4, 0.6, 0.2, 0.7]
SMALL_LABELS = [1, 0, 1, 1, 0]


def test_det_curve_small_example():
    fpr, fnr = det_curve(SMALL_SCORES, SMALL_LABELS)
    np.testing.assert_allclose(fpr, [1, 1, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(fnr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])


def test_eer_small_example_interpolates_between_points():
    # Crossing between (.5, 1/3) and (.5, 2/3): both gaps are 1/6, so half-way: fnr = 1/2.
    assert eer(SMALL_SCORES, SMALL_LABELS) == pytest.approx(0.5, abs=1e-12)


def test_eer_one_overlap_lands_on_a_point():
    # Targets .45 .6 .7 .9, non-targets .1 .2 .3 .5: after .45 the point is (.25, .25).
    scores = [0.45, 0.6, 0.7, 0.9, 0.1, 0.2, 0.3, 0.5]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert eer(scores, labels) == pytest.approx(0.25, abs=1e-12)


def test_eer_tie_between_target_and_nontarget_is_one_step():
    # The tied pair at .5 moves (.25, 0) straight to (0, .25): the crossing is at .125.
    scores = [0.5, 0.6, 0.7, 0.9, 0.1, 0.2, 0.3, 0.5]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    fpr, fnr = det_curve(scores, labels)
    np.testing.assert_allclose(fpr, [1, 0.75, 0.5, 0.25, 0, 0, 0, 0])
    np.testing.assert_allclose(fnr, [0, 0, 0, 0, 0.25, 0.5, 0.75, 1])
    assert eer(scores, labels) == pytest.approx(0.125, abs=1e-12)
    # Order of the tied trials does not matter.
    assert eer(scores[::-1], labels[::-1]) == pytest.approx(0.125, abs=1e-12)


def test_perfect_separation_and_all_ties():
    assert eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0
    assert min_dcf([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], 0.01) == 0.0
    assert eer([0.3] * 6, [1, 0, 1, 0, 0, 0]) == pytest.approx(0.5, abs=1e-12)
    # Reversed scores: every target below every non-target.
    assert eer([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == pytest.approx(1.0, abs=1e-12)


def test_min_dcf_small_example_by_hand():
    # p=.5: (fnr+fpr)/2 is smallest at (0, 2/3) -> 1/3, normalised by .5 -> 2/3.
    assert min_dcf(SMALL_SCORES, SMALL_LABELS, 0.5) == pytest.approx(2 / 3)
    # p=.01: .01 fnr + .99 fpr smallest at (0, 2/3) -> 2/300, normalised by .01 -> 2/3.
    assert min_dcf(SMALL_SCORES, SMALL_LABELS, 0.01) == pytest.approx(2 / 3)
    # c_fa=.1, p=.5: .5 fnr + .05 fpr smallest at (1, 0) -> .05 = the normaliser -> 1.
    assert min_dcf(SMALL_SCORES, SMALL_LABELS, 0.5, c_fa=0.1) == pytest.approx(1.0)


def test_errors_without_targets_or_nontargets():
    with pytest.raises(ValueError, match="no target"):
        eer([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no non-target"):
        min_dcf([0.1, 0.2], [1, 1], 0.01)
    with pytest.raises(ValueError, match="2 scores but 3 labels"):
        eer([0.1, 0.2], [0, 1, 1])


def _random_trials(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * labels
    return np.round(scores, 2), labels  # rounding makes many ties


def _sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Independent EER: sklearn's ROC, crossing of fnr = 1 - tpr with fpr, interpolated."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr  # thresholds fall along the arrays: fpr rises, fnr falls
    i = int(np.argmax(fpr >= fnr))
    d0 = fnr[i - 1] - fpr[i - 1]
    d1 = fpr[i] - fnr[i]
    return fpr[i - 1] + d0 / (d0 + d1) * (fpr[i] - fpr[i - 1])


def _brute_min_dcf(scores: np.ndarray, labels: np.ndarray, p: float) -> float:
    best = np.inf
    for t in np.r_[-np.inf, np.unique(scores)]:
        fnr = np.mean(scores[labels] <= t)
        fpr = np.mean(scores[~labels] > t)
        best = min(best, p * fnr + (1 - p) * fpr)
    return best / min(p, 1 - p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_matches_sklearn_roc(seed):
    scores, labels = _random_trials(seed)
    assert eer(scores, labels) == pytest.approx(_sklearn_eer(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_min_dcf_matches_brute_force(seed):
    scores, labels = _random_trials(seed, n=800)
    for p in (0.01, 0.05, 0.3):
        assert min_dcf(scores, labels, p) == pytest.approx(_brute_min_dcf(scores, labels, p),
                                                           abs=1e-12)


def test_evaluate_report():
    scores, labels = _random_trials(5)
    out = evaluate(scores, labels)
    assert out["eer"] == pytest.approx(100 * _sklearn_eer(scores, labels), abs=1e-10)
    assert out["mindcf_0.01"] == pytest.approx(_brute_min_dcf(scores, labels, 0.01), abs=1e-12)
    assert out["mindcf_0.05"] == pytest.approx(_brute_min_dcf(scores, labels, 0.05), abs=1e-12)
    assert out["n_trials"] == 3000
    assert out["n_target"] == int(labels.sum())


def test_plot_det_writes_png_and_no_temp_files(tmp_path):
    path = tmp_path / "plots" / "det.png"
    plot_det({"a": _random_trials(0), "b": _random_trials(1)}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["det.png"]
