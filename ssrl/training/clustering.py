"""k-means pseudo labels, clustering-quality metrics and Sinkhorn balancing.

k-means runs Lloyd iterations: the nearest-centroid search (the O(n k d) part) goes to faiss
(its GPU index when available; torch CUDA when faiss is CPU-only but a GPU is present), the
centroid update is a sparse membership-matrix product in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from ssrl.tracking.console import progress_bars


@dataclass
class KMeansResult:
    centroids: np.ndarray  # float32 [k, d]
    labels: np.ndarray  # int64 [n]: the nearest centroid of each point
    n_iter: int
    objective: list[float] = field(default_factory=list)  # mean squared distance per iteration
    converged: bool = False


def _faiss_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _gpu_available() -> bool:
    """A GPU for the assignment: faiss's GPU index, or else torch CUDA (faiss-cpu wheels)."""
    return _faiss_gpu() or torch.cuda.is_available()


def _want_gpu(use_gpu: str | bool) -> bool:
    if use_gpu == "auto":
        return _gpu_available()
    if use_gpu is True:
        if not _gpu_available():
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

        self._torch_cuda = gpu and not _faiss_gpu()
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


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, n_iter: int = 3, epsilon: float = 0.05,
             active: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced soft assignment of a batch to the active clusters (SwAV-style), no gradient.

    Starts from Q proportional to exp(logits / epsilon) over the active columns of the [B, K]
    matrix and alternately rescales it so that every active cluster holds 1/K_active of the
    batch mass and every sample 1/B, `n_iter` times each, ending with the per-sample step.
    Runs in the log domain in float32 (no overflow at small epsilon). Returns [B, K]
    probabilities: each row sums to 1, inactive columns (active[k] False) are exactly 0.
    """
    scores = logits.detach().float() / epsilon
    b, k = scores.shape
    cols = (torch.arange(k, device=scores.device) if active is None
            else torch.nonzero(active.to(scores.device).bool()).flatten())
    if cols.numel() == 0:
        raise ValueError("sinkhorn: no active cluster")
    log_q = scores[:, cols]
    log_b = torch.log(torch.tensor(float(b)))
    log_k = torch.log(torch.tensor(float(cols.numel())))
    for _ in range(n_iter):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_k  # clusters: 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b  # samples: 1/B
    out = torch.zeros_like(scores)
    out[:, cols] = torch.softmax(log_q, dim=1)  # = exp(log_q) * B once the rows hold 1/B
    return out


def cluster_stage(cfg: dict, model: Path, train: Path, out: Path) -> dict:
    """The `cluster` step: embed every training utterance (full length) with `model`,
    L2-normalise, k-means into `cluster.k` clusters, and score the pseudo labels against the
    true speakers where they are known (reporting only). Writes out/labels.npz (utt_ids,
    labels, L2-normalised centroids), out/utt2label and out/quality.json."""
    from ssrl.data.stores import WaveStore
    from ssrl.evaluation.embed import embed_waves
    from ssrl.files import InputError, save_npz, write_json, write_table
    from ssrl.models.model_file import load_encoder
    from ssrl.training.runtime import init_runtime

    c = cfg["cluster"]
    store = WaveStore(train)
    if c["k"] > len(store):
        raise InputError(f"config cluster.k (or ssrl.init_k) = {c['k']}: more clusters than the "
                         f"{len(store)} training utterances of {train}")
    device, d = init_runtime(cfg["runtime"])
    loaded = load_encoder(model, device)

    emb = embed_waves(loaded.encoder, loaded.frontend, store, device, progress=progress_bars(),
                      d=d)
    if not d.main:  # under torchrun the others helped embed; one process clusters and writes
        return {}
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    result = kmeans(emb, c["k"], max_iter=c["max_iter"], tol=c["tol"], seed=cfg["seed"])
    centroids = result.centroids / np.linalg.norm(result.centroids, axis=1,
                                                  keepdims=True).clip(1e-12)
    quality: dict = {"k": c["k"], "n_iter": result.n_iter, "converged": bool(result.converged)}
    if store.spk is not None:
        quality.update(cluster_quality(store.spk, result.labels))
    else:
        quality["n_clusters"] = int(len(np.unique(result.labels)))
    save_npz(out / "labels.npz", utt_ids=np.array(store.utt_ids), labels=result.labels,
             centroids=centroids.astype(np.float32))
    write_table(out / "utt2label", zip(store.utt_ids, result.labels))
    write_json(out / "quality.json", quality)
    return quality
