"""MTCNN port on real photos from installed packages: every face found (IoU >= 0.5), no false positives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from spayolo.face.detectors import Detections, MTCNNDetector, YOLOFaceDetector, YuNetDetector, build_detector
from spayolo.face.mtcnn import ONet, PNet, RNet
from spayolo.pipeline import box_iou


def package_file(package: str, *parts: str) -> Path:
    return Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)), *parts)


# face boxes (x1, y1, x2, y2) annotated by eye on the images, forehead to chin
PHOTOS = {
    ("ultralytics", "assets", "zidane.jpg"): [(556, 258, 672, 436), (930, 100, 1050, 272)],
    ("ultralytics", "assets", "bus.jpg"): [(115, 418, 155, 468), (270, 423, 306, 472)],
    ("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"): [(175, 118, 355, 335)],
}


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector("cpu")


def test_weight_shapes_and_tf_layout(detector):
    m = detector.model
    assert m.pnet.body[0].weight.shape == (10, 3, 3, 3) and m.rnet.fc[0].weight.shape == (128, 576)
    assert m.onet.fc[0].weight.shape == (256, 1152) and m.onet.lmk.weight.shape == (10, 256)
    # output sizes the dense layers need: 24 -> 3x3x64, 48 -> 3x3x128; PNet maps 12x12 to one cell
    assert m.rnet.body(torch.zeros(1, 3, 24, 24)).shape == (1, 64, 3, 3)
    assert m.onet.body(torch.zeros(1, 3, 48, 48)).shape == (1, 128, 3, 3)
    assert m.pnet(torch.zeros(1, 3, 12, 12))[1].shape == (1, 1, 1)
    assert sum(p.numel() for p in PNet().parameters()) == 6632
    assert isinstance(RNet(), torch.nn.Module) and isinstance(ONet(), torch.nn.Module)


def test_real_photos(detector):
    import cv2

    images = [cv2.imread(str(package_file(*k))) for k in PHOTOS]
    for dets, truth in zip(detector(images), PHOTOS.values()):
        truth = np.array(truth, np.float32)
        assert isinstance(dets, Detections) and len(dets) == len(truth), dets.boxes
        iou = box_iou(truth, dets.boxes)
        assert (iou.max(1) >= 0.5).all(), iou
        assert dets.landmarks.shape == (len(truth), 5, 2) and (dets.scores > 0.9).all()
        # landmarks inside their box; image-left eye left of the image-right eye, eyes above the mouth
        lm, b = dets.landmarks, dets.boxes
        assert ((lm >= b[:, None, :2] - 2) & (lm <= b[:, None, 2:] + 2)).all()
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, :2, 1].max(1) < lm[:, 3:, 1].min(1)).all()


def test_no_faces_on_blank_and_noise(detector):
    rng = np.random.default_rng(0)
    frames = [np.zeros((240, 320, 3), np.uint8), np.full((240, 320, 3), 128, np.uint8),
              rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    assert [len(d) for d in detector(frames)] == [0, 0, 0]


def test_batch_matches_single_and_mixed_sizes(detector):
    import cv2

    img = cv2.imread(str(package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")))
    small = cv2.resize(img, (256, 300))
    out = detector([small, small[:, ::-1].copy(), np.zeros((64, 64, 3), np.uint8)])
    assert [len(d) for d in out] == [1, 1, 0]
    flipped = out[1].boxes[0].copy()
    flipped[[0, 2]] = 256 - flipped[[2, 0]]
    assert box_iou(out[0].boxes, flipped[None])[0, 0] > 0.8  # mirror image gives the mirrored box


def test_refine_relocates_moved_faces(detector):
    import cv2

    zidane = cv2.imread(str(package_file("ultralytics", "assets", "zidane.jpg")))
    previous = detector([zidane])[0]
    moved = np.roll(zidane, (9, -12), axis=(0, 1))  # both faces shift by a fraction of their size
    found = detector.refine([moved, np.zeros_like(zidane)], [previous, previous])
    assert len(found[1]) == 0  # a face that left the frame is dropped, not carried over
    truth = np.array(PHOTOS["ultralytics", "assets", "zidane.jpg"], np.float32) + [-12, 9, -12, 9]
    assert len(found[0]) == 2 and (box_iou(truth, found[0].boxes).max(1) >= 0.5).all()
    assert box_iou(found[0].boxes, detector([moved])[0].boxes).max(1).min() > 0.7  # where full detection puts them
    assert found[0].landmarks.shape == (2, 5, 2)


def test_onnx_backend_matches_torch(detector, tmp_path):
    import cv2
    import onnx

    paths = detector.model.export_onnx(tmp_path)
    assert [p.name for p in paths] == ["pnet.onnx", "rnet.onnx", "onet.onnx"]
    for path in paths:
        model = onnx.load(path)
        onnx.checker.check_model(model)
        assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}  # stock operators only
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert next(detector.model.parameters()).device.type == "cpu"
    onnx_detector = MTCNNDetector("cpu", backend="onnx", onnx_dir=tmp_path)
    images = [cv2.imread(str(package_file(*k))) for k in PHOTOS]
    for mine, theirs in zip(onnx_detector(images), detector(images)):
        assert len(mine) == len(theirs)
        np.testing.assert_allclose(mine.boxes, theirs.boxes, atol=0.05)
        np.testing.assert_allclose(mine.landmarks, theirs.landmarks, atol=0.05)
        np.testing.assert_allclose(mine.scores, theirs.scores, atol=1e-4)
    (tmp_path / "rnet.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="rnet.onnx"):
        MTCNNDetector("cpu", backend="onnx", onnx_dir=tmp_path)
    with pytest.raises(ValueError, match="backend"):
        MTCNNDetector("cpu", backend="tensorrt")


def test_onnx_providers():
    from spayolo.runtime import onnx_providers

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert onnx_providers("cpu", ["MyProvider"]) == ["MyProvider"]  # an explicit choice wins
    cuda = onnx_providers("cuda")  # CUDA first only where onnxruntime-gpu offers it; CPU always as the fallback
    assert cuda[-1] == "CPUExecutionProvider" and len(cuda) in (1, 2)


def test_build_detector_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_detector(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="face_yunet.onnx"):
        build_detector(tmp_path / "face_yunet.onnx")
    with pytest.raises(ValueError, match="unknown face detector"):
        build_detector("haar")
    with pytest.raises(FileNotFoundError):
        YOLOFaceDetector(tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError):
        YuNetDetector(tmp_path / "yunet.onnx")
