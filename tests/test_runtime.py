"""The deployment path without torch: MTCNN's cascade, crops, the ONNX classifier, tracking and FERPipeline on ONNX
Runtime, NumPy and OpenCV. CI runs this file in the runtime install too (spayolo-runtime: no torch, no Ultralytics),
so nothing here may import them."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import PHOTOS, package_file, run_cli, small_hopper
from spayolo.classifier import (
    DEFAULT_ENSEMBLE,
    DEFAULT_MODELS,
    FAST_MODEL,
    OnnxClassifier,
    mean_over_views,
    probabilities,
)
from spayolo.face.align import LUMA, aligned_crops
from spayolo.face.detectors import Detections, MTCNNDetector
from spayolo.face.mtcnn import nms
from spayolo.paths import packaged
from spayolo.pipeline import FERPipeline
from spayolo.sources import open_source, read_image
from spayolo.track import FaceTracker, box_iou

SHIPPED_NAMES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # FER2013's folders, sorted
FAST = packaged("weights", f"{FAST_MODEL}.onnx")


def _photos() -> dict:
    """The face photos of PHOTOS whose package this install has (the runtime install has spayolo's own only)."""
    return {key: boxes for key, boxes in PHOTOS.items() if importlib.util.find_spec(key[0])}


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    return MTCNNDetector(min_face=20)


@pytest.fixture(scope="module")
def fer() -> FERPipeline:
    return FERPipeline()


def _spy_on_imports(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    heavy = ("torch", "torchvision", "ultralytics", "matplotlib", "polars")
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_onnx_pipeline_and_the_live_command_import_no_torch():
    photo = package_file("spayolo", "assets", "grace_hopper.jpg")
    assert _spy_on_imports(f"from spayolo import FERPipeline\nFERPipeline()({str(photo)!r})\n"
                           f"import spayolo.apps.live, spayolo.cli") == []


# --- MTCNN's cascade ----------------------------------------------------------------------------------------------


def test_mtcnn_finds_the_faces_of_real_photos(mtcnn):
    photos = _photos()
    images = [read_image(package_file(*key)) for key in photos]
    for dets, truth in zip(mtcnn(images), photos.values()):
        truth = np.array(truth, np.float32)
        assert isinstance(dets, Detections) and len(dets) == len(truth), dets.boxes
        assert (box_iou(truth, dets.boxes).max(1) >= 0.5).all()
        assert dets.landmarks.shape == (len(truth), 5, 2) and (dets.scores > 0.9).all()
        # landmarks inside their box; image-left eye left of the image-right eye, eyes above the mouth
        lm, b = dets.landmarks, dets.boxes
        assert ((lm >= b[:, None, :2] - 2) & (lm <= b[:, None, 2:] + 2)).all()
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, :2, 1].max(1) < lm[:, 3:, 1].min(1)).all()


def test_no_faces_on_blank_and_noise(mtcnn):
    rng = np.random.default_rng(0)
    frames = [np.zeros((240, 320, 3), np.uint8), np.full((240, 320, 3), 128, np.uint8),
              rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    assert [len(d) for d in mtcnn(frames)] == [0, 0, 0]


def test_batch_matches_single_and_mixed_sizes(mtcnn):
    small = small_hopper()
    out = mtcnn([small, small[:, ::-1].copy(), np.zeros((64, 64, 3), np.uint8)])
    assert [len(d) for d in out] == [1, 1, 0]
    np.testing.assert_allclose(out[0].boxes, mtcnn([small])[0].boxes, atol=1e-3)  # a batch is the frames one by one
    flipped = out[1].boxes[0].copy()
    flipped[[0, 2]] = 256 - flipped[[2, 0]]
    assert box_iou(out[0].boxes, flipped[None])[0, 0] > 0.8  # the mirror image gives the mirrored box


def test_min_face_applies_to_mtcnn():
    """A face of about 30x36 px, which MTCNN's cascade also finds when its pyramid starts at 40 px, is found at
    min_face 20 and dropped at min_face 40, as the other detectors drop it."""
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[50:150, 100:186] = small_hopper(86, 100)
    found = MTCNNDetector(min_face=20)([frame])[0]
    assert len(found) == 1 and 20 <= (found.boxes[0, 2:] - found.boxes[0, :2]).max() < 40
    assert len(MTCNNDetector(min_face=40)([frame])[0]) == 0


def test_refine_relocates_moved_faces(mtcnn):
    frame = np.full((300, 600, 3), 90, np.uint8)
    frame[:, :256], frame[:, 320:576] = small_hopper(), small_hopper()
    previous = mtcnn([frame])[0]
    moved = np.roll(frame, (9, -12), axis=(0, 1))  # both faces shift by a fraction of their size
    found = mtcnn.refine([moved, np.zeros_like(frame)], [previous, previous])
    assert len(previous) == len(found[0]) == 2 and len(found[1]) == 0  # a face that left the frame is dropped
    np.testing.assert_allclose(found[0].boxes, mtcnn.refine([moved], [previous])[0].boxes, atol=1e-3)
    assert box_iou(found[0].boxes, previous.boxes + [-12, 9, -12, 9]).diagonal().min() > 0.7
    assert found[0].landmarks.shape == (2, 5, 2)


def test_nms_by_iou_by_smaller_box_and_per_group():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 4, 4], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # IoU(0, 1) = 90 / 110 = 0.82; box 2 lies inside box 0 (IoU 0.16, 1.0 over the smaller box)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.85).tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores, 0.5, smaller=True).tolist() == [0, 3]
    assert nms(boxes, scores, 0.5, groups=np.array([0, 1, 0, 0])).tolist() == [0, 1, 2, 3]  # groups never suppress
    assert nms(boxes, np.array([0.1, 0.8, 0.7, 0.6], np.float32), 0.5).tolist() == [1, 2, 3]  # best score first
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


