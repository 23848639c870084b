"""Bad model YAMLs fail with a message naming the file, the layer index and the module."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO


def write_model(tmp_path, replace: dict[int, list]) -> str:
    d = yaml.safe_load((REPO / "cfg" / "models" / "spayolo.yaml").read_text())
    for i, row in replace.items():
        d["backbone"][i] = row
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def build(path: str):
    from ultralytics.nn.tasks import ClassificationModel

    return ClassificationModel(path, nc=7, verbose=False)


def test_unknown_module_names_file_layer_and_module(tmp_path):
    from spayolo.parser import ModelConfigError

    path = write_model(tmp_path, {7: [-1, 1, "SPAMM", []]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 7: unknown module 'SPAMM'.*SPAM"):
        build(path)


def test_wrong_block_arguments(tmp_path):
    from spayolo.parser import ModelConfigError

    path = write_model(tmp_path, {7: [-1, 1, "SPAM", ["gate", True, True, "extra"]]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 7 \(SPAM\): cannot build SPAM\(c1"):
        build(path)


def test_wrong_stock_arguments(tmp_path):
    from spayolo.parser import ModelConfigError

    path = write_model(tmp_path, {5: [-1, 1, "Conv", [512, 3, 2, None, 1, 1, True, "bad", "args"]]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 5 \(Conv\)"):
        build(path)


def test_from_index_out_of_range(tmp_path):
    from spayolo.parser import ModelConfigError

    path = write_model(tmp_path, {7: [12, 1, "SPAM", []]})
    with pytest.raises(ModelConfigError, match=r"layer 7 \(SPAM\): 'from' 12 points at no earlier layer"):
        build(path)


def test_wrong_channel_count_is_named(tmp_path):
    """SPAM fed two inputs of different widths cannot keep its width: the error names layer, block and widths."""
    from spayolo.parser import ModelConfigError

    path = write_model(tmp_path, {7: [[-1, 4], 1, "SPAM", []]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 7 \(SPAM\): cannot build SPAM.*\[\[512, 256\], 512\]"):
        build(path)


def test_unknown_scale(tmp_path):
    from spayolo.parser import ModelConfigError

    d = yaml.safe_load((REPO / "cfg" / "models" / "spayolo.yaml").read_text())
    d["scale"] = "q"
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(d))
    from ultralytics.nn.tasks import ClassificationModel, yaml_model_load

    cfg = yaml_model_load(path)
    cfg["scale"] = "q"
    with pytest.raises(ModelConfigError, match=r"scaled\.yaml: scale 'q' is not one of its scales"):
        ClassificationModel(cfg, nc=7, verbose=False)


def test_stock_yolo_yaml_unchanged():
    """A YAML without spayolo blocks goes to the stock parser: same layers, same parameter count."""
    from ultralytics.nn.tasks import ClassificationModel, parse_model, yaml_model_load

    d = yaml_model_load("yolov8n-cls.yaml")
    ours, _ = parse_model(dict(d), 3, verbose=False)
    stock, _ = parse_model.stock(dict(yaml_model_load("yolov8n-cls.yaml")), 3, verbose=False)
    assert [type(m) for m in ours] == [type(m) for m in stock]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in stock.parameters())
    assert isinstance(ClassificationModel("yolov8n-cls.yaml", nc=7, verbose=False), ClassificationModel)
