"""tools/benchmark.py on tiny settings: the tables it prints are complete and their ratios are computed, not typed."""

from __future__ import annotations

import importlib.util
import re

import torch

from conftest import REPO
from spayolo.nn import ConvSSM


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classifier_table_with_stock_twin_and_onnx(capsys):
    benchmark = load_benchmark()
    benchmark.main(["--models", "spayolo-n", "--imgsz", "32", "--repeats", "2", "--batch", "2", "--onnx"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("yolov8n-cls", "spayolo-n"))}
    assert set(rows) == {"yolov8n-cls", "spayolo-n"}  # the stock model of the same scale is measured beside it
    spayolo, stock = rows["spayolo-n"], rows["yolov8n-cls"]
    assert float(spayolo[1]) > float(stock[1]) > 1.4  # params (M)
    ratio = float(re.search(r"x([\d.]+),", " ".join(spayolo[9:]))[1])
    assert abs(ratio - float(spayolo[4]) / float(stock[4])) < 0.01  # latency ratio from the measured columns


def test_scan_share_counts_only_the_scan():
    benchmark = load_benchmark()
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), ConvSSM(16, 16)).eval()
    share = benchmark.scan_share(block, 16, torch.device("cpu"), repeats=2)
    assert 0 < share < 1
    assert benchmark.scan_share(torch.nn.Conv2d(3, 3, 1), 16, torch.device("cpu"), repeats=2) == 0.0


def test_pipeline_scene_has_the_faces_it_claims():
    from spayolo.face.detectors import MTCNNDetector

    benchmark = load_benchmark()
    detector = MTCNNDetector("cpu", min_face=40)
    tiles = benchmark.face_tiles(detector)
    frame = benchmark.scene(tiles, shift=4)
    assert frame.shape == (480, 640, 3) and len(detector([frame])[0]) == 5
    assert len(detector([benchmark.scene(tiles[-1:], shift=0)])[0]) == 1
