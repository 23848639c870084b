"""FERPipeline on real photos with a tiny untrained classifier, tracking, and tools/live.py end to end."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spayolo.face.detectors import MTCNNDetector
from spayolo.pipeline import FERPipeline, IoUTracker, box_iou
from conftest import REPO, run_cli
from test_face import PHOTOS, package_file

IMGSZ = 32


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained spayolo-n classifier saved in Ultralytics' checkpoint format, trained-args imgsz 32."""
    from ultralytics import YOLO

    model = YOLO("spayolo-n.yaml").model
    model.names = {i: n for i, n in enumerate(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model, "train_args": {"imgsz": IMGSZ, "task": "classify"}}, path)
    return path


@pytest.fixture(scope="module")
def fer(tiny_ckpt) -> FERPipeline:
    return FERPipeline(tiny_ckpt, detector=MTCNNDetector("cpu"))


def small_hopper(w: int = 256, h: int = 300) -> np.ndarray:
    return cv2.resize(cv2.imread(str(package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"))), (w, h))


def test_photos_labels_and_boxes(fer):
    assert fer.imgsz == IMGSZ and fer.names[3] == "happy"
    paths = [package_file(*k) for k in PHOTOS]
    results = fer(paths)
    for faces, truth in zip(results, PHOTOS.values()):
        assert len(faces) == len(truth)
        boxes = np.stack([f.box for f in faces])
        assert (box_iou(np.array(truth, np.float32), boxes).max(1) >= 0.5).all()
        for f in faces:
            assert f.label in fer.names and f.label == fer.names[int(f.probs.argmax())]
            assert f.probs.shape == (7,) and abs(f.probs.sum() - 1) < 1e-4 and f.track_id is None
    d = faces[0].to_dict()
    assert set(d) == {"box", "score", "landmarks", "track_id", "label", "probs"} and len(d["landmarks"]) == 5
    assert fer(np.zeros((120, 160, 3), np.uint8)) == []


def test_crop_aligns_eyes(fer):
    img = small_hopper()
    det = fer.detector([img])[0]
    rotated = cv2.warpAffine(img, cv2.getRotationMatrix2D((128, 150), 20, 1.0), (256, 300))
    det_r = fer.detector([rotated])[0]
    eyes = det_r.landmarks[0, 1] - det_r.landmarks[0, 0]
    assert abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) > 10  # the rotated face has tilted eyes ...
    face = fer(img)[0]  # the pipeline's boxes and landmarks are the detector's own
    np.testing.assert_allclose(face.box, det.boxes[0], atol=1e-3)
    np.testing.assert_allclose(face.landmarks, det.landmarks[0], atol=1e-3)
    a, b = fer.crop(img, det), fer.crop(rotated, det_r)
    assert a.shape == (1, 3, IMGSZ, IMGSZ) and torch.equal(a[:, 0], a[:, 2])  # grayscale replicated
    assert 0 <= a.min() and a.max() <= 1
    # ... but after alignment both crops look alike (much closer than the unaligned rotated crop)
    c = fer.crop(rotated, dataclasses.replace(det_r, landmarks=None))
    assert (a - b).abs().mean() < 0.6 * (a - c).abs().mean()


def test_tracking_ids_stable(fer):
    img = small_hopper(128, 150)

    def frame(x: int) -> np.ndarray:
        canvas = np.full((150, 320, 3), 90, np.uint8)
        canvas[:, x : x + 128] = img
        return canvas

    frames = [frame(6 * k) for k in range(4)]
    fer.reset()
    ids = [[f.track_id for f in faces] for faces in fer.process(frames, track=True)]
    assert ids == [[1]] * 4
    ids2 = fer.process([frame(190)], track=True)[0]  # jumped far: a new track
    assert [f.track_id for f in ids2] == [2]


class CountingMTCNN(MTCNNDetector):
    """MTCNN that counts its full detections and its re-locations."""

    def __init__(self):
        super().__init__("cpu")
        self.calls = {"full": 0, "refine": 0}

    def __call__(self, images):
        self.calls["full"] += 1
        return super().__call__(images)

    def refine(self, images, previous):
        self.calls["refine"] += 1
        return super().refine(images, previous)


def test_detect_every_nth_frame_and_relocate_between(tiny_ckpt):
    img = small_hopper(128, 150)
    frames = [np.pad(img, ((0, 0), (4 * k, 60 - 4 * k), (0, 0)), constant_values=90) for k in range(7)]
    every_frame = FERPipeline(tiny_ckpt, detector=MTCNNDetector("cpu"), detect_every=1)
    reference = [every_frame.process([f], track=True)[0] for f in frames]
    fer = FERPipeline(tiny_ckpt, detector=CountingMTCNN(), detect_every=3)
    faces = [fer.process([f], track=True)[0] for f in frames]
    assert fer.detector.calls == {"full": 3, "refine": 4}  # frames 0, 3, 6 detected; 1, 2, 4, 5 re-located
    assert [[f.track_id for f in x] for x in faces] == [[1]] * 7
    for mine, theirs in zip(faces, reference):
        assert box_iou(mine[0].box[None], theirs[0].box[None])[0, 0] > 0.8
    fer.process(frames[:2], track=False)  # stills and batches always get full detection
    assert fer.detector.calls == {"full": 4, "refine": 4}
    with pytest.raises(ValueError, match="detect_every"):
        FERPipeline(tiny_ckpt, detector=MTCNNDetector("cpu"), detect_every=0)


def test_onnx_backend_matches_torch(fer, tiny_ckpt):
    img = small_hopper()
    onnx_fer = FERPipeline(tiny_ckpt, detector=MTCNNDetector("cpu"), backend="onnx")
    assert onnx_fer.classifier.runner is not None and onnx_fer.names == fer.names
    mine, theirs = onnx_fer(img), fer(img)
    assert len(mine) == len(theirs) == 1
    np.testing.assert_allclose(mine[0].probs, theirs[0].probs, atol=1e-4)
    assert mine[0].label == theirs[0].label
    with pytest.raises(ValueError, match="backend"):
        FERPipeline(tiny_ckpt, backend="tflite")


def test_exported_classifier_and_wrong_inputs(tmp_path, tiny_ckpt, fer, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    exported = YOLO(str(tiny_ckpt)).export(format="onnx", imgsz=IMGSZ, dynamic=True, simplify=True, opset=17)
    onnx_fer = FERPipeline(exported, detector=fer.detector)
    assert onnx_fer.imgsz == IMGSZ and onnx_fer.names == fer.names  # both read from the ONNX metadata
    img = small_hopper()
    np.testing.assert_allclose(onnx_fer(img)[0].probs, fer(img)[0].probs, atol=1e-4)
    with pytest.raises(ValueError, match=rf"exported for {IMGSZ}x{IMGSZ}.*imgsz={IMGSZ}"):
        FERPipeline(exported, detector=fer.detector, imgsz=2 * IMGSZ)
    detect = tmp_path / "detect.pt"
    YOLO("yolov8n.yaml").save(detect)
    with pytest.raises(ValueError, match="detect model, not a classifier"):
        FERPipeline(detect, detector=fer.detector)


def test_tracker_ema():
    t = IoUTracker(alpha=0.5)
    box = np.array([[0, 0, 10, 10]], np.float32)
    ids, p = t.update(box, np.array([[1.0, 0.0]]))
    ids, p = t.update(box + 1, np.array([[0.0, 1.0]]))
    assert ids == [1] and np.allclose(p, [[0.5, 0.5]])


def test_bad_frames_and_files_are_named(fer, tmp_path):
    img = small_hopper()
    gray, bgra = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    assert len(fer(gray)) == len(fer(bgra)) == len(fer(gray[..., None])) == 1  # converted, not refused
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    for source, error, message in ((np.zeros((0, 0, 3), np.uint8), ValueError, "empty frame"),
                                   (img.astype(np.float32), ValueError, "uint8"),
                                   (img[..., :2].copy(), ValueError, r"HxWx3.*\(300, 256, 2\)"),
                                   (None, TypeError, "NoneType"),
                                   (tmp_path / "missing.jpg", FileNotFoundError, "missing.jpg"),
                                   (corrupt, ValueError, "cannot decode image .*corrupt.jpg")):
        with pytest.raises(error, match=message):
            fer(source)
    with pytest.raises(ValueError, match="index 1 of the batch"):
        fer.process([img, np.zeros((0, 5, 3), np.uint8)])


def test_missing_model_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        FERPipeline(tmp_path / "nope.pt")


def write_video(path: Path, n: int = 3) -> Path:
    img = small_hopper(160, 120)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for k in range(n):
        w.write(np.roll(img, 3 * k, axis=1))
    w.release()
    return path


def test_live_tool(tmp_path, tiny_ckpt):
    video = write_video(tmp_path / "in.mp4")
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    r = run_cli([sys.executable, str(REPO / "tools" / "live.py"), "--source", str(video), "--model", str(tiny_ckpt),
                 "--no-show", "--save", str(out), "--json", str(js)], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in js.read_text().splitlines()]
    assert [x["frame"] for x in lines] == [0, 1, 2]
    assert all(len(x["faces"]) == 1 and x["faces"][0]["track_id"] == 1 for x in lines)
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 3 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 160

    missing = tmp_path / "missing_clip.mp4"
    r = run_cli([sys.executable, str(REPO / "tools" / "live.py"), "--source", str(missing), "--model", str(tiny_ckpt),
                 "--no-show", "--json", str(js)], cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "missing_clip.mp4" in r.stderr and "not found" in r.stderr
