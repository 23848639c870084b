"""INT8 quantization (spayolo quantize): a QDQ graph of standard operators that answers close to the float model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import run_cli, small_hopper
from spayolo.classifier import FAST_MODEL, OnnxClassifier
from spayolo.engine.scoring import folder_probabilities
from spayolo.paths import packaged
from spayolo.quantize import quantize

NAMES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # the shipped model's, sorted


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped classifier's .onnx, and faces to calibrate on and score: crops of a portrait, shifted, scaled and
    lit differently (a trained model on face-like inputs, as a real calibration has them)."""
    import cv2

    root, rng = tmp_path_factory.mktemp("int8") / "faces", np.random.default_rng(0)
    portrait = cv2.cvtColor(small_hopper(), cv2.COLOR_BGR2GRAY)
    for split in ("train", "val"):
        for name in NAMES:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                x, y, side = rng.integers(30, 70), rng.integers(70, 110), rng.integers(150, 200)
                face = cv2.resize(portrait[y : y + side, x : x + side], (48, 48), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(root / split / name / f"{i}.png"), np.clip(face * rng.uniform(0.6, 1.3), 0, 255))
    return packaged("weights", f"{FAST_MODEL}.onnx"), root


def test_int8_model_is_standard_qdq_and_close_to_float(exported, tmp_path):
    path, data = exported
    out = quantize(path, data / "train", tmp_path / "int8.onnx", images=14)
    graph = onnx.load(out)
    ops = {(n.domain, n.op_type) for n in graph.graph.node}
    assert ("", "QuantizeLinear") in ops and ("", "DequantizeLinear") in ops and {d for d, _ in ops} == {""}
    # 7-bit weights: uint8 x int8 pair sums stay inside 16 bits on CPUs without VNNI (255 * 64 * 2 < 2 ** 15)
    weights = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(np.abs(w.astype(int)).max() for w in weights) <= 64
    fp32, int8 = OnnxClassifier(path), OnnxClassifier(out)
    assert int8.names == fp32.names == NAMES and int8.sizes == fp32.sizes == (64,)  # metadata kept
    # the calibration images themselves: the ranges hold there by construction, so this checks the quantization's
    # mechanics (PublicTest accuracy, the real test, is in the docs' deployment page)
    a, b = (folder_probabilities(m, data / "train")["probs"] for m in (fp32, int8))
    assert np.ptp(a, 0).max() > 0.1  # the images get different answers, so closeness means something
    assert np.abs(a - b).max() < 0.12 and np.abs(a - b).mean() < 0.02 and (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no work files left beside it


def test_quantize_command_errors(exported, tmp_path):
    path, data = exported
    for args, message in ((["--model", str(tmp_path / "nope.onnx")], "nope.onnx: no such file"),
                          (["--model", str(path), "--out", str(path)], "is also an input"),
                          (["--model", str(path), "--out", "x.pt"], "ending in .onnx"),
                          (["--model", str(path), "--out", "no/such/x.onnx"], "no folder no/such")):
        args = args if "--out" in args else [*args, "--out", "x.onnx"]
        out = run_cli(["spayolo", "quantize", "--data", str(data), *args], cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
