"""The built-in demo video: a slow 640x480 pan/zoom over face photos, one shipped with spayolo, two with Ultralytics.

    python -m spayolo.apps.demo [--out ~/.cache/spayolo/demo.mp4] [--seconds 3.6] [--fps 15]

`spayolo live` makes it on first use when there is no camera. spayolo ships the public-domain portrait of Grace
Hopper (US Navy; the copy matplotlib also ships as sample data); the runtime install, without Ultralytics, makes its
demo from that alone and caches it under another name.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from spayolo.errors import MissingFileError, UsageError
from spayolo.sources import read_image

__all__ = ("PHOTOS", "demo_photos", "demo_video", "main", "make_demo")

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spayolo"
# package, path inside it, and the (x1, y1, x2, y2) region around the faces the camera pans across
PHOTOS = [("spayolo", ("assets", "grace_hopper.jpg"), (40, 40, 480, 420)),
          ("ultralytics", ("assets", "zidane.jpg"), (420, 40, 1180, 610)),  # Ancelotti and Zidane
          ("ultralytics", ("assets", "bus.jpg"), (20, 300, 440, 615))]


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing it; None if the package is not there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def demo_photos() -> list[tuple[Path, tuple[float, float, float, float]]]:
    """The demo's photos this install has, with the region the camera pans across in each."""
    found = [(_package_file(package, *parts), region) for package, parts, region in PHOTOS]
    found = [(path, region) for path, region in found if path]
    if not found:
        raise MissingFileError("the demo photos are missing from this install (spayolo/assets): reinstall spayolo, "
                               "or pass --source (a video, image, folder or camera)")
    return found


def demo_video() -> Path:
    """The demo video for this install's photos, made and cached on first use."""
    photos = demo_photos()
    video = CACHE / ("demo.mp4" if len(photos) == len(PHOTOS) else f"demo-{'-'.join(p.stem for p, _ in photos)}.mp4")
    return video if video.is_file() else make_demo(video, photos=photos)


def make_demo(out: str | Path, seconds: float = 3.6, fps: int = 15, size: tuple[int, int] = (640, 480),
              photos: list | None = None) -> Path:
    """Render the demo: one segment per photo, each a slow zoom-in with a sideways pan; returns the output path.

    The video is written under a temporary name and renamed when complete: an interrupted run must not leave a
    broken file in the cache, where `spayolo live` would find it and fail on every later run.
    """
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # same suffix: OpenCV picks the container by it
    w, h = size
    photos = photos or demo_photos()
    per = max(1, round(seconds * fps / len(photos)))
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise UsageError(f"cannot write the demo video {out}: OpenCV cannot open it for writing")
    try:
        for path, (x1, y1, x2, y2) in photos:
            img = read_image(path)
            for i in range(per):
                t = i / max(per - 1, 1)
                zoom = 1 + 0.15 * t  # window shrinks by up to 15 %, keeping the output aspect ratio
                cw = (x2 - x1) / zoom
                ch = cw * h / w
                cx = x1 + (x2 - x1) / 2 + (t - 0.5) * 0.1 * (x2 - x1)
                cy = y1 + (y2 - y1) / 2
                m = np.array([[w / cw, 0, w / 2 - cx * w / cw], [0, h / ch, h / 2 - cy * h / ch]], np.float32)
                writer.write(cv2.warpAffine(img, m, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
    finally:
        writer.release()
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    from .args import positive_float, positive_int

    parser = argparse.ArgumentParser(prog="python -m spayolo.apps.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(CACHE / "demo.mp4"))
    parser.add_argument("--seconds", type=positive_float, default=3.6)
    parser.add_argument("--fps", type=positive_int, default=15)
    args = parser.parse_args(argv)
    print(make_demo(args.out, args.seconds, args.fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
