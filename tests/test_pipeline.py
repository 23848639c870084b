"""The torch side of the face front-end and FERPipeline: MTCNN's PyTorch nets against the shipped ONNX files, the torch
backend against the ONNX one, every kind of classifier, ensembles, TTA, checks and streams."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from conftest import PHOTOS, build_model, crafted_checkpoint, input_sensitive, package_file, small_hopper, write_video
from spayolo.errors import CheckpointError, UsageError
from spayolo.face.align import aligned_crops
from spayolo.face.detectors import MTCNNDetector, YOLOFaceDetector, YuNetDetector, build_detector
from spayolo.face.mtcnn import onnx_nets
from spayolo.face.mtcnn_torch import PNet, export_onnx, load_nets
from spayolo.pipeline import FERPipeline
from spayolo.runtime import usable_cores
from spayolo.sources import SourceError, StreamError
from spayolo.track import box_iou
from spayolo.tta import DEFAULT_TTA, ZOOM_FRACTION

IMGSZ = 32


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector()


@pytest.fixture(scope="module")
def fer(tiny_ckpt, detector) -> FERPipeline:
    return FERPipeline(tiny_ckpt, detector=detector, backend="torch")


# --- MTCNN's nets: the PyTorch port and the ONNX files made from it ---------------------------------------------------


def test_weight_shapes_and_tf_layout():
    pnet, rnet, onet = load_nets()
    assert pnet.body[0].weight.shape == (10, 3, 3, 3) and rnet.fc[0].weight.shape == (128, 576)
    assert onet.fc[0].weight.shape == (256, 1152) and onet.lmk.weight.shape == (10, 256)
    # output sizes the dense layers need: 24 -> 3x3x64, 48 -> 3x3x128; PNet maps 12x12 to one cell
    assert rnet.body(torch.zeros(1, 3, 24, 24)).shape == (1, 64, 3, 3)
    assert onet.body(torch.zeros(1, 3, 48, 48)).shape == (1, 128, 3, 3)
    assert pnet(torch.zeros(1, 3, 12, 12))[1].shape == (1, 1, 1)
    assert sum(p.numel() for p in PNet().parameters()) == 6632


def _net_inputs(rng) -> dict[str, list[np.ndarray]]:
    """Inputs in the nets' [-1, 1] range: random ones (two PNet canvas sizes) and the cascade's crops of a real face."""
    from spayolo.face.mtcnn import MTCNN, square

    image = small_hopper()
    x = MTCNN._normalise([image])
    box = square(MTCNNDetector()([image])[0].boxes)
    crop = lambda s: MTCNN._crops(x, box, np.zeros(1, np.int64), s)  # noqa: E731
    noise = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)  # noqa: E731
    return {"pnet": [noise(2, 3, 40, 56), noise(1, 3, 25, 31), x[0].transpose(2, 0, 1)[None].copy()],
            "rnet": [noise(5, 3, 24, 24), crop(24)], "onet": [noise(5, 3, 48, 48), crop(48)]}


def test_shipped_mtcnn_onnx_files_are_the_torch_nets(tmp_path):
    """weights/mtcnn/ holds what ``python -m spayolo.face.mtcnn_torch`` makes from the mtcnn package's weights."""
    paths = export_onnx(tmp_path)
    assert [p.name for p in paths] == ["pnet.onnx", "rnet.onnx", "onet.onnx"]
    for path in paths:
        model = onnx.load(path)
        onnx.checker.check_model(model)
        assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}  # stock operators only
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    shipped, remade = onnx_nets(), onnx_nets(tmp_path)
    nets = dict(zip(shipped, load_nets()))
    for name, inputs in _net_inputs(np.random.default_rng(0)).items():
        probs = []
        for x in inputs:
            with torch.no_grad():
                expected = [y.numpy() for y in nets[name](torch.from_numpy(x))]
            for runner in (shipped[name], remade[name]):
                for mine, theirs in zip(runner(x), expected, strict=True):
                    np.testing.assert_allclose(mine, theirs, atol=2e-5)
            probs.append(expected[-1].ravel())
        assert np.ptp(np.concatenate(probs)) > 0.3  # face and noise score apart: a net that ignored its input would not


