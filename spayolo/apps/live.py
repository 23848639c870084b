"""Live facial expression recognition: webcam, video, image, folder or stream -> overlay, annotated video, JSON lines.

    spayolo live                         # camera 0, or the built-in demo video when there is no camera
    spayolo live --source clip.mp4 --no-show --save out.mp4 --json out.jsonl

Exit codes: 0 done, 1 the run stopped part-way (stream dropped, frames stopped decoding, an output could not be
written: disk full), 2 a source, model, output or flag that cannot be used (nothing is read or written), 130 Ctrl-C,
143 SIGTERM. Each output is written under a temporary name of its own and moved into place when the run ends, also
when it is stopped (Ctrl-C, SIGTERM) or the stream drops: the video and JSON lines then hold every frame processed so
far. An earlier output at that path is replaced only by a complete one; an output that could not be written whole is
removed, and the earlier file kept.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from spayolo.analysis.clock import MediaClock
from spayolo.analysis.run_report import live_report, live_report_folder
from spayolo.apps import sinks
from spayolo.apps.args import add_pipeline_args, pipeline_kwargs, positive_float, positive_int
from spayolo.apps.boxes import GivenBoxes, read_boxes
from spayolo.apps.demo import demo_video
from spayolo.apps.overlay import draw
from spayolo.apps.progress import Progress
from spayolo.apps.signals import Stopped, StopSignals
from spayolo.apps.sinks import JsonSink, OutputError, VideoSink
from spayolo.errors import UsageError
from spayolo.sources import TIMEOUT, FrameSource, StreamError, open_source, printable

__all__ = ("display_available", "main")

FPS = 15.0  # the saved video's frame rate where the source has none of its own (camera, stream, images)


def display_available() -> bool:
    """Whether a preview window can open: on Linux an X11 or Wayland display must be set, else Qt aborts the process."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _output(path: str, flag: str) -> Path | None:
    """A usable output file path for ``flag`` ('' means none); UsageError naming the flag otherwise."""
    if not path:
        return None
    out = Path(path).expanduser()
    if out.is_dir():
        raise UsageError(f"{flag} {printable(out)} is a folder: give a file name")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"{flag} {printable(out)}: {printable(parent)} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {printable(out)}: cannot create its folder ({error.strerror})") from None
    if sinks.disk_full(out.parent):
        raise UsageError(f"{flag} {printable(out)}: the disk is full ({printable(out.parent)})")
    return out


def _refuse_overwriting_inputs(outputs: dict[str, Path | None], inputs: list[Path]) -> None:
    """An output that resolves to an input (or to the other output) would destroy it: refuse before reading."""
    seen = {p.resolve(): printable(p) for p in inputs}
    for flag, out in outputs.items():
        if out is None:
            continue
        if out.resolve() in seen:
            raise UsageError(f"{flag} {printable(out)} is also an input ({seen[out.resolve()]}): choose another "
                             f"output path")
        seen[out.resolve()] = f"{flag} {printable(out)}"


def default_source(timeout: float = TIMEOUT, stride: int = 1) -> FrameSource:
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
        return open_source(0, timeout, stride)
    demo = demo_video()
    print(f"source: no camera found, using the demo video {demo}")
    return open_source(demo, timeout, stride)


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
    parser.add_argument("--fps", type=positive_float, default=None,
                        help=f"frame rate written into the saved video (default: a video file's own, divided by "
                             f"--vid-stride; else {FPS:g})")
    parser.add_argument("--vid-stride", type=positive_int, default=1,
                        help="video, camera or stream: process every n-th frame only (default: %(default)s)")
    parser.add_argument("--timeout", type=positive_float, default=TIMEOUT,
                        help="seconds a stream may take to open or to send its next frame (default: %(default)g)")
    parser.add_argument("--roi", type=_region, default=None, metavar="X1,Y1,X2,Y2",
                        help="look for faces inside this region only: pixels, or fractions of the frame when all four "
                             "are <= 1")
    parser.add_argument("--boxes", default=None, metavar="FILE",
                        help="classify the faces at these boxes (JSON lines from your own detector, or a --json of "
                             "spayolo live) instead of detecting them")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="at the end, write the run's per-person report into DIR (as spayolo analyze does)")
    return parser.parse_args(argv)


def _region(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1] or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not x1,y1,x2,y2 with 0 <= x1 < x2 and 0 <= y1 < y2")
    return values


def _inputs(args: argparse.Namespace, source: FrameSource) -> list[Path]:
    models = args.model if isinstance(args.model, list) else [args.model]
    files = [Path(p) for p in (*models, args.detector, args.boxes) if p and Path(str(p)).is_file()]
    return [*source.inputs, *files]


def _preview(vis: np.ndarray) -> bool:
    """Show a frame; False when the user quits (q or Esc)."""
    cv2.imshow("spayolo live", vis)
    return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)