# --- aligned crops ------------------------------------------------------------------------------------------------


def _boxes(*boxes, landmarks=None) -> Detections:
    return Detections(np.array(boxes, np.float32), np.ones(len(boxes), np.float32), landmarks)


def test_crop_is_the_box_region_rgb_in_0_1():
    """Margin 0, no landmarks, a box of the output size: each output pixel is the frame's pixel, RGB, / 255."""
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    crop = aligned_crops(frame, _boxes([40, 30, 72, 62]), 32, margin=0, gray=False)
    expected = frame[30:62, 40:72, ::-1].transpose(2, 0, 1) / 255
    assert crop.shape == (1, 3, 32, 32) and crop.dtype == np.float32
    np.testing.assert_allclose(crop[0], expected, atol=2e-3)  # OpenCV's bilinear weights step in 1/32 px


@pytest.mark.parametrize("bgr, rgb", [((255, 0, 0), (0, 0, 1)), ((0, 255, 0), (0, 1, 0)), ((0, 0, 255), (1, 0, 0))])
def test_crop_colour_order_and_luma_weights(bgr, rgb):
    """A BGR frame becomes RGB crops; gray crops hold 0.299 R + 0.587 G + 0.114 B in every channel."""
    frame = np.full((100, 100, 3), bgr, np.uint8)
    det = _boxes([30, 30, 70, 70])
    colour = aligned_crops(frame, det, 16, gray=False)
    np.testing.assert_allclose(colour[0].mean((1, 2)), rgb, atol=1e-6)
    gray = aligned_crops(frame, det, 16, gray=True)
    np.testing.assert_allclose(gray[0], np.full((3, 16, 16), float(np.dot(rgb, LUMA))), atol=1e-6)


def test_crop_levels_the_eyes():
    """Eyes one above the other (a face on its side) turn the crop by 90 degrees: the frame's rows become columns."""
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    box = [40, 30, 72, 62]
    eyes_down = np.array([[[56, 40], [56, 52], [56, 46], [50, 50], [62, 50]]], np.float32)  # eye 2 below eye 1
    plain = aligned_crops(frame, _boxes(box), 32, margin=0, gray=False)
    turned = aligned_crops(frame, _boxes(box, landmarks=eyes_down), 32, margin=0, gray=False)
    np.testing.assert_allclose(turned[0], np.rot90(plain[0], 1, axes=(1, 2)), atol=2e-3)


def test_zoomed_view_is_the_centre_of_a_crop_twice_the_size():
    """A view of fraction 1/2 at size S samples the frame where the central half of a crop at size 2S does."""
    img = small_hopper()
    det = MTCNNDetector()([img])[0]
    whole = aligned_crops(img, det, 64, margin=0.2)
    crop, zoomed = aligned_crops(img, det, 32, margin=0.2, fractions=(1.0, 0.5)).reshape(2, -1, 3, 32, 32)
    np.testing.assert_array_equal(crop, aligned_crops(img, det, 32, margin=0.2))  # the first view is the crop
    centre = whole[..., 16:48, 16:48]
    assert np.abs(zoomed - centre).mean() < 0.005 and np.abs(zoomed - whole[..., ::2, ::2]).mean() > 0.1


# --- the classifier -----------------------------------------------------------------------------------------------


