"""Benchmark: vectorised cosine scoring + EER/minDCF vs a naive per-trial Python loop, and
speaker-bootstrap confidence intervals vs a naive per-replicate loop.

Default size is VoxCeleb1-E-like: 145,160 utterances x 512-d from 1,251 speakers, 579,818
trials, 1,000 bootstrap replicates that resample speakers (`ssrl.evaluation.bootstrap`, as the
score step runs it), on 1 and 2 threads.
Run from the repo root:  python bench/score.py [--smoke] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import TrialSet, bootstrap_intervals, synthetic_trials  # noqa: E402

from ssrl.evaluation.bootstrap import (  # noqa: E402
    SortedTrials,
    replicate_metrics,
    trial_resamples,
)
from ssrl.evaluation.metrics import evaluate  # noqa: E402
from ssrl.evaluation.scoring import cosine_scores  # noqa: E402


def naive_scores(utt_ids: list[str], emb: np.ndarray, enroll: list[str],
                 test: list[str]) -> list[float]:
    """The reference: one dictionary look-up and one cosine per trial, in Python."""
    table = dict(zip(utt_ids, emb))
    out = []
    for e, t in zip(enroll, test):
        a, b = table[e], table[t]
        out.append(float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))))
    return out


def naive_replicates(t: TrialSet, scores: np.ndarray, replicates: int) -> list[float]:
    """The reference: per replicate, repeat each trial by its weight (a * b copies when its
    speakers are drawn a and b times) and evaluate the repeated list. Returns the EERs of the
    first `replicates` replicates (the same draws as `bootstrap_intervals`)."""
    resamples, ue, ut, _ = trial_resamples(t.enroll, t.test, t.utt2spk, replicates, seed=0)
    eers = []
    for counts in resamples.counts:
        w = counts[ue].astype(np.int64) * counts[ut]
        eers.append(evaluate(np.repeat(scores, w), np.repeat(t.labels, w))["eer"])
    return eers


def time_bootstrap(t: TrialSet, scores: np.ndarray, replicates: int, threads: list[int],
                   naive: int) -> dict[str, float]:
    """Wall and CPU seconds of `replicates` bootstrap replicates on each thread count (CPU time
    is the figure to trust on a shared machine), seconds of one naive replicate, and the
    largest EER difference between the two over the first `naive` replicates."""
    out = {}
    for n in threads:
        t0, c0 = time.perf_counter(), time.process_time()
        bootstrap_intervals(t, scores, replicates, n)
        out[f"threads_{n}"] = time.perf_counter() - t0
        out[f"cpu_{n}"] = time.process_time() - c0
    t0 = time.perf_counter()
    ref = naive_replicates(t, scores, naive)
    out["naive_per_replicate"] = (time.perf_counter() - t0) / naive
    resamples, ue, ut, _ = trial_resamples(t.enroll, t.test, t.utt2spk, naive, seed=0)
    ours = replicate_metrics(SortedTrials(scores, t.labels, ue, ut), resamples)["eer"]
    out["max_eer_diff"] = float(np.max(np.abs(np.asarray(ref) - ours)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny size, for tests")
    parser.add_argument("--utts", type=int, default=145_160)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--trials", type=int, default=579_818)
    parser.add_argument("--naive-trials", type=int, default=5_000)
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--threads", default="1,2", help="bootstrap thread counts to time")
    parser.add_argument("--naive-replicates", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.utts, args.dim, args.trials, args.naive_trials = 2_000, 64, 20_000, 1_000
        args.replicates, args.naive_replicates = 40, 2
    threads = [int(n) for n in args.threads.split(",")]

    t = synthetic_trials(args.utts, args.dim, args.trials, args.seed)
    print(f"size: {args.utts} utts x {args.dim}-d, {len(set(t.utt2spk.values()))} speakers, "
          f"{args.trials} trials ({int(t.labels.sum())} target)")

    t0 = time.perf_counter()
    scores = cosine_scores(t.utt_ids, t.emb, t.enroll, t.test)
    t1 = time.perf_counter()
    result = evaluate(scores, t.labels) if 0 < t.labels.sum() < len(t.labels) else {}
    t2 = time.perf_counter()
    ssrl_s = t2 - t0
    print(f"ssrl: score {t1 - t0:.3f} s + evaluate {t2 - t1:.3f} s = {ssrl_s:.3f} s, "
          f"{args.trials / ssrl_s:,.0f} trials/s, EER {result.get('eer', float('nan')):.2f}%")

    m = min(args.naive_trials, args.trials)
    t0 = time.perf_counter()
    ref = naive_scores(t.utt_ids, t.emb, t.enroll[:m], t.test[:m])
    naive_s = time.perf_counter() - t0
    print(f"naive: score {m} trials in {naive_s:.3f} s, {m / naive_s:,.0f} trials/s "
          f"(max |diff| {np.max(np.abs(np.asarray(ref) - scores[:m])):.1e})")

    boot = time_bootstrap(t, scores, args.replicates, threads, args.naive_replicates)
    for n in threads:
        print(f"bootstrap: {args.replicates} speaker replicates, {n} thread(s): "
              f"{boot[f'threads_{n}']:.2f} s ({boot[f'cpu_{n}']:.2f} CPU s)")
    print(f"naive bootstrap: {boot['naive_per_replicate']:.3f} s per replicate "
          f"(max |EER diff| {boot['max_eer_diff']:.1e} over {args.naive_replicates})")

    ratio = (ssrl_s / args.trials) / (naive_s / m)
    print(f"ratio: ssrl/naive = {ratio:.4f} (time per trial; naive time excludes evaluate)")
    boot_ratio = boot[f"threads_{threads[0]}"] / args.replicates / boot["naive_per_replicate"]
    print(f"ratio: bootstrap/naive = {boot_ratio:.4f} (time per replicate, {threads[0]} thread)")
    print(f"summary: {args.trials} trials scored and evaluated in {ssrl_s:.2f} s, "
          f"speed-up per trial vs the naive loop {1 / ratio:.0f}x; {args.replicates} bootstrap "
          f"replicates in {min(boot[f'threads_{n}'] for n in threads):.1f} s")


if __name__ == "__main__":
    main()
