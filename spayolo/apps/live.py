"""Live facial expression recognition: webcam, video, image, folder or stream -> overlay, annotated video, JSON lines.

    spayolo live                         # camera 0, or the built-in demo video when there is no camera
    spayolo live --source clip.mp4 --no-show --save out.mp4 --json out.jsonl

Exit codes: 0 done, 1 stream dropped or frames stopped decoding mid-way, 2 a source, model, output or flag that cannot
be used (nothing is read or written), 130 Ctrl-C, 143 SIGTERM. Outputs are written under a temporary name and
renamed when the run ends, also when it is stopped (Ctrl-C, SIGTERM) or the stream drops: the video and JSON lines
then hold every frame processed so far, and an earlier output at that path is replaced only by a complete one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from spayolo.apps.args import add_pipeline_args, pipeline_kwargs, positive_float
from spayolo.apps.demo import demo_video
from spayolo.apps.overlay import draw
from spayolo.apps.progress import Progress
from spayolo.errors import UsageError
from spayolo.sources import FrameSource, StreamError, open_source

__all__ = ("JsonSink", "StopSignals", "Stopped", "VideoSink", "display_available", "main")

CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
MAX_SIDE = 4096  # a folder holding one huge photo must not make every frame of the video that large


class Stopped(KeyboardInterrupt):
    """SIGTERM turned into the same clean stop as Ctrl-C (timeout, kill and docker stop send it)."""


class StopSignals:
    """Ctrl-C and SIGTERM stop the run at once, except while a frame's outputs are being written: then right after.

    A stop between writing a frame's JSON line and its video frame would leave the two files a frame apart.
    """

    def __init__(self):
        self.writing, self.pending, self.previous = False, None, {}

    def __enter__(self) -> StopSignals:
        # a signal the parent set to be ignored (a shell's `&` does so for Ctrl-C) stays ignored
        self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
                         if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handler(self, signum, frame) -> None:
        if self.writing:
            self.pending = signum
        else:
            self._stop(signum)

    @staticmethod
    def _stop(signum: int) -> None:
        raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """Hold a stop until the block is done."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending is not None:
            self._stop(self.pending)


def display_available() -> bool:
    """Whether a preview window can open: on Linux an X11 or Wayland display must be set, else Qt aborts the process."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _output(path: str, flag: str) -> Path | None:
    """A usable output file path for ``flag`` ('' means none); ValueError naming the flag otherwise."""
    if not path:
        return None
    out = Path(path).expanduser()
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a folder: give a file name")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"{flag} {out}: {parent} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {out}: cannot create its folder ({error.strerror})") from None
    return out


def _refuse_overwriting_inputs(outputs: dict[str, Path | None], inputs: list[Path]) -> None:
    """An output that resolves to an input (or to the other output) would destroy it: refuse before reading."""
    seen = {p.resolve(): str(p) for p in inputs}
    for flag, out in outputs.items():
        if out is None:
            continue
        if out.resolve() in seen:
            raise UsageError(f"{flag} {out} is also an input ({seen[out.resolve()]}): choose another output path")
        seen[out.resolve()] = f"{flag} {out}"


class VideoSink:
    """An annotated video written under a temporary name, renamed into place by close().

    The codec comes from the suffix; the writer is tried on a probe frame when the sink is created, so a path or
    format that cannot be written fails before any frame is read. Every frame is letterboxed into one size: the
    source's largest frame where known up front (a folder of images), else the first frame's, made even.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int] | None = None):
        if path.suffix.lower() not in CODECS:
            raise UsageError(f"--save {path}: unknown video format {path.suffix!r}; use one of {', '.join(CODECS)}")
        self.path, self.tmp, self.fps, self.frames = path, _partial(path), fps, 0
        self.size, self.writer = None, None
        self._open((64, 64))  # probe: fails now on an unwritable path or a format this OpenCV cannot write
        self.writer.release()
        self.tmp.unlink(missing_ok=True)
        self.writer, self.size = None, size and self._fit(size)

    @staticmethod
    def _fit(size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        scale = min(1.0, MAX_SIDE / max(w, h))
        even = lambda v: max(32, int(v * scale) + int(v * scale) % 2)  # noqa: E731  codecs need even sides
        return even(w), even(h)

    def _open(self, size: tuple[int, int]) -> None:
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()]),
                                      self.fps, size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise UsageError(f"--save {self.path}: cannot write a {self.path.suffix} video there")

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.size = self.size or self._fit((frame.shape[1], frame.shape[0]))
            self._open(self.size)
        self.writer.write(self._letterbox(frame))
        self.frames += 1

    def _letterbox(self, frame: np.ndarray) -> np.ndarray:
        w, h = self.size
        if frame.shape[:2] == (h, w):
            return frame
        scale = min(w / frame.shape[1], h / frame.shape[0])
        fw, fh = max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))
        canvas = np.zeros((h, w, 3), np.uint8)
        x, y = (w - fw) // 2, (h - fh) // 2
        canvas[y : y + fh, x : x + fw] = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_AREA)
        return canvas

    def close(self) -> bool:
        """Finish the file and move it into place; False (and nothing replaced) when no frame was written."""
        if self.writer is not None:
            self.writer.release()
        if self.frames:
            os.replace(self.tmp, self.path)
        return bool(self.frames)