def main(argv: list[str] | None = None) -> int:
    from spayolo.classifier import expression_warning
    from spayolo.pipeline import FERPipeline

    args = parse_args(argv)
    if args.boxes and args.roi:
        raise UsageError("--roi chooses where the face detector looks; with --boxes nothing is detected: give one")
    boxes = read_boxes(args.boxes) if args.boxes else None
    outputs = {"--save": _output(args.save, "--save"), "--json": _output(args.json, "--json")}
    report = live_report_folder(args.report, outputs["--json"]) if args.report else None
    if args.source is None:
        source = default_source(args.timeout, args.vid_stride)
    else:
        print(f"source: {printable(args.source)}")
        source = open_source(args.source, args.timeout, args.vid_stride)
    _refuse_overwriting_inputs(outputs, _inputs(args, source))
    show = args.show and display_available()
    if args.show and not show:
        print("no display found: running without a preview window (--no-show)", file=sys.stderr)
    fps = args.fps or (source.fps / source.stride if source.fps else FPS)
    video = VideoSink(outputs["--save"], fps, source.size, _sound(source, fps)) if outputs["--save"] else None
    try:
        fer = FERPipeline(**pipeline_kwargs(args), roi=args.roi)
        records = JsonSink(outputs["--json"]) if outputs["--json"] else None
    except BaseException:
        if video:
            video.discard()
        raise
    warning = expression_warning(fer.names, fer.classifier.source)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    code = _run(fer, source, video, records, show, boxes)
    if report and records.count and not records.error:  # also after a stop: the report of what was recorded
        print(f"wrote {printable(live_report(records.path, report, source, fer.names))}")
    return code


def _sound(source: FrameSource, fps: float) -> Path | None:
    """The video file whose sound the annotated video keeps: the source's, when it has sound, PyAV is installed and
    the video plays at the source's pace; else None, with one note saying why where the source has sound."""
    from spayolo.apps.audio import has_pyav, sounds

    if source.path is None or not sounds(source.path):
        return None
    if not has_pyav():
        note = "install PyAV to keep it (pip install av)"
    elif source.fps and abs(fps * source.stride - source.fps) > 1e-3 * source.fps:
        note = f"--fps {fps:g} is not its pace of {source.fps / source.stride:g} frames a second"
    else:
        return source.path
    print(f"note: {source.name} has sound; --save is written without it: {note}", file=sys.stderr)
    return None


def _close(sinks: list) -> tuple[list[Path], list[OutputError]]:
    """Close every output (each complete and moved into place, or removed); the paths written and the failures."""
    done, failed = [], []
    for sink in sinks:
        try:
            if sink.close():
                done.append(sink.path)
        except OutputError as error:
            failed.append(error)
    return done, failed


def _run(fer, source: FrameSource, video: VideoSink | None, records: JsonSink | None, show: bool,
         boxes: GivenBoxes | None = None) -> int:
    """The frame loop; outputs are closed (complete and moved into place, or removed) however it ends. Returns the
    exit status; what the run wrote is known once it returns, so later steps can read it."""
    code, t0, fps, clock = 0, time.perf_counter(), 0.0, MediaClock.of(source)
    bar = None
    if source.total and not source.live:
        bar = Progress(source.total, Path(source.name).name)
    tic = time.perf_counter()
    frames = fer.stream(source, boxes)
    region = getattr(fer.detector, "region", None)  # a --roi, drawn on every frame
    sinks = [sink for sink in (records, video) if sink]
    try:
        with StopSignals() as signals:
            for i, frame, faces in frames:
                now = time.perf_counter()
                fps = 0.9 * fps + 0.1 / max(now - tic, 1e-6) if i else 1 / max(now - tic, 1e-6)
                if records:
                    record = {"frame": i, "time": round(now - t0, 3), "t": clock(i, now - t0)}
                    record.update({"file": source.current} if source.current else {})
                    record["faces"] = [f.to_dict() for f in faces]
                vis = draw(frame, faces, fps, region and region(frame.shape))
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
    except (StreamError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as Stopped
        print("stopped" if isinstance(stop, Stopped) else "interrupted", file=sys.stderr)
        code = 143 if isinstance(stop, Stopped) else 130
    finally:
        # finishing the files must not be cut short by a second Ctrl-C or SIGTERM
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            frames.close()  # a camera or stream's reader stops
            if bar:
                bar.close()
            done, failed = _close(sinks)
            if show:
                cv2.destroyAllWindows()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    for error in failed:  # outputs that failed as they were finished (one that failed mid-run was named above)
        print(f"error: {error}", file=sys.stderr)
    unused = boxes.unused() if boxes is not None and not code else []
    if unused:
        print(f"warning: --boxes: {len(unused)} of its records name no frame of the source (first: {unused[0]!r})",
              file=sys.stderr)
    n = fer.times["frames"] or 1
    print("per frame: " + ", ".join(f"{k} {fer.times[k] / n * 1000:.1f} ms" for k in ("detect", "crop", "classify")))
    for path in done:
        print(f"wrote {printable(path)}")
    return code or (1 if failed else 0)
