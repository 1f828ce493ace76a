"""k-means (ssrl.training.kmeans), clustering-quality metrics (ssrl.evaluation.label_quality)
and Sinkhorn balancing (ssrl.training.sinkhorn)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from ssrl.evaluation.label_quality import cluster_quality
from ssrl.training.kmeans import _reseed_empty, _torch_nearest, assign, kmeans
from ssrl.training.sinkhorn import sinkhorn

# 8 points. Contingency (classes a, b, c x clusters 1, 2):
#   a: 3 2 / b: 2 0 / c: 0 1
# purity: clusters' majorities 3 + 2 = 5/8; inverse purity: classes' majorities 3+2+1 = 6/8;
# Hungarian: a-1 + c-2 = 4 or a-2 + b-1 = 4 (b-1 + c-2 = 3) -> 4/8.
TRUE = ["a", "a", "a", "a", "a", "b", "b", "c"]
PRED = [1, 1, 1, 2, 2, 1, 1, 2]


def test_cluster_quality_hand_example():
    q = cluster_quality(TRUE, PRED)
    assert q["purity"] == pytest.approx(5 / 8)
    assert q["inverse_purity"] == pytest.approx(6 / 8)
    assert q["hungarian_acc"] == pytest.approx(4 / 8)
    assert q["n_clusters"] == 2
    assert q["nmi"] == pytest.approx(normalized_mutual_info_score(TRUE, PRED), abs=1e-12)


def test_cluster_quality_unmatched_clusters_are_errors_and_edge_cases():
    # 2 speakers over-clustered into 4 pure clusters (sizes 2 2 | 3 1): purity 1, inverse
    # purity (2 + 3)/8; Hungarian keeps one cluster per speaker, the other 3 points are errors.
    q = cluster_quality([0, 0, 0, 0, 1, 1, 1, 1], [5, 5, 6, 6, 7, 7, 7, 8])
    assert (q["purity"], q["inverse_purity"], q["hungarian_acc"]) == (1.0, 0.625, 0.625)
    assert q["n_clusters"] == 4
    assert cluster_quality([1, 1, 1], ["x", "x", "x"])["nmi"] == 1.0
    assert cluster_quality([1, 2, 3], ["x", "x", "x"])["nmi"] == 0.0
    perfect = cluster_quality(["s1", "s2", "s1"], [9, 4, 9])
    assert perfect["nmi"] == pytest.approx(1.0)
    assert perfect["hungarian_acc"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_nmi_matches_sklearn_on_random_labelings(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 12, 500)
    pred = np.where(rng.random(500) < 0.6, true * 2, rng.integers(0, 30, 500))
    assert cluster_quality(true, pred)["nmi"] == pytest.approx(
        normalized_mutual_info_score(true, pred), abs=1e-12)


def _blobs(seed: int = 0, k: int = 5, per: int = 100, d: int = 8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(k, d))
    y = np.repeat(np.arange(k), per)
    return (centres[y] + rng.normal(scale=0.5, size=(len(y), d))).astype(np.float32), y


def test_kmeans_recovers_separated_blobs():
    x, y = _blobs()
    res = kmeans(x, 5, init="k-means++", seed=3, use_gpu=False)
    assert res.converged
    assert cluster_quality(y, res.labels)["nmi"] == 1.0
    assert res.centroids.dtype == np.float32 and res.centroids.shape == (5, 8)
    assert res.labels.dtype == np.int64
    np.testing.assert_array_equal(res.labels, assign(x, res.centroids, use_gpu=False))
    # The objective is the mean squared distance to the returned centroids.
    d2 = ((x - res.centroids[res.labels]) ** 2).sum(axis=1).mean()
    assert res.objective[-1] == pytest.approx(d2, rel=1e-4)


def test_torch_search_matches_faiss():
    # The GPU fallback for CPU-only faiss builds, checked here on CPU.
    x, _ = _blobs(seed=4)
    centroids = x[::37].copy()
    d2, labels = _torch_nearest(x, centroids, device="cpu", chunk=128)
    np.testing.assert_array_equal(labels, assign(x, centroids, use_gpu=False))
    np.testing.assert_allclose(d2, ((x - centroids[labels]) ** 2).sum(1), rtol=1e-4, atol=1e-3)


def test_kmeans_is_deterministic_and_objective_non_increasing():
    x = np.random.default_rng(1).normal(size=(1500, 6)).astype(np.float32)
    a = kmeans(x, 20, max_iter=40, tol=0.0, seed=7, use_gpu=False)
    b = kmeans(x, 20, max_iter=40, tol=0.0, seed=7, use_gpu=False)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.objective == b.objective
    assert a.n_iter == len(a.objective) > 5
    steps = np.diff(a.objective)
    assert np.all(steps <= 1e-5 * a.objective[0])  # float32 distances: tiny rounding only
    assert steps.sum() < 0


def test_kmeans_stops_at_max_iter_unconverged():
    x = np.random.default_rng(2).normal(size=(1000, 4)).astype(np.float32)
    res = kmeans(x, 30, max_iter=2, tol=0.0, use_gpu=False)
    assert (res.n_iter, len(res.objective), res.converged) == (2, 2, False)


def test_reseed_empty_takes_farthest_point_from_a_shared_cluster():
    labels = np.array([0, 0, 0, 1])
    out = _reseed_empty(labels, np.array([0.1, 5.0, 0.2, 3.0]), k=3)
    np.testing.assert_array_equal(out, [0, 2, 0, 1])
    np.testing.assert_array_equal(labels, [0, 0, 0, 1])  # input untouched
    # The farthest point (index 0) is alone in its cluster: the next one is taken instead.
    out = _reseed_empty(np.array([0, 1, 1]), np.array([9.0, 1.0, 2.0]), k=3)
    np.testing.assert_array_equal(out, [0, 1, 2])


def test_kmeans_reseeds_an_empty_cluster():
    # Eight points at 0, one at 10, one at 11, k=3. Seed 0 starts from two copies of 0 and
    # one far point: the duplicate centroid gets no points (first objective 1/10), is
    # re-seeded with the other far point, and the result has three clusters, objective 0.
    x = np.array([0.0] * 8 + [10.0, 11.0], dtype=np.float32)[:, None]
    res = kmeans(x, 3, seed=0, use_gpu=False)
    assert res.objective[0] == pytest.approx(0.1)
    assert res.objective[-1] == 0.0
    assert res.converged
    assert sorted(np.bincount(res.labels, minlength=3)) == [1, 1, 8]


def test_kmeans_rejects_bad_arguments():
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 5, use_gpu=False)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init="bogus", use_gpu=False)


def test_sinkhorn_uniform_logits_and_inactive_columns():
    active = torch.tensor([True, False, True, True, False])
    q = sinkhorn(torch.zeros(4, 5), active=active)
    expect = torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3, 0.0]).expand(4, 5)
    torch.testing.assert_close(q, expect)


def test_sinkhorn_balances_active_clusters():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(96, 8, generator=gen) * 0.2
    logits[:, 0] += 0.3  # every sample prefers cluster 0
    logits[:, 5] = 50.0  # large values on an inactive column must not matter
    active = torch.ones(8, dtype=torch.bool)
    active[5] = False
    plain = torch.softmax(logits[:, active] / 0.05, dim=1).sum(0)
    assert plain.max() > 40  # without balancing cluster 0 takes about half the batch
    q = sinkhorn(logits.double(), n_iter=3, active=active)
    assert q.dtype == torch.float32
    assert torch.all(q[:, 5] == 0)
    torch.testing.assert_close(q.sum(1), torch.ones(96))
    mass = q.sum(0)[active]
    assert mass.std() < 0.5 * plain.std()  # 3 iterations at epsilon 0.05: closer, not equal
    mass_many = sinkhorn(logits, n_iter=50, active=active).sum(0)[active]
    torch.testing.assert_close(mass_many, torch.full((7,), 96 / 7), atol=1e-3, rtol=0)
