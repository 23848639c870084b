"""The stock `yolo` CLI trains a spayolo model, and fresh processes reload it (also under restricted loading)."""

from __future__ import annotations

import sys
import textwrap

import pytest
from conftest import run_cli, yolo_cli


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """One real CLI epoch with Adan; every later test reuses its checkpoint."""
    work = tmp_path_factory.mktemp("cli")
    result = run_cli(
        [yolo_cli(), "classify", "train", "model=spayolo-n.yaml", f"data={tiny_dataset}", "imgsz=32", "epochs=1",
         "batch=4", "workers=0", "device=cpu", "optimizer=Adan", "lr0=0.001", f"project={work}", "name=run",
         "plots=False", "exist_ok=True"],
        cwd=work,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Adan(lr=0.001)" in result.stdout + result.stderr
    best = work / "run" / "weights" / "best.pt"
    assert best.is_file()
    return work, best


PREDICT = textwrap.dedent(
    """
    import sys
    from ultralytics import YOLO
    model = YOLO(sys.argv[1])
    result = model.predict(sys.argv[2], imgsz=32, verbose=False)[0]
    print("TOP1", result.names[result.probs.top1], type(model.model.model[7]).__module__)
    """
)


@pytest.mark.parametrize("safe", ["0", "1"])
def test_new_process_reloads_and_predicts(trained, tiny_dataset, safe):
    work, best = trained
    image = next((tiny_dataset / "val" / "happy").glob("*.jpg"))
    result = run_cli([sys.executable, "-c", PREDICT, str(best), str(image)], cwd=work, env={"ULTRALYTICS_SAFE_LOAD": safe})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TOP1" in result.stdout and "spayolo.nn.spam" in result.stdout


def test_cli_predict_and_val(trained, tiny_dataset):
    work, best = trained
    result = run_cli([yolo_cli(), "classify", "val", f"model={best}", f"data={tiny_dataset}", "imgsz=32",
                      "batch=4", "workers=0", "device=cpu", "plots=False"], cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top1_acc" in result.stdout + result.stderr


CRASH_AFTER_FIRST_EPOCH = textwrap.dedent(
    """
    import os, sys
    from ultralytics import YOLO
    model = YOLO("spayolo-n.yaml")
    model.add_callback("on_model_save", lambda trainer: os._exit(0))  # dies right after epoch 1 is saved
    model.train(data=sys.argv[1], project=sys.argv[2], name="resume", imgsz=32, epochs=2, batch=4, workers=0,
                device="cpu", optimizer="Adan", plots=False, exist_ok=True)
    """
)


def test_resume_in_new_process(tiny_dataset, tmp_path):
    crashed = run_cli([sys.executable, "-c", CRASH_AFTER_FIRST_EPOCH, str(tiny_dataset), str(tmp_path)], cwd=tmp_path)
    assert crashed.returncode == 0, crashed.stderr[-3000:]
    last = tmp_path / "resume" / "weights" / "last.pt"
    # The classify CLI fills in a default dataset when data= is absent, so it is passed again here.
    result = run_cli([yolo_cli(), "classify", "train", f"model={last}", f"data={tiny_dataset}", "resume=True"],
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "from epoch 2 to 2 total epochs" in output and "optimizer=Adan" in output


def test_fresh_interpreter_parses_yaml_without_import(tmp_path):
    """What Ultralytics' DDP children do: re-parse the YAML in a new interpreter that never imported spayolo."""
    code = "from ultralytics.nn.tasks import ClassificationModel as M; print(type(M('spayolo-s.yaml', nc=7).model[7]).__name__)"
    result = run_cli([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("SPAM")


FOREIGN = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    import foreign
    from ultralytics.nn.tasks import ClassificationModel
    model = ClassificationModel("spayolo-n.yaml", nc=2, verbose=False)
    model.model[7] = foreign.Sneaky()
    torch.save({"model": model, "train_args": {}}, sys.argv[1])
    """
)


def test_safe_load_refuses_other_classes(tmp_path):
    """The allow-list admits spayolo's classes and nothing else that Ultralytics would not admit."""
    (tmp_path / "foreign.py").write_text("import torch\nclass Sneaky(torch.nn.Identity):\n    pass\n")
    ckpt = tmp_path / "foreign.pt"
    made = run_cli([sys.executable, "-c", FOREIGN, str(ckpt), str(tmp_path)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    load = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from ultralytics import YOLO; YOLO({str(ckpt)!r})"
    result = run_cli([sys.executable, "-c", load], cwd=tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"})
    assert result.returncode != 0
    assert "foreign.Sneaky" in result.stderr
