"""Faces followed across video frames, each track smoothing its class probabilities.

Each frame's faces are paired with the tracks by the least total cost (Kuhn-Munkres) of two cues: overlap with where
the track's constant-velocity Kalman filter expects the face, and, given the frame, how differently it looks (colour
histograms of the face, the hair above it and the chest below). A face that no track takes by place is offered to the
tracks lost, recently or long ago, by its looks alone: so two faces that cross keep their ids, and a face hidden for a
while, or that walks out and back in, gets its old one. Without the frame, tracks match by place only and are
forgotten after ``max_missed`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ("PARTS", "FaceTracker", "appearance", "box_iou", "min_cost_matching")


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


PARTS = ((0.0, -0.35, 0.0, -1.0), (0.0, 0.0, 0.0, 0.0), (-0.25, 1.0, 0.25, 1.0))  # hair, face, chest: box offsets


def appearance(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 384) unit vectors describing how each face and its person look: the square roots of the hue-saturation
    histograms (16 x 8 bins) of the hair above the face box, the face, and the chest below it, so that the dot product
    of two is their mean Bhattacharyya coefficient. Colours outlast the changes of expression, pose and size a face goes
    through; the face's alone tell some strangers apart too poorly (see docs/analyze.md). A region outside the frame
    counts as nothing; a fraction of a millisecond per face."""
    h, w = frame.shape[:2]
    out = np.zeros((len(boxes), len(PARTS) * 128), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        bw, bh = x2 - x1, y2 - y1
        for j, (left, top, right, bottom) in enumerate(PARTS):
            a = max(0, int(x1 + left * bw)), max(0, int(y1 + top * bh))
            z = min(w, int(np.ceil(x2 + right * bw))), min(h, int(np.ceil(y2 + bottom * bh)))
            if z[0] - a[0] < 2 or z[1] - a[1] < 2:
                continue
            crop = cv2.resize(frame[a[1] : z[1], a[0] : z[0]], (32, 32), interpolation=cv2.INTER_AREA)
            hist = cv2.calcHist([cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)], [0, 1], None, [16, 8], [0, 180, 0, 256])
            out[k, 128 * j : 128 * (j + 1)] = np.sqrt(hist.ravel() / max(float(hist.sum()), 1e-9))
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# constant velocity of the centre; state (cx, cy, w, h, vx, vy), measured (cx, cy, w, h), noise in units of the height
_F = np.eye(6)
_F[0, 4] = _F[1, 5] = 1.0
_H = np.eye(4, 6)


def _state(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.0, 0.0])


@dataclass
class _Track:
    mean: np.ndarray  # (6,) state
    cov: np.ndarray  # (6, 6)
    probs: np.ndarray
    looks: np.ndarray | None  # running mean of appearance(), unit length
    missed: int = 0

    @classmethod
    def start(cls, box: np.ndarray, probs: np.ndarray, looks: np.ndarray | None) -> _Track:
        mean = _state(box)
        h = mean[3]
        return cls(mean, np.diag(np.r_[np.full(4, (h / 10) ** 2), np.full(2, (h / 8) ** 2)]), probs.copy(), looks)

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def predict(self) -> None:
        h = self.mean[3]
        self.mean = _F @ self.mean
        self.cov = _F @ self.cov @ _F.T + np.diag(np.r_[np.full(4, (h / 20) ** 2), np.full(2, (h / 160) ** 2)])

    def correct(self, box: np.ndarray) -> None:
        z = _state(box)[:4]
        gain = self.cov @ _H.T @ np.linalg.inv(_H @ self.cov @ _H.T + np.eye(4) * (self.mean[3] / 20) ** 2)
        self.mean = self.mean + gain @ (z - _H @ self.mean)
        self.cov = (np.eye(6) - gain @ _H) @ self.cov


