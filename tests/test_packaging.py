"""A plain (non-editable) wheel carries the autoload .pth at its root, every YAML under cfg/, and the weights."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_wheel_ships_autoload_and_yamls(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("spayolo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "spayolo-autoload.pth" in names
    for kind in ("models", "datasets", "sweeps", "kfold"):
        for path in (REPO / "cfg" / kind).glob("*.yaml"):
            assert f"spayolo/cfg/{kind}/{path.name}" in names
    for module in ("registry", "parser", "integration", "paths", "_autoload", "face/mtcnn"):
        assert f"spayolo/{module}.py" in names
    for path in (REPO / "weights").glob("*.*"):
        assert f"spayolo/weights/{path.name}" in names  # the pipeline's default classifier after `pip install .`
    assert not [n for n in names if n.startswith("spayolo/weights/") and n.count("/") > 2]  # zoo, run records
