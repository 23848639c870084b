"""End-to-end facial expression recognition: read frames, detect faces, crop them, classify, track.

    from spayolo.pipeline import FERPipeline
    fer = FERPipeline("weights/spayolo-n-fer2013.pt")
    faces = fer("photo.jpg")                      # one frame -> list[Face]
    for i, frame, faces in fer.stream("clip.mp4"):  # video -> tracked, EMA-smoothed faces per frame
        ...
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spayolo.classifier import load_classifier
from spayolo.errors import MissingFileError, UsageError
from spayolo.face.align import aligned_crops
from spayolo.face.detectors import Detections, FaceDetector, RegionDetector, build_detector, given_boxes
from spayolo.runtime import cuda_index
from spayolo.sources import URI_SCHEMES, FrameSource, image_from_uri, open_source, read_image
from spayolo.track import FaceTracker
from spayolo.tta import DEFAULT_TTA, tta_mode, view_fractions

__all__ = ("FERPipeline", "Face")


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
            "landmarks": None if self.landmarks is None else [[round(float(x), 1), round(float(y), 1)]
                                                              for x, y in self.landmarks],
            "track_id": self.track_id,
            "label": self.label,
            "probs": {n: round(float(p), 4) for n, p in zip(self.names, self.probs)},
        }


def _require_above(name: str, value: float | None, low: float, strict: bool = True) -> None:
    if value is not None and (value <= low if strict else value < low):
        raise UsageError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value}")


def _limit_threads(threads: int | None, backend: str, cuda: bool) -> None:
    """The pipeline's thread policy for the process-wide pools: OpenCV's (pyramid, crops) follows ``threads`` when it
    is given; torch's, for the torch backend on a CPU, is ``threads`` or 1. Torch's pool of one thread per core stalls
    as soon as another process takes a core (its threads wait for the one that lost it), where ONNX Runtime's, with
    spinning off, degrades gracefully: the docs' benchmarks page has the measurements."""
    if threads:
        import cv2

        cv2.setNumThreads(threads)
    if backend == "torch" and not cuda:
        import torch

        torch.set_num_threads(threads or 1)