@dataclass
class FaceTracker:
    """Track ids for the faces of consecutive frames, and each track's exponential moving average of its probs.

    ``alpha`` is the weight of the new frame in the average. A face pairs with a track whose predicted box it overlaps
    by ``iou`` or more, the cost of a pair being 1 - IoU plus, given the frame, the appearance distance (1 - the
    Bhattacharyya coefficient of appearance()). A track unmatched for up to ``max_missed`` frames is still paired by
    place; given frames, a lost track is kept ``memory`` frames for a face that no track takes by place and that looks
    like it (distance up to ``reid``). A track found again after more than ``max_missed`` frames restarts its average.
    ``looks=False`` leaves the frame unused: place alone.
    """

    iou: float = 0.3
    alpha: float = 0.4
    max_missed: int = 15
    memory: int = 300
    reid: float = 0.2
    looks: bool = True
    tracks: dict[int, _Track] = field(default_factory=dict)
    next_id: int = 1

    def update(self, boxes: np.ndarray, probs: np.ndarray,
               frame: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
        """Assign a track id to each box (N,4) of a frame; return the ids and the smoothed probs (N, classes)."""
        frame = frame if self.looks else None
        looks = appearance(frame, boxes) if frame is not None and len(boxes) else None
        for track in self.tracks.values():
            track.predict()
        assigned: list[int | None] = [None] * len(boxes)
        self._by_place(boxes, looks, assigned)
        if looks is not None:
            self._by_looks(boxes, looks, assigned)
        smoothed = probs.copy()
        for d, tid in enumerate(assigned):
            face_looks = None if looks is None or not looks[d].any() else looks[d]
            if tid is None:
                tid = assigned[d] = self.next_id
                self.next_id += 1
                self.tracks[tid] = _Track.start(boxes[d], probs[d], face_looks)
            else:
                self._renew(self.tracks[tid], boxes[d], probs[d], face_looks)
            smoothed[d] = self.tracks[tid].probs
        for tid in set(self.tracks) - set(assigned):
            track = self.tracks[tid]
            track.missed += 1
            if track.missed > (self.memory if frame is not None and track.looks is not None else self.max_missed):
                del self.tracks[tid]
        return assigned, smoothed

    def _distances(self, looks: np.ndarray, ids: list[int]) -> np.ndarray:
        """Appearance distance of each face to each track (1 where either has no appearance)."""
        known = np.stack([self.tracks[i].looks if self.tracks[i].looks is not None else np.zeros(looks.shape[1])
                          for i in ids])
        distance = 1 - looks @ known.T
        return np.where(looks.any(1)[:, None] & known.any(1)[None], distance, 1.0)

    def _by_place(self, boxes: np.ndarray, looks: np.ndarray | None, assigned: list) -> None:
        ids = [i for i, t in self.tracks.items() if t.missed <= self.max_missed]
        if not ids or not len(boxes):
            return
        overlap = box_iou(boxes, np.stack([self.tracks[i].box for i in ids]))
        cost = 1 - overlap + (self._distances(looks, ids) if looks is not None else 0)
        for d, k in zip(*min_cost_matching(np.where(overlap >= self.iou, cost, 1e6))):
            if overlap[d, k] >= self.iou:
                assigned[d] = ids[k]

    def _by_looks(self, boxes: np.ndarray, looks: np.ndarray, assigned: list) -> None:
        ids = [i for i, t in self.tracks.items() if t.missed and i not in assigned and t.looks is not None]
        free = [d for d in range(len(boxes)) if assigned[d] is None and looks[d].any()]
        if not ids or not free:
            return
        distance = self._distances(looks[free], ids)
        for f, k in zip(*min_cost_matching(np.where(distance <= self.reid, distance, 1e6))):
            if distance[f, k] <= self.reid:
                assigned[free[f]] = ids[k]

    def _renew(self, track: _Track, box: np.ndarray, probs: np.ndarray, looks: np.ndarray | None) -> None:
        if track.missed > self.max_missed:  # back after a long absence: where it was and how it felt are stale
            fresh = _Track.start(box, probs, track.looks)
            track.mean, track.cov, track.probs = fresh.mean, fresh.cov, fresh.probs
        else:
            track.correct(box)
            track.probs = (1 - self.alpha) * track.probs + self.alpha * probs
        if looks is not None:
            mixed = looks if track.looks is None else 0.9 * track.looks + 0.1 * looks
            track.looks = mixed / max(float(np.linalg.norm(mixed)), 1e-9)
        track.missed = 0
