"""Speaker-bootstrap intervals: every replicate's EER/minDCF equals the metric of the trial list
that replicate stands for, built by hand (trials repeated by their weight); paired differences
are taken replicate by replicate on the same resamples."""

from __future__ import annotations

import numpy as np
import pytest

from ssrl.evaluation.bootstrap import (
    SortedTrials,
    draw_resamples,
    interval,
    replicate_metrics,
    trial_resamples,
)
from ssrl.evaluation.metrics import evaluate


def _trials(seed: int, n_spk: int = 10, n: int = 300, decimals: int = 1):
    rng = np.random.default_rng(seed)
    e = rng.integers(0, n_spk, n)
    target = rng.random(n) < 0.3
    t = np.where(target, e, (e + rng.integers(1, n_spk, n)) % n_spk)
    scores = np.round(rng.normal(size=n) + 1.5 * target, decimals)  # ties on purpose
    names = [f"spk{i}" for i in range(n_spk)]
    return [names[i] for i in e], [names[i] for i in t], scores, target


def _brute(scores, labels, counts, ue, ut) -> dict[str, float] | None:
    """The replicate's trial list, written out: a trial appears a x b times."""
    w = counts[ue] * counts[ut]
    s, lab = np.repeat(scores, w), np.repeat(labels, w)
    if lab.all() or not lab.any():
        return None
    return evaluate(s, lab)


@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_every_replicate_equals_its_trial_list_written_out(decimals):
    spk_e, spk_t, scores, labels = _trials(0, decimals=decimals)
    resamples, ue, ut, unit = trial_resamples(spk_e, spk_t, None, 40, seed=3)
    assert unit == "utterance"  # these ids are the units themselves here
    reps = replicate_metrics(SortedTrials(scores, labels, ue, ut), resamples, threads=2)
    checked = 0
    for r in range(40):
        want = _brute(scores, labels, resamples.counts[r], ue, ut)
        if want is None:
            assert np.isnan(reps["eer"][r])
            continue
        checked += 1
        assert reps["eer"][r] == pytest.approx(want["eer"], abs=1e-9)
        for key in ("mindcf_0.01", "mindcf_0.05"):
            assert reps[key][r] == pytest.approx(want[key], abs=2e-5)
    assert checked > 30


def test_resamples_are_speakers_and_reproducible():
    units = ["a", "b", "c", "d"]
    one, two = draw_resamples(units * 3, 200, seed=1), draw_resamples(list(reversed(units)),
                                                                        200, seed=1)
    assert one.units.tolist() == units and np.array_equal(one.counts, two.counts)
    assert (one.counts.sum(axis=1) == 4).all()  # U draws of U units per replicate
    assert not np.array_equal(one.counts, draw_resamples(units, 200, seed=2).counts)
    # a speaker-level map: the trials of one speaker move together
    enroll, test = ["u1", "u2"], ["u3", "u4"]
    spk = {"u1": "a", "u2": "a", "u3": "b", "u4": "c"}
    resamples, ue, ut, unit = trial_resamples(enroll, test, spk, 10, seed=0)
    assert unit == "speaker" and resamples.units.tolist() == ["a", "b", "c"]
    assert ue.tolist() == [0, 0] and ut.tolist() == [1, 2]


def test_paired_difference_is_taken_replicate_by_replicate():
    spk_e, spk_t, scores_a, labels = _trials(1)
    rng = np.random.default_rng(9)
    scores_b = scores_a + rng.normal(0, 2.0, len(scores_a))  # a worse system, same trials
    resamples, ue, ut, _ = trial_resamples(spk_e, spk_t, None, 60, seed=0)
    a = replicate_metrics(SortedTrials(scores_a, labels, ue, ut), resamples)
    b = replicate_metrics(SortedTrials(scores_b, labels, ue, ut), resamples)
    diffs = []
    for r in range(60):
        wa = _brute(scores_a, labels, resamples.counts[r], ue, ut)
        wb = _brute(scores_b, labels, resamples.counts[r], ue, ut)
        diffs.append(np.nan if wa is None else wa["eer"] - wb["eer"])
    lo, hi = interval(np.array(diffs))
    assert interval(a["eer"] - b["eer"]) == pytest.approx((lo, hi), abs=1e-9)
    point = evaluate(scores_a, labels)["eer"] - evaluate(scores_b, labels)["eer"]
    assert hi < 0 and lo < point < hi  # a is better, and the interval says so


def test_interval_is_percentile_and_ignores_undefined_replicates():
    values = np.r_[np.arange(1.0, 101.0), np.nan]
    assert interval(values, 0.9) == pytest.approx((5.95, 95.05))
