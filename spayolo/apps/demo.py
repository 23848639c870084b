"""The built-in demo video: a slow 640x480 pan/zoom over face photos shipped with ultralytics and matplotlib.

    python -m spayolo.apps.demo [--out ~/.cache/spayolo/demo.mp4] [--seconds 3.6] [--fps 15]

`spayolo live` makes it on first use when there is no camera.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np

__all__ = ("DEMO", "demo_photos", "main", "make_demo")

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spayolo"
DEMO = CACHE / "demo.mp4"


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} not installed (needed for the demo photos)")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"demo photo not found: {path}")
    return path


def demo_photos() -> list[tuple[Path, tuple[float, float, float, float]]]:
    """Photos and the (x1, y1, x2, y2) region around their faces the camera pans across (zidane: Ancelotti/Zidane)."""
    return [
        (_package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"), (40, 40, 480, 420)),
        (_package_file("ultralytics", "assets", "zidane.jpg"), (420, 40, 1180, 610)),
        (_package_file("ultralytics", "assets", "bus.jpg"), (20, 300, 440, 615)),
    ]


def make_demo(out: str | Path = DEMO, seconds: float = 3.6, fps: int = 15, size: tuple[int, int] = (640, 480)) -> Path:
    """Render the demo: one segment per photo, each a slow zoom-in with a sideways pan; returns the output path.

    The video is written under a temporary name and renamed when complete: an interrupted run must not leave a
    broken file in the cache, where `spayolo live` would find it and fail on every later run.
    """
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # same suffix: OpenCV picks the container by it
    w, h = size
    photos = demo_photos()
    per = max(1, round(seconds * fps / len(photos)))
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cannot write video: {out}")
    try:
        for path, (x1, y1, x2, y2) in photos:
            img = cv2.imread(str(path))
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
    parser.add_argument("--out", default=str(DEMO))
    parser.add_argument("--seconds", type=positive_float, default=3.6)
    parser.add_argument("--fps", type=positive_int, default=15)
    args = parser.parse_args(argv)
    print(make_demo(args.out, args.seconds, args.fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
