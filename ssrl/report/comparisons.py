"""Intervals for table rows and paired differences between them, on shared bootstrap replicates.

Every system is scored on the same trial lists, so one set of speaker resamples per list
(drawn exactly as the score step drew them: same units, replicates and seed) serves all of
them. A row's interval is that of its seed-mean; a difference A - B is computed replicate by
replicate on the same resamples (seed by seed where both have seeds, then averaged), so what
the two systems share cancels and the interval is that of the difference itself. An interval
that excludes 0 is what the tables call significant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ssrl.data.kaldi import read_trials
from ssrl.data.stores import FeatStore, WaveStore
from ssrl.evaluation.bootstrap import (
    SortedTrials,
    interval,
    replicate_metrics,
    trial_resamples,
)
from ssrl.evaluation.metrics import METRICS
from ssrl.report.results import Group, SystemResult


@dataclass
class Estimate:
    """A number with its interval (None where there are no replicates)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    sd: float | None = None  # across seeds, where there are several
    n_seeds: int = 1

    @property
    def excludes_zero(self) -> bool | None:
        if self.lo is None or self.hi is None:
            return None
        return self.lo > 0 or self.hi < 0


class Comparisons:
    """Replicate metrics of every system on every labelled test list (computed once each)."""

    def __init__(self, test_store: WaveStore | FeatStore, lists: list[str], bootstrap: dict,
                 threads: int = 1) -> None:
        self.replicates = int(bootstrap.get("replicates", 1000))
        self.confidence = float(bootstrap.get("confidence", 0.95))
        self.threads = threads
        spk = dict(zip(test_store.utt_ids, test_store.spk)) if test_store.spk else None
        self._lists: dict[str, tuple] = {}
        for name in lists:
            if name not in test_store.trials:
                continue
            t = read_trials(test_store.trials[name])
            if t.labels is None or not self.replicates:
                continue
            resamples, ue, ut = trial_resamples(t.enroll, t.test, spk, self.replicates,
                                                int(bootstrap.get("seed", 0)))[:3]
            self._lists[name] = (t, resamples, ue, ut)
        self._cache: dict[tuple[str, str], dict[str, np.ndarray] | None] = {}

    def system(self, result: SystemResult, list_name: str) -> dict[str, np.ndarray] | None:
        """EER/minDCF of each replicate for one system (None: no scores or no replicates)."""
        key = (result.name, list_name)
        if key not in self._cache:
            self._cache[key] = None
            scores = result.scores(list_name) if result.ok else None
            if list_name in self._lists and scores is not None:
                t, resamples, ue, ut = self._lists[list_name]
                if len(scores) == len(t):
                    self._cache[key] = replicate_metrics(
                        SortedTrials(scores, t.labels, ue, ut), resamples, self.threads)
        return self._cache[key]

    def _interval(self, values: list[np.ndarray]) -> tuple[float | None, float | None]:
        if not values or any(v is None for v in values):
            return None, None
        mean = np.mean(values, axis=0)
        mean[~np.isfinite(mean)] = np.nan  # a replicate whose ratio or rate is undefined
        if np.isnan(mean).all():
            return None, None
        return interval(mean, self.confidence)

    def summary(self, group: Group, list_name: str) -> dict[str, Estimate]:
        """Each metric of a row: the seed mean of the point estimates, its interval, the sd."""
        out = {}
        members = [m for m in group.members if m.ok]
        for metric in METRICS:
            points = [(m.list_metrics(list_name) or {}).get(metric) for m in members]
            if not points or any(p is None for p in points):
                out[metric] = Estimate(None)
                continue
            reps = [(self.system(m, list_name) or {}).get(metric) for m in members]
            lo, hi = self._interval(reps)
            out[metric] = Estimate(float(np.mean(points)), lo, hi,
                                   float(np.std(points, ddof=1)) if len(points) > 1 else None,
                                   len(points))
        return out

    def _pairs(self, a: Group, b: Group) -> list[tuple[SystemResult, SystemResult]]:
        """Members of a and b trained with the same seed (a seedless system pairs with all)."""
        pa, pb = a.by_seed(), b.by_seed()
        if None in pb:
            return [(m, pb[None]) for m in pa.values()]
        if None in pa:
            return [(pa[None], m) for m in pb.values()]
        return [(pa[s], pb[s]) for s in sorted(set(pa) & set(pb), key=str)]

    def paired(self, a: Group, b: Group, list_name: str) -> dict[str, Estimate]:
        """a - b for each metric, paired by seed, with the interval of the difference."""
        pairs = [(x, y) for x, y in self._pairs(a, b) if x.ok and y.ok]
        out = {}
        for metric in METRICS:
            diffs, reps = [], []
            for x, y in pairs:
                mx, my = x.list_metrics(list_name), y.list_metrics(list_name)
                if mx is None or my is None:
                    continue
                diffs.append(mx[metric] - my[metric])
                rx, ry = self.system(x, list_name), self.system(y, list_name)
                reps.append(None if rx is None or ry is None else rx[metric] - ry[metric])
            if not diffs:
                out[metric] = Estimate(None)
                continue
            lo, hi = self._interval(reps)
            out[metric] = Estimate(float(np.mean(diffs)), lo, hi, None, len(diffs))
        return out

    def gap_closed(self, x: Group, start: Group, top: Group, list_name: str,
                   metric: str = "eer") -> Estimate:
        """Share (%) of the start -> topline gap that x closes: (start - x) / (start - top),
        per seed, averaged; its interval from the same ratio on every replicate."""
        values, reps = [], []
        sx, ss, st = x.by_seed(), start.by_seed(), top.by_seed()
        for seed in sorted(set(sx) & set(ss) & set(st), key=str):
            trio = (sx[seed], ss[seed], st[seed])
            if not all(m.ok for m in trio):
                continue
            vx, vs, vt = (m.list_metrics(list_name)[metric] for m in trio)
            if vs == vt:
                continue
            values.append(100.0 * (vs - vx) / (vs - vt))
            r = [self.system(m, list_name) for m in trio]
            if any(v is None for v in r):
                reps.append(None)
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    reps.append(100.0 * (r[1][metric] - r[0][metric])
                                / (r[1][metric] - r[2][metric]))
        if not values:
            return Estimate(None)
        lo, hi = self._interval(reps)
        return Estimate(float(np.mean(values)), lo, hi, None, len(values))


def as_dict(e: Estimate) -> dict[str, Any]:
    return {"value": e.value, "ci_low": e.lo, "ci_high": e.hi, "sd": e.sd, "n_seeds": e.n_seeds}
