"""Every model YAML at every scale builds through the stock Ultralytics API and trains a step on a tiny input."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS

SCALES = "nsmlx"


def scales_of(path) -> list[str]:
    import yaml

    scales = yaml.safe_load(path.read_text()).get("scales")
    return list(scales) if scales else [""]


CASES = [(path.stem, scale) for path in MODELS for scale in scales_of(path)]


@pytest.mark.parametrize("stem,scale", CASES, ids=[f"{s}-{c}" if c else s for s, c in CASES])
def test_yaml_builds_and_trains(stem, scale):
    from ultralytics.nn.tasks import ClassificationModel

    torch.manual_seed(0)
    name = f"{stem}-{scale}.yaml" if scale else f"{stem}.yaml"
    model = ClassificationModel(name, nc=5, verbose=False)
    assert model.yaml["scale"] == (scale or model.yaml.get("scale"))
    model.train()
    imgsz = 64 if "lanmsff" in stem or scale in "ns" else 32
    logits = model(torch.randn(2, 3, imgsz, imgsz))
    assert logits.shape == (2, 5)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    probs, raw = model(torch.randn(1, 3, imgsz, imgsz))
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-5) and raw.shape == (1, 5)


def test_scale_letters_follow_yolov8_cls():
    """spayolo-X matches yolov8X-cls layer for layer except SPAM, which keeps the P4 width."""
    from ultralytics.nn.tasks import ClassificationModel

    for scale, p4 in zip("nsmlx", (128, 256, 384, 512, 640)):
        spa = ClassificationModel(f"spayolo-{scale}.yaml", nc=7, verbose=False)
        stock = ClassificationModel(f"yolov8{scale}-cls.yaml", nc=7, verbose=False)
        spam = spa.model[7]
        assert spam.hrm.fuse.conv.out_channels == p4
        extra = sum(p.numel() for p in spam.parameters())
        total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert total(spa) - extra == total(stock)


def test_spayolo_s_matches_paper_size():
    """Paper: 5.7 M params and 14.4 GFLOPs (Ultralytics counts at 640); within 10 %."""
    from ultralytics.nn.tasks import ClassificationModel
    from ultralytics.utils.torch_utils import get_flops

    model = ClassificationModel("spayolo-s.yaml", nc=7, verbose=False)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 5.7e6 - 1) < 0.10, params
    assert abs(get_flops(model, 640) / 14.4 - 1) < 0.10


def test_model_name_resolves_from_any_directory(tmp_path, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    assert YOLO("spayolo.yaml").model.yaml["nc"] == 7
    assert YOLO("spayolo-nofep-m.yaml").model.yaml["scale"] == "m"


def test_local_yaml_takes_precedence(tmp_path, monkeypatch):
    """As with Ultralytics' own names, a file in the working directory wins over the packaged one."""
    from conftest import REPO
    from ultralytics import YOLO

    text = (REPO / "cfg" / "models" / "spayolo.yaml").read_text().replace("nc: 7", "nc: 3")
    (tmp_path / "spayolo.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert YOLO("spayolo.yaml").model.yaml["nc"] == 3
