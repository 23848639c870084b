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
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from spayolo.analysis.clock import MediaClock
from spayolo.analysis.run_report import live_report, live_report_folder
from spayolo.apps.args import add_pipeline_args, pipeline_kwargs, positive_float, positive_int
from spayolo.apps.boxes import GivenBoxes, read_boxes
from spayolo.apps.demo import demo_video
from spayolo.apps.overlay import draw
from spayolo.apps.progress import Progress
from spayolo.errors import UsageError
from spayolo.sources import TIMEOUT, FrameSource, StreamError, open_source, printable

__all__ = ("JsonSink", "OutputError", "StopSignals", "Stopped", "VideoSink", "display_available", "main")

CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
MAX_SIDE = 4096  # a folder holding one huge photo must not make every frame of the video that large
FPS = 15.0  # the saved video's frame rate where the source has none of its own (camera, stream, images)


class Stopped(KeyboardInterrupt):
    """SIGTERM turned into the same clean stop as Ctrl-C (timeout, kill and docker stop send it)."""


class OutputError(RuntimeError):
    """An output that could not be written part-way (disk full, I/O error): the run stops with exit status 1."""


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


def _disk_full(folder: Path) -> bool:
    """No block left for this process in the file system of ``folder`` (root may use the blocks reserved for it); a
    file system that counts no blocks at all (/proc) is not full but refuses writes by itself."""
    st = os.statvfs(folder)
    return st.f_blocks > 0 and (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0


def _identity(path: Path) -> tuple | None:
    """What tells one file at ``path`` from another written there later; None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


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
    if _disk_full(out.parent):
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


class _Output:
    """An output file written under a temporary name of its own beside it and moved into place when whole.

    The name is unique (tempfile.mkstemp), so two runs writing the same output never write into one file: each
    moves its own complete file into place, and the last to finish wins. ``unit`` names what it holds, for messages.
    """

    unit = "frames"

    def __init__(self, path: Path, flag: str):
        self.path, self.flag, self.count, self.error = path, flag, 0, None
        self.before = _identity(path)  # to notice another run writing the same output meanwhile
        try:
            str(path.stem).encode()
            stem = path.stem
        except UnicodeEncodeError:  # the temporary name is given to OpenCV, which needs UTF-8
            stem = "spayolo"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
        except OSError as error:
            raise UsageError(f"{flag} {printable(path)}: cannot write there ({error.strerror})") from None
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's file is private; the output gets the mode open() would give it
        self.fd, self.tmp = fd, Path(tmp)

    def failed(self, reason: str) -> OutputError:
        """Give up this output: its temporary file is removed, an earlier file at its path stays as it was."""
        self.discard()
        kept = f"the earlier {printable(self.path)} is kept" if self.before else "nothing was written there"
        self.error = OutputError(f"{self.flag} {printable(self.path)}: {reason} after {self.count} {self.unit}; "
                                 f"{kept}")
        return self.error

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def _replace(self) -> None:
        """Flush the temporary file to disk and move it into place (atomic within one file system)."""
        try:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if _identity(self.path) != self.before:
                print(f"warning: {self.flag} {printable(self.path)} was written by another run while this one ran: "
                      f"this run's output replaces it", file=sys.stderr)
            os.replace(self.tmp, self.path)
        except OSError as error:
            raise self.failed(f"cannot be finished ({error.strerror})") from None
        with contextlib.suppress(OSError):  # the rename itself reaches the disk with its folder
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)


def _opencv_name(path: Path) -> tuple[str, int | None]:
    """A name OpenCV can take for ``path``, and a folder descriptor to close after: OpenCV needs UTF-8, and a folder
    whose name is not is reached through /proc (Linux)."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        folder = os.open(path.parent, os.O_RDONLY)
        return f"/proc/self/fd/{folder}/{path.name}", folder
    return str(path), None


class VideoSink(_Output):
    """An annotated video written under a temporary name, moved into place by close() once checked whole.

    The codec comes from the suffix; the writer is tried on a probe frame when the sink is created, so a path or
    format that cannot be written fails before any frame is read. Every frame is letterboxed into one size, without
    distortion: the source's largest frame where known up front (a folder of images), else the first frame's, made
    even. OpenCV's writer reports no failed write, so the disk is checked after every frame and the finished file is
    read back: a full disk stops the run instead of leaving a video that does not play.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int] | None = None, sound: Path | None = None):
        if path.suffix.lower() not in CODECS:
            raise UsageError(f"--save {printable(path)}: unknown video format {path.suffix!r}; use one of "
                             f"{', '.join(CODECS)}")
        super().__init__(path, "--save")
        os.close(self.fd)
        self.fps, self.size, self.writer, self.sound = fps, None, None, sound
        self._open((64, 64))  # probe: fails now on an unwritable path or a format this OpenCV cannot write
        self.writer.release()
        self.writer, self.size = None, size and self._fit(size)

    @staticmethod
    def _fit(size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        scale = min(1.0, MAX_SIDE / max(w, h))
        even = lambda v: max(32, int(v * scale) + int(v * scale) % 2)  # noqa: E731  codecs need even sides
        return even(w), even(h)

    def _open(self, size: tuple[int, int]) -> None:
        name, folder = _opencv_name(self.tmp)
        try:
            self.writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()]), self.fps,
                                          size)
        finally:
            if folder is not None:
                os.close(folder)
        if not self.writer.isOpened():
            self.discard()
            raise UsageError(f"--save {printable(self.path)}: cannot write a {self.path.suffix} video there")

    def write(self, frame: np.ndarray) -> None:
        if self.error:
            return
        if self.writer is None:
            self.size = self.size or self._fit((frame.shape[1], frame.shape[0]))
            self._open(self.size)
        self.writer.write(self._letterbox(frame))
        if _disk_full(self.tmp.parent):
            self.writer.release()
            raise self.failed("the disk is full")
        self.count += 1

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

    def _whole(self, path: Path | None = None) -> bool:
        """The finished file opens and holds every frame written (a full disk leaves one without its index)."""
        name, folder = _opencv_name(path or self.tmp)
        try:
            cap = cv2.VideoCapture(name)
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            cap.release()
        finally:
            if folder is not None:
                os.close(folder)
        return frames == self.count

    def close(self) -> bool:
        """Finish the file and move it into place; False (and nothing replaced) when no frame was written.

        Raises OutputError (the temporary file removed, an earlier file kept) when the file is not whole.
        """
        if self.writer is not None and not self.error:
            self.writer.release()
        if self.error or not self.count:
            self.discard()
            return False
        if _disk_full(self.tmp.parent) or not self._whole():
            raise self.failed("the video could not be finished (disk full?)")
        if self.sound is not None:
            self._keep_sound()
        self._replace()
        return True

    def _keep_sound(self) -> None:
        """Copy the source's sound into the finished video (PyAV); on failure the video stays as it is, silent."""
        import av

        from spayolo.apps.audio import keep_audio

        fd, name = tempfile.mkstemp(prefix=".spayolo.", suffix=f".partial{self.path.suffix}", dir=self.tmp.parent)
        os.close(fd)
        muxed = Path(name)
        try:
            keep_audio(self.tmp, self.sound, muxed, self.count / self.fps)
            if not self._whole(muxed):
                raise OSError("the video with sound does not read back whole")
            os.replace(muxed, self.tmp)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            muxed.unlink(missing_ok=True)
            print(f"warning: --save {printable(self.path)}: the sound of {printable(self.sound)} could not be kept "
                  f"({error}); the video is written without it", file=sys.stderr)


class JsonSink(_Output):
    """JSON lines written under a temporary name, one flushed line per frame, moved into place by close()."""

    unit = "records"

    def __init__(self, path: Path):
        super().__init__(path, "--json")
        self.file = os.fdopen(self.fd, "w")

    def write(self, record: dict) -> None:
        if self.error:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()  # every line complete even if the process is killed outright
        except OSError as error:
            with contextlib.suppress(OSError):
                self.file.close()
            raise self.failed(f"cannot be written ({error.strerror})") from None
        self.count += 1

    def close(self) -> bool:
        """Finish the file and move it into place; False (and nothing replaced) when no record was written.

        Raises OutputError (the temporary file removed, an earlier file kept) when it cannot be finished.
        """
        if self.error:
            return False
        try:
            self.file.close()
        except OSError as error:
            raise self.failed(f"cannot be finished ({error.strerror})") from None
        if not self.count:
            self.discard()
            return False
        self._replace()
        return True


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
