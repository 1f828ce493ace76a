"""Cosine / AS-norm scoring against naive loops; embeddings and score file IO."""

import numpy as np
import pytest

from ssrl.evaluation.scoring import (
    as_norm_scores,
    cohort_from_clusters,
    cosine_scores,
    load_embeddings,
    read_scores,
    save_embeddings,
    write_scores,
)
from ssrl.files import InputError, save_npz


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _data(n: int = 12, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"u{i:02d}" for i in range(n)]
    emb = (rng.normal(size=(n, d)) + 0.5).astype(np.float32)
    enroll = [ids[i] for i in rng.integers(0, n, 40)]
    test = [ids[i] for i in rng.integers(0, n, 40)]
    return ids, emb, enroll, test


def test_cosine_hand_example():
    ids = ["a", "b", "c"]
    emb = np.array([[3, 4], [1, 0], [0, -2]], dtype=np.float32)
    # a.b = 3/5, a.c = -4/5, b.c = 0, a.a = 1
    got = cosine_scores(ids, emb, ["a", "a", "b", "a"], ["b", "c", "c", "a"])
    np.testing.assert_allclose(got, [0.6, -0.8, 0.0, 1.0], atol=1e-7)
    # Subtracting mean (1, 0): a -> (2, 4), b -> (0, 0) (norm floored: scores 0), c -> (-1, -2)
    got = cosine_scores(ids, emb, ["a", "b"], ["c", "c"], mean=np.array([1.0, 0.0]))
    np.testing.assert_allclose(got, [-1.0, 0.0], atol=1e-7)


def test_cosine_equals_naive_loop():
    ids, emb, enroll, test = _data()
    mean = emb.mean(axis=0)
    row = {u: i for i, u in enumerate(ids)}
    naive = [_cos(emb[row[e]], emb[row[t]]) for e, t in zip(enroll, test)]
    naive_mean = [_cos(emb[row[e]] - mean, emb[row[t]] - mean) for e, t in zip(enroll, test)]
    np.testing.assert_allclose(cosine_scores(ids, emb, enroll, test), naive, atol=1e-6)
    with_mean = cosine_scores(ids, emb, enroll, test, mean=mean)
    np.testing.assert_allclose(with_mean, naive_mean, atol=1e-6)
    # The data share an offset of +0.5 per dimension: removing it lowers the scores on average.
    assert with_mean.mean() < np.mean(naive) - 0.1


def test_unknown_trial_utterance_is_named():
    ids, emb, enroll, test = _data()
    with pytest.raises(InputError, match="'nobody'"):
        cosine_scores(ids, emb, enroll + ["u00"], test + ["nobody"])


def test_cohort_from_clusters_means_of_normalised_members():
    emb = np.array([[2, 0], [0, 5], [0, 1], [-1, 0]], dtype=np.float32)
    labels = np.array([7, 3, 7, 3])
    # label 3: (0,1)+(-1,0) -> (-1,1)/sqrt2; label 7: (1,0)+(0,1) -> (1,1)/sqrt2
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(cohort_from_clusters(emb, labels), [[-r, r], [r, r]], atol=1e-7)


def test_as_norm_equals_naive_loop():
    ids, emb, enroll, test = _data(seed=1)
    rng = np.random.default_rng(2)
    cohort = rng.normal(size=(9, emb.shape[1])).astype(np.float32)
    mean = emb.mean(axis=0)
    top_n = 4
    row = {u: i for i, u in enumerate(ids)}

    def stats(v):
        top = sorted((_cos(v, c) for c in cohort), reverse=True)[:top_n]
        return np.mean(top), np.sqrt(np.mean((np.array(top) - np.mean(top)) ** 2))

    naive = []
    for e, t in zip(enroll, test):
        ve, vt = emb[row[e]] - mean, emb[row[t]] - mean
        s = _cos(ve, vt)
        (me, se), (mt, st) = stats(ve), stats(vt)
        naive.append(((s - me) / se + (s - mt) / st) / 2)
    got = as_norm_scores(ids, emb, enroll, test, cohort, top_n, mean=mean)
    np.testing.assert_allclose(got, naive, rtol=1e-5, atol=1e-5)


def test_as_norm_hand_example():
    # 1-D embeddings: every cosine is +1 or -1. Against the cohort (+, +, -) a positive
    # vector scores (1, 1, -1): top 3 -> mu 1/3, sigma sqrt(8/9); a negative one mu -1/3.
    ids = ["p", "n"]
    emb = np.array([[2.0], [-3.0]], dtype=np.float32)
    cohort = np.array([[1.0], [4.0], [-1.0]], dtype=np.float32)
    sd = np.sqrt(8 / 9)
    got = as_norm_scores(ids, emb, ["p", "p"], ["n", "p"], cohort, top_n=3)
    expect_pn = ((-1 - 1 / 3) / sd + (-1 + 1 / 3) / sd) / 2  # = -1/sd
    expect_pp = (1 - 1 / 3) / sd
    np.testing.assert_allclose(got, [expect_pn, expect_pp], rtol=1e-6)
    # top_n above the cohort size uses the whole cohort.
    np.testing.assert_allclose(as_norm_scores(ids, emb, ["p"], ["n"], cohort, top_n=50),
                               got[:1], rtol=1e-6)


def test_embeddings_roundtrip_and_bad_files(tmp_path):
    ids, emb, _, _ = _data()
    path = tmp_path / "embeddings.npz"
    save_embeddings(path, ids, emb.astype(np.float64))
    ids2, emb2 = load_embeddings(path)
    assert ids2 == ids
    assert emb2.dtype == np.float32
    np.testing.assert_array_equal(emb2, emb)
    bad = tmp_path / "bad.npz"
    save_npz(bad, utt_ids=np.array(ids))
    with pytest.raises(InputError, match=r"bad\.npz.*missing emb"):
        load_embeddings(bad)
    with pytest.raises(InputError, match="not found"):
        load_embeddings(tmp_path / "none.npz")


def test_score_files_are_in_the_order_speech_tools_read(tmp_path):
    """`enroll test score [label]`, as Kaldi and WeSpeaker's compute_metrics.py read them."""
    path = tmp_path / "scores.txt"
    write_scores(path, ["a", "b"], ["c", "d"], np.array([0.5, -0.25]), np.array([1, 0]))
    assert path.read_text() == "a c 0.500000 target\nb d -0.250000 nontarget\n"
    scores, labels = read_scores(path)
    assert scores.tolist() == [0.5, -0.25] and labels.tolist() == [True, False]
    # WeSpeaker's reader: the third column is the score, the fourth the label
    rows = [line.split() for line in path.read_text().splitlines()]
    assert [float(r[2]) for r in rows] == [0.5, -0.25] and [r[3] for r in rows] == [
        "target", "nontarget"]
    write_scores(path, ["a"], ["c"], np.array([0.125]))
    assert path.read_text() == "a c 0.125000\n" and read_scores(path)[1] is None
