"""spayolo benchmark on tiny settings: the tables it prints are complete and their ratios are computed, not typed."""

from __future__ import annotations

import re

import pytest
import torch

from spayolo import benchmark
from spayolo.nn import ConvSSM


def rows_of(out: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(names)}


def test_classifier_table_with_stock_twin_and_onnx(capsys):
    benchmark.main(["--models", "spayolo-n", "--imgsz", "32", "--repeats", "2", "--batch", "2", "--onnx"])
    rows = rows_of(capsys.readouterr().out, ("yolov8n-cls", "spayolo-n"))
    assert set(rows) == {"yolov8n-cls", "spayolo-n"}  # the stock model of the same scale is measured beside it
    spayolo, stock = rows["spayolo-n"], rows["yolov8n-cls"]
    assert float(spayolo[1]) > float(stock[1]) > 1.4  # params (M)
    ratio = float(re.search(r"x([\d.]+),", " ".join(spayolo[9:]))[1])
    assert abs(ratio - float(spayolo[4]) / float(stock[4])) < 0.01  # latency ratio from the measured columns


@pytest.mark.slow
def test_training_table_ends_with_the_measured_ratio(tmp_path, capsys):
    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "faces", per_class=8)
    benchmark.main(["--train", "--models", "spayolo-n", "--imgsz", "32", "--batch", "2", "--batches", "6",
                    "--rounds", "2", "--data", str(data), "--optimizer", "Adan"])
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines if line.split()[1:2] in (["stock"], ["fast"])]
    assert [row[:2] for row in table] == [["yolov8n-cls", "stock"], ["yolov8n-cls", "fast"], ["spayolo-n", "stock"],
                                          ["spayolo-n", "fast"]]
    assert "epoch=16 images" in " ".join(lines) and "rounds=2 optimizer=Adan" in " ".join(lines)
    last = re.fullmatch(r"spayolo-n fast/stock images/s: x([\d.]+)", lines[-1])
    assert last, lines[-1]
    assert table[3][5] == f"x{last[1]}"  # the last line repeats the table's median ratio of the paired rounds
    low, high = map(float, re.fullmatch(r"x([\d.]+)-([\d.]+)", table[3][6]).groups())
    assert low - 0.005 <= float(last[1]) <= high + 0.005


def test_scan_share_counts_the_scan_of_the_timed_passes_only(monkeypatch):
    """On a fake clock a forward pass takes 3 s outside the scan and 1 s in it: the share is 1/4 exactly, and would
    not be if the warm-up pass or the rest of the model counted as scan time."""
    import spayolo.nn.fermam as fermam

    clock, scan = [0.0], fermam.selective_scan

    def one_second_scan(*args):
        clock[0] += 1.0
        return scan(*args)

    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(fermam, "selective_scan", one_second_scan)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), ConvSSM(16, 16)).eval()
    block.register_forward_pre_hook(lambda module, inputs: clock.__setitem__(0, clock[0] + 3.0))
    assert benchmark.scan_share(block, 16, torch.device("cpu"), repeats=2) == 0.25
    assert benchmark.scan_share(torch.nn.Conv2d(3, 3, 1), 16, torch.device("cpu"), repeats=2) == 0.0


def test_pipeline_scene_has_the_faces_it_claims():
    from spayolo.face.detectors import MTCNNDetector
    from spayolo.pipeline_benchmark import face_tiles, scene

    detector = MTCNNDetector(min_face=40)
    tiles = face_tiles()
    assert len(tiles) == 5
    assert len(detector([scene(tiles, shift=4)])[0]) == 5
    assert len(detector([scene(tiles[:1], shift=0)])[0]) == 1


def test_pipeline_configurations_cover_every_combination():
    from spayolo.pipeline_benchmark import configurations

    rows = configurations(["onnx"], [None, "a.onnx+b.onnx"], [1, 5], [None, 1], [0, 2])
    assert len(rows) == 1 * 2 * 2 * 2 * 2 and len({r["label"] for r in rows}) == len(rows)
    assert {tuple(r["model"]) for r in rows if isinstance(r["model"], list)} == {("a.onnx", "b.onnx")}
    assert {r["load"] for r in rows} == {0, 2} and {r["threads"] for r in rows} == {None, 1}


def test_pipeline_labels_name_every_member_and_never_merge_two_configurations():
    from spayolo.pipeline_benchmark import configurations

    models = ["w/s.onnx", "w/n.onnx+w/s.onnx", "runs/s.onnx"]
    labels = [r["label"] for r in configurations(["onnx"], models, [5], [None], [0])]
    assert "n.onnx+s.onnx" in labels[1] and len(set(labels)) == 3


def test_busy_load_runs_and_stops_its_processes():
    from spayolo.pipeline_benchmark import busy_load

    with busy_load(2) as load:
        assert [p.is_alive() for p in load.processes] == [True, True]
    assert [p.is_alive() for p in load.processes] == [False, False]
    with busy_load(0) as none:
        assert none.processes == []
