"""Benchmark: vectorised cosine scoring + EER/minDCF vs a naive per-trial Python loop.

Default size is VoxCeleb1-E-like: 145,160 utterances x 512-d, 579,818 trials.
Run from the repo root:  python bench/score.py [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny size, for tests")
    parser.add_argument("--utts", type=int, default=145_160)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--trials", type=int, default=579_818)
    parser.add_argument("--naive-trials", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.utts, args.dim, args.trials, args.naive_trials = 2_000, 64, 20_000, 1_000

    rng = np.random.default_rng(args.seed)
    n_spk = max(2, args.utts // 120)  # VoxCeleb1: ~116 utterances per speaker
    spk = rng.integers(0, n_spk, args.utts)
    centres = rng.normal(size=(n_spk, args.dim)).astype(np.float32)
    emb = centres[spk] + rng.normal(scale=3.0, size=(args.utts, args.dim)).astype(np.float32)
    utt_ids = [f"id{s:05d}/utt{i:06d}.wav" for i, s in enumerate(spk)]
    # Half target trials (as in VoxCeleb1-E): the test utterance comes from the same speaker.
    by_spk = np.argsort(spk, kind="stable")
    first = np.r_[0, np.cumsum(np.bincount(spk, minlength=n_spk))[:-1]]
    count = np.bincount(spk, minlength=n_spk)
    ie = rng.integers(0, args.utts, args.trials)
    same = by_spk[first[spk[ie]] + (rng.random(args.trials) * count[spk[ie]]).astype(np.int64)]
    it = np.where(rng.random(args.trials) < 0.5, same, rng.integers(0, args.utts, args.trials))
    enroll = [utt_ids[i] for i in ie]
    test = [utt_ids[i] for i in it]
    labels = spk[ie] == spk[it]
    print(f"size: {args.utts} utts x {args.dim}-d, {args.trials} trials "
          f"({int(labels.sum())} target)")

    t0 = time.perf_counter()
    scores = cosine_scores(utt_ids, emb, enroll, test)
    t1 = time.perf_counter()
    result = evaluate(scores, labels) if 0 < labels.sum() < len(labels) else {}
    t2 = time.perf_counter()
    ssrl_s = t2 - t0
    print(f"ssrl: score {t1 - t0:.3f} s + evaluate {t2 - t1:.3f} s = {ssrl_s:.3f} s, "
          f"{args.trials / ssrl_s:,.0f} trials/s, EER {result.get('eer', float('nan')):.2f}%")

    m = min(args.naive_trials, args.trials)
    t0 = time.perf_counter()
    ref = naive_scores(utt_ids, emb, enroll[:m], test[:m])
    naive_s = time.perf_counter() - t0
    print(f"naive: score {m} trials in {naive_s:.3f} s, {m / naive_s:,.0f} trials/s "
          f"(max |diff| {np.max(np.abs(np.asarray(ref) - scores[:m])):.1e})")

    ratio = (ssrl_s / args.trials) / (naive_s / m)
    print(f"ratio: ssrl/naive = {ratio:.4f} (time per trial; naive time excludes evaluate)")
    print(f"summary: {args.trials} trials scored and evaluated in {ssrl_s:.2f} s, "
          f"speed-up per trial vs the naive loop {1 / ratio:.0f}x")


if __name__ == "__main__":
    main()
