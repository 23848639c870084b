"""An identity benchmark for the tracker: a scene made from the face photos the dependencies ship, with boxes labelled
by hand, where faces cross, one is hidden behind a black bar and one leaves and comes back; and the count of identity
switches (CLEAR MOT) of a tracker's ids against those boxes.

The faces' boxes in the photos were drawn by eye (forehead to chin); the scene moves, scales and stacks the photos'
head regions on a textured background, so every frame's true boxes follow from where it puts them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from spayolo.errors import MissingFileError
from spayolo.track import box_iou, min_cost_matching

__all__ = ("FPS", "PEOPLE", "Person", "Truth", "benchmark", "identity_switches", "scene")

FPS = 15
SIZE = (640, 480)
FRAMES = 300


@dataclass(frozen=True)
class Person:
    """A face photo (package, path in it), the face's box in it (x1, y1, x2, y2, drawn by eye) and its path in the
    scene: ``path(frame)`` -> (centre x, centre y, face width) in scene pixels, or None while off screen."""

    name: str
    package: str
    parts: tuple[str, ...]
    face: tuple[int, int, int, int]

    def photo(self) -> np.ndarray:
        spec = importlib.util.find_spec(self.package)
        path = Path(next(iter(spec.submodule_search_locations)), *self.parts) if spec else None
        if path is None or not path.is_file():
            raise MissingFileError(f"the identity benchmark needs {'/'.join(self.parts)} from {self.package}")
        return cv2.imread(str(path))


PEOPLE = (Person("hopper", "spayolo", ("assets", "grace_hopper.jpg"), (175, 118, 355, 335)),
          Person("ancelotti", "ultralytics", ("assets", "zidane.jpg"), (930, 100, 1050, 272)),
          Person("zidane", "ultralytics", ("assets", "zidane.jpg"), (556, 258, 672, 436)))


def _ramp(f: float, f0: float, f1: float, a: float, b: float) -> float:
    s = min(max((f - f0) / (f1 - f0), 0.0), 1.0)
    return a + (b - a) * (3 * s * s - 2 * s * s * s)  # eased: people speed up and slow down


def _paths(f: int) -> list[tuple[float, float, float] | None]:
    """Where each of PEOPLE is in frame ``f``: hopper and ancelotti cross twice at about the same height (ancelotti,
    in front, hides her), hopper walks out on the right at frame ~110 and back in at frame ~200; zidane stays below,
    behind a black bar from frame ~135 to ~180."""
    wobble = 6 * np.sin(f / 7)
    hopper = (_ramp(f, 0, 120, 110, 760) if f < 160 else _ramp(f, 190, 290, 760, 420), 165 + wobble,
              112 + 8 * np.sin(f / 23))
    ancelotti = (_ramp(f, 0, 110, 540, 120) if f < 150 else _ramp(f, 150, 290, 120, 600), 180 - wobble, 104)
    zidane = (330 + 25 * np.sin(f / 19), 375 + 4 * np.sin(f / 5), 96)
    return [None if p[0] - p[2] > SIZE[0] + 40 else p for p in (hopper, ancelotti, zidane)]


def _bar(f: int) -> tuple[int, int] | None:
    """x range of the black bar that slides in front of zidane, stays there and slides on, or None."""
    if not 110 <= f <= 205:
        return None
    x = _ramp(f, 110, 135, -270, 200) if f < 180 else _ramp(f, 180, 205, 200, SIZE[0] + 10)
    return int(x), int(x) + 260


@dataclass
class Truth:
    """The hand-placed boxes of a frame: person index, box (x1, y1, x2, y2) and the share of it that is visible."""

    ids: np.ndarray
    boxes: np.ndarray
    visible: np.ndarray


def _heads(people=PEOPLE) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each person's head region (the face box with half its size around it) and the face box inside it."""
    heads = []
    for person in people:
        photo = person.photo()
        x1, y1, x2, y2 = person.face
        w, h = x2 - x1, y2 - y1
        a = max(0, x1 - w // 2), max(0, y1 - h // 2)
        b = min(photo.shape[1], x2 + w // 2), min(photo.shape[0], y2 + h // 2)
        heads.append((photo[a[1] : b[1], a[0] : b[0]], np.array([x1 - a[0], y1 - a[1], x2 - a[0], y2 - a[1]], float)))
    return heads


def scene(frames: int = FRAMES, seed: int = 0) -> Iterator[tuple[np.ndarray, Truth]]:
    """The benchmark's frames (BGR, 640x480, meant to play at FPS) with their true boxes; sensor noise and a
    flickering exposure keep frames from repeating pixel for pixel."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([90 + 30 * np.sin(xx / 53) + 20 * np.cos(yy / 37), 100 + 25 * np.cos(xx / 71),
                           110 + 20 * np.sin((xx + yy) / 61)], -1).astype(np.uint8)
    heads = _heads()
    for f in range(frames):
        canvas, owner = background.copy(), np.full((h, w), -1)
        ids, boxes = [], []
        for k, (place, (head, face)) in enumerate(zip(_paths(f), heads)):
            if place is None:
                continue
            cx, cy, width = place
            scale = width / (face[2] - face[0])
            fx, fy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
            x0, y0 = cx - scale * fx, cy - scale * fy  # where the head's top-left corner lands
            a, b = (max(0, int(x0)), max(0, int(y0))), (min(w, int(x0 + scale * head.shape[1])),
                                                          min(h, int(y0 + scale * head.shape[0])))
            if b[0] > a[0] and b[1] > a[1]:
                warp = np.array([[scale, 0, x0 - a[0]], [0, scale, y0 - a[1]]], np.float32)
                canvas[a[1] : b[1], a[0] : b[0]] = cv2.warpAffine(
                    head, warp, (b[0] - a[0], b[1] - a[1]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                owner[a[1] : b[1], a[0] : b[0]] = k
            ids.append(k)
            boxes.append([cx - scale * (fx - face[0]), cy - scale * (fy - face[1]),
                          cx + scale * (face[2] - fx), cy + scale * (face[3] - fy)])
        bar = _bar(f)
        if bar:
            canvas[:, max(0, bar[0]) : max(0, bar[1])], owner[:, max(0, bar[0]) : max(0, bar[1])] = 0, -2
        noise = rng.standard_normal(canvas.shape, np.float32) * 3
        canvas = cv2.addWeighted(canvas.astype(np.float32), rng.uniform(0.92, 1.08), noise, 1.0, 0.0)
        boxes = np.array(boxes, float).reshape(-1, 4)
        visible = np.array([_visible(owner, k, b) for k, b in zip(ids, boxes)])
        yield np.clip(canvas, 0, 255).astype(np.uint8), Truth(np.array(ids, int), boxes, visible)


def _visible(owner: np.ndarray, k: int, box: np.ndarray) -> float:
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(owner.shape[1], int(np.ceil(box[2]))), min(owner.shape[0], int(np.ceil(box[3])))
    full = max(1.0, (box[2] - box[0]) * (box[3] - box[1]))
    return float((owner[y1:y2, x1:x2] == k).sum() / full)


def identity_switches(truths: list[Truth], tracks: list[tuple[np.ndarray, list]], iou: float = 0.5,
                      seen: float = 0.5) -> dict:
    """CLEAR MOT's identity switches of tracked boxes against the true ones, with the misses and false positives.

    ``tracks`` holds per frame the boxes (N,4) and the track ids a tracker gave. A true face is matched to a box with
    IoU >= ``iou``, keeping the previous frame's pairs while they still overlap that much, the rest by the assignment
    of largest total overlap; a switch is a face matched to another id than the one it was last matched to (so a
    face that comes back under a new id counts one). A face less than ``seen`` visible is not matched (a box there
    is most likely the x
    """
    last: dict[int, int] = {}
    previous: dict[int, int] = {}
    misses = false = 0
    switches: list[tuple[int, str, int, int]] = []
    given: dict[int, set] = {}
    for frame, (truth, (boxes, ids)) in enumerate(zip(truths, tracks)):
        overlap = box_iou(truth.boxes, np.asarray(boxes, float).reshape(-1, 4))
        shown = [g for g in range(len(truth.ids)) if truth.visible[g] >= seen]
        pairs: dict[int, int] = {}
        for g in shown:
            h = previous.get(int(truth.ids[g]))
            if h is not None and h in ids and overlap[g, ids.index(h)] >= iou:
                pairs[g] = ids.index(h)
        rows = [g for g in shown if g not in pairs]
        cols = [d for d in range(len(ids)) if d not in pairs.values()]
        if rows and cols:
            sub = overlap[np.ix_(rows, cols)]
            for r, c in zip(*min_cost_matching(-sub)):
                if sub[r, c] >= iou:
                    pairs[rows[r]] = cols[c]
        previous = {}
        for g, d in pairs.items():
            person, h = int(truth.ids[g]), ids[d]
            if person in last and last[person] != h:
                switches.append((frame, PEOPLE[person].name, last[person], h))
            last[person] = previous[person] = h
            given.setdefault(person, set()).add(h)
        misses += sum(1 for g in shown if g not in pairs)
        hidden = [g for g in range(len(truth.ids)) if g not in shown]
        for d in set(range(len(ids))) - set(pairs.values()):
            false += not any(overlap[g, d] >= iou for g in hidden)
    return {"switches": len(switches), "misses": misses, "false_positives": false,
            "ids_per_person": {PEOPLE[p].name: len(v) for p, v in sorted(given.items())}, "events": switches}


def benchmark(fer, frames: int = FRAMES, seed: int = 0, **tracker) -> dict:
    """Run ``fer`` (a FERPipeline) over the scene, tracking with its tracker (made anew with the ``tracker`` keyword
    arguments, if any) and count the identity switches (identity_switches)."""
    fer.reset()
    if tracker:
        fer.tracker = type(fer.tracker)(**tracker)
    truths, tracks = [], []
    for frame, truth in scene(frames, seed):
        faces = fer.process([frame], track=True)[0]
        truths.append(truth)
        tracks.append((np.array([f.box for f in faces], float).reshape(-1, 4), [f.track_id for f in faces]))
    return identity_switches(truths, tracks)


def main(argv: list[str] | None = None) -> int:
    """Print the identity switches of the pipeline's tracker on the scene (python tools/track_benchmark.py)."""
    import argparse
    import json

    from spayolo.pipeline import FERPipeline

    parser = argparse.ArgumentParser(prog="python tools/track_benchmark.py", description=__doc__)
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames of the scene (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sensor noise and exposure seed (default: %(default)s)")
    parser.add_argument("--detect-every", type=int, default=5, help="FERPipeline's detect_every (default: 5)")
    parser.add_argument("--place-only", action="store_true",
                        help="track by place alone (the Kalman filter and overlap), without the faces' looks")
    parser.add_argument("--save", default="", help="also write the scene with its true boxes as this .mp4")
    args = parser.parse_args(argv)
    if args.save:
        writer = cv2.VideoWriter(args.save, cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
        for frame, truth in scene(args.frames, args.seed):
            for person, box in zip(truth.ids, truth.boxes.astype(int)):
                cv2.rectangle(frame, tuple(box[:2]), tuple(box[2:]), (0, 255, 0), 1)
                cv2.putText(frame, PEOPLE[person].name, (box[0], box[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (0, 255, 0))
            writer.write(frame)
        writer.release()
    result = benchmark(FERPipeline(detect_every=args.detect_every), args.frames, args.seed, looks=not args.place_only)
    print(json.dumps(result))
    return 0
