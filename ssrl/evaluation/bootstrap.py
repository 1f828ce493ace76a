"""Confidence intervals of EER and minDCF that respect how trials share speakers.

Trials are not independent: every speaker appears in many of them, so resampling trials one by
one gives intervals that are far too narrow. We resample the *speakers* of the evaluation set
with replacement (the "subsets bootstrap" of Bolle, Ratha & Pankanti, 2004; the same scheme as
Ferrer & Riera's confidence-interval toolkit for speaker verification): a replicate draws
U speakers out of U; a trial whose enrolment speaker was drawn a times and whose test speaker
was drawn b times enters the replicate with weight a * b (every pair of drawn copies makes a
trial), so a target trial of a speaker drawn twice counts 4 times. Where speakers are unknown,
utterances are the units.

Everything is vectorised: scores are sorted once; each block of replicates is a weight matrix
`[replicates, trials]` whose cumulative sums along the sorted order give every replicate's
miss and false-alarm rates at every threshold, from which EER (the NIST interpolation of
`metrics.eer`) and minDCF follow exactly as for the unweighted list. Paired comparisons use the
SAME replicates for both systems, so shared speaker effects cancel in the difference.

R. M. Bolle, N. K. Ratha, S. Pankanti, "Error analysis of pattern recognition systems -- the
subsets bootstrap", Computer Vision and Image Understanding 93(1), 2004.
L. Ferrer, P. Riera, "Confidence intervals for evaluation in machine learning",
github.com/luferrer/ConfidenceIntervals, 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssrl.evaluation.metrics import METRICS

#: Replicates per block: bounds memory at ~block x trials x 12 bytes.
BLOCK = 16
P_TARGETS = {"mindcf_0.01": 0.01, "mindcf_0.05": 0.05}


@dataclass(frozen=True)
class Resamples:
    """`counts[r, u]`: how often unit u (a speaker) is drawn in replicate r."""

    units: np.ndarray  # str [U], sorted
    counts: np.ndarray  # int32 [R, U]

    @property
    def replicates(self) -> int:
        return len(self.counts)


def draw_resamples(units: list[str] | np.ndarray, replicates: int, seed: int) -> Resamples:
    """Draw `replicates` resamples of the distinct `units` (a function of the unit set and the
    seed only, so every job that draws them gets the same replicates)."""
    names = np.unique(np.asarray(units, dtype=str))
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(names), 0x5EED]))
    counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)),
                             size=replicates).astype(np.int32)
    return Resamples(names, counts)


def trial_units(resamples: Resamples, enroll_units: list[str],
                test_units: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Column of each trial's enrolment and test unit in `resamples.counts`."""
    ue = np.searchsorted(resamples.units, np.asarray(enroll_units, dtype=str))
    ut = np.searchsorted(resamples.units, np.asarray(test_units, dtype=str))
    for idx, given in ((ue, enroll_units), (ut, test_units)):
        if len(idx) and (idx.max() >= len(resamples.units)
                         or not np.array_equal(resamples.units[idx], np.asarray(given, str))):
            raise ValueError("a trial names a unit the resamples were not drawn over")
    return ue, ut


