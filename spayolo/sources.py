"""Frame sources for the pipeline: camera, video file, stream URL, one image or a folder of images.

Every source yields BGR frames and knows its name, its length where known, and whether its frames are consecutive
(worth tracking). A source that cannot be opened, or yields no decodable frame at all, raises SourceError; a stream
or file that stops delivering frames part-way raises StreamError, after what it did deliver.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from spayolo.errors import UsageError

__all__ = ("IMAGE_SUFFIXES", "FrameSource", "SourceError", "StreamError", "image_files", "open_source", "read_image")

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


class SourceError(UsageError):
    """A source that cannot be opened, or from which not one frame decodes."""


class StreamError(RuntimeError):
    """A source that stopped delivering frames part-way (stream dropped, frame undecodable)."""


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
    """
    path = Path(path)
    try:
        str(path).encode()
    except UnicodeEncodeError:
        data = np.fromfile(path, np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    else:
        image = cv2.imread(str(path))
    if image is not None and _truncated_jpeg(path):
        print(f"warning: {path} is a truncated JPEG: the part below the cut is grey", file=sys.stderr)
    return image


class FrameSource:
    """Iterable of BGR frames with ``name``, ``total`` (None when unknown), ``live``, ``sequential`` and ``current``.

    ``current`` is the file name of the frame last yielded by a folder or image source (None for video), so that
    results can be matched to files after undecodable ones are skipped. ``size`` is (width, height) large enough
    for every frame when it can be known up front (images: from their headers), else None. ``inputs`` are the
    files it reads, so that outputs can be checked against them.
    """

    def __init__(self, name: str, frames: Iterator[tuple[str | None, np.ndarray]], total: int | None = None,
                 live: bool = False, sequential: bool = True, size: tuple[int, int] | None = None,
                 inputs: tuple[Path, ...] = ()):
        self.name, self.total, self.live, self.sequential, self.size = name, total, live, sequential, size
        self.inputs, self.current = inputs, None
        self._frames = frames  # (file name or None, frame) pairs

    def __iter__(self) -> Iterator[np.ndarray]:
        for self.current, frame in self._frames:
            yield frame


def _video(cap: cv2.VideoCapture, name: str, live: bool, total: int | None = None, retries: int = 5):
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            for _ in range(retries if not ok else 0):  # a glitch in a stream or one bad frame in a file
                ok, frame = cap.read()
                if ok:
                    break
            if not ok:
                if not i:
                    raise SourceError(f"{name}: no frame could be decoded (empty, damaged or not a video)")
                if live or (total and i < total - retries):
                    raise StreamError(f"{name}: no frame after {i} frames (stream dropped or frame undecodable)")
                return
            yield None, frame
            i += 1
    finally:
        cap.release()


def _images(name: str, files: list[Path]):
    decoded = 0
    for file in files:
        image = read_image(file)
        if image is None or not image.size:
            print(f"warning: skipping undecodable image {file}", file=sys.stderr)
            continue
        decoded += 1
        yield file.name, image
    if not decoded:
        raise SourceError(f"{name}: none of its {len(files)} image(s) could be decoded")


def _image_size(files: list[Path]) -> tuple[int, int] | None:
    """Largest width and height among the images, read from their headers only (PIL opens lazily)."""
    try:
        from PIL import Image
    except ImportError:  # the runtime install may lack Pillow: the video is sized from the first frame instead
        return None

    sizes = []
    for file in files:
        try:
            with Image.open(file) as image:
                sizes.append(image.size)
        except Exception:  # PIL (and Ultralytics' patch of it) fail in many ways on a bad file; it is skipped when read
            continue
    return (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None


def _capture(target: int | str, name: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        raise SourceError(f"cannot open {name}")
    return cap


def open_source(source: str | int | Path) -> FrameSource:
    """A camera index, ``rtsp://``/``http://`` URL, video file, image file or folder of images as a FrameSource."""
    text = str(source)
    if isinstance(source, int) or text.isdigit():
        name = f"camera {text}"
        return FrameSource(name, _video(_capture(int(text), name), name, live=True), live=True)
    if "://" in text:
        return FrameSource(text, _video(_capture(text, f"stream {text}"), text, live=True), live=True)
    path = Path(text)
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = image_files(path) if path.is_dir() else [path]
        if not files:
            raise SourceError(f"no images in folder: {path}")
        return FrameSource(str(path), _images(str(path), files), len(files), sequential=False,
                           size=_image_size(files), inputs=(path, *files))
    cap = _capture(str(path), f"video file {path}")
    if int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") == b"ansi":  # FFmpeg renders any text file as video
        cap.release()
        raise SourceError(f"{path} is a text file, not a video")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return FrameSource(str(path), _video(cap, str(path), live=False, total=total), total, inputs=(path,))