def test_torch_backend_runs_the_same_cascade(detector):
    torch_detector = MTCNNDetector(backend="torch")
    images = [cv2.imread(str(package_file(*k))) for k in PHOTOS]
    for mine, theirs in zip(torch_detector(images), detector(images), strict=True):
        assert len(mine) == len(theirs) > 0
        np.testing.assert_allclose(mine.boxes, theirs.boxes, atol=0.05)
        np.testing.assert_allclose(mine.landmarks, theirs.landmarks, atol=0.05)
        np.testing.assert_allclose(mine.scores, theirs.scores, atol=1e-4)
    with pytest.raises(UsageError, match="backend"):
        MTCNNDetector(backend="tensorrt")


def test_min_face_drops_the_small_faces_of_bus_jpg():
    """bus.jpg at 405x540: MTCNN's cascade, started at 40 px, still returned two faces of about 18x24 px."""
    bus = cv2.resize(cv2.imread(str(package_file("ultralytics", "assets", "bus.jpg"))), (405, 540))
    for min_face in (15, 40):
        found = MTCNNDetector(min_face=min_face)([bus])[0]
        sides = (found.boxes[:, 2:] - found.boxes[:, :2]).max(1)
        assert (sides >= min_face).all() and (len(found) == 0) == (min_face == 40), sides


def test_crops_match_a_grid_sample_reference(detector):
    """The OpenCV crops sample the frame where torch's affine_grid + grid_sample do: same rotation about the box
    centre, same pixel-centre convention, same border, same 4x supersampling of a large face."""
    img = cv2.warpAffine(small_hopper(), cv2.getRotationMatrix2D((128, 150), 20, 1.0), (256, 300))
    det = detector([img])[0]
    size, margin, k = 24, 0.3, 4  # the face is about 200 px: sampled at 4 x 24 and averaged
    crops = aligned_crops(img, det, size, margin=margin, gray=False)
    boxes = torch.from_numpy(det.boxes)
    centre, side = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).amax(1) * (1 + margin)
    eyes = torch.from_numpy(det.landmarks[:, 1] - det.landmarks[:, 0])
    angle = torch.atan2(eyes[:, 1], eyes[:, 0])
    assert angle.abs().max() > 0.2  # a tilted face: the rotation is under test
    h, w = img.shape[:2]
    cos, sin = angle.cos() * side / 2, angle.sin() * side / 2
    theta = torch.stack([torch.stack([cos * 2 / w, -sin * 2 / w, centre[:, 0] * 2 / w - 1], 1),
                         torch.stack([sin * 2 / h, cos * 2 / h, centre[:, 1] * 2 / h - 1], 1)], 1)
    grid = F.affine_grid(theta, [len(boxes), 3, size * k, size * k], align_corners=False)
    frame = torch.from_numpy(img).flip(-1).permute(2, 0, 1)[None].float().expand(len(boxes), -1, -1, -1) / 255
    reference = F.avg_pool2d(F.grid_sample(frame, grid, padding_mode="border", align_corners=False), k)
    np.testing.assert_allclose(crops, reference.numpy(), atol=2e-3)


# --- classifiers of every kind ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "yolo", "classification_model"])
def test_every_kind_of_classifier_keeps_its_names_and_size(tiny_ckpt, detector, kind):
    """A YOLO object, the ClassificationModel inside it and its .pt all give the same model, names and input size."""
    from ultralytics import YOLO

    model = {"path": tiny_ckpt, "yolo": YOLO(tiny_ckpt), "classification_model": YOLO(tiny_ckpt).model}[kind]
    fer = FERPipeline(model, detector=detector, backend="torch")
    reference = FERPipeline(tiny_ckpt, detector=detector, backend="torch")
    assert fer.sizes == (IMGSZ,) and fer.names == reference.names and fer.names[3] == "happy"
    img = small_hopper()
    np.testing.assert_allclose(fer(img)[0].probs, reference(img)[0].probs, atol=1e-6)


@pytest.mark.parametrize("name", ["wamf-yolo-n", "msff-yolo-n", "lanmsff-yolo-n"])
def test_classification_models_of_other_families(detector, name):
    """A bare ClassificationModel (not wrapped in YOLO) was once unwrapped to its layers, which these heads broke."""
    model = input_sensitive(build_model(f"{name}.yaml", nc=3), IMGSZ)
    fer = FERPipeline(model, detector=detector, backend="torch", imgsz=IMGSZ, tta="none")
    (face,) = fer(small_hopper())
    assert fer.names == [str(i) for i in range(3)] and face.probs.shape == (3,) and abs(face.probs.sum() - 1) < 1e-4


