"""Live facial expression recognition: webcam, video, image, folder or stream -> overlay, annotated mp4, JSON lines.

    python tools/live.py                         # camera 0, or the built-in demo video when there is no camera
    python tools/live.py --source clip.mp4 --no-show --save out.mp4 --json out.jsonl
Exit codes: 0 done, 1 stream dropped / undecodable input mid-way, 2 source or model cannot be opened, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo import DEMO, make_demo  # noqa: E402

from spayolo.pipeline import IMAGE_SUFFIXES, FERPipeline  # noqa: E402

COLOURS = [(0, 0, 255), (0, 128, 0), (128, 0, 128), (0, 215, 255), (255, 128, 0), (255, 0, 255), (128, 128, 128)]


class SourceError(RuntimeError):
    """Input that cannot be opened or read any further."""


def open_source(source: str | None):
    """Return (description, iterator of frames, total frames or None, is_live); None = camera 0 or the demo."""
    if source is None:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # no camera is expected here, not an error
        try:
            cap = cv2.VideoCapture(0)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if cap.isOpened() and cap.read()[0]:
            print("source: camera 0")
            return "camera 0", _video(cap, "camera 0", live=True), None, True
        cap.release()
        if not DEMO.is_file():
            make_demo(DEMO)
        print(f"source: no camera found, using the demo video {DEMO}")
        source = str(DEMO)
    else:
        print(f"source: {source}")
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
        if not cap.isOpened():
            raise SourceError(f"cannot open camera {source}")
        return f"camera {source}", _video(cap, f"camera {source}", live=True), None, True
    if "://" in source:
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise SourceError(f"cannot open stream {source}")
        return source, _video(cap, source, live=True), None, True
    path = Path(source)
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images in folder: {path}")
        return str(path), _images(files), len(files), False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return str(path), _images([path]), 1, False
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"cannot open video file: {path}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return str(path), _video(cap, str(path), live=False, total=total), total, False


def _video(cap, name: str, live: bool, total: int | None = None, retries: int = 5):
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                for _ in range(retries):  # a glitch in a stream or one bad frame in a file: try the next ones
                    ok, frame = cap.read()
                    if ok:
                        break
            if not ok:
                if live or (total and i < total - retries):
                    raise SourceError(f"{name}: no frame after {i} frames (stream dropped or frame undecodable)")
                return
            yield frame
            i += 1
    finally:
        cap.release()


def _images(files):
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            print(f"warning: skipping undecodable image {f}", file=sys.stderr)
            continue
        yield img


def draw(frame: np.ndarray, faces, fps: float) -> np.ndarray:
    """Box, label and confidence, per-class probability bars beside each face, FPS in the corner."""
    out = frame.copy()
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        k = int(f.probs.argmax())
        colour = COLOURS[k % len(COLOURS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        tag = f"{f.label} {f.confidence:.2f}" + (f" #{f.track_id}" if f.track_id is not None else "")
        cv2.putText(out, tag, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        bx = x2 + 4 if x2 + 110 < out.shape[1] else max(0, x1 - 110)
        for j, (name, p) in enumerate(zip(f.names, f.probs)):
            y = y1 + 12 * j
            cv2.rectangle(out, (bx + 50, y), (bx + 50 + int(55 * p), y + 9), COLOURS[j % len(COLOURS)], -1)
            cv2.putText(out, name[:8], (bx, y + 9), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
        if f.landmarks is not None:
            for px, py in f.landmarks:
                cv2.circle(out, (int(px), int(py)), 2, (0, 255, 0), -1)
    cv2.putText(out, f"{fps:.1f} FPS", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2, cv2.LINE_AA)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=None, help="camera index, video, image, folder or URL (default: camera 0 or demo)")
    ap.add_argument("--model", default=None, help="classifier .pt/.onnx (default weights/spayolo-n-fer2013.pt)")
    ap.add_argument("--detector", default="mtcnn", help="mtcnn, a YOLO face .pt/.onnx or a *yunet*.onnx")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="FP16 classifier (CUDA)")
    ap.add_argument("--imgsz", type=int, default=None, help="classifier input size (default: from the checkpoint)")
    ap.add_argument("--backend", choices=("torch", "onnx"), default="onnx",
                    help="run the face detector and the classifier in ONNX Runtime (about 2x faster on a CPU) or PyTorch")
    ap.add_argument("--min-face", type=float, default=40.0, help="smallest face in pixels that MTCNN looks for")
    ap.add_argument("--detect-every", type=int, default=5,
                    help="video: full detection every n-th frame, tracked faces re-located in between (1: every frame)")
    ap.add_argument("--save", default="runs/live/live.mp4", help="annotated video path ('' to skip)")
    ap.add_argument("--json", default="runs/live/live.jsonl", help="JSON lines path ('' to skip)")
    ap.add_argument("--no-show", action="store_true", help="no preview window")
    ap.add_argument("--fps", type=float, default=15.0, help="frame rate written into the saved video")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        name, frames, total, live = open_source(args.source)  # before loading models: bad sources fail fast
        fer = FERPipeline(args.model, detector=args.detector, device=args.device, imgsz=args.imgsz, half=args.half,
                          min_face=args.min_face, detect_every=args.detect_every, backend=args.backend)
    except (FileNotFoundError, ValueError, ImportError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    writer = jsonf = bar = None
    code, t0, fps, i = 0, time.perf_counter(), 0.0, 0
    try:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            jsonf = open(args.json, "w")
        if total and not live:
            from ultralytics.utils import TQDM

            bar = TQDM(total=total, desc=Path(name).name, unit="frame")
        for i, frame in enumerate(frames):
            tic = time.perf_counter()
            faces = fer.process([frame], track=live or total != 1 and not Path(name).is_dir())[0]
            fps = 0.9 * fps + 0.1 / max(time.perf_counter() - tic, 1e-6) if i else 1 / max(time.perf_counter() - tic, 1e-6)
            if jsonf:
                rec = {"frame": i, "time": round(time.perf_counter() - t0, 3), "faces": [f.to_dict() for f in faces]}
                jsonf.write(json.dumps(rec) + "\n")
                jsonf.flush()  # every line complete even if the run is cut short
            vis = draw(frame, faces, fps)
            if args.save:
                if writer is None:
                    Path(args.save).parent.mkdir(parents=True, exist_ok=True)
                    size = (vis.shape[1], vis.shape[0])
                    writer = cv2.VideoWriter(args.save, cv2.VideoWriter_fourcc(*"mp4v"), args.fps, size)
                writer.write(vis if (vis.shape[1], vis.shape[0]) == size else cv2.resize(vis, size))  # folders mix sizes
            if bar:
                bar.update(1)
            if not args.no_show:
                cv2.imshow("spayolo live", vis)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        if bar:
            bar.close()
        if writer is not None:
            writer.release()
        if jsonf:
            jsonf.close()
        if not args.no_show:
            cv2.destroyAllWindows()
    n = fer.times["frames"] or 1
    print("per frame: " + ", ".join(f"{k} {fer.times[k] / n * 1000:.1f} ms" for k in ("detect", "crop", "classify")))
    for path in (args.save, args.json):
        if path:
            print(f"wrote {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
