"""End-to-end facial expression recognition: read frames, detect faces, crop them, classify, track.

    from spayolo.pipeline import FERPipeline
    fer = FERPipeline("weights/spayolo-n-fer2013.pt")
    faces = fer("photo.jpg")                      # one frame -> list[Face]
    for i, frame, faces in fer.stream("clip.mp4"):  # video -> tracked, EMA-smoothed faces per frame
        ...
"""

from __future__ import annotations

import ast
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from spayolo.checkpoints import CheckpointError, load_checkpoint
from spayolo.face.align import aligned_crops
from spayolo.face.detectors import Detections, FaceDetector, build_detector
from spayolo.paths import packaged
from spayolo.runtime import OnnxModule, export_onnx_bytes
from spayolo.sources import FrameSource, open_source, read_image
from spayolo.tta import DEFAULT_TTA, tta_mode, view_fractions

__all__ = ("DEFAULT_MODEL", "Classifier", "FERPipeline", "Face", "IoUTracker", "box_iou", "checked_device",
           "classifier_imgsz")

DEFAULT_MODEL = packaged("weights", "spayolo-n-fer2013.pt")


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


def _not_classifier(source, task: str) -> CheckpointError:
    return CheckpointError(f"{source} is a {task} model, not a classifier: pass a classification checkpoint "
                           f"(.pt/.onnx) as the expression model, and a face detector with detector=/--detector")


