"""Face detectors behind one interface: list of BGR frames in, one Detections (boxes, scores, landmarks) per frame out.

Backends: MTCNN (default, weights from the `mtcnn` package), any Ultralytics detect/pose model (.pt/.onnx, e.g. a
YOLO face model; five keypoints become landmarks) and OpenCV's YuNet (cv2.FaceDetectorYN, user-supplied .onnx).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spayolo.errors import MissingDependencyError, MissingFileError, UsageError

__all__ = ("Detections", "FaceDetector", "MTCNNDetector", "RegionDetector", "YOLOFaceDetector", "YuNetDetector",
           "build_detector", "given_boxes")


@dataclass
class Detections:
    """Faces of one frame: boxes (N,4) float32 xyxy pixels, scores (N,), landmarks (N,5,2) or None.

    Landmark order (MTCNN/YuNet convention): eye on the image's left, eye on the image's right, nose tip, mouth
    corner on the image's left, mouth corner on the image's right.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


class FaceDetector:
    """Base class: subclasses implement __call__(images: list of HxWx3 uint8 BGR) -> list[Detections]."""

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        raise NotImplementedError

    def refine(self, images: list[np.ndarray], previous: list[Detections]) -> list[Detections]:
        """Re-locate the faces of `previous` (one per image) in `images`; backends without a cheaper way detect anew."""
        return self(images)


def _at_least(det: Detections, min_face: float) -> Detections:
    """The faces whose box is at least `min_face` pixels on its longer side."""
    keep = (det.boxes[:, 2:] - det.boxes[:, :2]).max(1) >= min_face if len(det) else np.zeros(0, bool)
    return Detections(det.boxes[keep], det.scores[keep], None if det.landmarks is None else det.landmarks[keep])


def given_boxes(boxes, images: list[np.ndarray]) -> list[Detections]:
    """The caller's own face boxes, one (N, 4) array-like of x1 y1 x2 y2 pixels per image, as Detections (score 1, no
    landmarks: the crops are then not turned to level the eyes); UsageError naming a box that is not one."""
    if len(boxes) != len(images):
        raise UsageError(f"boxes: one list of boxes per frame, got {len(boxes)} for {len(images)} frame(s)")
    out = []
    for i, b in enumerate(boxes):
        try:
            b = np.asarray(b if b is not None else (), np.float32).reshape(-1, 4)
        except ValueError:
            raise UsageError(f"boxes of frame {i}: expected rows of x1, y1, x2, y2, got {b!r}") from None
        bad = ~np.isfinite(b).all(1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if bad.any():
            raise UsageError(f"boxes of frame {i}: {b[bad][0].tolist()} is not a box (x1 < x2 and y1 < y2, pixels)")
        out.append(Detections(b, np.ones(len(b), np.float32), None))
    return out


class RegionDetector(FaceDetector):
    """A detector that looks for faces inside a region of interest only; boxes come back in frame coordinates.

    ``roi`` is (x1, y1, x2, y2) in pixels, or in fractions of the frame when all four are <= 1.
    """

    def __init__(self, detector: FaceDetector, roi):
        try:
            roi = tuple(float(v) for v in roi)
        except (TypeError, ValueError):
            raise UsageError(f"roi (--roi) must be four numbers x1,y1,x2,y2, got {roi!r}") from None
        if len(roi) != 4 or roi[2] <= roi[0] or roi[3] <= roi[1] or min(roi) < 0:
            raise UsageError(f"roi (--roi) must be x1,y1,x2,y2 with 0 <= x1 < x2 and 0 <= y1 < y2, got {roi}")
        self.detector, self.roi, self.fractions = detector, roi, max(roi) <= 1

    def region(self, shape: tuple) -> tuple[int, int, int, int]:
        """The region in pixels of a frame of ``shape``, clipped to it; UsageError when it lies outside."""
        h, w = shape[:2]
        scale = (w, h, w, h) if self.fractions else (1, 1, 1, 1)
        x1, y1, x2, y2 = (int(round(min(v * s, limit))) for v, s, limit in zip(self.roi, scale, (w, h, w, h)))
        if x2 - x1 < 2 or y2 - y1 < 2:
            raise UsageError(f"roi (--roi) {self.roi} lies outside the {w}x{h} frame")
        return x1, y1, x2, y2

    @staticmethod
    def _shifted(det: Detections, dx: float, dy: float) -> Detections:
        boxes = det.boxes + np.array([dx, dy, dx, dy], np.float32)
        landmarks = None if det.landmarks is None else det.landmarks + np.array([dx, dy], np.float32)
        return Detections(boxes, det.scores, landmarks)

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        regions = [self.region(im.shape) for im in images]
        found = self.detector([np.ascontiguousarray(im[y1:y2, x1:x2]) for im, (x1, y1, x2, y2) in zip(images, regions)])
        return [self._shifted(d, x1, y1) for d, (x1, y1, _, _) in zip(found, regions)]

    def refine(self, images: list[np.ndarray], previous: list[Detections]) -> list[Detections]:
        regions = [self.region(im.shape) for im in images]
        inside = [self._shifted(d, -x1, -y1) for d, (x1, y1, _, _) in zip(previous, regions)]
        crops = [np.ascontiguousarray(im[y1:y2, x1:x2]) for im, (x1, y1, x2, y2) in zip(images, regions)]
        found = self.detector.refine(crops, inside)
        return [self._shifted(d, x1, y1) for d, (x1, y1, _, _) in zip(found, regions)]


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} file not found: {path}")
    return path


