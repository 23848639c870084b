"""Shared fixtures: offline Ultralytics, a tiny real-image dataset, models built once, and a helper to run the CLI."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # no hub, font or AMP-check downloads in tests
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
# one torch (OpenMP) thread unless a test asks for more (the fast trainer takes the cores it is given): tiny inputs
# gain nothing from a pool, and a pool of one thread per core stalls whenever CI or another process is busy
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted((REPO / "cfg" / "models").glob("*.yaml"))


def write_image_folder(root: Path, classes=("happy", "sad"), per_class: int = 4, size: int = 48) -> Path:
    """Grayscale face-sized images whose class is visible (bright vs dark), in Ultralytics' train/val layout."""
    import cv2

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 60 + 120 * k
                img = np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{split}_{i}.jpg"), img)
    return root


TINY = dict(imgsz=32, batch=4, nbs=4, device="cpu", plots=False, seed=0, workers=0, warmup_epochs=0, optimizer="AdamW",
            lr0=1e-3, verbose=False, exist_ok=True)


def identity_images(root, count: int = 12, size: int = 48):
    """One grey image per sample whose every pixel is its own index: what comes out names where it came from."""
    import cv2

    samples = []
    for i in range(count):
        file = root / f"{i}.png"
        cv2.imwrite(str(file), np.full((size, size), 10 * i, np.uint8))
        samples.append((file, i % 3))
    return samples


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "faces")


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command in a fresh interpreter (so only the installed .pth can have registered spayolo)."""
    full_env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def yolo_cli() -> str:
    return str(Path(sys.executable).parent / "yolo")


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def _built(name: str, nc: int | None, meta: bool):
    import torch
    from ultralytics.nn.tasks import ClassificationModel

    # info() profiles GFLOPs at 640 px on every build (2-10 s for FERMam); the tests that check FLOPs ask for them.
    with mock.patch.object(ClassificationModel, "info"), torch.device("meta" if meta else "cpu"):
        return ClassificationModel(name, nc=nc, verbose=False)


def ss2d_params(c, n, k):
    """Hand count of SS2D(c, n, expand=1, directions=k), r = ceil(c / 16)."""
    r = -(-c // 16)
    return (c * 2 * c  # in_proj, x and z, no bias
            + c * 9 + c  # depthwise 3x3 with bias
            + k * (r + 2 * n) * c  # per-direction x_proj -> (dt, B, C)
            + k * c * r + k * c  # per-direction dt_proj and dt bias
            + k * c * n + k * c  # A_log and D
            + 2 * c  # LayerNorm
            + c * c)  # out_proj


def onnx_run(model, *inputs) -> np.ndarray:
    """Export ``model`` in memory (opset 17, TorchScript exporter), run it in ONNX Runtime and return its one output."""
    import io

    import onnxruntime as ort
    import torch

    buffer, names = io.BytesIO(), [f"x{i}" for i in range(len(inputs))]
    torch.onnx.export(model, inputs, buffer, opset_version=17, dynamo=False, input_names=names)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    return out


def build_model(name: str, nc: int | None = None, meta: bool = False, cache: bool = True):
    """A fresh copy of the ClassificationModel that a model YAML name builds, built once per session.

    ``meta=True`` builds on the meta device: structure and parameter counts only, no memory and no initialisation.
    ``cache=False`` builds without keeping the model, for large ones that only one test uses.
    """
    return copy.deepcopy(_built(name, nc, meta)) if cache else _built.__wrapped__(name, nc, meta)


def input_sensitive(model, imgsz: int = 64, seed: int = 0):
    """``model`` in eval mode with every BatchNorm's statistics set from one batch of seeded random images.

    An untrained network in eval mode gives nearly the same probabilities for every input (spayolo-n: 1e-8 apart), so
    "the export matches PyTorch" would pass for any graph. Statistics taken from its own activations, as training
    leaves them, normalise every layer: the probabilities then differ by tenths between inputs.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0  # the running statistics become this batch's
    x = torch.rand(8, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.train()(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


# --- face photos, videos and a tiny classifier for the pipeline and tools tests ---

# face boxes (x1, y1, x2, y2) annotated by eye on the images shipped in packages, forehead to chin
PHOTOS = {
    ("ultralytics", "assets", "zidane.jpg"): [(556, 258, 672, 436), (930, 100, 1050, 272)],
    ("ultralytics", "assets", "bus.jpg"): [(115, 418, 155, 468), (270, 423, 306, 472)],
    ("spayolo", "assets", "grace_hopper.jpg"): [(175, 118, 355, 335)],
}
FER_NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing it."""
    import importlib.util

    return Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)), *parts)


def small_hopper(w: int = 256, h: int = 300) -> np.ndarray:
    """Grace Hopper's portrait (one face) resized to w x h, BGR."""
    import cv2

    return cv2.resize(cv2.imread(str(package_file("spayolo", "assets", "grace_hopper.jpg"))), (w, h))


def write_video(path: Path, n: int = 3, size: tuple[int, int] = (160, 120)) -> Path:
    """An mp4 of n frames of the portrait panning sideways."""
    import cv2

    img = small_hopper(*size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for k in range(n):
        writer.write(np.roll(img, 3 * k, axis=1))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    """Frames OpenCV decodes from a video file (0 for an unplayable one)."""
    import cv2

    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained, input-sensitive (``input_sensitive``) spayolo-n classifier in Ultralytics' checkpoint format,
    7 FER classes, trained-args imgsz 32."""
    import torch
    from ultralytics import YOLO

    model = input_sensitive(YOLO("spayolo-n.yaml").model, 32)
    model.names = dict(enumerate(FER_NAMES))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model, "train_args": {"imgsz": 32, "task": "classify"}}, path)
    return path


class _Payload:
    """Pickles as a call to open(marker, 'w'): loading it with plain pickle creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def crafted_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A .pt whose unpickling runs code (it creates a marker file): (checkpoint, marker)."""
    import torch

    marker, path = folder / "pwned", folder / "crafted.pt"
    torch.save({"model": _Payload(marker)}, path)
    return path, marker