class JsonSink:
    """JSON lines written under a temporary name, one flushed line per frame, renamed into place by close()."""

    def __init__(self, path: Path):
        self.path, self.tmp, self.lines = path, _partial(path), 0
        try:
            self.file = open(self.tmp, "w")
        except OSError as error:
            raise UsageError(f"--json {path}: cannot write there ({error.strerror})") from None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()  # every line complete even if the process is killed outright
        self.lines += 1

    def close(self) -> bool:
        self.file.close()
        if self.lines:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return bool(self.lines)


def default_source() -> FrameSource:
    """Camera 0 when one delivers a frame, else the built-in demo video (made on first use)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # no camera is expected here, not an error
    try:
        cap = cv2.VideoCapture(0)
        found = cap.isOpened() and cap.read()[0]
        cap.release()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if found:
        print("source: camera 0")
        return open_source(0)
    demo = demo_video()
    print(f"source: no camera found, using the demo video {demo}")
    return open_source(demo)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spayolo live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None,
                        help="camera index, video, image, folder or URL (default: camera 0, else the demo video)")
    add_pipeline_args(parser)
    parser.add_argument("--save", default="runs/live/live.mp4", help="annotated video (.mp4, .avi, ...; '' to skip)")
    parser.add_argument("--json", default="runs/live/live.jsonl", help="JSON lines path ('' to skip)")
    parser.add_argument("--show", action=argparse.BooleanOptionalAction, default=True,
                        help="preview window (off by itself where there is no display)")
    parser.add_argument("--fps", type=positive_float, default=15.0,
                        help="frame rate written into the saved video (default: %(default)s)")
    return parser.parse_args(argv)


def _inputs(args: argparse.Namespace, source: FrameSource) -> list[Path]:
    models = args.model if isinstance(args.model, list) else [args.model]
    files = [Path(p) for p in (*models, args.detector) if p and Path(str(p)).is_file()]
    return [*source.inputs, *files]


def _preview(vis: np.ndarray) -> bool:
    """Show a frame; False when the user quits (q or Esc)."""
    cv2.imshow("spayolo live", vis)
    return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)


def main(argv: list[str] | None = None) -> int:
    from spayolo.pipeline import FERPipeline

    args = parse_args(argv)
    outputs = {"--save": _output(args.save, "--save"), "--json": _output(args.json, "--json")}
    if args.source is None:
        source = default_source()
    else:
        print(f"source: {args.source}")
        source = open_source(args.source)
    _refuse_overwriting_inputs(outputs, _inputs(args, source))
    show = args.show and display_available()
    if args.show and not show:
        print("no display found: running without a preview window (--no-show)", file=sys.stderr)
    video = VideoSink(outputs["--save"], args.fps, source.size) if outputs["--save"] else None
    fer = FERPipeline(**pipeline_kwargs(args))
    records = JsonSink(outputs["--json"]) if outputs["--json"] else None
    return _run(fer, source, video, records, show)


def _run(fer, source: FrameSource, video: VideoSink | None, records: JsonSink | None, show: bool) -> int:
    """The frame loop; outputs are closed (complete, renamed into place) however it ends."""
    code, t0, fps = 0, time.perf_counter(), 0.0
    bar = None
    if source.total and not source.live:
        bar = Progress(source.total, Path(source.name).name)
    tic = time.perf_counter()
    try:
        with StopSignals() as signals:
            for i, frame, faces in fer.stream(source):
                now = time.perf_counter()
                fps = 0.9 * fps + 0.1 / max(now - tic, 1e-6) if i else 1 / max(now - tic, 1e-6)
                if records:
                    record = {"frame": i, "time": round(now - t0, 3)}
                    record.update({"file": source.current} if source.current else {})
                    record["faces"] = [f.to_dict() for f in faces]
                vis = draw(frame, faces, fps)
                with signals.deferred():  # both outputs get this frame, or neither
                    if records:
                        records.write(record)
                    if video:
                        video.write(vis)
                if bar:
                    bar.update(1)
                if show:
                    try:
                        if not _preview(vis):
                            break
                    except cv2.error:  # an OpenCV build without GUI support
                        print("this OpenCV cannot open windows: running without a preview", file=sys.stderr)
                        show = False
                tic = time.perf_counter()
    except StreamError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as Stopped
        print("stopped" if isinstance(stop, Stopped) else "interrupted", file=sys.stderr)
        code = 143 if isinstance(stop, Stopped) else 130
    finally:
        # finishing the files must not be cut short by a second Ctrl-C or SIGTERM
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if bar:
                bar.close()
            done = [sink.path for sink in (video, records) if sink and sink.close()]
            if show:
                cv2.destroyAllWindows()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    n = fer.times["frames"] or 1
    print("per frame: " + ", ".join(f"{k} {fer.times[k] / n * 1000:.1f} ms" for k in ("detect", "crop", "classify")))
    for path in done:
        print(f"wrote {path}")
    return code
