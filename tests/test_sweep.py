"""spayolo sweep: runs trained in order with one recipe, finished ones skipped, interrupted ones resumed, the table."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch
import yaml

from spayolo import cli
from spayolo.apps import sweep
from spayolo.checkpoints import training_state

RECIPE = dict(imgsz=32, epochs=1, batch=4, nbs=4, workers=0, plots=False, seed=0, warmup_epochs=0, optimizer="AdamW",
              lr0=1e-3, cache="ram", device="cpu")


def write_sweep(path, train: dict, runs: dict):
    path.write_text(yaml.safe_dump({"train": train, "runs": runs}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished_sweep(tiny_dataset, tmp_path_factory):
    """Two seeds of one model trained one epoch through `spayolo sweep`, with their exports."""
    root = tmp_path_factory.mktemp("sweep")
    file = write_sweep(root / "s.yaml", {"model": "yolov8n-cls.yaml", "data": str(tiny_dataset), **RECIPE},
                       {"a": {"group": "g"}, "b": {"seed": 1, "group": "g", "note": "second seed"}})
    assert cli.main(["sweep", str(file), "--project", str(root / "runs"), "--export", str(root / "zoo")]) == 0
    return file, root


@pytest.fixture
def own_sweep(finished_sweep, tmp_path):
    """A copy of the finished sweep's runs for a test that changes them, so that no test sees another's changes."""
    file, root = finished_sweep
    shutil.copytree(root / "runs", tmp_path / "runs")  # copy2 keeps best.pt's mtime, which scoring is keyed on
    return file, tmp_path


def test_sweep_scores_every_run_and_tabulates_groups(finished_sweep, tiny_dataset):
    from spayolo.apps.evaluate import evaluate

    file, root = finished_sweep
    rows = json.loads((root / "runs" / "sweep.json").read_text())
    assert list(rows) == ["a", "b"]
    for name, row in rows.items():
        best = root / "runs" / name / "weights" / "best.pt"
        plain = evaluate(str(best), str(tiny_dataset), 32, device="cpu")
        flipped = evaluate(str(best), str(tiny_dataset), 32, device="cpu", tta="flip")
        assert (row["top1"], row["top1_tta"]) == (plain["top1"], flipped["top1"])  # best.pt at the run's imgsz
        assert row["mean_class_accuracy"] == plain["mean_class_accuracy"] and row["per_class"] == plain["per_class"]
        assert row["epochs"] == 1 and row["params"] == 1_440_850 and row["cpu_ms"] > 0
    table = (root / "runs" / "sweep.md").read_text()
    a, b = rows["a"], rows["b"]
    assert f"| a | yolov8n-cls | 1 | {100 * a['top1']:.2f} % | {100 * a['top1_tta']:.2f} % |" in table
    assert "second seed |" in table
    mean = statistics.fmean([100 * a["top1"], 100 * b["top1"]])
    assert f"g: top-1 {mean:.2f} +- " in table and "2 runs" in table


def test_sweep_exports_fp16_checkpoints_without_optimizer(finished_sweep):
    _, root = finished_sweep
    for name in ("a", "b"):
        ckpt = torch.load(root / "zoo" / f"{name}-faces.pt", weights_only=False)
        assert ckpt["optimizer"] is None and ckpt["epoch"] == -1
        assert {p.dtype for p in ckpt["model"].parameters()} == {torch.float16}


def test_sweep_skips_finished_runs_and_resumes_interrupted_ones(own_sweep, monkeypatch):
    from ultralytics import YOLO

    file, root = own_sweep
    last = root / "runs" / "b" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    ckpt["epoch"] = 0  # as Ultralytics leaves a run stopped after its first epoch
    torch.save(ckpt, last)
    calls = []
    monkeypatch.setattr(YOLO, "train", lambda self, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(sweep, "score", lambda *args: pytest.fail("scored a run whose best.pt did not change"))
    assert [training_state(root / "runs" / n) for n in ("a", "b", "c")] == ["finished", "interrupted", "new"]
    assert cli.main(["sweep", str(file), "--project", str(root / "runs")]) == 0
    assert calls == [{"resume": True}]


def test_a_resumed_run_interrupted_again_is_resumed_not_restarted(finished_sweep, tiny_dataset, tmp_path):
    import shutil

    _, root = finished_sweep
    run = shutil.copytree(root / "runs" / "b", tmp_path / "b")
    last = run / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    ckpt["epoch"] = 0
    torch.save(ckpt, last)
    args = yaml.safe_load((run / "args.yaml").read_text())
    args["model"] = args["resume"] = "/elsewhere/b/weights/last.pt"  # what Ultralytics writes on resume
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    wanted = {"model": "yolov8n-cls.yaml", "data": str(tiny_dataset), **RECIPE, "seed": 1}
    assert training_state(run, wanted) == "interrupted"
    assert training_state(run, {**wanted, "model": "yolov8s-cls.yaml"}) == "new"  # the network it was built from
    assert training_state(run, {**wanted, "lr0": 5e-4}) == "new"


def test_sweep_retrains_a_run_whose_arguments_changed(own_sweep, tiny_dataset, monkeypatch):
    from ultralytics import YOLO

    file, root = own_sweep
    changed = write_sweep(root / "changed.yaml", {"model": "yolov8n-cls.yaml", "data": str(tiny_dataset), **RECIPE},
                          {"a": {"lr0": 5e-4}})
    calls = []
    monkeypatch.setattr(YOLO, "train", lambda self, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(sweep, "score", lambda *args: pytest.fail("scored a run whose best.pt did not change"))
    assert cli.main(["sweep", str(changed), "--project", str(root / "runs")]) == 0
    assert len(calls) == 1 and calls[0]["lr0"] == 5e-4 and calls[0]["name"] == "a" and "resume" not in calls[0]


def test_sweep_takes_groups_and_notes_from_the_file_as_it_is_now(own_sweep, tiny_dataset, monkeypatch):
    from ultralytics import YOLO

    _, root = own_sweep
    scored = json.loads((root / "runs" / "sweep.json").read_text())
    regrouped = write_sweep(root / "regrouped.yaml", {"model": "yolov8n-cls.yaml", "data": str(tiny_dataset), **RECIPE},
                            {"a": {"note": "first seed"}, "b": {"seed": 1, "group": "h"}})
    monkeypatch.setattr(YOLO, "train", lambda self, **kwargs: pytest.fail("trained a finished run"))
    monkeypatch.setattr(sweep, "score", lambda *args: pytest.fail("scored a run whose best.pt did not change"))
    assert cli.main(["sweep", str(regrouped), "--project", str(root / "runs")]) == 0
    rows = json.loads((root / "runs" / "sweep.json").read_text())
    assert rows["a"] == {**{k: v for k, v in scored["a"].items() if k != "group"}, "note": "first seed"}
    assert rows["b"] == {**{k: v for k, v in scored["b"].items() if k != "note"}, "group": "h"}  # scores kept


@pytest.mark.parametrize("cfg, message", [
    ({"train": {"model": "yolov8n-cls.yaml"}, "runs": {"a": {"lr": 1}}}, "runs.a: unknown argument(s) lr"),
    ({"train": {"data": "x"}, "runs": {"a": {}}}, "runs.a names no model"),
    ({"train": {"model": "m.yaml", "project": "p"}, "runs": {"a": {}}}, "'project' is set by spayolo sweep"),
    ({"train": {"model": "m.yaml"}}, "needs a 'train:' mapping"),
    ("train: [", "not valid YAML"),
])
def test_sweep_file_errors_name_the_file_and_the_field(tmp_path, capsys, cfg, message):
    file = tmp_path / "bad.yaml"
    file.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    assert cli.main(["sweep", str(file), "--commands"]) == 2
    err = capsys.readouterr().err
    assert str(file) in err and message in err


def test_sweep_commands_and_run_selection(tmp_path, capsys):
    assert cli.main(["sweep", "recipe-fer2013", "--commands", "--only", "base,sgd", "--project", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("yolo classify train model=spayolo-n.yaml ") for line in lines)
    assert "optimizer=SGD lr0=0.01" in lines[1] and lines[1].endswith(f"project={tmp_path} name=sgd")
    assert cli.main(["sweep", "recipe-fer2013", "--only", "base,nope"]) == 2
    assert "has no run nope" in capsys.readouterr().err
    assert cli.main(["sweep", "no-such-sweep"]) == 2
    assert "built-in sweeps: long-fer2013, parity-fer2013, recipe-fer2013, zoo-fer2013" in capsys.readouterr().err