def test_onnx_backend_matches_torch(fer, tiny_ckpt, detector):
    onnx_fer = FERPipeline(tiny_ckpt, detector=detector)
    assert type(onnx_fer.classifier).__name__ == "OnnxClassifier" and onnx_fer.names == fer.names
    faces = [small_hopper(), (small_hopper() * 0.6).astype(np.uint8)]  # the portrait and a darker copy of it
    mine, theirs = [onnx_fer(f)[0].probs for f in faces], [fer(f)[0].probs for f in faces]
    assert np.abs(theirs[0] - theirs[1]).max() > 0.02  # the model reads its input, so agreement means something
    for m, t in zip(mine, theirs):
        np.testing.assert_allclose(m, t, atol=1e-4)
    with pytest.raises(UsageError, match="backend"):
        FERPipeline(tiny_ckpt, backend="tflite")


def test_exported_classifier_and_wrong_inputs(tmp_path, tiny_ckpt, fer, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    exported = YOLO(str(tiny_ckpt)).export(format="onnx", imgsz=IMGSZ, dynamic=True, simplify=True, opset=17)
    onnx_fer = FERPipeline(exported, detector=fer.detector)
    assert onnx_fer.sizes == (IMGSZ,) and onnx_fer.names == fer.names  # both read from the ONNX metadata
    img = small_hopper()
    np.testing.assert_allclose(onnx_fer(img)[0].probs, fer(img)[0].probs, atol=1e-4)
    with pytest.raises(UsageError, match=rf"exported for {IMGSZ}x{IMGSZ}.*--imgsz {IMGSZ}"):
        FERPipeline(exported, detector=fer.detector, imgsz=2 * IMGSZ)
    detect = tmp_path / "detect.pt"
    YOLO("yolov8n.yaml").save(detect)
    with pytest.raises(CheckpointError, match="detect model, not a classifier"):
        FERPipeline(detect, detector=fer.detector)


def test_a_shipped_model_by_name_is_its_checkpoint_for_torch(detector):
    from spayolo.classifier import FAST_MODEL
    from spayolo.paths import packaged

    assert FERPipeline(FAST_MODEL, detector=detector, backend="torch").classifier.source == str(
        packaged("weights", f"{FAST_MODEL}.pt"))


def test_classifier_saved_by_yolo_save_is_accepted(tmp_path, detector):
    from ultralytics import YOLO

    path = tmp_path / "saved.pt"
    YOLO("spayolo-n.yaml").save(path)
    assert YOLO(path).task == "classify"
    fer = FERPipeline(path, detector=detector, backend="torch", imgsz=IMGSZ)
    face = fer(small_hopper())[0]
    assert face.label == fer.names[int(face.probs.argmax())]


class _Grid(torch.nn.Module):
    """A linear map of the flattened pixels, as logits or as probabilities: mirroring the crop changes its answer."""

    def __init__(self, size: int = IMGSZ, nc: int = 3, logits: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc, self.logits = torch.nn.Linear(3 * size * size, nc), logits
        self.names = {i: f"c{i}" for i in range(nc)}

    def forward(self, x):
        y = 3 * self.fc(x.flatten(1))
        return y if self.logits else y.softmax(1)


class _Symmetric(torch.nn.Module):
    """Global average pooling then a linear map: blind to mirroring."""

    def __init__(self, nc: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3, nc)
        self.names = {i: f"c{i}" for i in range(nc)}

    def forward(self, x):
        return (10 * self.fc(x.mean((2, 3)))).softmax(1)


def _probs(model, views: list[np.ndarray]) -> np.ndarray:
    """The mean of the model's probabilities over the given (N,3,S,S) views, computed in PyTorch."""
    with torch.no_grad():
        return torch.stack([model(torch.from_numpy(np.ascontiguousarray(v))) for v in views]).mean(0).numpy()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_flip_tta_is_the_mean_of_crop_and_mirror(detector, backend):
    img, model = small_hopper(), _Grid()
    plain = FERPipeline(model, detector=detector, imgsz=IMGSZ, backend=backend, tta=False)
    tta = FERPipeline(model, detector=detector, imgsz=IMGSZ, backend=backend, tta="flip")
    crops = plain.crop(img, detector([img])[0])
    expected = _probs(model, [crops, crops[..., ::-1]])
    assert np.abs(_probs(model, [crops]) - expected).max() > 1e-3  # the mirror does change the answer
    np.testing.assert_allclose(tta(img)[0].probs, expected[0], atol=1e-5)
    np.testing.assert_allclose(plain(img)[0].probs, _probs(model, [crops])[0], atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_flip_zoom_tta_is_the_mean_of_four_views(detector, backend):
    images, model = [small_hopper(), np.zeros((90, 120, 3), np.uint8)], _Grid()  # a face, and a frame without one
    fer = FERPipeline(model, detector=detector, imgsz=IMGSZ, backend=backend)  # flip+zoom by default
    assert fer.tta == DEFAULT_TTA == "flip+zoom"
    crop, zoomed = fer.crop(images[0], detector(images[:1])[0], (1.0, ZOOM_FRACTION)).reshape(2, -1, 3, IMGSZ, IMGSZ)
    expected = _probs(model, [crop, crop[..., ::-1], zoomed, zoomed[..., ::-1]])
    assert np.abs(expected - _probs(model, [crop, crop[..., ::-1]])).max() > 1e-3  # the zoomed views count
    faces = fer(images)
    assert len(faces[0]) == 1 and faces[1] == []
    np.testing.assert_allclose(faces[0][0].probs, expected[0], atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_model_returning_logits_gets_probabilities(detector, backend):
    img = small_hopper()
    logits = FERPipeline(_Grid(logits=True), detector=detector, imgsz=IMGSZ, backend=backend, tta="none")(img)[0]
    probs = FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend=backend, tta="none")(img)[0]
    np.testing.assert_allclose(logits.probs, probs.probs, atol=1e-5)
    assert abs(logits.probs.sum() - 1) < 1e-5 and logits.probs.max() < 0.999  # a softmax, not a saturated one


def test_tta_modes(detector):
    assert FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend="torch", tta=True).tta == "flip"
    assert FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend="torch", tta=False).tta == "none"
    with pytest.raises(UsageError, match="tta must be one of none, flip, flip\\+zoom"):
        FERPipeline(_Grid(), detector=detector, imgsz=IMGSZ, backend="torch", tta="zoom")


def test_flip_tta_leaves_a_mirror_symmetric_model_unchanged(detector):
    img = small_hopper()
    plain = FERPipeline(_Symmetric(), detector=detector, imgsz=IMGSZ, backend="torch", tta=False)
    tta = FERPipeline(_Symmetric(), detector=detector, imgsz=IMGSZ, backend="torch", tta="flip")
    np.testing.assert_allclose(tta(img)[0].probs, plain(img)[0].probs, atol=1e-6)


# --- ensembles ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_an_ensemble_averages_its_members_each_at_its_own_size(detector, backend):
    img = small_hopper()
    small, large = _Grid(IMGSZ, seed=0), _Grid(48, seed=1)
    small.args, large.args = {"imgsz": IMGSZ}, {"imgsz": 48}  # the training size, as Ultralytics keeps it
    members = [FERPipeline(m, detector=detector, backend=backend) for m in (small, large)]
    assert [m.sizes for m in members] == [(IMGSZ,), (48,)]
    ensemble = FERPipeline([small, large], detector=detector, backend=backend)
    assert ensemble.sizes == (IMGSZ, 48) and ensemble.names == ["c0", "c1", "c2"]
    # members side by side on ONNX Runtime's threads; torch's process-wide pool is not shared out
    assert (ensemble.classifier.pool is not None) == (backend == "onnx" and usable_cores() > 1)
    each = [m(img)[0].probs for m in members]
    assert np.abs(each[0] - each[1]).max() > 1e-3
    np.testing.assert_allclose(ensemble(img)[0].probs, np.mean(each, 0), atol=1e-6)


def test_an_ensemble_refuses_members_with_other_classes(detector, tiny_ckpt):
    with pytest.raises(UsageError, match="same classes"):
        FERPipeline([tiny_ckpt, _Grid()], detector=detector, backend="torch")
    with pytest.raises(UsageError, match="--imgsz"):
        FERPipeline([tiny_ckpt, tiny_ckpt], detector=detector, imgsz=48)


# --- tracking, frames, checks and streams ---------------------------------------------------------------------------


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
        super().__init__()
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
    for mine, theirs in zip(faces, reference, strict=True):
        assert box_iou(mine[0].box[None], theirs[0].box[None])[0, 0] > 0.8
    fer.process(frames[:2], track=False)  # stills and batches always get full detection
    assert fer.detector.calls == {"full": 4, "refine": 4}
    with pytest.raises(UsageError, match="detect_every"):
        FERPipeline(tiny_ckpt, detector=detector, detect_every=0)


def test_photos_labels_and_boxes(fer):
    paths = [package_file(*k) for k in PHOTOS]
    results = fer(paths)
    assert len(results) == len(PHOTOS)
    for faces, truth in zip(results, PHOTOS.values(), strict=True):
        assert len(faces) == len(truth)
        boxes = np.stack([f.box for f in faces])
        assert (box_iou(np.array(truth, np.float32), boxes).max(1) >= 0.5).all()
        for f in faces:
            assert f.label == fer.names[int(f.probs.argmax())]
            assert f.probs.shape == (7,) and abs(f.probs.sum() - 1) < 1e-4 and f.track_id is None


def test_bad_frames_and_files_are_named(fer, tmp_path):
    img = small_hopper()
    gray, bgra = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    assert len(fer(gray)) == len(fer(bgra)) == len(fer(gray[..., None])) == 1  # converted, not refused
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    for source, error, message in ((np.zeros((0, 0, 3), np.uint8), UsageError, "empty frame"),
                                   (img.astype(np.float32), UsageError, "uint8"),
                                   (img[..., :2].copy(), UsageError, r"HxWx3.*\(300, 256, 2\)"),
                                   (None, UsageError, "NoneType"),
                                   (tmp_path / "missing.jpg", FileNotFoundError, "missing.jpg"),
                                   (corrupt, UsageError, "cannot decode image .*corrupt.jpg")):
        with pytest.raises(error, match=message):
            fer(source)
    with pytest.raises(UsageError, match="index 1 of the batch"):
        fer.process([img, np.zeros((0, 5, 3), np.uint8)])


def test_missing_model_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        FERPipeline(tmp_path / "nope.pt")


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda:7", "backend": "torch"}, "'cuda:7' is not available"),
    ({"device": "gpu0"}, "'gpu0' is not a device"),
    ({"min_face": 0}, "min_face must be > 0"),
    ({"min_face": -10}, "min_face must be > 0"),
    ({"margin": -0.1}, "margin must be >= 0"),
    ({"imgsz": -5}, "imgsz must be > 0"),
    ({"threads": 0}, "threads must be > 0"),
    ({"half": True}, "half=True .* on CUDA with backend='torch'"),
])
def test_bad_arguments_are_named(tiny_ckpt, kwargs, message):
    with pytest.raises(UsageError, match=message):
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


