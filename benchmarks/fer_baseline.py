"""Measure the `fer` package (mini-Xception, Keras/TFLite) on a prepared FER2013 folder, and its end-to-end speed.

    python -m venv ~/venv-fer && ~/venv-fer/bin/pip install fer
    ~/venv-fer/bin/python benchmarks/fer_baseline.py ~/.cache/spayolo/datasets/fer2013/val
    ~/venv-fer/bin/python benchmarks/fer_baseline.py ~/.cache/spayolo/datasets/fer2013/val --model keras --crop box
    ~/venv-fer/bin/python benchmarks/fer_baseline.py --video ~/.cache/spayolo/demo.mp4

Runs in a venv of its own (fer pulls TensorFlow) and imports nothing from spayolo. Each face goes through fer's own
code as `FER.detect_emotions` prepares a detected face: gray, resized to the model's 64 px with OpenCV, scaled to
[-1, 1]. `--crop face` takes the whole 48 px image as the face (what a face crop is); `--crop box` gives fer the
image's full box as if its detector had found it, so fer pads the frame by 40 px of the mean bottom gray and widens
the box by its 10 px offsets first. The probabilities are read before `detect_emotions` rounds them to two
decimals, so a rounding tie cannot pick the class. `--model` is `tflite` (the quantized model `FER()` runs by
default) or `keras` (the mini-Xception `.hdf5` of `FER(use_tflite=False)`). Prints top-1 and mean per-class accuracy.

`--video` times `FER().detect_emotions` (its default Haar cascade + TFLite) on every frame of a video, after one
warm-up pass, and prints frames per second on the cores this process may use.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def load_fer(model: str):
    """fer's detector-classifier with the chosen emotion model."""
    from fer.fer import FER  # fer 25.x no longer re-exports FER from the package

    return FER(use_tflite=model == "tflite")


def face_crop(fer, gray: np.ndarray) -> np.ndarray:
    """The whole image as the face: fer's resize to its input size, before fer's scaling."""
    return cv2.resize(gray, fer._FER__emotion_target_size)


def box_crop(fer, gray: np.ndarray) -> np.ndarray:
    """The image's full box through fer's steps for a detected face: pad, square, offsets, clip, resize."""
    from fer.fer import PADDING

    padded = fer.pad(gray)
    x1, x2, y1, y2 = fer._FER__apply_offsets(fer.tosquare((0, 0, gray.shape[1], gray.shape[0])))
    x1, y1, x2, y2 = max(0, x1 + PADDING), max(0, y1 + PADDING), x2 + PADDING, y2 + PADDING
    return cv2.resize(padded[y1:y2, x1:x2], fer._FER__emotion_target_size)


def probabilities(fer, crops: list[np.ndarray]) -> np.ndarray:
    """fer's scaling to [-1, 1] and its classifier, unrounded (rows in fer's label order)."""
    faces = (np.asarray(crops, dtype="float32") / 255.0 - 0.5) * 2.0
    return np.asarray(fer._classify_emotions(faces))


def score(folder: Path, model: str, crop: str, batch: int = 256) -> None:
    """Print top-1, mean per-class and per-class accuracy on <folder>/<class>/ images."""
    fer = load_fer(model)
    labels = fer._get_labels()  # index -> name, fer's order
    index = {name: i for i, name in labels.items()}
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if set(classes) != set(index):
        raise SystemExit(f"{folder}: classes {classes} are not fer's {sorted(index)}")
    prepare = face_crop if crop == "face" else box_crop
    hits, counts = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    for name in classes:
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for start in range(0, len(files), batch):
            crops = [prepare(fer, cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)) for f in files[start : start + batch]]
            predicted = probabilities(fer, crops).argmax(1)
            hits[name] += int((predicted == index[name]).sum())
            counts[name] += len(crops)
    total = sum(counts.values())
    per_class = {name: hits[name] / counts[name] for name in classes}
    print(f"fer {model} model, crop={crop}, {folder}: {total} images")
    for name in classes:
        print(f"  {name:<10} {counts[name]:>5}  {100 * per_class[name]:6.2f} %")
    mean_per_class = 100 * np.mean(list(per_class.values()))
    print(f"top-1 {100 * sum(hits.values()) / total:.2f} %, mean per class {mean_per_class:.2f} %")


def frames_per_second(video: Path) -> None:
    """Print fer's end-to-end frames per second (Haar cascade + default model) over every frame of a video."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise SystemExit(f"{video}: no frame decodes")
    fer = load_fer("tflite")
    for frame in frames:  # warm-up: first calls build TensorFlow's kernels
        fer.detect_emotions(frame)
    faces, start = 0, time.perf_counter()
    for frame in frames:
        faces += len(fer.detect_emotions(frame))
    seconds = time.perf_counter() - start
    h, w = frames[0].shape[:2]
    print(f"fer detect_emotions, {video}: {len(frames)} frames of {w}x{h}, {faces / len(frames):.2f} faces a frame, "
          f"{len(frames) / seconds:.1f} FPS ({1000 * seconds / len(frames):.1f} ms a frame) on "
          f"{len(os.sched_getaffinity(0))} core(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, help="prepared split: <folder>/<class>/*.jpg")
    parser.add_argument("--model", choices=("tflite", "keras"), default="tflite", help="fer's emotion model")
    parser.add_argument("--crop", choices=("face", "box"), default="face", help="how a face reaches fer (above)")
    parser.add_argument("--video", type=Path, help="time detect_emotions on this video's frames instead")
    args = parser.parse_args()
    if args.video:
        frames_per_second(args.video.expanduser())
    elif args.folder:
        score(args.folder.expanduser(), args.model, args.crop)
    else:
        parser.error("give a prepared folder or --video")


if __name__ == "__main__":
    main()
