"""Ensembles as one ONNX file (spayolo export-ensemble): the same answers as the members averaged, one session."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from conftest import FER_NAMES, input_sensitive, run_cli, small_hopper
from spayolo.classifier import OnnxClassifier
from spayolo.ensemble import export_ensemble
from spayolo.errors import CheckpointError, UsageError
from spayolo.face.detectors import MTCNNDetector
from spayolo.pipeline import FERPipeline


def _checkpoint(path, imgsz: int, seed: int, names=FER_NAMES):
    """An untrained, input-sensitive spayolo-n trained-args at ``imgsz``, as Ultralytics saves a classifier."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    model = input_sensitive(YOLO("spayolo-n.yaml").model, imgsz, seed)
    model.names = dict(enumerate(names))
    torch.save({"model": model, "train_args": {"imgsz": imgsz, "task": "classify"}}, path)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three members: two checkpoints at 32 px, one at 48 px exported to ONNX with a dynamic batch."""
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("members")
    first, second = _checkpoint(root / "a.pt", 32, 0), _checkpoint(root / "b.pt", 32, 1)
    large = _checkpoint(root / "c.pt", 48, 2)
    onnx_file = YOLO(str(large)).export(format="onnx", imgsz=48, dynamic=True, opset=17)
    return [first, second, onnx_file]


def test_the_ensemble_file_answers_as_its_members_averaged(members, tmp_path):
    out = export_ensemble(members, tmp_path / "ensemble.onnx")
    graph = onnx.load(out)
    assert [i.name for i in graph.graph.input] == ["images_32", "images_48"]  # the two 32 px members share one
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}
    classifier = OnnxClassifier(out)
    assert classifier.sizes == (32, 48) and classifier.names == FER_NAMES
    detector = MTCNNDetector()
    one_file = FERPipeline(out, detector=detector)
    separate = FERPipeline(members, detector=detector)
    assert one_file.sizes == separate.sizes == (32, 48)
    img = small_hopper()
    each = [FERPipeline(m, detector=detector)(img)[0].probs for m in members]
    assert min(np.abs(each[i] - each[j]).max() for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-3  # they differ
    np.testing.assert_allclose(separate(img)[0].probs, np.mean(each, 0), atol=1e-6)
    np.testing.assert_allclose(one_file(img)[0].probs, np.mean(each, 0), atol=1e-4)


def test_the_shipped_int8_default_joins_one_file_beside_an_older_opset(tmp_path):
    """The default's INT8 files import opset 18 with Split-18, which ONNX cannot convert down to a .pt member's 17:
    the ensemble takes the newest opset and converts the others up."""
    from spayolo.classifier import DEFAULT_MODELS

    models = [*DEFAULT_MODELS["onnx"], _checkpoint(tmp_path / "sorted.pt", 32, 4, names=sorted(FER_NAMES))]
    opsets = [onnx.load(m).opset_import[0].version for m in DEFAULT_MODELS["onnx"]]
    out = export_ensemble(models, tmp_path / "default.onnx")
    assert [o.version for o in onnx.load(out).opset_import] == [max(opsets)] and max(opsets) > 17
    detector, img = MTCNNDetector(), small_hopper()
    np.testing.assert_allclose(FERPipeline(out, detector=detector)(img)[0].probs,
                               FERPipeline(models, detector=detector)(img)[0].probs, atol=1e-4)


def test_members_that_cannot_join_are_named(members, tmp_path):
    from ultralytics import YOLO

    with pytest.raises(UsageError, match="at least two"):
        export_ensemble(members[:1], tmp_path / "one.onnx")
    other = _checkpoint(tmp_path / "other.pt", 32, 3, names=["a", "b", "c", "d", "e", "f", "g"])
    with pytest.raises(UsageError, match="same classes"):
        export_ensemble([members[0], other], tmp_path / "mixed.onnx")
    fixed = YOLO(str(members[0])).export(format="onnx", imgsz=32, opset=17)  # yolo export's default: batch 1
    with pytest.raises(CheckpointError, match="fixed batch of 1.*dynamic=True"):
        export_ensemble([members[0], fixed], tmp_path / "fixed.onnx")
    assert not list(tmp_path.glob("*.partial"))


def test_export_ensemble_command(members, tmp_path):
    out = run_cli(["spayolo", "export-ensemble", str(members[0]), str(members[2]), "--out", "e.onnx"], cwd=tmp_path)
    assert out.returncode == 0 and "wrote e.onnx" in out.stdout, out.stderr
    assert OnnxClassifier(tmp_path / "e.onnx").sizes == (32, 48)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "e.onnx").stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any new file, not private
    for args, message in (([str(members[0]), str(members[1]), "--out", "e.pt"], "ending in .onnx"),
                          ([str(members[0]), str(members[2]), "--out", str(members[2])], "is also an input"),
                          ([str(members[0]), str(members[1]), "--out", "no/such/e.onnx"], "no folder no/such")):
        out = run_cli(["spayolo", "export-ensemble", *args], cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