def test_probabilities_keep_probabilities_and_softmax_logits():
    probs = np.array([[0.2, 0.3, 0.5]], np.float32)
    np.testing.assert_array_equal(probabilities(probs), probs)
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]], np.float32)
    e = np.exp(logits)
    np.testing.assert_allclose(probabilities(logits), e / e.sum(1, keepdims=True), rtol=1e-6)
    unnormalised = np.array([[0.5, 0.5, 0.5]], np.float32)  # non-negative but not summing to 1: logits too
    np.testing.assert_allclose(probabilities(unnormalised), [[1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_views_and_mirrors_are_averaged():
    """Each face's probability is the mean over its views and their mirror images, computed here by hand."""
    rng = np.random.default_rng(0)
    views = rng.random((2, 3, 3, 4, 4)).astype(np.float32)  # 2 views of 3 faces
    run = lambda x: np.stack([x[0][:, :, :, 0].mean((1, 2)), x[0][:, :, :, -1].mean((1, 2))], 1)  # noqa: E731
    left, right = views[..., 0].mean((2, 3)), views[..., -1].mean((2, 3))  # (views, faces)
    np.testing.assert_allclose(mean_over_views(run, [views], mirror=False), np.stack([left, right], -1).mean(0),
                               rtol=1e-6)
    both = np.stack([(left + right) / 2, (right + left) / 2], -1).mean(0)  # a mirror swaps the left and right column
    np.testing.assert_allclose(mean_over_views(run, [views], mirror=True), both, rtol=1e-6)


@pytest.mark.parametrize("path", [FAST, *DEFAULT_MODELS["onnx"]], ids=lambda p: p.stem)
def test_shipped_onnx_classifier(path):
    classifier = OnnxClassifier(path)
    assert classifier.names == SHIPPED_NAMES and classifier.sizes == (64,)
    crops = aligned_crops(small_hopper(), MTCNNDetector()([small_hopper()])[0], 64)
    probs = classifier({64: crops[None]})
    assert probs.shape == (1, 7) and abs(probs.sum() - 1) < 1e-5
    dark = classifier({64: (crops * 0.2)[None]})
    assert np.abs(dark - probs).max() > 0.01  # the model reads its input


# --- tracking -----------------------------------------------------------------------------------------------------


def test_tracker_smooths_and_forgets():
    t = FaceTracker(alpha=0.5, max_missed=2)
    box = np.array([[0, 0, 10, 10]], np.float32)
    ids, p = t.update(box, np.array([[1.0, 0.0]]))
    ids, p = t.update(box + 1, np.array([[0.0, 1.0]]))
    assert ids == [1] and np.allclose(p, [[0.5, 0.5]])
    for _ in range(2):  # missed twice: still known
        t.update(box[:0], np.zeros((0, 2)))
    assert t.update(box, np.array([[0.0, 1.0]]))[0] == [1]
    for _ in range(3):  # missed three times: forgotten, the same place now starts a new track
        t.update(box[:0], np.zeros((0, 2)))
    ids, p = t.update(box, np.array([[1.0, 0.0]]))
    assert ids == [2] and np.allclose(p, [[1.0, 0.0]])


# --- FERPipeline and the live command ------------------------------------------------------------------------------


def test_default_pipeline_on_a_photo(fer):
    assert fer.backend == "onnx" and fer.sizes == (64,) and fer.tta == "flip+zoom" and fer.names == SHIPPED_NAMES
    faces = fer(small_hopper())
    assert len(faces) == 1
    face = faces[0]
    assert face.label == fer.names[int(face.probs.argmax())] and abs(face.probs.sum() - 1) < 1e-4
    assert set(face.to_dict()) == {"box", "score", "landmarks", "track_id", "label", "probs"}
    assert fer(np.zeros((120, 160, 3), np.uint8)) == []


def test_an_ensemble_of_one_model_twice_is_that_model(fer):
    twice, once = (FERPipeline(model, detector=fer.detector) for model in ([FAST, FAST], FAST))
    img = small_hopper()
    np.testing.assert_allclose(twice(img)[0].probs, once(img)[0].probs, atol=1e-6)


def test_the_default_averages_the_shipped_ensemble(fer):
    """FERPipeline() runs DEFAULT_ENSEMBLE's INT8 ONNX files: the mean of what each member says alone, which differ."""
    assert [Path(m.source) for m in fer.classifier.members] == list(DEFAULT_MODELS["onnx"])
    assert [p.name for p in DEFAULT_MODELS["onnx"]] == [f"{name}-int8.onnx" for name in DEFAULT_ENSEMBLE]
    img = small_hopper()
    alone = [FERPipeline(path, detector=fer.detector)(img)[0].probs for path in DEFAULT_MODELS["onnx"]]
    assert min(np.abs(a - b).max() for a, b in itertools.combinations(alone, 2)) > 1e-3
    np.testing.assert_allclose(fer(img)[0].probs, np.mean(alone, 0), atol=1e-6)


def test_an_ensemble_runs_its_members_side_by_side_on_a_cpu(monkeypatch):
    """Without threads, a CPU ensemble runs one member per core at once (the cores shared out among them) and says
    what its members say one after another; given threads, or on a GPU, one member at a time."""
    from spayolo import runtime
    from spayolo.classifier import load_classifier

    assert runtime.ensemble_threads(3, cores=2) == (2, 1) and runtime.ensemble_threads(3, cores=16) == (3, 5)
    assert runtime.ensemble_threads(1, cores=2) == (1, 2) and runtime.ensemble_threads(3, 4, cores=16) == (1, 4)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    models = list(DEFAULT_MODELS["onnx"])
    side_by_side, in_turn = load_classifier(models), load_classifier(models, threads=2)
    assert side_by_side.pool._max_workers == 2 and in_turn.pool is None
    threads = [m.model.session.get_session_options().intra_op_num_threads for m in side_by_side.members]
    assert threads == [1] * len(models)
    assert load_classifier(models, device="cuda").pool is None
    views = {64: np.random.default_rng(0).random((2, 3, 3, 64, 64), np.float32)}
    np.testing.assert_allclose(side_by_side(views, mirror=True), in_turn(views, mirror=True), atol=1e-5)


def test_an_ensemble_starts_the_member_slowest_on_the_last_call_first():
    """Three members on two threads: the slowest of the last call starts at once, the fastest waits for a thread."""
    from spayolo.classifier import Ensemble

    started = []

    class Member:
        names, sizes = ["a", "b"], (8,)

        def __init__(self, source: str, delay: float):
            self.source, self.delay = source, delay

        def __call__(self, views, mirror=False):
            started.append(self.source)
            time.sleep(self.delay)
            return np.array([[self.delay, 1 - self.delay]])

    members = [Member("middle", 0.03), Member("fast", 0.001), Member("slow", 0.1)]
    ensemble = Ensemble(members, together=2)
    first = ensemble({8: np.zeros((1, 1, 3, 8, 8), np.float32)})
    assert started[2] == "slow" and ensemble.seconds[2] > ensemble.seconds[0] > ensemble.seconds[1]
    second = ensemble({8: np.zeros((1, 1, 3, 8, 8), np.float32)})
    assert set(started[3:5]) == {"slow", "middle"} and started[5] == "fast"
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(second, [[0.131 / 3, 1 - 0.131 / 3]])


def test_image_with_a_file_name_that_is_not_utf8(tmp_path, fer):
    """Linux allows any bytes in a name; OpenCV's own reader crashed on this one (segmentation fault)."""
    name = os.fsdecode(b"caf\xe9.jpg")
    cv2.imencode(".jpg", small_hopper())[1].tofile(str(tmp_path / name))
    assert read_image(tmp_path / name).shape == (300, 256, 3)
    source = open_source(tmp_path)
    assert [len(faces) for _, _, faces in fer.stream(source)] == [1] and source.current == name


def test_live_on_a_photo_writes_video_and_records(tmp_path):
    photo = tmp_path / "hopper.jpg"
    cv2.imwrite(str(photo), small_hopper())
    out = run_cli(["spayolo", "live", "--source", str(photo), "--no-show", "--save", "out.mp4", "--json", "out.jsonl"],
                  cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert record["file"] == "hopper.jpg" and len(record["faces"]) == 1
    assert set(record["faces"][0]["probs"]) == set(SHIPPED_NAMES) and (tmp_path / "out.mp4").stat().st_size > 0
    assert "UserWarning" not in out.stderr  # nothing is exported at run time


def test_a_shipped_model_by_name(fer):
    """--model spayolo-n-fer2013 is the shipped file, wherever the package is installed; an unknown name lists them."""
    from spayolo.errors import MissingFileError

    named = FERPipeline(FAST_MODEL, detector=fer.detector)
    assert named.classifier.source == str(FAST)
    np.testing.assert_array_equal(named(small_hopper())[0].probs, FERPipeline(FAST)(small_hopper())[0].probs)
    with pytest.raises(MissingFileError, match="nope.*by name: .*spayolo-n-fer2013"):
        FERPipeline("nope", detector=fer.detector)


def test_commands_of_the_full_install_say_so_in_one_line(monkeypatch, capsys):
    """In the runtime install a training command meets a missing torch: one line naming it and exit 2; a missing
    module of spayolo's own is a broken install and keeps its traceback."""
    from spayolo import cli

    def missing(name):
        def load(module):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)

        return load

    monkeypatch.setattr(cli.importlib, "import_module", missing("torch"))
    assert cli.main(["evaluate", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "spayolo evaluate: error: this needs torch, part of the full install" in err and "Traceback" not in err
    monkeypatch.setattr(cli.importlib, "import_module", missing("spayolo.nowhere"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["evaluate", "--data", "x"])