def checked_device(device: str | torch.device) -> torch.device:
    """A torch.device that exists on this machine; ValueError naming the device otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device '{device}' is not available on this machine (CUDA GPUs: "
                         f"{torch.cuda.device_count()}): use device='cpu' (--device cpu)")
    return device


def _onnx_classifier(path: Path, device: torch.device) -> tuple[OnnxModule, dict]:
    """An ONNX Runtime session for a classification .onnx and its metadata, refusing other files with their name."""
    try:
        runner = OnnxModule(path, device)
    except Exception as error:  # onnxruntime reports unreadable models in its own exception types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a valid ONNX model: {first}") from error
    meta = runner.session.get_modelmeta().custom_metadata_map
    outputs = runner.session.get_outputs()
    if meta.get("task", "classify") != "classify":
        raise _not_classifier(path, meta["task"])
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        shapes = ", ".join(str(o.shape) for o in outputs)
        raise CheckpointError(f"{path} is not a classifier: a classifier has one (batch, classes) output, this one "
                              f"has {shapes}")
    return runner, meta


class Classifier:
    """A classification model (.pt, .onnx, ultralytics YOLO object or nn.Module) run in PyTorch or ONNX Runtime."""

    def __init__(self, model, device: torch.device, half: bool, trusted: bool = False):
        self.device, self.half, self.runner, self.source = device, half, None, model
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
                self.runner, meta = _onnx_classifier(path, device)
                names, imgsz = meta.get("names"), meta.get("imgsz")
                imgsz = ast.literal_eval(imgsz) if imgsz else self.runner.session.get_inputs()[0].shape[2:]
            else:
                model, ckpt = load_checkpoint(path, trusted)
                imgsz = (ckpt.get("train_args") or {}).get("imgsz")
                if model.task != "classify":
                    raise _not_classifier(path, model.task)
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
    def __call__(self, x: torch.Tensor, mirror: bool = False) -> torch.Tensor:
        """(N,3,S,S) float 0-1 -> (N,nc) probabilities; for views (V,N,3,S,S) of the same N faces, the mean over the
        views, and with ``mirror`` over their mirror images too (test-time augmentation, spayolo.tta)."""
        if x.ndim == 5 or mirror:
            views = x if x.ndim == 5 else x[None]
            views = torch.cat([views, views.flip(-1)]) if mirror else views
            return self(views.flatten(0, 1)).unflatten(0, views.shape[:2]).mean(0)
        if self.runner is not None:
            y = self.runner(x)
        else:
            y = self.model(x.half() if self.half else x)
        y = y[0] if isinstance(y, (tuple, list)) else y  # Classify in eval returns (probs, logits)
        y = y.float()
        if (y < 0).any() or not torch.allclose(y.sum(1), torch.ones(len(y), device=y.device), atol=1e-3):
            y = y.softmax(1)  # a bare module returning logits
        return y


def classifier_imgsz(model: str | Path, trusted: bool = False) -> int | None:
    """The input size a classifier .pt was trained at or an .onnx exported for, as FERPipeline reads it; None if unsaid.

    Raises FileNotFoundError or CheckpointError (naming the file) for a model that cannot be loaded.
    """
    return Classifier(model, torch.device("cpu"), half=False, trusted=trusted).imgsz


def _require_above(name: str, value: float | None, low: float, strict: bool = True) -> None:
    if value is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value}")


class FERPipeline:
    """Detect faces, cut eye-aligned square crops, classify every face of every frame in one call, track over time.

    Args:
        model: classifier — path to a .pt checkpoint or .onnx, an ultralytics YOLO object or an nn.Module;
            None loads weights/spayolo-n-fer2013.pt.
        detector: 'mtcnn', a YOLO/YuNet face model path, or a FaceDetector instance.
        device: 'cpu', 'cuda', 'cuda:0', ...; a device this machine lacks is refused.
        imgsz: classifier input size; default from the checkpoint's training args, else 64.
        margin: fraction of the face box side added around it before cropping (>= 0).
        track: IoU tracking with probability smoothing; None = on for stream(), off for __call__.
        gray: feed grayscale replicated to 3 channels (the classifier was trained on grayscale FER images).
        half: FP16 classifier, with a CUDA device and backend 'torch' (refused otherwise).
        min_face: smallest face (pixels) kept. 40 by default: FER2013 faces are 48 px, and a smaller face carries
            too little expression detail, while halving the size would cost MTCNN about 3x the detection time.
        detect_every: with tracking, run the full detector on every n-th frame only and re-locate the tracked faces
            in the frames between (MTCNN: ONet alone); a new face then appears within n frames. 1 = every frame.
        backend: 'onnx' (default) runs MTCNN's nets and the classifier in ONNX Runtime, about 2x faster on a CPU (a
            .pt classifier is exported in memory; CUDA provider when onnxruntime-gpu and a CUDA device are there);
            'torch' runs them in PyTorch.
        tta: test-time augmentation, a mode of spayolo.tta: each face's class probabilities averaged over its crop
            and the crop's mirror image ('flip'; True means 'flip'), and also over a zoomed-in crop and its mirror
            ('flip+zoom', the default: 66.76 -> 67.12 -> 68.46 % top-1 on FER2013 PublicTest for the shipped weights,
            none -> flip -> flip+zoom, at twice flip's classifier cost); 'none' or False: the crop alone.
        trusted: load a .pt classifier (or YOLO face detector) without the restricted allow-list; this runs any code
            the file contains, so only for files you made or trust (see spayolo.checkpoints).
    """

    def __init__(self, model=None, detector="mtcnn", device="cpu", imgsz=None, margin=0.2, track=None, gray=True,
                 half=False, min_face=40.0, detect_every=5, backend="onnx", tta=DEFAULT_TTA, trusted=False):
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        _require_above("min_face", min_face, 0)
        _require_above("imgsz", imgsz, 0)
        _require_above("margin", margin, 0, strict=False)
        self.device = checked_device(device)
        if half and (backend != "torch" or self.device.type != "cuda"):
            raise ValueError(f"half=True (--half) runs the classifier in FP16 on CUDA with backend='torch'; got "
                             f"device '{self.device}', backend '{backend}'")
        # first: a bad model fails before MTCNN loads
        self.classifier = Classifier(model, self.device, half, trusted)
        self.detector: FaceDetector = build_detector(detector, self.device, min_face, backend, trusted)
        self.detect_every = int(detect_every)
        self.imgsz = int(imgsz or self.classifier.imgsz or 64)
        self.classifier.check_imgsz(self.imgsz)
        if backend == "onnx":
            self.classifier.use_onnx(self.imgsz)
        self.names = self.classifier.names
        self.margin, self.track, self.gray, self.tta = margin, track, gray, tta_mode(tta)
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
        """Yield (index, frame, faces) for a video file, camera index, URL, image or folder of images.

        ``source`` may also be a spayolo.sources.FrameSource. Video frames are tracked unless track=False; the
        images of a folder are not (they are unrelated). Raises SourceError when the source cannot be opened or
        nothing in it decodes, and StreamError when a video or stream stops part-way (after the frames it gave).
        """
        source = source if isinstance(source, FrameSource) else open_source(source)
        track = self.track is not False and source.sequential
        for i, frame in enumerate(source):
            yield i, frame, self.process([frame], track=track)[0]

    @staticmethod
    def _read(source) -> np.ndarray:
        """An image path or array -> HxWx3 uint8 BGR; grayscale and BGRA arrays are converted, anything else refused."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            img = read_image(path)
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
        fractions = view_fractions(self.tta)
        views = [self.crop(f, d, fractions).unflatten(0, (len(fractions), -1)) for f, d in zip(frames, dets)]
        views = torch.cat(views, 1) if views else torch.zeros(len(fractions), 0, 3, self.imgsz, self.imgsz)
        sync()
        t2 = time.perf_counter()
        probs = (self.classifier(views, mirror=self.tta != "none").cpu().numpy() if views.shape[1]
                 else np.zeros((0, len(self.names or []))))
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

    def crop(self, frame: np.ndarray, det: Detections, fractions: tuple[float, ...] = (1.0,)) -> torch.Tensor:
        """Square crops (N,3,imgsz,imgsz) in 0-1 of the faces in ``det``, eyes level; for V ``fractions``, the
        (V*N,...) views of spayolo.face.align.aligned_crops (a fraction < 1 keeps the centre of each crop)."""
        return aligned_crops(frame, det, self.imgsz, self.margin, self.gray, self.device, fractions)