class FERPipeline:
    """Detect faces, cut eye-aligned square crops, classify every face of every frame in one call, track over time.

    Args:
        model: classifier: a .onnx or .pt path, an Ultralytics YOLO object, a ClassificationModel or an nn.Module, or
            a list of them (an ensemble: probabilities averaged, each model fed crops at its own input size), or a
            shipped model by name ('spayolo-n-fer2013', the fastest); None: the shipped default ensemble
            (spayolo.classifier.DEFAULT_ENSEMBLE: its INT8 .onnx files, or its .pt files with backend 'torch').
        detector: 'mtcnn', a YOLO/YuNet face model path, or a FaceDetector instance.
        device: 'cpu', 'cuda', 'cuda:0', ...; with backend 'torch' a device this machine lacks is refused.
        imgsz: input size of a single classifier; default from its training args or its ONNX export, else 64.
        margin: fraction of the face box side added around it before cropping (>= 0).
        track: IoU tracking with probability smoothing; None = on for stream(), off for __call__.
        gray: feed grayscale replicated to 3 channels (the classifier was trained on grayscale FER images).
        half: FP16 classifier, with a CUDA device and backend 'torch' (refused otherwise).
        min_face: smallest face (pixels) kept, by every detector. 40 by default: FER2013 faces are 48 px, and a
            smaller face carries too little expression detail, while halving it would cost MTCNN about 3x the time.
        detect_every: with tracking, run the full detector on every n-th frame only and re-locate the tracked faces
            in the frames between (MTCNN: ONet alone); a new face then appears within n frames. 1 = every frame.
        backend: 'onnx' (default) runs MTCNN's nets and the classifier on ONNX Runtime with NumPy and OpenCV around
            them, no torch needed (a .pt classifier is exported in memory; CUDA provider when onnxruntime-gpu and a
            CUDA device are there); 'torch' runs the nets and the classifier in PyTorch on ``device``.
        tta: test-time augmentation, a mode of spayolo.tta: each face's class probabilities averaged over its crop
            and the crop's mirror image ('flip'; True means 'flip'), and also over a zoomed-in crop and its mirror
            ('flip+zoom', the default, at twice flip's classifier cost); 'none' or False: the crop alone.
        trusted: load a .pt classifier (or YOLO face detector) without the restricted allow-list; this runs any code
            the file contains, so only for files you made or trust (see spayolo.checkpoints).
        threads: threads per model: ONNX Runtime's intra-op threads (None: one per core, which held up best on a busy
            machine as well; an ensemble on a CPU then runs one member per core at once, the cores shared out among
            them), torch's with backend 'torch' on a CPU (None: 1, as torch's own pool stalls when another process
            takes a core), and OpenCV's when given. Torch's and OpenCV's pools are process-wide.
        roi: region of interest (x1, y1, x2, y2): faces are looked for inside it only; in pixels, or in fractions of
            the frame when all four are <= 1. None: the whole frame.
    """

    def __init__(self, model=None, detector="mtcnn", device="cpu", imgsz=None, margin=0.2, track=None, gray=True,
                 half=False, min_face=40.0, detect_every=5, backend="onnx", tta=DEFAULT_TTA, trusted=False,
                 threads=None, roi=None):
        if int(detect_every) < 1:
            raise UsageError(f"detect_every must be >= 1, got {detect_every}")
        if backend not in ("torch", "onnx"):
            raise UsageError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        _require_above("min_face", min_face, 0)
        _require_above("imgsz", imgsz, 0)
        _require_above("margin", margin, 0, strict=False)
        _require_above("threads", threads, 0)
        cuda = cuda_index(device) is not None
        if half and (backend != "torch" or not cuda):
            raise UsageError(f"half=True (--half) runs the classifier in FP16 on CUDA with backend='torch'; got "
                             f"device '{device}', backend '{backend}'")
        self.device, self.backend = str(device), backend
        _limit_threads(threads and int(threads), backend, cuda)
        # first: a bad model fails before MTCNN loads
        self.classifier = load_classifier(model, backend, device, half, trusted, imgsz and int(imgsz), threads)
        self.detector: FaceDetector = build_detector(detector, device, min_face, backend, trusted, threads)
        if roi is not None:
            self.detector = RegionDetector(self.detector, roi)
        self.detect_every = int(detect_every)
        self.sizes = self.classifier.sizes
        self.names = self.classifier.names
        self.margin, self.track, self.gray, self.tta = margin, track, gray, tta_mode(tta)
        self.tracker = FaceTracker()
        self.times = defaultdict(float)  # seconds spent per stage, for profiling
        self._previous: Detections | None = None  # last frame's faces, while tracking
        self._since_detection = 0

    def reset(self) -> None:
        """Forget tracks and timings (call between unrelated videos)."""
        self.tracker = FaceTracker()
        self.times.clear()
        self._previous, self._since_detection = None, 0

    def __call__(self, source, boxes=None):
        """Frame (BGR array), image path, image URL (http/https) or ``data:`` URI -> list[Face]; a list of them -> list
        of list[Face]. ``boxes``: the faces' boxes (N, 4) x1 y1 x2 y2 in pixels, found by the caller's own detector,
        classified instead of detecting (a list of them for a list of frames)."""
        if isinstance(source, (list, tuple)):
            return self.process(list(source), track=bool(self.track), boxes=boxes)
        return self.process([source], track=bool(self.track), boxes=None if boxes is None else [boxes])[0]

    def top_expression(self, image) -> tuple[str, float] | tuple[None, None]:
        """The expression of the largest face of an image (anything __call__ takes) and its probability; (None, None)
        when there is no face."""
        faces = self(image)
        if not faces:
            return None, None
        face = max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
        return face.label, face.confidence

    def stream(self, source, boxes=None):
        """Yield (index, frame, faces) for a video file, camera index, URL, image or folder of images; ``index`` is the
        frame's place in the source (every n-th with open_source's ``stride``, an image's place in its folder).

        ``source`` may also be a spayolo.sources.FrameSource. Video frames are tracked unless track=False; the
        images of a folder are not (they are unrelated). Raises SourceError when the source cannot be opened or
        nothing in it decodes, and StreamError when a video or stream stops part-way (after the frames it gave).

        ``boxes``: the caller's own face boxes, a mapping from a frame's index (video) or file name (images) to its
        boxes (N, 4); a frame it does not name has no faces.
        """
        source = source if isinstance(source, FrameSource) else open_source(source)
        track = self.track is not False and source.sequential
        for frame in source:
            given = None if boxes is None else [boxes.get(source.current or source.index, ())]
            yield source.index, frame, self.process([frame], track=track, boxes=given)[0]

    def analyze(self, source, gallery=None):
        """The per-frame table of a video (or any source stream() takes) as a polars DataFrame: a row per frame and face
        with its media time, track id, box, label and probabilities (spayolo.analysis.table; ``.to_pandas()`` for
        pandas); spayolo.analysis.summarize makes the per-person summary of it. ``gallery``, a
        spayolo.analysis.FaceGallery, collects each track's most confident face per expression on the way.
        Needs polars (the full install; spayolo-runtime's ``analyze`` extra)."""
        from spayolo.analysis.deps import require

        require("polars", what="FERPipeline.analyze")
        from spayolo.analysis.records import stream_records
        from spayolo.analysis.table import frame_table

        self.reset()
        return frame_table(list(stream_records(self, source, gallery)), self.names)

    @staticmethod
    def _read(source) -> np.ndarray:
        """An image path or array -> HxWx3 uint8 BGR; grayscale and BGRA arrays are converted, anything else refused."""
        import cv2

        if isinstance(source, str) and source.startswith(URI_SCHEMES):
            return image_from_uri(source)
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise MissingFileError(f"image not found: {path}")
            img = read_image(path)
            if img is None:
                raise UsageError(f"cannot decode image {path}: corrupt, or not an image format OpenCV reads")
            return img
        if not isinstance(source, np.ndarray):
            raise UsageError(f"expected an image path or a BGR uint8 array, got {type(source).__name__}")
        if source.dtype != np.uint8:
            raise UsageError(f"frames must be uint8 BGR arrays (0-255), got dtype {source.dtype}")
        if not source.size:
            return source  # process() names the empty frame's place in the batch
        if source.ndim == 2 or source.ndim == 3 and source.shape[2] in (1, 4):
            code = cv2.COLOR_BGRA2BGR if source.ndim == 3 and source.shape[2] == 4 else cv2.COLOR_GRAY2BGR
            return cv2.cvtColor(source, code)
        if source.ndim != 3 or source.shape[2] != 3:
            raise UsageError(f"frames must be HxWx3 BGR arrays, got shape {source.shape}")
        return source

    def process(self, frames: list[np.ndarray], track: bool = False, boxes=None) -> list[list[Face]]:
        """Run detection, cropping and classification on a batch of BGR frames (consecutive video frames if track);
        ``boxes``, one (N, 4) array-like per frame, are the caller's face boxes, classified instead of detecting."""
        frames = [self._read(f) for f in frames]
        empty = [i for i, f in enumerate(frames) if not f.size]
        if empty:
            raise UsageError(f"empty frame (no pixels) at index {empty[0]} of the batch: a camera or stream glitch, "
                             f"or a failed decode; skip it before calling the pipeline")
        t0 = time.perf_counter()
        dets = self._detect(frames, track) if boxes is None else given_boxes(boxes, frames)
        t1 = time.perf_counter()
        views = {size: self.crop_views(frames, dets, size) for size in self.sizes}
        t2 = time.perf_counter()
        faces = sum(len(d) for d in dets)
        probs = (self.classifier(views, mirror=self.tta != "none") if faces
                 else np.zeros((0, len(self.names or []))))
        t3 = time.perf_counter()
        self.times["detect"] += t1 - t0
        self.times["crop"] += t2 - t1
        self.times["classify"] += t3 - t2
        self.times["frames"] += len(frames)
        names = self.names or [str(i) for i in range(probs.shape[1])]
        out, k = [], 0
        for frame, d in zip(frames, dets):
            p = probs[k : k + len(d)]
            k += len(d)
            ids = [None] * len(d)
            if track:
                ids, p = self.tracker.update(d.boxes, p, frame)
            marks = d.landmarks if d.landmarks is not None else [None] * len(d)
            out.append([Face(b, float(s), m, names[int(q.argmax())], q, names, t)
                        for b, s, m, q, t in zip(d.boxes, d.scores, marks, p, ids)])
        return out

    def _detect(self, frames: list[np.ndarray], track: bool) -> list[Detections]:
        """Full detection; or, tracking one video frame, the detector's cheaper re-location of the faces it knows.

        A re-location that loses a face (moved too far, occluded) falls back to full detection on the same frame; so
        does a frame whose size differs from the last one (a video whose resolution changes).
        """
        dets = None
        if (track and len(frames) == 1 and self._previous is not None and len(self._previous)
                and self._since_detection + 1 < self.detect_every and frames[0].shape == self._shape):
            dets = self.detector.refine(frames, [self._previous])
            dets = dets if len(dets[0]) >= len(self._previous) else None
        self._since_detection = 0 if dets is None else self._since_detection + 1
        dets = self.detector(frames) if dets is None else dets
        self._previous, self._shape = (dets[-1], frames[-1].shape) if track else (None, None)
        return dets

    def crop(self, frame: np.ndarray, det: Detections, fractions: tuple[float, ...] = (1.0,),
             size: int | None = None) -> np.ndarray:
        """Square crops (N,3,size,size) in 0-1 of the faces in ``det``, eyes level, at the classifier's (first) input
        size; for V ``fractions``, the (V*N,...) views of spayolo.face.align.aligned_crops."""
        return aligned_crops(frame, det, size or self.sizes[0], self.margin, self.gray, fractions)

    def crop_views(self, frames: list[np.ndarray], dets: list[Detections], size: int) -> np.ndarray:
        """The TTA views (V,N,3,size,size) of all N faces of the frames, in frame order."""
        fractions = view_fractions(self.tta)
        views = [self.crop(f, d, fractions, size).reshape(len(fractions), -1, 3, size, size)
                 for f, d in zip(frames, dets)]
        return np.concatenate(views, 1) if views else np.zeros((len(fractions), 0, 3, size, size), np.float32)
