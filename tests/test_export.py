"""`YOLO(...).export(format="onnx")` for every family: one probability output, equal to PyTorch within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

FAMILIES = ["spayolo-n", "lanmsff-yolo-n", "wamf-yolo-n", "msff-yolo-n", "fermam-yolo-n"]


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_export_matches_pytorch(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a model built from a YAML exports next to the working directory
    import onnxruntime as ort
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(f"{name}.yaml")
    model.model.names = {i: f"class{i}" for i in range(7)}
    imgsz = 64
    path = model.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=17, device="cpu")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1
    assert "class6" in session.get_modelmeta().custom_metadata_map["names"]
    x = torch.rand(3, 3, imgsz, imgsz)
    (onnx_probs,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    net = model.model.float().eval()
    with torch.inference_mode():
        torch_probs = net(x)[0].numpy()
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    assert (onnx_probs.argmax(1) == torch_probs.argmax(1)).all()
