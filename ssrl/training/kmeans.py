"""k-means (SSRL-NOTES, "Stage 1.5"): the first pseudo labels, and the iterative baseline's.

k-means runs Lloyd iterations: the nearest-centroid search (the O(n k d) part) goes to faiss
(its GPU index when available; torch CUDA when faiss is CPU-only but a GPU is present), the
centroid update is a sparse membership-matrix product in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse


@dataclass
class KMeansResult:
    centroids: np.ndarray  # float32 [k, d]
    labels: np.ndarray  # int64 [n]: the nearest centroid of each point
    n_iter: int
    objective: list[float] = field(default_factory=list)  # mean squared distance per iteration
    converged: bool = False


def faiss_gpu_available() -> bool:
    """Whether the installed faiss has GPU support and sees a GPU (faiss-cpu wheels: False)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def gpu_available() -> bool:
    """A GPU for the assignment: faiss's GPU index, or else torch CUDA (faiss-cpu wheels)."""
    return faiss_gpu_available() or torch.cuda.is_available()


def _want_gpu(use_gpu: str | bool) -> bool:
    if use_gpu == "auto":
        return gpu_available()
    if use_gpu is True:
        if not gpu_available():
            raise RuntimeError("use_gpu=True but neither faiss nor torch sees a GPU")
        return True
    if use_gpu is False:
        return False
    raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")


class _NearestCentroid:
    """Exact L2 nearest-centroid search: faiss IndexFlatL2 on CPU or GPU.

    When a GPU is wanted but the installed faiss is CPU-only, a chunked torch CUDA matmul
    (float32, TF32 off) does the same search.
    """

    def __init__(self, d: int, gpu: bool):
        import faiss

        self._torch_cuda = gpu and not faiss_gpu_available()
        if self._torch_cuda:
            return
        if gpu:
            self._res = faiss.StandardGpuResources()
            self._index = faiss.GpuIndexFlatL2(self._res, d)
        else:
            self._index = faiss.IndexFlatL2(d)

    def __call__(self, x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(squared distance, label) of every row of x to its nearest centroid."""
        if self._torch_cuda:
            return _torch_nearest(x, centroids)
        self._index.reset()
        self._index.add(centroids)
        dist, idx = self._index.search(x, 1)
        return np.maximum(dist[:, 0], 0.0), idx[:, 0].astype(np.int64)


def _torch_nearest(x: np.ndarray, centroids: np.ndarray, device: str = "cuda",
                   chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The faiss search done with a chunked torch matmul (tests run it on CPU)."""
    dev = torch.device(device)
    c = torch.from_numpy(centroids).to(dev)
    c_sq = (c * c).sum(1)
    dist = np.empty(len(x), dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int64)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for s in range(0, len(x), chunk):
            xb = torch.from_numpy(x[s: s + chunk]).to(dev, non_blocking=True)
            # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c, minimised over c without the ||x||^2.
            best, idx = torch.addmm(c_sq, xb, c.T, alpha=-2.0).min(dim=1)
            dist[s: s + len(xb)] = (best + (xb * xb).sum(1)).clamp_min(0).cpu().numpy()
            labels[s: s + len(xb)] = idx.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return dist, labels


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray, use_gpu: str | bool = "auto") -> np.ndarray:
    """Index (int64 [n]) of the nearest centroid (squared L2) of every row of x."""
    x, centroids = _as_f32(x), _as_f32(centroids)
    return _NearestCentroid(x.shape[1], _want_gpu(use_gpu))(x, centroids)[1]


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D^2 sampling). O(n k d): meant for small problems and tests."""
    chosen = [int(rng.integers(len(x)))]
    d2 = np.sum((x - x[chosen[0]]) ** 2, axis=1, dtype=np.float64)
    for _ in range(1, k):
        total = d2.sum()
        # All points already coincide with a centre: any further choice is a duplicate.
        i = int(rng.choice(len(x), p=d2 / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(i)
        d2 = np.minimum(d2, np.sum((x - x[i]) ** 2, axis=1, dtype=np.float64))
    return x[chosen].copy()


def _reseed_empty(labels: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
    """Give every empty cluster the point farthest from its centroid (moves that point).

    Points are taken in order of falling distance, skipping points whose cluster would become
    empty by losing them. Returns a new label array; the caller recomputes the means.
    """
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return labels
    labels = labels.copy()
    candidates = iter(np.argsort(-dist, kind="stable"))
    for j in empty:
        for p in candidates:
            if counts[labels[p]] > 1:
                counts[labels[p]] -= 1
                labels[p] = j
                counts[j] = 1
                break
    return labels


def _means(x: np.ndarray, labels: np.ndarray, k: int, old: np.ndarray) -> np.ndarray:
    """Mean of each cluster's points (a sparse one-hot product); empty clusters keep `old`."""
    n = len(labels)
    membership = sparse.csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))),
                                   shape=(k, n))
    counts = np.bincount(labels, minlength=k)
    sums = np.asarray(membership @ x, dtype=np.float64)
    centroids = old.copy()
    nonempty = counts > 0
    centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    return centroids


def kmeans(x: np.ndarray, k: int, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
           use_gpu: str | bool = "auto", init: str = "random") -> KMeansResult:
    """Lloyd's k-means on the rows of x (squared L2), seeded and deterministic.

    init: "random" (default, as faiss does: k distinct points drawn with `seed`; O(k) and the
    only practical choice for 1M points x K=8000) or "k-means++" (D^2 sampling, O(n k d) in
    numpy: better starts for small problems).

    Each iteration assigns every point to its nearest centroid with faiss (the objective is
    the mean squared distance of that assignment), then moves each centroid to the mean of its
    points. A cluster left empty is re-seeded with the point farthest from its own centroid
    (taken from a cluster with more than one point), so k clusters stay in use. Stops after
    the assignment step when no label changed, or when the objective improved by less than
    `tol` relative to the previous iteration (`converged` = True), or after `max_iter`
    assignments. The returned labels are always the nearest centroids of the returned
    centroids; `converged` is never True while a cluster is empty.
    """
    x = _as_f32(x)
    if x.ndim != 2:
        raise ValueError(f"x must be [n, d], got shape {x.shape}")
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (number of points), got {k}")
    rng = np.random.default_rng(seed)
    if init == "random":
        centroids = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
    elif init == "k-means++":
        centroids = _kmeanspp(x, k, rng)
    else:
        raise ValueError(f"init must be 'random' or 'k-means++', got {init!r}")

    nearest = _NearestCentroid(x.shape[1], _want_gpu(use_gpu))
    objective: list[float] = []
    labels = np.full(n, -1, dtype=np.int64)
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        dist, new_labels = nearest(x, centroids)
        objective.append(float(dist.mean(dtype=np.float64)))
        no_change = np.array_equal(new_labels, labels)
        labels = new_labels
        all_used = np.bincount(labels, minlength=k).min() > 0
        small_gain = (len(objective) > 1
                      and objective[-2] - objective[-1] < tol * max(objective[-2], 1e-30))
        if all_used and (no_change or small_gain):
            converged = True
            break
        if n_iter == max_iter:
            break
        centroids = _means(x, _reseed_empty(labels, dist, k), k, centroids)
    return KMeansResult(centroids=centroids, labels=labels, n_iter=n_iter,
                        objective=objective, converged=converged)
