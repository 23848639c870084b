"""The live tool's outputs, the annotated video and the JSON lines: each written under a temporary name of its own,
checked as it is written, and moved into place only when whole."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from spayolo.errors import UsageError
from spayolo.sources import printable

__all__ = ("CODECS", "JsonSink", "OutputError", "VideoSink", "disk_full")

CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
MAX_SIDE = 4096  # a folder holding one huge photo must not make every frame of the video that large


class OutputError(RuntimeError):
    """An output that could not be written part-way (disk full, I/O error): the run stops with exit status 1."""


def disk_full(folder: Path) -> bool:
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
        if disk_full(self.tmp.parent):
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
        if disk_full(self.tmp.parent) or not self._whole():
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