class SortedTrials:
    """One system's scores sorted once, with the boundaries of runs of equal scores."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray, ue: np.ndarray, ut: np.ndarray):
        order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
        s = np.asarray(scores, dtype=np.float64)[order]
        self.is_target = np.asarray(labels).astype(np.int32)[order]
        self.ue, self.ut = ue[order], ut[order]
        # last index of each run of equal scores: a tie is one threshold step
        run_end = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
        self.run_end = None if len(run_end) == len(s) else run_end


def _block_metrics(t: SortedTrials, counts: np.ndarray) -> dict[str, np.ndarray]:
    """EER (%) and minDCF of a block of replicates, from weighted cumulative counts.

    After the k-th threshold step FNR_k = T_k / n_T and FPR_k = (n_N - N_k) / n_N, where T_k
    and N_k are the target and non-target weight at or below it; before the first step
    (FNR, FPR) = (0, 1). The comparisons are done on integers, so the crossing found is the
    exact one of `metrics.eer`."""
    big = len(t.ue) * int(counts.max(initial=0)) ** 2 >= 2**31
    acc = np.int64 if big else np.int32
    w = np.take(counts, t.ue, axis=1).astype(acc, copy=False)
    w *= np.take(counts, t.ut, axis=1)
    cum_n = np.cumsum(w, axis=1, dtype=acc)
    w *= t.is_target
    cum_t = np.cumsum(w, axis=1, dtype=acc)
    del w
    if t.run_end is not None:
        cum_n, cum_t = cum_n[:, t.run_end], cum_t[:, t.run_end]
    cum_n -= cum_t  # all -> non-target weight at or below each step
    n_t = cum_t[:, -1].astype(np.int64)
    n_n = cum_n[:, -1].astype(np.int64)
    rows = np.arange(len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        # points with FNR < FPR: the first one, and each step k with T_k n_N < (n_N - N_k) n_T;
        # the rates are monotone, so their count is the index of the first FNR >= FPR point
        below = 1 + (cum_t * n_n[:, None] < (n_n[:, None] - cum_n) * n_t[:, None]).sum(axis=1)
        i = np.clip(below, 1, cum_t.shape[1])

        def point(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(FPR, FNR) at point k (0 = before every threshold)."""
            j = np.maximum(k - 1, 0)
            fnr = np.where(k == 0, 0.0, cum_t[rows, j] / n_t)
            fpr = np.where(k == 0, 1.0, (n_n - cum_n[rows, j]) / n_n)
            return fpr, fnr

        fpr0, fnr0 = point(i - 1)
        fpr1, fnr1 = point(i)
        before, after = fpr0 - fnr0, fnr1 - fpr1
        out = {"eer": 100.0 * (fnr0 + before / (before + after) * (fnr1 - fnr0))}
        for name, p in P_TARGETS.items():
            # DCF_k = (1 - p) + [p / n_T] T_k - [(1 - p) / n_N] N_k; the first point is 1 - p
            a = (p / n_t).astype(np.float32)[:, None]
            b = ((1.0 - p) / n_n).astype(np.float32)[:, None]
            low = np.minimum((a * cum_t - b * cum_n).min(axis=1), 0.0)
            out[name] = ((1.0 - p) + low.astype(np.float64)) / min(p, 1.0 - p)
    bad = (n_t == 0) | (n_n == 0)
    for values in out.values():
        values[bad] = np.nan
    return out


def replicate_metrics(sorted_trials: SortedTrials, resamples: Resamples,
                      threads: int = 1) -> dict[str, np.ndarray]:
    """EER (%) and minDCF of every replicate: arrays `[R]` (NaN where a replicate happens to
    hold no target or no non-target trial). Blocks of replicates run on `threads` threads
    (numpy releases the GIL in the array work)."""
    starts = range(0, resamples.replicates, BLOCK)

    def block(start: int) -> dict[str, np.ndarray]:
        return _block_metrics(sorted_trials, resamples.counts[start:start + BLOCK])

    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(block, starts))
    else:
        parts = [block(start) for start in starts]
    return {m: np.concatenate([p[m] for p in parts]) for m in METRICS}


def interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaN replicates left out)."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def trial_resamples(enroll: list[str], test: list[str], utt2unit: dict[str, str] | None,
                    replicates: int, seed: int) -> tuple[Resamples, np.ndarray, np.ndarray, str]:
    """Resamples of a trial list's speakers (`utt2unit`; utterances when None) and each
    trial's unit columns; the last item names the unit ("speaker" or "utterance")."""
    unit = "speaker" if utt2unit is not None else "utterance"
    def to_unit(utts: list[str]) -> list[str]:
        return [utt2unit[u] for u in utts] if utt2unit is not None else list(utts)

    ue_names, ut_names = to_unit(enroll), to_unit(test)
    resamples = draw_resamples(ue_names + ut_names, replicates, seed)
    ue, ut = trial_units(resamples, ue_names, ut_names)
    return resamples, ue, ut, unit
