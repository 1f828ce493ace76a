"""Pseudo-label queue: seeding, majority vote, tie rule, partial pushes, checkpointing."""

from __future__ import annotations

import numpy as np
import pytest

from ssrl.training.label_queue import LabelQueue


def test_seeded_with_half_queue_of_initial_labels():
    q = LabelQueue(np.array([7, 3]), length=5)
    assert q.queue.dtype == np.int32
    np.testing.assert_array_equal(q.queue, [[7, 7, -1, -1, -1], [3, 3, -1, -1, -1]])
    np.testing.assert_array_equal(q.vote(), [7, 3])


def test_length_one_starts_empty_and_votes_initial_label():
    q = LabelQueue(np.array([4, 9]), length=1)
    np.testing.assert_array_equal(q.queue, [[-1], [-1]])
    np.testing.assert_array_equal(q.vote(), [4, 9])


def test_length_one_is_plain_relabelling():
    q = LabelQueue(np.array([4, 9]), length=1)
    q.push(np.array([1, 2]))
    np.testing.assert_array_equal(q.vote(), [1, 2])
    q.push(np.array([5, 6]))
    np.testing.assert_array_equal(q.queue, [[5], [6]])
    np.testing.assert_array_equal(q.vote(), [5, 6])


def test_majority_vote_and_oldest_dropped():
    q = LabelQueue(np.array([0]), length=5)  # [0, 0]
    for label in (1, 1):
        q.push(np.array([label]))
    np.testing.assert_array_equal(q.queue, [[0, 0, 1, 1, -1]])
    np.testing.assert_array_equal(q.vote(), [0])  # 2-2 tie: 0 entered first
    q.push(np.array([1]))
    np.testing.assert_array_equal(q.vote(), [1])  # 3 vs 2
    q.push(np.array([2]))  # full: the oldest 0 is dropped
    np.testing.assert_array_equal(q.queue, [[0, 1, 1, 1, 2]])
    np.testing.assert_array_equal(q.vote(), [1])


def test_tie_goes_to_label_that_entered_first():
    a, b = 3, 8
    q = LabelQueue(np.array([0, 0]), length=4)
    q.load_state_dict({"queue": np.array([[a, a, b, b], [b, b, a, a]]),
                       "init_labels": np.array([0, 0])})
    np.testing.assert_array_equal(q.vote(), [a, b])


def test_tie_after_init_is_broken_by_the_older_label():
    # Q=2: seeded [k]; push b -> [k, b] (tie -> k); push a -> [b, a] (tie -> b, the older).
    k, a, b = 5, 1, 2
    q = LabelQueue(np.array([k]), length=2)
    q.push(np.array([b]))
    np.testing.assert_array_equal(q.vote(), [k])
    q.push(np.array([a]))
    np.testing.assert_array_equal(q.queue, [[b, a]])
    np.testing.assert_array_equal(q.vote(), [b])


def test_tie_between_three_labels_with_interleaving():
    # counts: 4 -> 2, 6 -> 2, 9 -> 1; 6 appears first, so 6 wins although 4 is newest.
    q = LabelQueue(np.array([0]), length=5)
    q.load_state_dict({"queue": np.array([[6, 4, 9, 6, 4]]), "init_labels": np.array([0])})
    np.testing.assert_array_equal(q.vote(), [6])


def test_unrecorded_utterances_keep_their_queue():
    q = LabelQueue(np.array([0, 1, 2]), length=3)  # one seed copy each
    q.push(np.array([5, 6, 7]), recorded=np.array([True, False, True]))
    np.testing.assert_array_equal(q.queue, [[0, 5, -1], [1, -1, -1], [2, 7, -1]])
    q.push(np.array([5, 6, 8]), recorded=np.array([True, False, False]))
    np.testing.assert_array_equal(q.queue, [[0, 5, 5], [1, -1, -1], [2, 7, -1]])
    np.testing.assert_array_equal(q.vote(), [5, 1, 2])


def test_mixed_full_and_partial_rows_in_one_push():
    q = LabelQueue(np.array([0, 1]), length=2)
    q.push(np.array([3, 4]), recorded=np.array([True, False]))  # row 0 now full
    q.push(np.array([6, 7]))
    np.testing.assert_array_equal(q.queue, [[3, 6], [1, 7]])


def test_vote_may_return_a_removed_cluster():
    # The queue is cluster-agnostic: cluster 2 may have been removed, the vote still says 2.
    q = LabelQueue(np.array([2]), length=3)
    q.push(np.array([4]))
    np.testing.assert_array_equal(q.vote(), [2])


def test_state_dict_round_trip_is_numpy_and_independent():
    q = LabelQueue(np.array([0, 1]), length=3)
    q.push(np.array([2, 3]))
    state = q.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = LabelQueue(np.array([9, 9]), length=3)
    restored.load_state_dict(state)
    q.push(np.array([4, 4]))  # must not leak into the restored copy
    np.testing.assert_array_equal(restored.queue, [[0, 2, -1], [1, 3, -1]])
    np.testing.assert_array_equal(restored.init_labels, [0, 1])


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        LabelQueue(np.array([0, 1]), length=0)
    q = LabelQueue(np.array([0, 1]), length=2)
    with pytest.raises(ValueError):
        q.push(np.array([1]))
    with pytest.raises(ValueError):
        q.push(np.array([-1, 0]))
    with pytest.raises(ValueError):
        q.push(np.array([0.5, 1.0]))


def _naive_vote(row: list[int], init: int) -> int:
    filled = [x for x in row if x >= 0]
    if not filled:
        return init
    best = max(filled.count(x) for x in filled)
    return next(x for x in filled if filled.count(x) == best)


def test_vectorised_vote_matches_row_by_row_rule():
    rng = np.random.default_rng(0)
    init = rng.integers(0, 4, size=200)
    q = LabelQueue(init, length=5)
    for _ in range(4):
        q.push(rng.integers(0, 4, size=200), recorded=rng.random(200) < 0.6)
        expected = [_naive_vote(list(r), int(i)) for r, i in zip(q.queue, init)]
        np.testing.assert_array_equal(q.vote(), expected)
