"""ONNX deployment: every model YAML exports through `YOLO(...).export`, and ONNX Runtime gives PyTorch's answers."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, input_sensitive, package_file, run_cli, write_image_folder, yolo_cli
from spayolo.classifier import FAST_MODEL

YAMLS = sorted(p.stem for p in (REPO / "cfg" / "models").glob("*.yaml"))
UNSCALED = {"lanmsff", "msff"}  # the papers' own networks, one size each
SHIPPED = REPO / "weights" / FAST_MODEL  # the fast shipped classifier, .pt and .onnx


def onnx_probs(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("stem", [pytest.param(s, marks=[] if s == "spayolo" else [pytest.mark.slow]) for s in YAMLS])
def test_every_yaml_exports_and_matches_pytorch(stem, tmp_path, monkeypatch):
    import onnx
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)  # a model built from a YAML exports into the working directory
    torch.manual_seed(0)
    model = YOLO(f"{stem}.yaml" if stem in UNSCALED else f"{stem}-n.yaml")
    model.model.names = {i: f"class{i}" for i in range(7)}
    imgsz = 64
    input_sensitive(model.model, imgsz)
    path = model.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=17, device="cpu")
    graph = onnx.load(path)
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}  # stock operators only, no custom ops
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert "class6" in dict((p.key, p.value) for p in graph.metadata_props)["names"]
    x = torch.rand(3, 3, imgsz, imgsz)
    net = model.model.float().eval()
    with torch.inference_mode():
        torch_probs = net(x)[0].numpy()
    assert np.ptp(torch_probs, 0).max() > 1e-3  # the inputs get different answers: agreeing on them means something
    probs = onnx_probs(path, x.numpy())
    assert np.abs(probs - torch_probs).max() < 1e-4 and (probs.argmax(1) == torch_probs.argmax(1)).all()


def face_crops() -> np.ndarray:
    """Real faces (photos shipped with installed packages), cut by MTCNN and aligned as the pipeline does."""
    from spayolo.face.detectors import MTCNNDetector
    from spayolo.pipeline import FERPipeline

    fer = FERPipeline(SHIPPED.with_suffix(".pt"), detector=MTCNNDetector(), backend="torch")
    crops = []
    for parts in (("ultralytics", "assets", "zidane.jpg"), ("ultralytics", "assets", "bus.jpg"),
                  ("spayolo", "assets", "grace_hopper.jpg")):
        img = cv2.imread(str(package_file(*parts)))
        crops.append(fer.crop(img, fer.detector([img])[0]))
    return np.concatenate(crops)


def test_shipped_weights_onnx_matches_pt_on_real_faces():
    from ultralytics.nn.tasks import load_checkpoint

    x = face_crops()
    assert len(x) == 5
    model, _ = load_checkpoint(SHIPPED.with_suffix(".pt"))
    with torch.inference_mode():
        torch_probs = model.float().eval()(torch.from_numpy(x))[0].numpy()
    probs = onnx_probs(SHIPPED.with_suffix(".onnx"), x)
    assert np.abs(probs - torch_probs).max() < 1e-4 and (probs.argmax(1) == torch_probs.argmax(1)).all()


class _Probabilities(torch.nn.Module):
    """A classifier's probability output alone (in eval mode Ultralytics' Classify returns probabilities, logits)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def test_fixed_batch_onnx_takes_any_batch(tmp_path):
    """A classifier exported without a dynamic batch (yolo export's default) runs the pipeline's 2-4 views per face."""
    from ultralytics.nn.tasks import load_checkpoint

    from spayolo.export import onnx_bytes
    from spayolo.pipeline import FERPipeline
    from spayolo.runtime import OnnxModel

    model, _ = load_checkpoint(SHIPPED.with_suffix(".pt"))
    model = model.float().eval()
    x = torch.from_numpy(face_crops())  # 5 faces
    with torch.inference_mode():
        expected = model(x)[0]
    pairs = OnnxModel(onnx_bytes(_Probabilities(model), torch.zeros(2, 3, 64, 64), {}))  # batch fixed at 2
    assert pairs.batch == 2
    np.testing.assert_allclose(pairs(x.numpy())[0], expected.numpy(), atol=1e-4)  # 2 + 2 + 1 padded
    single = tmp_path / "batch1.onnx"  # one (batch, classes) output, as yolo export writes a classifier
    single.write_bytes(onnx_bytes(_Probabilities(model), torch.zeros(1, 3, 64, 64), {}))
    face = cv2.imread(str(package_file("spayolo", "assets", "grace_hopper.jpg")))
    fixed, dynamic = (FERPipeline(m, tta="flip+zoom")(face) for m in (single, SHIPPED.with_suffix(".onnx")))
    assert len(fixed) == len(dynamic) == 1
    np.testing.assert_allclose(fixed[0].probs, dynamic[0].probs, atol=1e-4)


@pytest.mark.slow
def test_stock_predict_and_val_accept_exported_onnx(tmp_path):
    from ultralytics import YOLO

    ckpt = tmp_path / "tiny.pt"
    names = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    model = YOLO("spayolo-n.yaml")
    model.model.names = dict(enumerate(names))
    model.save(ckpt)
    data = write_image_folder(tmp_path / "faces", classes=names, per_class=1, size=32)
    r = run_cli([yolo_cli(), "export", f"model={ckpt}", "format=onnx", "imgsz=32", "dynamic=True"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    onnx_file = tmp_path / "tiny.onnx"
    r = run_cli([yolo_cli(), "classify", "val", f"model={onnx_file}", f"data={data}", "imgsz=32", "batch=1"],
                cwd=tmp_path)
    assert r.returncode == 0 and "all" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    image = next((data / "val" / "sad").glob("*.jpg"))
    r = run_cli([sys.executable, "-c", f"from ultralytics import YOLO; r = YOLO(r'{onnx_file}', task='classify')"
                 f"(r'{image}', imgsz=32, verbose=False)[0]; print(r.names[6], r.probs.data.shape[0])"], cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["surprise", "7"], r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_fp16_export_of_shipped_weights(tmp_path):
    import onnx
    from ultralytics import YOLO

    ckpt = tmp_path / "fp16.pt"
    ckpt.write_bytes(SHIPPED.with_suffix(".pt").read_bytes())
    x = face_crops()  # at the size the shipped model trained at, as the pipeline crops them
    path = YOLO(str(ckpt)).export(format="onnx", imgsz=x.shape[-1], half=True, device="cpu")
    weights = onnx.load(path).graph.initializer
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in weights) > len(weights) // 2  # weights stored in FP16
    fp16 = np.concatenate([onnx_probs(path, x[i : i + 1]) for i in range(len(x))])  # exported with batch 1
    fp32 = onnx_probs(SHIPPED.with_suffix(".onnx"), x)
    assert np.abs(fp16 - fp32).max() < 2e-3 and (fp16.argmax(1) == fp32.argmax(1)).all()