# --- other detectors ------------------------------------------------------------------------------------------------


def test_build_detector_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_detector(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="face_yunet.onnx"):
        build_detector(tmp_path / "face_yunet.onnx")
    with pytest.raises(UsageError, match="unknown face detector"):
        build_detector("haar")
    with pytest.raises(FileNotFoundError):
        YOLOFaceDetector(tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError):
        YuNetDetector(tmp_path / "yunet.onnx")
    broken = tmp_path / "face_yunet.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(UsageError, match="face_yunet.onnx"):
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
    with pytest.raises(UsageError, match="backend is 'onnx'.*--backend torch"):
        build_detector(weights, backend="onnx")  # not run in PyTorch behind the user's back
    det = build_detector(weights, min_face=40, backend="torch")
    assert isinstance(det, YOLOFaceDetector)
    monkeypatch.setattr(det.model, "predict", lambda *a, **k: [_Result([[0, 0, 30, 30], [10, 10, 60, 90]])])
    found = det([np.zeros((100, 100, 3), np.uint8)])[0]
    np.testing.assert_array_equal(found.boxes, [[10, 10, 60, 90]])  # the 30 px face is below min_face


def test_thread_policy(tiny_ckpt, detector):
    """torch's pool, for the torch backend on a CPU, is one thread unless threads= says otherwise (a pool per core
    stalls on a busy machine); OpenCV's and ONNX Runtime's follow threads= when it is given."""
    import cv2

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(2)
        FERPipeline(tiny_ckpt, detector=detector, backend="torch")
        assert torch.get_num_threads() == 1
        FERPipeline(tiny_ckpt, detector=detector, backend="torch", threads=3)
        assert torch.get_num_threads() == 3 and cv2.getNumThreads() == 3
        onnx = FERPipeline(tiny_ckpt, detector="mtcnn", threads=2)
        assert onnx.classifier.model.session.get_session_options().intra_op_num_threads == 2
        assert all(n.session.get_session_options().intra_op_num_threads == 2 for n in onnx.detector.model.nets.values())
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