class MTCNNDetector(FaceDetector):
    """MTCNN (spayolo.face.mtcnn): its nets on ONNX Runtime, or in PyTorch on a torch device with backend 'torch';
    frames of equal size are detected in one batch, and faces smaller than ``min_face`` are dropped.

    The last stage's threshold is 0.9 rather than the reference 0.7: every box gets an expression label, so a
    non-face costs more than a doubtful face (the faces in the test photos score >= 0.99; a 0.8 background box
    in zidane.jpg at min_face 40 does not pass).
    """

    def __init__(self, device="cpu", min_face: float = 20.0, thresholds=(0.6, 0.7, 0.9), backend: str = "onnx",
                 onnx_dir: str | Path | None = None, providers: list | None = None, threads: int | None = None):
        from .mtcnn import MTCNN, onnx_nets

        if backend == "onnx":
            nets = onnx_nets(onnx_dir, device, providers, threads)
        elif backend == "torch":
            from .mtcnn_torch import torch_nets

            nets = torch_nets(device)
        else:
            raise UsageError(f"MTCNN backend must be 'torch' or 'onnx', got {backend!r}")
        self.model = MTCNN(nets, min_face=min_face, thresholds=thresholds)
        self.min_face = min_face

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        out: list[Detections | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for ids in groups.values():
            for i, found in zip(ids, self.model([images[i] for i in ids])):
                out[i] = _at_least(Detections(*found), self.min_face)
        return out

    def refine(self, images: list[np.ndarray], previous: list[Detections]) -> list[Detections]:
        """ONet only, on the previous boxes: frames of a video whose faces were found in the frame before."""
        if len({im.shape for im in images}) > 1:
            return self(images)
        boxes = np.concatenate([d.boxes for d in previous]).reshape(-1, 4)
        idx = np.concatenate([np.full(len(d), i) for i, d in enumerate(previous)]).astype(np.int64)
        return [_at_least(Detections(*found), self.min_face) for found in self.model.refine(images, boxes, idx)]


class YOLOFaceDetector(FaceDetector):
    """Any Ultralytics detect (or 5-keypoint pose) model, .pt or .onnx, whose boxes are faces.

    A .pt model runs in PyTorch and a .onnx model in ONNX Runtime; faces smaller than `min_face` pixels are dropped.
    """

    def __init__(self, path: str | Path, device="cpu", conf: float = 0.5, imgsz: int = 640, min_face: float = 0.0,
                 trusted: bool = False):
        path = _existing(path, "YOLO face model")
        try:
            from spayolo.checkpoints import load_yolo
        except ImportError as error:
            raise MissingDependencyError(f"face detector {path}: a YOLO model runs in Ultralytics, which this install "
                                         f"lacks: use --detector mtcnn or a YuNet .onnx, or install spayolo[train]"
                                         ) from error
        self.model = load_yolo(path, trusted)
        self.device, self.conf, self.imgsz, self.min_face = str(device), conf, imgsz, min_face

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        results = self.model.predict(list(images), conf=self.conf, imgsz=self.imgsz, device=self.device,
                                     verbose=False)
        out = []
        for r in results:
            kpts = getattr(r, "keypoints", None)
            lmk = kpts.xy.cpu().numpy() if kpts is not None and kpts.xy.shape[1] == 5 else None
            found = Detections(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), lmk)
            out.append(_at_least(found, self.min_face))
        return out


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet (cv2.FaceDetectorYN) with a user-supplied face_detection_yunet .onnx; runs in OpenCV on CPU.

    Faces smaller than `min_face` pixels are dropped.
    """

    def __init__(self, path: str | Path, conf: float = 0.6, nms: float = 0.3, min_face: float = 0.0):
        import cv2

        path = _existing(path, "YuNet model")
        try:
            self.detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), conf, nms, 5000)
        except cv2.error as error:
            raise UsageError(f"{path} is not a YuNet ONNX model OpenCV can load") from error
        self.min_face = min_face

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        out = []
        for im in images:
            self.detector.setInputSize((im.shape[1], im.shape[0]))
            _, faces = self.detector.detect(im)
            if faces is None:
                out.append(Detections.empty())
                continue
            faces = faces.astype(np.float32)  # rows: x, y, w, h, 5 landmarks (x, y), score
            boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], 1)
            out.append(_at_least(Detections(boxes, faces[:, 14], faces[:, 4:14].reshape(-1, 5, 2)), self.min_face))
        return out


def build_detector(name_or_path: str | Path | FaceDetector = "mtcnn", device="cpu", min_face: float = 20.0,
                   backend: str = "onnx", trusted: bool = False, threads: int | None = None) -> FaceDetector:
    """'mtcnn', a detector instance, a *yunet*.onnx (YuNet) or any other .pt/.onnx (Ultralytics model).

    `min_face` (pixels) is the smallest face kept: MTCNN starts its pyramid there (hence its cost), the YOLO and
    YuNet detectors drop smaller boxes. `backend` 'onnx' runs MTCNN's nets in ONNX Runtime; a YOLO model runs in
    the runtime its file is for, so a YOLO .pt with backend 'onnx' is refused rather than run in PyTorch unasked
    (export it, or pass backend 'torch'); YuNet always runs in OpenCV. `trusted` loads a YOLO .pt without the
    restricted allow-list (spayolo.checkpoints). `threads`: ONNX Runtime's intra-op threads for MTCNN.
    """
    if isinstance(name_or_path, FaceDetector):
        return name_or_path
    name = str(name_or_path)
    if name.lower() == "mtcnn":
        return MTCNNDetector(device, min_face, backend=backend, threads=threads)
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix not in {".pt", ".onnx"}:
        raise UsageError(f"unknown face detector {name!r} (--detector): use 'mtcnn', a YOLO .pt/.onnx or a YuNet "
                         f".onnx path")
    if suffix == ".onnx" and "yunet" in path.stem.lower():
        return YuNetDetector(path, min_face=min_face)
    if suffix == ".pt" and backend == "onnx":
        _existing(path, "YOLO face model")
        raise UsageError(f"face detector {path} is a PyTorch model but the backend is 'onnx': pass backend='torch' "
                         f"(--backend torch), or export it (yolo export model={path} format=onnx) and pass the .onnx")
    return YOLOFaceDetector(path, device, min_face=min_face, trusted=trusted)
