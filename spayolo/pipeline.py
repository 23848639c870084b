"""End-to-end facial expression recognition: face detection, eye-aligned crops, batched classification, tracking.

    from spayolo.pipeline import FERPipeline
    fer = FERPipeline("weights/spayolo-n-fer2013.pt")
    faces = fer("photo.jpg")                      # one frame -> list[Face]
    for i, frame, faces in fer.stream("clip.mp4"):  # video -> tracked, EMA-smoothed faces per frame
        ...
"""

from __future__ import annotations

import ast
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spayolo.face.detectors import Detections, FaceDetector, build_detector
from spayolo.registry import packaged
from spayolo.runtime import OnnxModule, export_onnx_bytes

__all__ = ("DEFAULT_MODEL", "FERPipeline", "Face", "IoUTracker")

DEFAULT_MODEL = packaged("weights", "spayolo-n-fer2013.pt")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Face:
    """One recognised face: box (4,) xyxy, score (detector), landmarks (5,2) or None, label, probs (nc,)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None
    label: str
    probs: np.ndarray
    names: list[str]
    track_id: int | None = None

    @property
    def confidence(self) -> float:
        return float(self.probs.max())

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": None if self.landmarks is None else [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
            "track_id": self.track_id,
            "label": self.label,
            "probs": {n: round(float(p), 4) for n, p in zip(self.names, self.probs)},
        }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a (N,4) and b (M,4)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


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


def _names_list(names) -> list[str]:
    if isinstance(names, str):
        names = ast.literal_eval(names)  # ONNX metadata stores a dict literal
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def _require_classifier(model: nn.Module, source) -> None:
    from ultralytics.nn.tasks import BaseModel, guess_model_task

    task = guess_model_task(model) if isinstance(model, BaseModel) else "classify"
    if task != "classify":
        raise ValueError(f"{source} is a {task} model, not a classifier: pass a classification checkpoint (.pt/.onnx) "
                         f"as the expression model, and a face detector with detector=/--detector")


class _Classifier:
    """A classification model (.pt, .onnx, ultralytics YOLO object or nn.Module) run in PyTorch or ONNX Runtime."""

    def __init__(self, model, device: torch.device, half: bool):
        self.device, self.half, self.runner, self.source = device, half and device.type == "cuda", None, model
        imgsz = names = None
        if model is None:
            model = self.source = DEFAULT_MODEL
            if not model.is_file():
                raise FileNotFoundError(f"default classifier weights not found: {model} (pass model= / --model)")
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"classifier weights not found: {path}")
            if path.suffix.lower() == ".onnx":
                self.runner = OnnxModule(path, device)
                meta = self.runner.session.get_modelmeta().custom_metadata_map
                names, imgsz = meta.get("names"), meta.get("imgsz")
                imgsz = ast.literal_eval(imgsz) if imgsz else self.runner.session.get_inputs()[0].shape[2:]
            else:
                from ultralytics.nn.tasks import load_checkpoint

                model, ckpt = load_checkpoint(path)
                imgsz = (ckpt.get("train_args") or {}).get("imgsz")
                _require_classifier(model, path)
        elif hasattr(model, "model") and isinstance(getattr(model, "model", None), nn.Module):  # ultralytics YOLO
            imgsz = ((getattr(model, "ckpt", None) or {}).get("train_args") or {}).get("imgsz")
            model = model.model
        if self.runner is None:
            if not isinstance(model, nn.Module):
                raise TypeError(f"classifier must be a .pt/.onnx path, a YOLO object or an nn.Module, got {type(model)}")
            self.model = model.to(device).eval()
            self.model = self.model.half() if self.half else self.model.float()
            names = names or getattr(model, "names", None)
        if isinstance(imgsz, (list, tuple)):
            imgsz = imgsz[0]
        self.imgsz = int(imgsz) if isinstance(imgsz, (int, float, str)) and str(imgsz).isdigit() else None
        self.names = _names_list(names) if names is not None else None

    def use_onnx(self, imgsz: int) -> None:
        """Run the PyTorch model in ONNX Runtime from now on (exported in memory at imgsz, dynamic batch)."""
        if self.runner is None:
            example = torch.zeros(1, 3, imgsz, imgsz)
            self.runner = OnnxModule(export_onnx_bytes(self.model, example, {0: "batch"}), self.device)
            self.model.to(self.device)

    def check_imgsz(self, imgsz: int) -> None:
        """An ONNX classifier runs only at the size it was exported at (spayolo's DFT bases are constants in it)."""
        if self.runner is not None and self.imgsz and imgsz != self.imgsz:
            raise ValueError(f"{self.source} was exported for {self.imgsz}x{self.imgsz} inputs, not {imgsz}: pass "
                             f"imgsz={self.imgsz}, or export again with imgsz={imgsz}")

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,S,S) float 0-1 -> (N,nc) probabilities."""
        if self.runner is not None:
            y = self.runner(x)
        else:
            y = self.model(x.half() if self.half else x)
        y = y[0] if isinstance(y, (tuple, list)) else y  # Classify in eval returns (probs, logits)
        y = y.float()
        if (y < 0).any() or not torch.allclose(y.sum(1), torch.ones(len(y), device=y.device), atol=1e-3):
            y = y.softmax(1)  # a bare module returning logits
        return y


class FERPipeline:
    """Detect faces, cut eye-aligned square crops, classify every face of every frame in one call, track over time.

    Args:
        model: classifier — path to a .pt checkpoint or .onnx, an ultralytics YOLO object or an nn.Module;
            None loads weights/spayolo-n-fer2013.pt.
        detector: 'mtcnn', a YOLO/YuNet face model path, or a FaceDetector instance.
        device: 'cpu', 'cuda', 'cuda:0', ...
        imgsz: classifier input size; default from the checkpoint's training args, else 64.
        margin: fraction of the face box side added around it before cropping.
        track: IoU tracking with probability smoothing; None = on for stream(), off for __call__.
        gray: feed grayscale replicated to 3 channels (the classifier was trained on grayscale FER images).
        half: FP16 classifier on CUDA.
        min_face: smallest face (pixels) MTCNN looks for. 40 by default: FER2013 faces are 48 px, and a smaller face
            carries too little expression detail, while halving the size would cost about 3x the detection time.
        detect_every: with tracking, run the full detector on every n-th frame only and re-locate the tracked faces
            in the frames between (MTCNN: ONet alone); a new face then appears within n frames. 1 = every frame.
        backend: 'torch', or 'onnx' to run MTCNN's nets and the classifier in ONNX Runtime (a .pt classifier is
            exported in memory; CUDA provider when onnxruntime-gpu and a CUDA device are there, else CPU).
    """

    def __init__(self, model=None, detector="mtcnn", device="cpu", imgsz=None, margin=0.2, track=None, gray=True,
                 half=False, min_face=40.0, detect_every=5, backend="torch"):
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.device = torch.device(device)
        self.classifier = _Classifier(model, self.device, half)  # first: a wrong model path fails before MTCNN loads
        self.detector: FaceDetector = build_detector(detector, self.device, min_face, backend)
        self.detect_every = int(detect_every)
        self.imgsz = int(imgsz or self.classifier.imgsz or 64)
        self.classifier.check_imgsz(self.imgsz)
        if backend == "onnx":
            self.classifier.use_onnx(self.imgsz)
        self.names = self.classifier.names
        self.margin, self.track, self.gray = margin, track, gray
        self.tracker = IoUTracker()
        self.times = defaultdict(float)  # seconds spent per stage, for profiling
        self._previous: Detections | None = None  # last frame's faces, while tracking
        self._since_detection = 0

    def reset(self) -> None:
        """Forget tracks and timings (call between unrelated videos)."""
        self.tracker = IoUTracker()
        self.times.clear()
        self._previous, self._since_detection = None, 0

    def __call__(self, source):
        """Frame (BGR array) or image path -> list[Face]; a list of them -> list of list[Face]."""
        if isinstance(source, (list, tuple)):
            return self.process(list(source), track=bool(self.track))
        return self.process([source], track=bool(self.track))[0]

    def stream(self, source):
        """Yield (index, frame, faces) for a video file, camera index or URL; tracking on unless track=False."""
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise FileNotFoundError(f"cannot open video source: {source}")
        try:
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield i, frame, self.process([frame], track=self.track is not False)[0]
                i += 1
        finally:
            cap.release()

    @staticmethod
    def _read(source) -> np.ndarray:
        """An image path or array -> HxWx3 uint8 BGR; grayscale and BGRA arrays are converted, anything else refused."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            img = cv2.imread(str(path))
            if img is None:
                raise ValueError(f"cannot decode image {path}: corrupt, or not an image format OpenCV reads")
            return img
        if not isinstance(source, np.ndarray):
            raise TypeError(f"expected an image path or a BGR uint8 array, got {type(source).__name__}")
        if source.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 BGR arrays (0-255), got dtype {source.dtype}")
        if not source.size:
            return source  # process() names the empty frame's place in the batch
        if source.ndim == 2 or source.ndim == 3 and source.shape[2] in (1, 4):
            code = cv2.COLOR_BGRA2BGR if source.ndim == 3 and source.shape[2] == 4 else cv2.COLOR_GRAY2BGR
            return cv2.cvtColor(source, code)
        if source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"frames must be HxWx3 BGR arrays, got shape {source.shape}")
        return source

    def process(self, frames: list[np.ndarray], track: bool = False) -> list[list[Face]]:
        """Run detection, cropping and classification on a batch of BGR frames (consecutive video frames if track)."""
        frames = [self._read(f) for f in frames]
        empty = [i for i, f in enumerate(frames) if not f.size]
        if empty:
            raise ValueError(f"empty frame (no pixels) at index {empty[0]} of the batch: a camera or stream glitch, or "
                             f"a failed decode; skip it before calling the pipeline")
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        dets = self._detect(frames, track)
        sync()
        t1 = time.perf_counter()
        crops = [self.crop(f, d) for f, d in zip(frames, dets)]
        crops = torch.cat(crops) if crops else torch.zeros(0, 3, self.imgsz, self.imgsz)
        sync()
        t2 = time.perf_counter()
        probs = self.classifier(crops).cpu().numpy() if len(crops) else np.zeros((0, len(self.names or [])))
        t3 = time.perf_counter()
        self.times["detect"] += t1 - t0
        self.times["crop"] += t2 - t1
        self.times["classify"] += t3 - t2
        self.times["frames"] += len(frames)
        names = self.names or [str(i) for i in range(probs.shape[1])]
        out, k = [], 0
        for d in dets:
            p = probs[k : k + len(d)]
            k += len(d)
            ids = [None] * len(d)
            if track:
                ids, p = self.tracker.update(d.boxes, p)
            lmk = d.landmarks if d.landmarks is not None else [None] * len(d)
            out.append([Face(b, float(s), l, names[int(q.argmax())], q, names, t)
                        for b, s, l, q, t in zip(d.boxes, d.scores, lmk, p, ids)])
        return out

    def _detect(self, frames: list[np.ndarray], track: bool) -> list[Detections]:
        """Full detection; or, tracking one video frame, the detector's cheaper re-location of the faces it knows.

        A re-location that loses a face (moved too far, occluded) falls back to full detection on the same frame.
        """
        dets = None
        if (track and len(frames) == 1 and self._previous is not None and len(self._previous)
                and self._since_detection + 1 < self.detect_every):
            dets = self.detector.refine(frames, [self._previous])
            dets = dets if len(dets[0]) >= len(self._previous) else None
        self._since_detection = 0 if dets is None else self._since_detection + 1
        dets = self.detector(frames) if dets is None else dets
        self._previous = dets[-1] if track else None
        return dets

    def crop(self, frame: np.ndarray, det: Detections) -> torch.Tensor:
        """Square crops (N,3,imgsz,imgsz) in 0-1, box side grown by margin, rotated so the eyes are level.

        One affine_grid + grid_sample per frame does rotation, scaling and cropping on the pipeline's device; it
        samples at up to 4x the output size and average-pools down so large faces are not aliased.
        """
        n, s = len(det), self.imgsz
        if not n:
            return torch.zeros(0, 3, s, s, device=self.device)
        boxes = torch.as_tensor(det.boxes, dtype=torch.float32, device=self.device)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = (boxes[:, 2:] - boxes[:, :2]).amax(1) * (1 + self.margin)
        # only the frame region any crop can reach (a rotated square stays within side / sqrt(2) of its centre) is
        # converted to float: the faces are a small part of a frame
        reach = (side / math.sqrt(2))[:, None] + 2
        x0, y0 = ((centre - reach).amin(0).floor().clamp(min=0)).int().tolist()
        x1, y1 = (centre + reach).amax(0).ceil().int().tolist()
        region = frame[y0:y1, x0:x1]
        h, w = region.shape[:2]
        centre = centre - centre.new_tensor([x0, y0])
        angle = torch.zeros(n, device=self.device)
        if det.landmarks is not None:
            eyes = torch.as_tensor(det.landmarks[:, :2], dtype=torch.float32, device=self.device)
            d = eyes[:, 1] - eyes[:, 0]
            angle = torch.atan2(d[:, 1], d[:, 0])
        cos, sin = angle.cos() * side / 2, angle.sin() * side / 2
        # output (u, v) in [-1, 1] -> image point centre + R(angle) (side/2) (u, v) -> grid coords 2 p / size - 1
        theta = torch.stack([torch.stack([cos * 2 / w, -sin * 2 / w, centre[:, 0] * 2 / w - 1], 1),
                             torch.stack([sin * 2 / h, cos * 2 / h, centre[:, 1] * 2 / h - 1], 1)], 1)
        k = int(min(4, max(1, math.ceil(float(side.max()) / s))))
        grid = F.affine_grid(theta, [n, 3, s * k, s * k], align_corners=False)
        img = torch.from_numpy(np.ascontiguousarray(region)).to(self.device)
        img = img.flip(-1).permute(2, 0, 1)[None].float() / 255  # BGR HWC uint8 -> RGB 1CHW 0-1
        grid = grid.reshape(1, n * s * k, s * k, 2)  # all faces of the frame in one sampling call
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.reshape(3, n, s * k, s * k).transpose(0, 1)
        out = F.avg_pool2d(out, k) if k > 1 else out
        if self.gray:
            out = (out * out.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        return out.contiguous()
