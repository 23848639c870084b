"""The tracker: least-cost pairing, appearance, ids that survive crossing, hiding and leaving; the identity benchmark's
scene and its switch count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spayolo.analysis.identity import PEOPLE, Truth, identity_switches, scene
from spayolo.face.detectors import MTCNNDetector
from spayolo.track import FaceTracker, appearance, box_iou, min_cost_matching

FACE = 60  # side of the square test faces, pixels
PROBS = np.array([[0.2, 0.8]])


def test_min_cost_matching_is_the_cheapest_pairing():
    rng = np.random.default_rng(0)
    for n, m in itertools.product(range(1, 5), repeat=2):
        for costs in (rng.normal(size=(n, m)), rng.integers(0, 3, (n, m)).astype(float)):  # ties too
            rows, cols = min_cost_matching(costs)
            k = min(n, m)
            assert len(set(rows.tolist())) == len(set(cols.tolist())) == len(rows) == k
            wide = costs if n <= m else costs.T
            pairings = itertools.permutations(range(wide.shape[1]), len(wide))
            best = min(sum(wide[i, p[i]] for i in range(len(wide))) for p in pairings)
            assert costs[rows, cols].sum() == pytest.approx(best)
    assert [a.tolist() for a in min_cost_matching(np.zeros((0, 3)))] == [[], []]


def _frame(faces: dict[tuple[int, int, int], tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame with a square patch per (B, G, R) colour at its (x, y) top-left, and the patches' boxes."""
    frame = np.full((240, 480, 3), 128, np.uint8)
    boxes = []
    for colour, (x, y) in faces.items():
        frame[y : y + FACE, x : x + FACE] = colour
        frame[y + 20 : y + 30, x + 10 : x + 50] = (20, 20, 20)  # eyes: the patches are not flat
        boxes.append([x, y, x + FACE, y + FACE])
    return frame, np.array(boxes, float).reshape(-1, 4)


RED, BLUE = (40, 40, 200), (200, 60, 40)


def test_appearance_tells_faces_apart():
    frame, boxes = _frame({RED: (20, 20), BLUE: (200, 20)})
    looks = appearance(frame, boxes)
    assert looks.shape == (2, 384) and np.allclose(np.linalg.norm(looks, axis=1), 1)
    assert 1 - looks[0] @ looks[1] > 0.25  # faces apart, the grey around them alike
    shifted = appearance(frame, boxes + [2, 1, 2, 1])  # the same face a little off
    assert 1 - (looks * shifted).sum(1).max() < 0.1
    assert not appearance(frame, np.array([[500.0, 10, 520, 30]])).any()  # outside the frame: no looks


def _run(tracker: FaceTracker, frames: list[dict], use_frames: bool = True) -> list[list[int]]:
    out = []
    for faces in frames:
        frame, boxes = _frame(faces)
        ids, _ = tracker.update(boxes, np.repeat(PROBS, len(boxes), 0), frame if use_frames else None)
        out.append(ids)
    return out


def test_a_face_that_leaves_and_comes_back_gets_its_id_back():
    frames = [{RED: (20 + 4 * i, 40), BLUE: (300, 140)} for i in range(10)]
    frames += [{BLUE: (300, 140)}] * 40  # red gone for longer than max_missed
    frames += [{RED: (360, 40), BLUE: (300, 140)}] * 3  # back elsewhere
    ids = _run(FaceTracker(), frames)
    assert ids[0] == ids[-1] == [1, 2]
    assert _run(FaceTracker(), frames, use_frames=False)[-1] == [3, 2]  # by place alone it is a new face
    assert _run(FaceTracker(looks=False), frames)[-1] == [3, 2]


def test_a_stranger_where_a_face_was_lost_gets_a_new_id():
    green = (40, 200, 40)
    frames = [{RED: (100, 40)}] * 5 + [{}] * 20 + [{green: (100, 40)}]
    assert _run(FaceTracker(), frames)[-1] == [2]


