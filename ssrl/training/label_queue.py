"""Per-utterance queue of past teacher labels, smoothed by majority vote (SSRL stage 2).

The teacher re-labels every utterance each epoch; a single new label is noisy, so SSRL trains on
the majority of the last `Q` labels instead. Each queue is seeded with `Q // 2` copies of the
k-means label, so a fresh teacher label has to win several epochs in a row before it replaces
the initial one. `Q = 1` turns the queue off (the label is simply the last teacher label).

Layout: one int32 array `[N, Q]`, each row in chronological order (oldest first), empty slots
(-1) at the end. N is about 1.09 M on VoxCeleb2, so every operation is vectorised over N and
memory stays O(N * Q) int32.

The queue knows nothing about clusters: a vote may return a label whose cluster has been
removed since it entered the queue. Mapping such labels to live clusters is the caller's job.
"""

from __future__ import annotations

import numpy as np

EMPTY = -1


class LabelQueue:
    """Last `length` teacher labels per utterance; `vote()` gives the smoothed training labels."""

    def __init__(self, init_labels: np.ndarray, length: int) -> None:
        init_labels = np.asarray(init_labels)
        if init_labels.ndim != 1:
            raise ValueError(f"init_labels must be 1-D, got shape {init_labels.shape}")
        if length < 1:
            raise ValueError(f"queue length must be >= 1, got {length}")
        _check_labels(init_labels)
        self.init_labels = init_labels.astype(np.int32)
        self.queue = np.full((len(init_labels), length), EMPTY, dtype=np.int32)
        self.queue[:, : length // 2] = self.init_labels[:, None]

    @property
    def length(self) -> int:
        return self.queue.shape[1]

    def __len__(self) -> int:
        return self.queue.shape[0]

    def counts(self) -> np.ndarray:
        """Number of filled slots per utterance (int64 `[N]`)."""
        return (self.queue != EMPTY).sum(axis=1)

    def push(self, labels: np.ndarray, recorded: np.ndarray | None = None) -> None:
        """Append each utterance's new teacher label; a full queue drops its oldest label.

        Only rows where `recorded` is true change (an utterance the teacher did not see this
        epoch keeps its queue as it is).
        """
        labels = np.asarray(labels)
        if labels.shape != (len(self),):
            raise ValueError(f"labels must have shape ({len(self)},), got {labels.shape}")
        if recorded is None:
            rows = np.arange(len(self))
        else:
            recorded = np.asarray(recorded, dtype=bool)
            if recorded.shape != (len(self),):
                raise ValueError(f"recorded must have shape ({len(self)},), got {recorded.shape}")
            rows = np.flatnonzero(recorded)
        new = labels[rows]
        _check_labels(new)
        counts = self.counts()[rows]
        full = counts == self.length
        full_rows = rows[full]
        # Shift full rows left by one (drop the oldest), then write every new label at the
        # first free slot, which is the last slot for the rows just shifted.
        self.queue[full_rows, :-1] = self.queue[full_rows, 1:]
        slot = np.where(full, self.length - 1, counts)
        self.queue[rows, slot] = new.astype(np.int32)

    def vote(self) -> np.ndarray:
        """Majority label per utterance (int32 `[N]`).

        Ties go to the label whose first entry in the queue is oldest; an empty queue gives the
        initial (k-means) label.
        """
        return _majority(self.queue, self.init_labels)

    def vote_with(self, rows: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The label `rows` would get if `new` were pushed now (the queue is not changed).

        This is the label an utterance will carry once its newest teacher label is in: what
        the teacher's loss is measured against for the noisy-label GMM (as in the authors'
        code, `mode(queue + [new])[-Q:]`).
        """
        rows = np.asarray(rows)
        q = self.queue[rows]
        filled = (q != EMPTY).sum(axis=1)
        full = filled == self.length
        q[full, :-1] = q[full, 1:]
        q[np.arange(len(rows)), np.where(full, self.length - 1, filled)] = np.asarray(new)
        return _majority(q, self.init_labels[rows])

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint (numpy only, so they save with `np.savez` or `torch.save`)."""
        return {"queue": self.queue.copy(), "init_labels": self.init_labels.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        queue = np.asarray(state["queue"], dtype=np.int32)
        init = np.asarray(state["init_labels"], dtype=np.int32)
        if queue.ndim != 2 or init.shape != (queue.shape[0],):
            raise ValueError(
                f"inconsistent queue state: queue {queue.shape}, init_labels {init.shape}")
        self.queue = queue.copy()
        self.init_labels = init.copy()


def _check_labels(labels: np.ndarray) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise ValueError("labels must be non-negative int32 values (-1 marks an empty slot)")


def _majority(q: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Row-wise majority of queue rows `q` (oldest first, EMPTY at the end); ties go to the
    label that entered first; an empty row gives `init`."""
    filled = q != EMPTY
    # support[:, j] = how often the label in slot j occurs in its row (0 for empty slots).
    support = np.zeros(q.shape, dtype=np.int16)
    for j in range(q.shape[1]):
        support += (q == q[:, j : j + 1]) & filled
    # argmax takes the first maximum: the first occurrence of the earliest-entered label
    # among those with the highest count.
    best = np.argmax(support, axis=1)
    votes = q[np.arange(len(q)), best]
    return np.where(filled.any(axis=1), votes, init).astype(np.int32)
