"""Shared fixtures: offline Ultralytics, a tiny real-image dataset, and a helper to run the stock CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # no hub, font or AMP-check downloads in tests
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "faces")


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command in a fresh interpreter (so only the installed .pth can have registered spayolo)."""
    full_env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def yolo_cli() -> str:
    return str(Path(sys.executable).parent / "yolo")
