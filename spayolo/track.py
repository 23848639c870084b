"""Faces followed across video frames: greedy IoU matching, each track smoothing its class probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ("IoUTracker", "box_iou", "min_cost_matching")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a (N,4) and b (M,4)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def min_cost_matching(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pairing of least total cost, min(N, M) pairs of an (N, M) cost matrix (Kuhn-Munkres,
    by shortest augmenting paths with row and column potentials)."""
    cost = np.asarray(cost, np.float64)
    flip = cost.shape[0] > cost.shape[1]
    c = cost.T if flip else cost
    n, m = c.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner, way = np.zeros(m + 1, np.int64), np.zeros(m + 1, np.int64)  # column -> its row (1-based, 0: free)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        least, used = np.full(m + 1, np.inf), np.zeros(m + 1, bool)
        while owner[j0]:
            used[j0] = True
            i0, free = owner[j0], ~used
            reduced = c[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (reduced < least[1:])
            least[1:][better], way[1:][better] = reduced[better], j0
            j1 = int(np.argmin(np.where(free, least, np.inf)))
            delta = least[j1]
            u[owner[used]] += delta
            v[used] -= delta
            least[free] -= delta
            j0 = j1
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0], j0 = owner[j1], j1
    cols = np.flatnonzero(owner[1:]) + 1
    rows, cols = owner[cols] - 1, cols - 1
    order = np.argsort(cols if flip else rows)
    return (cols[order], rows[order]) if flip else (rows[order], cols[order])


@dataclass
class _Track:
    box: np.ndarray
    probs: np.ndarray
    missed: int = 0


@dataclass
class IoUTracker:
    """Greedy IoU matching of faces across frames; each track keeps an exponential moving average of its probs.

    A track survives `max_missed` frames without a match. `alpha` is the weight of the new frame in the EMA.
    """

    iou: float = 0.3
    alpha: float = 0.4
    max_missed: int = 15
    tracks: dict[int, _Track] = field(default_factory=dict)
    next_id: int = 1

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Assign a track id to each box; return ids and smoothed probs."""
        ids = list(self.tracks)
        ious = box_iou(boxes, np.stack([self.tracks[i].box for i in ids])) if ids and len(boxes) else np.zeros((len(boxes), 0))
        assigned: list[int | None] = [None] * len(boxes)
        for flat in np.argsort(-ious, axis=None):  # greedy: best overlaps first
            d, t = np.unravel_index(flat, ious.shape)
            if ious[d, t] < self.iou:
                break
            if assigned[d] is None and ids[t] not in assigned:
                assigned[d] = ids[t]
        smoothed = probs.copy()
        for d, tid in enumerate(assigned):
            if tid is None:
                tid = assigned[d] = self.next_id
                self.next_id += 1
                self.tracks[tid] = _Track(boxes[d], probs[d])
            else:
                tr = self.tracks[tid]
                tr.box, tr.missed = boxes[d], 0
                tr.probs = (1 - self.alpha) * tr.probs + self.alpha * probs[d]
            smoothed[d] = self.tracks[tid].probs
        for tid in set(self.tracks) - set(assigned):
            self.tracks[tid].missed += 1
            if self.tracks[tid].missed > self.max_missed:
                del self.tracks[tid]
        return assigned, smoothed
