"""The stock `yolo` CLI trains a spayolo model, and fresh processes reload it (also under restricted loading)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from conftest import run_cli, yolo_cli

pytestmark = pytest.mark.slow  # every test here trains in a subprocess or reuses that training


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
    result = run_cli([sys.executable, "-c", PREDICT, str(best), str(image)], cwd=work,
                     env={"ULTRALYTICS_SAFE_LOAD": safe})
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
