"""End-to-end frames per second of FERPipeline: configurations measured side by side, in alternating rounds.

The frames are 640x480, a slow pan over the faces cut from the demo photos (one face, and five). A configuration is a
backend, a classifier (a file, an ensemble of files joined by '+', an INT8 export ...), how often the full detector
runs, and ONNX Runtime's threads; ``--load k`` runs k busy processes on the same cores while measuring, as on a
machine shared with other work. Every configuration is measured once per round, in an order that alternates from
round to round, and the table gives the median over the rounds: a small shared CPU drifts within minutes.

    spayolo benchmark --pipeline                                   # torch and onnx backends, detect every 1 and 5
    spayolo benchmark --pipeline --backend onnx --model weights/spayolo-n-fer2013.onnx x-int8.onnx a.onnx+b.onnx
    spayolo benchmark --pipeline --backend onnx --threads 1 2 --load 0 2
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

__all__ = ("busy_load", "configurations", "measure", "pipeline_benchmark", "scene")

FACES = (1, 5)  # faces per frame in the two clips


def face_tiles(size: int = 112) -> list[np.ndarray]:
    """The five faces of the demo photos (one in the runtime install, repeated), each cut with a margin, size x size."""
    import cv2

    from spayolo.apps.demo import demo_photos
    from spayolo.face.detectors import MTCNNDetector
    from spayolo.sources import read_image

    detector, tiles = MTCNNDetector(min_face=40), []
    for path, _ in demo_photos():
        img = read_image(path)
        for x1, y1, x2, y2 in detector([img])[0].boxes:
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, 0.8 * max(x2 - x1, y2 - y1)
            ys, xs = slice(max(int(cy - half), 0), int(cy + half)), slice(max(int(cx - half), 0), int(cx + half))
            tiles.append(cv2.resize(img[ys, xs], (size, size), interpolation=cv2.INTER_AREA))
    return [tiles[k % len(tiles)] for k in range(max(FACES))]


def scene(tiles: list[np.ndarray], shift: int) -> np.ndarray:
    """A 640x480 grey frame with the tiles on two rows, all moved `shift` px right (a slow pan between frames)."""
    frame = np.full((480, 640, 3), 100, np.uint8)
    size = tiles[0].shape[0]
    for k, tile in enumerate(tiles):
        row, col = divmod(k, 3)
        x, y = 40 + shift + col * (size + 70), 60 + row * (size + 100)
        frame[y : y + size, x : x + size] = tile
    return frame


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


class busy_load:  # noqa: N801  a context manager, used like a function
    """``count`` processes that keep a core busy each for the duration of the block (none for 0)."""

    def __init__(self, count: int):
        self.count, self.processes = count, []

    def __enter__(self) -> busy_load:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.processes = [context.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.count)]
        for process in self.processes:
            process.start()
        time.sleep(0.5 if self.count else 0)  # let them reach their loops
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for process in self.processes:
            process.join()


def measure(fer, frames: list[np.ndarray]) -> dict:
    """Frames per second over ``frames`` as one tracked video, and the mean milliseconds per frame of each stage."""
    for frame in frames[:3]:  # warm-up: first calls allocate
        fer.process([frame], track=True)
    fer.reset()
    start = time.perf_counter()
    found = sum(len(fer.process([frame], track=True)[0]) for frame in frames)
    seconds = time.perf_counter() - start
    stages = {k: fer.times[k] / len(frames) * 1e3 for k in ("detect", "crop", "classify")}
    return {"fps": len(frames) / seconds, "faces": found / len(frames), **stages}


def configurations(backends, models, detect_every, threads, loads) -> list[dict]:
    """Every combination of the options, as FERPipeline arguments plus the load, labelled."""
    rows = []
    for backend, model, every, count, load in itertools.product(backends, models, detect_every, threads, loads):
        members = model.split("+") if model else None
        name = "+".join(Path(m).name for m in members) if members else "default"
        rows.append({"backend": backend, "model": members if members and len(members) > 1 else model,
                     "detect_every": every, "threads": count, "load": load,
                     "label": f"{backend:<6} {name:<28} every {every} threads {count or 'auto':<4} load {load}"})
    # files of one name in two folders would share a label, and their measurements a row: number them
    seen = collections.Counter(r["label"] for r in rows)
    for i, row in enumerate(rows):
        if seen[row["label"]] > 1:
            row["label"] = f"{row['label']} #{i + 1}"
    return rows


def pipeline_benchmark(backends=("torch", "onnx"), models=(None,), detect_every=(1, 5), threads=(None,),
                       loads=(0,), frames: int = 40, rounds: int = 3, device: str = "cpu") -> list[dict]:
    """Measure every configuration on the 1-face and the 5-face clip in ``rounds`` alternating rounds; print and
    return one row per configuration and clip with the median over the rounds."""
    from spayolo.pipeline import FERPipeline

    tiles = face_tiles()
    clips = {n: [scene(tiles[:n], 2 * i) for i in range(frames)] for n in FACES}
    rows = configurations(backends, models, detect_every, threads, loads)
    runs = {(r["label"], n): [] for r in rows for n in FACES}
    for round_index in range(rounds):
        for row in rows if round_index % 2 == 0 else rows[::-1]:
            kwargs = {k: row[k] for k in ("backend", "model", "detect_every", "threads")}
            fer = FERPipeline(device=device, **kwargs)
            with busy_load(row["load"]):
                for n, clip in clips.items():
                    runs[row["label"], n].append(measure(fer, clip))
    table = []
    print(f"pipeline: device={device} frames=640x480 x{frames}, rounds={rounds} (median), cores="
          f"{len(_cores())}")
    width = max(66, *(len(r["label"]) + 2 for r in rows))
    print(f"{'configuration':<{width}}{'faces':>6}{'found':>7}{'FPS':>8}{'detect ms':>11}{'crop ms':>9}"
          f"{'classify ms':>13}{'ms/face':>9}")
    for (label, n), measured in runs.items():
        median = {k: statistics.median(m[k] for m in measured) for k in measured[0]}
        table.append({"configuration": label, "clip_faces": n, **median})
        print(f"{label:<{width}}{n:>6}{median['faces']:>7.1f}{median['fps']:>8.1f}{median['detect']:>11.1f}"
              f"{median['crop']:>9.1f}{median['classify']:>13.1f}{median['classify'] / max(median['faces'], 1):>9.2f}")
    return table


def _cores() -> set[int]:
    import os

    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
