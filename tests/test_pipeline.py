"""The face front-end (MTCNN port, other detectors, aligned crops) and FERPipeline: loading, checks, TTA, tracking."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from conftest import PHOTOS, crafted_checkpoint, package_file, small_hopper, write_video
from spayolo.checkpoints import CheckpointError
from spayolo.face.align import aligned_crops
from spayolo.face.detectors import Detections, MTCNNDetector, YOLOFaceDetector, YuNetDetector, build_detector
from spayolo.face.mtcnn import PNet
from spayolo.pipeline import FERPipeline, IoUTracker, box_iou
from spayolo.sources import SourceError, StreamError
from spayolo.tta import DEFAULT_TTA, ZOOM_FRACTION

IMGSZ = 32


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector("cpu")


@pytest.fixture(scope="module")
def fer(tiny_ckpt, detector) -> FERPipeline:
    return FERPipeline(tiny_ckpt, detector=detector, backend="torch")


# --- MTCNN and the other detectors ------------------------------------------------------------------------------------


def test_weight_shapes_and_tf_layout(detector):
    m = detector.model
    assert m.pnet.body[0].weight.shape == (10, 3, 3, 3) and m.rnet.fc[0].weight.shape == (128, 576)
    assert m.onet.fc[0].weight.shape == (256, 1152) and m.onet.lmk.weight.shape == (10, 256)
    # output sizes the dense layers need: 24 -> 3x3x64, 48 -> 3x3x128; PNet maps 12x12 to one cell
    assert m.rnet.body(torch.zeros(1, 3, 24, 24)).shape == (1, 64, 3, 3)
    assert m.onet.body(torch.zeros(1, 3, 48, 48)).shape == (1, 128, 3, 3)
    assert m.pnet(torch.zeros(1, 3, 12, 12))[1].shape == (1, 1, 1)
    assert sum(p.numel() for p in PNet().parameters()) == 6632


def test_real_photos(detector):
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
    small = small_hopper()
    out = detector([small, small[:, ::-1].copy(), np.zeros((64, 64, 3), np.uint8)])
    assert [len(d) for d in out] == [1, 1, 0]
    flipped = out[1].boxes[0].copy()
    flipped[[0, 2]] = 256 - flipped[[2, 0]]
    assert box_iou(out[0].boxes, flipped[None])[0, 0] > 0.8  # mirror image gives the mirrored box


def test_refine_relocates_moved_faces(detector):
    zidane = cv2.imread(str(package_file("ultralytics", "assets", "zidane.jpg")))
    previous = detector([zidane])[0]
    moved = np.roll(zidane, (9, -12), axis=(0, 1))  # both faces shift by a fraction of their size
    found = detector.refine([moved, np.zeros_like(zidane)], [previous, previous])
    assert len(found[1]) == 0  # a face that left the frame is dropped, not carried over
    truth = np.array(PHOTOS["ultralytics", "assets", "zidane.jpg"], np.float32) + [-12, 9, -12, 9]
    assert len(found[0]) == 2 and (box_iou(truth, found[0].boxes).max(1) >= 0.5).all()
    assert box_iou(found[0].boxes, detector([moved])[0].boxes).max(1).min() > 0.7  # where full detection puts them
    assert found[0].landmarks.shape == (2, 5, 2)


def test_mtcnn_onnx_matches_torch(detector, tmp_path):
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
    broken = tmp_path / "face_yunet.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="face_yunet.onnx"):
        build_detector(broken)


class _Boxes:
    def __init__(self, xyxy):
        self.xyxy, self.conf = torch.tensor(xyxy, dtype=torch.float32), torch.ones(len(xyxy))


class _Result:
    def __init__(self, xyxy):
        self.boxes, self.keypoints = _Boxes(xyxy), None


def test_yolo_detector_honours_min_face_and_backend(tmp_path, monkeypatch):
    from ultralytics import YOLO

    weights = tmp_path / "face.pt"
    YOLO("yolov8n.yaml").save(weights)
    with pytest.raises(ValueError, match="backend is 'onnx'.*--backend torch"):
        build_detector(weights, backend="onnx")  # not run in PyTorch behind the user's back
    det = build_detector(weights, min_face=40, backend="torch")
    assert isinstance(det, YOLOFaceDetector)
    monkeypatch.setattr(det.model, "predict", lambda *a, **k: [_Result([[0, 0, 30, 30], [10, 10, 60, 90]])])
    found = det([np.zeros((100, 100, 3), np.uint8)])[0]
    np.testing.assert_array_equal(found.boxes, [[10, 10, 60, 90]])  # the 30 px face is below min_face


# --- FERPipeline ------------------------------------------------------------------------------------------------------


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


def test_detect_every_nth_frame_and_relocate_between(tiny_ckpt, detector):
    img = small_hopper(128, 150)
    frames = [np.pad(img, ((0, 0), (4 * k, 60 - 4 * k), (0, 0)), constant_values=90) for k in range(7)]
    every_frame = FERPipeline(tiny_ckpt, detector=detector, detect_every=1, backend="torch")
    reference = [every_frame.process([f], track=True)[0] for f in frames]
    fer = FERPipeline(tiny_ckpt, detector=CountingMTCNN(), detect_every=3, backend="torch")
    faces = [fer.process([f], track=True)[0] for f in frames]
    assert fer.detector.calls == {"full": 3, "refine": 4}  # frames 0, 3, 6 detected; 1, 2, 4, 5 re-located
    assert [[f.track_id for f in x] for x in faces] == [[1]] * 7
    for mine, theirs in zip(faces, reference):
        assert box_iou(mine[0].box[None], theirs[0].box[None])[0, 0] > 0.8
    fer.process(frames[:2], track=False)  # stills and batches always get full detection
    assert fer.detector.calls == {"full": 4, "refine": 4}
    with pytest.raises(ValueError, match="detect_every"):
        FERPipeline(tiny_ckpt, detector=detector, detect_every=0)


def test_onnx_backend_is_the_default_and_matches_torch(fer, tiny_ckpt, detector):
    img = small_hopper()
    onnx_fer = FERPipeline(tiny_ckpt, detector=detector)
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


def test_classifier_saved_by_yolo_save_is_accepted(tmp_path, detector):
    from ultralytics import YOLO

    path = tmp_path / "saved.pt"
    YOLO("spayolo-n.yaml").save(path)
    assert YOLO(path).task == "classify"
    fer = FERPipeline(path, detector=detector, backend="torch", imgsz=IMGSZ)
    face = fer(small_hopper())[0]
    assert face.label == fer.names[int(face.probs.argmax())]


class _Grid(torch.nn.Module):
    """Softmax of a linear map of the flattened pixels: mirroring the crop changes its answer."""

    def __init__(self, size: int = IMGSZ, nc: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * size * size, nc)
        self.names = {i: f"c{i}" for i in range(nc)}

    def forward(self, x):
        return self.fc(x.flatten(1)).softmax(1)


class _Symmetric(torch.nn.Module):
    """Global average pooling then a linear map: blind to mirroring."""

    def __init__(self, nc: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3, nc)
        self.names = {i: f"c{i}" for i in range(nc)}

    def forward(self, x):
        return (10 * self.fc(x.mean((2, 3)))).softmax(1)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_flip_tta_is_the_mean_of_crop_and_mirror(detector, backend):
    img = small_hopper()
    plain = FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend=backend, tta=False)
    tta = FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend=backend, tta="flip")
    crops = plain.crop(img, detector([img])[0])
    expected = (plain.classifier(crops) + plain.classifier(crops.flip(-1))) / 2
    assert not torch.allclose(plain.classifier(crops), expected, atol=1e-3)  # the mirror does change the answer
    np.testing.assert_allclose(tta(img)[0].probs, expected[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(plain(img)[0].probs, plain.classifier(crops)[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_flip_zoom_tta_is_the_mean_of_four_views(detector, backend):
    images = [small_hopper(), np.zeros((90, 120, 3), np.uint8)]  # a face, and a frame without one
    fer = FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend=backend)  # flip+zoom by default
    assert fer.tta == DEFAULT_TTA == "flip+zoom"
    det = detector(images[:1])[0]
    crop, zoomed = fer.crop(images[0], det, (1.0, ZOOM_FRACTION)).unflatten(0, (2, -1))  # views, faces
    views = [crop, crop.flip(-1), zoomed, zoomed.flip(-1)]
    expected = sum(fer.classifier(v) for v in views) / 4
    flipped = (fer.classifier(crop) + fer.classifier(crop.flip(-1))) / 2
    assert not torch.allclose(expected, flipped, atol=1e-3)  # the zoomed views do change the answer
    faces = fer(images)
    assert len(faces[0]) == 1 and faces[1] == []
    np.testing.assert_allclose(faces[0][0].probs, expected[0].numpy(), atol=1e-5)


def test_zoomed_crop_is_the_centre_of_the_crop(detector):
    """A view of fraction 1/2 at size S samples the frame where the central half of a crop at size 2S does."""
    img = small_hopper()
    det = detector([img])[0]
    whole = aligned_crops(img, det, 2 * IMGSZ, margin=0.2)
    crop, zoomed = aligned_crops(img, det, IMGSZ, margin=0.2, fractions=(1.0, 0.5)).unflatten(0, (2, -1))
    centre = whole[..., IMGSZ // 2 : 3 * IMGSZ // 2, IMGSZ // 2 : 3 * IMGSZ // 2]
    assert zoomed.shape == (1, 3, IMGSZ, IMGSZ)
    torch.testing.assert_close(crop, aligned_crops(img, det, IMGSZ, margin=0.2))  # the first view is the crop
    # each pixel averages the same frame area (sampled 4x finer where the views share the largest one's supersampling,
    # 3x for the crop at 2S), not a resized crop
    assert (zoomed - centre).abs().mean() < 0.005 and (zoomed - whole[..., ::2, ::2]).abs().mean() > 0.1


def test_tta_modes(detector):
    assert FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend="torch", tta=True).tta == "flip"
    assert FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend="torch", tta=False).tta == "none"
    with pytest.raises(ValueError, match="tta must be one of none, flip, flip\\+zoom"):
        FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend="torch", tta="zoom")


def test_flip_tta_leaves_a_mirror_symmetric_model_unchanged(detector):
    img = small_hopper()
    plain = FERPipeline(_Symmetric(), detector=detector, imgsz=IMGSZ, backend="torch", tta=False)
    tta = FERPipeline(_Symmetric(), detector=detector, imgsz=IMGSZ, backend="torch", tta="flip")
    np.testing.assert_allclose(tta(img)[0].probs, plain(img)[0].probs, atol=1e-6)


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


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda:7"}, "'cuda:7' is not available"),
    ({"device": "gpu0"}, "'gpu0' is not a device"),
    ({"min_face": 0}, "min_face must be > 0"),
    ({"min_face": -10}, "min_face must be > 0"),
    ({"margin": -0.1}, "margin must be >= 0"),
    ({"imgsz": -5}, "imgsz must be > 0"),
    ({"half": True}, "half=True .* on CUDA with backend='torch'"),
])
def test_bad_arguments_are_named(tiny_ckpt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FERPipeline(tiny_ckpt, **kwargs)


def test_checkpoints_load_restricted_unless_trusted(tmp_path):
    crafted, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="crafted.pt was refused by restricted loading.*--trust-checkpoint"):
        FERPipeline(crafted)
    assert not marker.exists()  # nothing in the file ran
    with pytest.raises(CheckpointError, match="crafted.pt holds no model"):
        FERPipeline(crafted, trusted=True)  # the explicit opt-out unpickles it as stock Ultralytics would
    assert marker.exists()


def test_unusable_model_files_are_named_in_one_line(tmp_path, tiny_ckpt):
    corrupt, truncated, yaml, garbage = (tmp_path / n for n in ("corrupt.pt", "truncated.pt", "model.yaml", "bad.onnx"))
    corrupt.write_bytes(b"\x00" * 100)
    truncated.write_bytes(tiny_ckpt.read_bytes()[:5000])
    yaml.write_text("nc: 7\n")
    garbage.write_bytes(b"this is not a protobuf")
    detect = tmp_path / "boxes.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 5, 1), (torch.zeros(1, 3, 8, 8),), str(detect), dynamo=False)
    for path, message in ((corrupt, "not a loadable checkpoint"), (truncated, "not a loadable checkpoint"),
                          (yaml, "untrained"), (garbage, "not a valid ONNX model"), (detect, "not a classifier")):
        with pytest.raises(CheckpointError) as error:
            FERPipeline(path)
        assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


def test_stream_tracks_video_and_reports_a_cut_one(fer, tmp_path):
    video = write_video(tmp_path / "clip.mp4", n=3)
    fer.reset()
    assert [[f.track_id for f in faces] for _, _, faces in fer.stream(video)] == [[1]] * 3
    cut = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(cut), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for k in range(30):
        writer.write(np.roll(small_hopper(160, 120), k, axis=1))
    writer.release()
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    seen = []
    with pytest.raises(StreamError, match="cut.avi: no frame after"):
        for i, _, _ in fer.stream(cut):
            seen.append(i)
    assert 5 < len(seen) < 30  # what decoded came first
    with pytest.raises(SourceError, match="source not found"):
        next(fer.stream(tmp_path / "missing.mp4"))


def test_stream_over_a_folder_does_not_track_unrelated_images(fer, tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), small_hopper())
    assert [[f.track_id for f in faces] for _, _, faces in fer.stream(tmp_path)] == [[None], [None]]