def test_the_demo_videos_five_people_keep_five_ids():
    """The demo cuts from one photo to the next: a new face where another was lost must not take its id."""
    from spayolo.apps.demo import demo_video
    from spayolo.pipeline import FERPipeline

    ids = [[f.track_id for f in faces] for _, _, faces in FERPipeline().stream(demo_video())]
    assert sorted({i for frame in ids for i in frame}) == [1, 2, 3, 4, 5]
    assert [sorted(ids[k]) for k in (0, 17, 18, 35, 36, 53)] == [[1], [1], [2, 3], [2, 3], [4, 5], [4, 5]]


def test_crossing_faces_keep_their_ids():
    # red walks right, blue left, on one line: in the middle blue covers red for a few frames
    frames = []
    for i in range(30):
        red, blue = (40 + 12 * i, 80), (400 - 12 * i, 80)
        frames.append({RED: red, BLUE: blue} if abs(red[0] - blue[0]) > FACE // 2 else {BLUE: blue})
    ids = _run(FaceTracker(), frames)
    assert ids[0] == [1, 2] and ids[-1] == [1, 2]


def test_smoothing_restarts_after_a_long_absence():
    t = FaceTracker(alpha=0.5, max_missed=2)
    frame, boxes = _frame({RED: (100, 40)})
    t.update(boxes, np.array([[1.0, 0.0]]), frame)
    empty = np.zeros((0, 4))
    for _ in range(2):  # a short gap: the average goes on
        t.update(empty, np.zeros((0, 2)), frame)
    assert np.allclose(t.update(boxes, np.array([[0.0, 1.0]]), frame)[1], [[0.5, 0.5]])
    for _ in range(5):  # a long gap: found again by its looks, the average starts anew
        t.update(empty, np.zeros((0, 2)), frame)
    ids, probs = t.update(boxes, np.array([[0.0, 1.0]]), frame)
    assert ids == [1] and np.allclose(probs, [[0.0, 1.0]])


# --- the identity benchmark ---------------------------------------------------------------------------------------


def _truth(*boxes) -> Truth:
    return Truth(np.arange(len(boxes)), np.array(boxes, float).reshape(-1, 4), np.ones(len(boxes)))


def test_switches_are_counted_as_clear_mot_does():
    a, b = [0, 0, 10, 10], [50, 0, 60, 10]
    truths = [_truth(a, b)] * 4
    steady = [(np.array([a, b]), [1, 2])] * 4
    assert identity_switches(truths, steady)["switches"] == 0
    swapped = steady[:2] + [(np.array([a, b]), [2, 1])] * 2  # a swap: both faces switch once
    result = identity_switches(truths, swapped)
    assert result["switches"] == 2 and result["events"] == [(2, PEOPLE[0].name, 1, 2), (2, PEOPLE[1].name, 2, 1)]
    gap = steady[:1] + [(np.array([b]), [2])] + [(np.array([a, b]), [3, 2])] * 2  # a missed, then back as id 3
    result = identity_switches(truths, gap)
    assert (result["switches"], result["misses"]) == (1, 1) and result["ids_per_person"][PEOPLE[0].name] == 2
    hidden = Truth(np.arange(2), np.array([a, b], float), np.array([0.1, 1.0]))  # a hidden: b's box over it is ignored
    result = identity_switches([hidden], [(np.array([a, b]), [2, 2])])
    assert (result["switches"], result["misses"], result["false_positives"]) == (0, 0, 0)


def test_the_scenes_hand_placed_boxes_hold_the_faces():
    frame, truth = next(scene(frames=1))
    assert frame.shape == (480, 640, 3) and len(truth.ids) == len(PEOPLE) and (truth.visible > 0.9).all()
    found = MTCNNDetector()([frame])[0].boxes
    assert (box_iou(truth.boxes, found).max(1) >= 0.5).all()
