"""Benchmark: ssrl.cluster.kmeans (faiss assignment) vs scikit-learn KMeans (Lloyd).

Synthetic data: n points around k true centres. Both run random init, one start, the same
k and max_iter; scikit-learn runs on a subsample (--sk-n) when n is large, so the comparison
is per point and iteration. Default size is the paper's (1,092,009 x 512 -> 8000), which needs
a GPU or a long wait; use e.g. --n 100000 --d 128 --k 1000 on a small CPU. With a GPU,
--skip-cpu leaves out this project's CPU run (minutes at full size), and the GPU labels are
checked against a CPU assignment to the same centroids.
Run from the repo root:  python bench/cluster.py [--smoke] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import synthetic_embeddings  # noqa: E402

from ssrl.evaluation.label_quality import cluster_quality  # noqa: E402
from ssrl.training.kmeans import assign, gpu_available, kmeans  # noqa: E402


def run_ssrl(x, y, k, max_iter, seed, use_gpu) -> tuple[float, int]:
    t0 = time.perf_counter()
    res = kmeans(x, k, max_iter=max_iter, seed=seed, use_gpu=use_gpu)
    sec = time.perf_counter() - t0
    where = "GPU" if use_gpu else "CPU"
    nmi = cluster_quality(y, res.labels)["nmi"]
    print(f"ssrl {where}: n={len(x)} {sec:.2f} s to stop ({res.n_iter} iterations, "
          f"converged={res.converged}), {sec / res.n_iter:.3f} s/iteration, NMI {nmi:.4f}")
    if use_gpu:  # the GPU search must give the labels an exact CPU search gives
        m = min(len(x), 50_000)
        same = np.mean(assign(x[:m], res.centroids, use_gpu=False) == res.labels[:m])
        print(f"GPU/CPU assignment agreement on {m} points: {same:.5f}")
    return sec, res.n_iter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny size, for tests")
    parser.add_argument("--n", type=int, default=1_092_009)
    parser.add_argument("--k", type=int, default=8000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--sk-n", type=int, default=100_000, help="scikit-learn subsample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cpu", action="store_true",
                        help="with a GPU: leave out this project's CPU run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.k, args.d, args.max_iter, args.sk_n = 5_000, 50, 16, 10, 5_000

    from sklearn.cluster import KMeans

    x, y = synthetic_embeddings(args.n, args.k, args.d, args.seed)
    print(f"size: {args.n} x {args.d} -> k={args.k}, max_iter={args.max_iter}")
    gpu = gpu_available()
    cpu = not (args.skip_cpu and gpu)
    if cpu:
        cpu_s, cpu_it = run_ssrl(x, y, args.k, args.max_iter, args.seed, use_gpu=False)
    if gpu:
        gpu_s, gpu_it = run_ssrl(x, y, args.k, args.max_iter, args.seed, use_gpu=True)

    m = min(args.sk_n, args.n)
    xs, ys = x[:m], y[:m]
    t0 = time.perf_counter()
    sk = KMeans(n_clusters=args.k, init="random", n_init=1, max_iter=args.max_iter,
                algorithm="lloyd", random_state=args.seed).fit(xs)
    sk_s = time.perf_counter() - t0
    sk_nmi = cluster_quality(ys, sk.labels_)["nmi"]
    print(f"sklearn CPU: n={m} {sk_s:.2f} s to stop ({sk.n_iter_} iterations), "
          f"{sk_s / sk.n_iter_:.3f} s/iteration, NMI {sk_nmi:.4f}")

    # Per point and iteration, so that a subsampled scikit-learn run compares fairly.
    sk_unit = sk_s / sk.n_iter_ / m
    summary = "summary: speed-up per iteration vs scikit-learn:"
    if cpu:
        ratio = (cpu_s / cpu_it / args.n) / sk_unit
        print(f"ratio: ssrl/sklearn = {ratio:.3f} (CPU, time per point-iteration)")
        summary += f" ssrl CPU {1 / ratio:.1f}x"
    if gpu:
        gpu_ratio = (gpu_s / gpu_it / args.n) / sk_unit
        print(f"ratio: ssrl_gpu/sklearn = {gpu_ratio:.4f} (GPU, time per point-iteration)")
        summary += f" ssrl GPU {1 / gpu_ratio:.0f}x"
    print(summary)


if __name__ == "__main__":
    main()
