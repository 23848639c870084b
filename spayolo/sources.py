"""Frame sources for the pipeline: camera, video file, stream URL, one image or a folder of images.

Every source yields BGR frames and knows its name, its length where known, and whether its frames are consecutive
(worth tracking). A source that cannot be opened, or yields no decodable frame at all, raises SourceError; a stream
or file that stops delivering frames part-way raises StreamError, after what it did deliver.

A camera or stream is opened and read in a worker thread: OpenCV blocks in C for as long as its time-out while a
stream says nothing, and a signal handler (Ctrl-C, SIGTERM) only runs once the main thread is back in Python.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from spayolo.errors import UsageError

__all__ = ("IMAGE_SUFFIXES", "URI_SCHEMES", "FrameSource", "SourceError", "StreamError", "image_files",
           "image_from_uri", "open_source", "printable", "read_image")

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
TIMEOUT = 30.0  # seconds a stream may take to open or to send a frame: OpenCV's own default
URI_SCHEMES = ("http://", "https://", "data:")  # an image given by address (FERPipeline's __call__)
MAX_IMAGE_BYTES = 50 << 20  # an image fetched by URL larger than this is refused: a photo is rarely over 20 MB


class SourceError(UsageError):
    """A source that cannot be opened, or from which not one frame decodes."""


class StreamError(RuntimeError):
    """A source that stopped delivering frames part-way (stream dropped, frame undecodable)."""


def printable(path: str | Path) -> str:
    """A file name as text that any terminal or log takes: bytes that are not UTF-8 (Linux allows them) as \\xNN."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _utf8(path: str | Path) -> bool:
    """Whether OpenCV can be given this name: it takes names as UTF-8 and crashes on one that is not."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        return False
    return True


def image_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files of a folder (by suffix), sorted."""
    pattern = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _truncated_jpeg(path: Path) -> bool:
    """A JPEG must end with its EOI marker; OpenCV decodes a cut one as grey below the cut, with no error."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        return b"\xff\xd9" not in f.read()


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode an image file to BGR, None when it does not decode; warns (naming it) about a truncated JPEG.

    OpenCV's reader takes the name as UTF-8 and crashes on one that is not (Linux allows any bytes), so such a file is
    read by Python and decoded from memory; OpenCV's reader stays for the others, as it also decodes a cut JPEG.
    Both turn a photo upright by its EXIF orientation.
    """
    path = Path(path)
    if _utf8(path):
        image = cv2.imread(str(path))
    else:
        data = np.fromfile(path, np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is not None and _truncated_jpeg(path):
        print(f"warning: {printable(path)} is a truncated JPEG: the part below the cut is grey", file=sys.stderr)
    return image


def _decoded(data: bytes, name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise UsageError(f"{name}: not an image OpenCV can decode ({len(data)} bytes)")
    return image


def image_from_uri(uri: str, timeout: float = 10.0, max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """An image given as an http(s) URL (fetched, within ``timeout`` seconds and ``max_bytes``) or a ``data:`` URI
    (base64 or percent-encoded), decoded to BGR; UsageError naming it for anything that is not one."""
    import urllib.error
    import urllib.parse
    import urllib.request

    short = uri if len(uri) <= 80 else uri[:77] + "..."
    if uri.startswith("data:"):
        header, comma, payload = uri[5:].partition(",")
        if not comma:
            raise UsageError(f"{short}: a data URI is data:[<type>][;base64],<data>")
        if header.endswith(";base64"):
            import base64
            import binascii

            try:
                data = base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError) as error:
                raise UsageError(f"{short}: its base64 does not decode ({error})") from None
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        return _decoded(data, short)
    request = urllib.request.Request(uri, headers={"User-Agent": "spayolo"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as error:
        raise UsageError(f"{short}: the server answered {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UsageError(f"{short}: cannot be fetched ({reason})") from None
    if len(data) > max_bytes:
        raise UsageError(f"{short}: larger than {max_bytes >> 20} MB, not fetched whole")
    return _decoded(data, short)


class FrameSource:
    """Iterable of BGR frames with ``name``, ``total`` (None when unknown), ``live``, ``sequential`` and ``current``.

    ``current`` is the file name of the frame last yielded by a folder or image source (None for video), and ``index``
    its place in the source (with a ``stride`` of n, every n-th frame of a video: 0, n, 2n, ...), so that results can
    be matched to files and frames after undecodable images or strided frames are skipped. ``size`` is (width,
    height) large enough for every frame when it can be known up front (images: from their headers), else None.
    ``fps`` is a video file's frame rate (None elsewhere), ``path`` the file a video source reads, and ``inputs``
    the files it reads, so that outputs can be checked against them.
    """

    def __init__(self, name: str, frames: Iterator[tuple[str | None, int, np.ndarray]], total: int | None = None,
                 live: bool = False, sequential: bool = True, size: tuple[int, int] | None = None,
                 inputs: tuple[Path, ...] = (), fps: float | None = None, stride: int = 1, path: Path | None = None):
        self.name, self.total, self.live, self.sequential, self.size = name, total, live, sequential, size
        self.inputs, self.fps, self.stride, self.path = inputs, fps, stride, path
        self.current, self.index = None, -1
        self._frames = frames  # (file name or None, index in the source, frame)

    def __iter__(self) -> Iterator[np.ndarray]:
        for current, index, frame in self._frames:
            self.current, self.index = current, index
            yield frame


class _SizeWatch:
    """Warns once, naming the frame, when a video's frames change size (two clips joined, a camera switching mode)."""

    def __init__(self, name: str):
        self.name, self.shape, self.warned = name, None, False

    def __call__(self, index: int, frame: np.ndarray) -> None:
        if self.shape is not None and frame.shape != self.shape and not self.warned:
            (h0, w0), (h1, w1) = self.shape[:2], frame.shape[:2]
            print(f"warning: {self.name}: the frame size changes at frame {index}, {w0}x{h0} -> {w1}x{h1}; each "
                  f"frame is processed at its own size", file=sys.stderr)
            self.warned = True
        self.shape = frame.shape


def _video(cap: cv2.VideoCapture, name: str, live: bool, total: int | None = None, retries: int = 5,
           stride: int = 1, timeout: float | None = None):
    """Frames from OpenCV: every ``stride``-th is decoded, the ones between only skipped over (grab). A failed read is
    tried again ``retries`` times (a glitch in a stream, one bad frame in a file), within ``timeout`` seconds: a read
    that timed out has already waited that long."""
    watch, i = _SizeWatch(name), 0  # i: the index of the next frame in the source
    try:
        while True:
            started = time.monotonic()
            ok, frame = cap.read()
            for _ in range(retries if not ok else 0):
                if timeout and time.monotonic() - started >= timeout:
                    break
                ok, frame = cap.read()
                if ok:
                    break
            if not ok:
                if not i:
                    raise SourceError(f"{name}: no frame could be decoded (empty, damaged or not a video)")
                if live or (total and i < total - retries):
                    raise StreamError(f"{name}: no frame after {i} frames (stream dropped or frame undecodable)")
                return
            watch(i, frame)
            yield None, i, frame
            i += 1
            for _ in range(stride - 1):
                if not cap.grab():
                    break
                i += 1
    finally:
        cap.release()


# OpenCV's turn for each display-matrix rotation it reports (CAP_PROP_ORIENTATION_META), applied the same way here
_TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _av_video(path: Path, name: str, total: int | None, stride: int, rotation: int):
    """Frames of a video file decoded by PyAV, each at its own size.

    OpenCV scales every frame of a file to the first frame's size, stretching the second part of two clips of
    different resolutions joined together; PyAV hands each frame over as it was coded. Frames are turned upright
    as OpenCV turns them, by the rotation OpenCV reads from the file.
    """
    import av

    watch, i = _SizeWatch(name), 0
    with open(path, "rb") as file:  # a file object: PyAV then takes any name, also one that is not UTF-8
        try:
            with av.open(file) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if i % stride == 0:
                        image = frame.to_ndarray(format="bgr24")
                        image = cv2.rotate(image, _TURNS[rotation]) if rotation in _TURNS else image
                        watch(i, image)
                        yield None, i, image
                    i += 1
        except av.error.FFmpegError as error:
            if not i:
                raise SourceError(f"{name}: no frame could be decoded ({error.strerror or error})") from None
            raise StreamError(f"{name}: no frame after {i} frames (frame undecodable: {error.strerror or error})"
                              ) from None
    if not i:
        raise SourceError(f"{name}: no frame could be decoded (empty, damaged or not a video)")
    if total and i < total - 5:
        raise StreamError(f"{name}: no frame after {i} frames (frame undecodable)")


def _images(name: str, files: list[Path]):
    decoded = 0
    for i, file in enumerate(files):
        image = read_image(file)
        if image is None or not image.size:
            print(f"warning: skipping undecodable image {printable(file)}", file=sys.stderr)
            continue
        decoded += 1
        yield file.name, i, image
    if not decoded:
        raise SourceError(f"{name}: none of its {len(files)} image(s) could be decoded")


_UPRIGHT_TURNED = {5, 6, 7, 8}  # EXIF orientations whose upright picture is the stored one turned by 90 degrees


def _image_size(files: list[Path]) -> tuple[int, int] | None:
    """Largest width and height among the images as shown upright (EXIF orientation), read from their headers only."""
    try:
        from PIL import Image
    except ImportError:  # the runtime install may lack Pillow: the video is sized from the first frame instead
        return None

    sizes = []
    for file in files:
        try:
            with Image.open(file) as image:
                w, h = image.size
                turned = image.getexif().get(0x0112) in _UPRIGHT_TURNED
                sizes.append((h, w) if turned else (w, h))
        except Exception:  # PIL (and Ultralytics' patch of it) fail in many ways on a bad file; it is skipped when read
            continue
    return (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None


def _capture(target: int | str, name: str, timeout: float | None = None) -> cv2.VideoCapture:
    if isinstance(target, str) and timeout:
        ms = int(timeout * 1000)
        cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    else:
        cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        raise SourceError(f"cannot open {name}" + (f" (nothing within --timeout {timeout:g} s, or refused)"
                                                   if timeout else ""))
    return cap


_END = object()


def _in_thread(open_frames, name: str, poll: float = 0.1) -> Iterator:
    """Open and read a camera or stream in a daemon thread; the caller waits in short steps, so that a signal is
    handled within ``poll`` seconds whatever OpenCV is doing. An error opening raises here, before the first frame."""
    frames, stop = queue.Queue(maxsize=2), threading.Event()

    def work():
        try:
            for item in open_frames():
                while not stop.is_set():
                    try:
                        frames.put(item, timeout=poll)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            frames.put((_END, None))
        except BaseException as error:  # noqa: BLE001  handed to the main thread, which raises it
            frames.put((_END, error))

    threading.Thread(target=work, name=f"source {name}", daemon=True).start()

    def _next():
        while True:
            try:
                return frames.get(timeout=poll)
            except queue.Empty:
                continue

    first = _next()

    def _frames():
        item = first
        try:
            while True:
                if item[0] is _END:
                    if item[1] is not None:
                        raise item[1]
                    return
                yield item
                item = _next()
        finally:
            stop.set()  # the reader ends at its next frame; a daemon thread never holds up the exit

    if first[0] is _END and isinstance(first[1], SourceError):
        stop.set()
        raise first[1]
    return _frames()


def _live(target: int | str, name: str, timeout: float, stride: int) -> FrameSource:
    def open_frames():
        cap = _capture(target, f"stream {name}" if isinstance(target, str) else name, timeout)
        return _video(cap, name, live=True, stride=stride, timeout=timeout)

    return FrameSource(name, _in_thread(open_frames, name), live=True, stride=stride)


def _video_file(path: Path, stride: int) -> FrameSource:
    """A video file: PyAV decodes it where installed (frames of any size), OpenCV otherwise; OpenCV checks it first."""
    name = printable(path)
    fd = None
    if not _utf8(path):  # OpenCV crashes on such a name; /proc gives the open file another one (Linux)
        fd = os.open(path, os.O_RDONLY)
        cap = _capture(f"/proc/self/fd/{fd}", f"video file {name}")
    else:
        cap = _capture(str(path), f"video file {name}")
    try:
        if int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") == b"ansi":  # FFmpeg renders any text as video
            cap.release()
            raise SourceError(f"{name} is a text file, not a video")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        total = total if total and total > 0 else None
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if 0 < fps <= 1000 else None
        try:
            import av  # noqa: F401
        except ImportError:
            frames = _video(cap, name, live=False, total=total, stride=stride)
        else:
            rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
            cap.release()
            frames = _av_video(path, name, total, stride, rotation)
    finally:
        if fd is not None:
            os.close(fd)  # OpenCV (or PyAV, by name) holds its own
    count = math.ceil(total / stride) if total else None
    return FrameSource(name, frames, count, inputs=(path,), fps=fps, stride=stride, path=path)


def open_source(source: str | int | Path, timeout: float = TIMEOUT, stride: int = 1) -> FrameSource:
    """A camera index, ``rtsp://``/``http://`` URL, video file, image file or folder of images as a FrameSource.

    ``timeout``: seconds a stream may take to open, or between two frames, before it counts as dropped.
    ``stride``: of a video, camera or stream, process every n-th frame only (the others are skipped undecoded where
    the source allows).
    """
    if int(stride) < 1:
        raise UsageError(f"stride (--vid-stride) must be >= 1, got {stride}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"timeout (--timeout) must be > 0 seconds, got {timeout}")
    stride, text = int(stride), str(source)
    if isinstance(source, int) or text.isdigit():
        return _live(int(text), f"camera {text}", timeout, stride)
    if "://" in text:
        return _live(text, text, timeout, stride)
    path = Path(text)
    if not path.exists():
        raise SourceError(f"source not found: {printable(path)}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = image_files(path) if path.is_dir() else [path]
        if not files:
            raise SourceError(f"no images in folder: {printable(path)}")
        return FrameSource(printable(path), _images(printable(path), files), len(files), sequential=False,
                           size=_image_size(files), inputs=(path, *files))
    return _video_file(path, stride)
