"""Plain (non-editable) wheels: the full one carries the autoload .pth at its root, every YAML under cfg/, the
weights, MTCNN's ONNX files and the demo photo; the runtime one the same ONNX files and photo, and no .pt."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO
from spayolo.classifier import DEFAULT_MODELS, FAST_MODEL


def _wheel(tmp_path, flavour: str) -> set[str]:
    env = {**os.environ, "SPAYOLO_DIST": flavour}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path, env=env)
    (wheel,) = tmp_path.glob("spayolo*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


CLASSIFIERS = {f"spayolo/weights/{FAST_MODEL}.onnx"} | {f"spayolo/weights/{m.name}" for m in DEFAULT_MODELS["onnx"]}
RUNTIME_FILES = {f"spayolo/weights/mtcnn/{net}.onnx" for net in ("pnet", "rnet", "onet")} | CLASSIFIERS | {
    "spayolo/assets/grace_hopper.jpg"}


@pytest.mark.slow
def test_wheel_ships_autoload_and_yamls(tmp_path):
    names = _wheel(tmp_path, "full")
    assert "spayolo-autoload.pth" in names
    for kind in ("models", "datasets", "sweeps", "kfold"):
        for path in (REPO / "cfg" / kind).glob("*.yaml"):
            assert f"spayolo/cfg/{kind}/{path.name}" in names
    for module in ("registry", "parser", "integration", "paths", "_autoload", "face/mtcnn", "analysis/report"):
        assert f"spayolo/{module}.py" in names
    for path in (REPO / "weights").glob("*.*"):
        assert f"spayolo/weights/{path.name}" in names  # the pipeline's default classifier after `pip install .`
    assert RUNTIME_FILES <= names
    assert not [n for n in names if n.startswith("spayolo/weights/") and n.count("/") > 2 and "/mtcnn/" not in n]


@pytest.mark.slow
def test_runtime_wheel_ships_the_onnx_pipeline_without_checkpoints(tmp_path):
    names = _wheel(tmp_path, "runtime")
    assert RUNTIME_FILES <= names and not [n for n in names if n.endswith(".pt")]
    # of the classifiers, only what FERPipeline() and --model spayolo-n-fer2013 run: a deployment carries no other
    assert {n for n in names if n.startswith("spayolo/weights/") and "/mtcnn/" not in n and n.endswith(".onnx")} == \
        CLASSIFIERS
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert metadata.startswith("spayolo_runtime-")
