"""Dataset YAMLs, tools/prepare_data.py, spayolo.data.resolve_dataset and tools/cam.py on tiny synthetic data."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_cli, write_image_folder, yolo_cli
from spayolo.data import DATASETS_CFG_DIR, DatasetNotPreparedError, resolve_dataset


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_tool("prepare_data")


def pixels(value: int, n: int = 48 * 48) -> str:
    return " ".join(str((value + i) % 256) for i in range(n))


def write_fer_csv(file: Path, rows: list[tuple]) -> Path:
    with open(file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    return file


def images_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png") if not p.name.startswith(prep.TMP))


FER_ROWS = [
    (3, pixels(0), "Training"),  # line 2 -> train/happy/fer0000000.png
    (6, pixels(7), "Training"),  # line 3 -> train/neutral (code 6 is neutral, not surprise)
    (4, "12 x 255", "PublicTest"),  # line 4: not numbers
    (0, pixels(1, 47 * 48), "PublicTest"),  # line 5: wrong pixel count
    (5, pixels(9), "PublicTest"),  # line 6 -> val/surprise
    (9, pixels(2), "PrivateTest"),  # line 7: no emotion 9
    (1, pixels(3), "Holdout"),  # line 8: unknown Usage
    (2, pixels(4), "PrivateTest"),  # line 9 -> test/fear
]


def test_dataset_yamls_consistent():
    """Class index = sorted folder order (what Ultralytics assigns); every raw code maps to a class."""
    files = {p.stem: yaml.safe_load(p.read_text()) for p in DATASETS_CFG_DIR.glob("*.yaml")}
    assert set(files) == {"fer2013", "ferplus", "affectnet7", "affectnet8", "rafdb", "ckplus", "jaffe", "kdef"}
    for name, cfg in files.items():
        names = list(cfg["names"].values())
        assert names == sorted(names) and list(cfg["names"]) == list(range(len(names))), name
        assert set(cfg.get("labels", {}).values()) <= set(names), name
        assert "prepare" in cfg and ("folds" in cfg) == ("pattern" in cfg), name
    assert len(files["affectnet7"]["names"]) == 7 and len(files["affectnet8"]["names"]) == 8
    assert set(files["ferplus"]["names"].values()) == set(files["ferplus"]["votes"][:8])
    for name, file_name, subject, label in (("ckplus", "S005_001_00000011.png", "S005", None),
                                            ("jaffe", "KA.AN1.39.tiff", "KA", "AN"),
                                            ("kdef", "AF01ANS.JPG", "F01", "AN"), ("kdef", "BM35SUS.JPG", "M35", "SU")):
        match = re.match(files[name]["pattern"], file_name, re.IGNORECASE)
        assert match["subject"] == subject and match.groupdict().get("label") == label, file_name
    assert re.match(files["kdef"]["pattern"], "AF01ANHL.JPG") is None  # KDEF: frontal (S) images only
    assert files["fer2013"]["labels"] == {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise",
                                          6: "neutral"}


def test_fer_csv(tmp_path):
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
    out = tmp_path / "fer2013"
    report = prep.prepare("fer2013", out, csv_file=csv_file)
    assert images_in(out) == ["test/fear/fer0000007.png", "train/happy/fer0000000.png",
                              "train/neutral/fer0000001.png", "val/surprise/fer0000004.png"]
    img = cv2.imread(str(out / "train/neutral/fer0000001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 48) and img[0, 0] == 7 and img[47, 47] == (7 + 48 * 48 - 1) % 256  # lossless, row-major
    bad = [p for p in report.problems if "line" in p]
    assert [p.split(":")[0] for p in bad] == [f"fer2013.csv line {n}" for n in (4, 5, 7, 8)]
    assert "2256 pixels, expected 2304" in bad[1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train"] == {"happy": 1, "neutral": 1} and manifest["skipped"] == {"bad CSV row": 4}
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(prep.dataset_cfg("fer2013")["names"].values())
    assert not (tmp_path / "fer2013.partial").exists()


def test_existing_output_needs_force(tmp_path, capsys):
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
    out = tmp_path / "out"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("user data")
    assert prep.main(["fer2013", "--csv", str(csv_file), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "user data"
    assert prep.main(["fer2013", "--csv", str(csv_file), "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and len(images_in(out)) == 4


def test_resume_after_interruption(tmp_path, monkeypatch):
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
    out = tmp_path / "fer2013"
    real_save, calls = prep.save_gray, []

    def dies_on_third(target, img):
        calls.append(target.name)
        if len(calls) == 3:
            target.parent.mkdir(parents=True)
            (target.parent / (prep.TMP + target.name)).write_bytes(b"half")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        real_save(target, img)

    monkeypatch.setattr(prep, "save_gray", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("fer2013", out, csv_file=csv_file)
    partial = tmp_path / "fer2013.partial"
    assert not out.exists() and len(images_in(partial)) == 2 and list(partial.rglob(prep.TMP + "*"))
    first = (partial / "train/happy/fer0000000.png").stat().st_mtime_ns
    monkeypatch.setattr(prep, "save_gray", real_save)
    prep.prepare("fer2013", out, csv_file=csv_file)  # no --force needed: only the .partial folder exists
    assert len(images_in(out)) == 4 and not partial.exists() and not list(out.rglob(prep.TMP + "*"))
    assert (out / "train/happy/fer0000000.png").stat().st_mtime_ns == first  # finished files are not redone


def test_ferplus_majority_vote(tmp_path):
    names = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
    votes = [
        ("Training", "fer0000000.png", [2, 8, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness
        ("Training", "fer0000001.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face
        ("PublicTest", "fer0000002.png", [1, 0, 0, 0, 0, 0, 0, 0, 9, 0]),  # unknown
        ("PublicTest", "fer0000003.png", [2, 4, 0, 4, 0, 0, 0, 0, 0, 0]),  # no majority
        ("PrivateTest", "fer0000004.png", [0, 1, 0, 1, 1, 0, 1, 3, 0, 1]),  # singles dropped: contempt 3 of 3
        ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # removed from FERPlus
    ]
    with open(tmp_path / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", *names])
        writer.writerows([usage, image, *v] for usage, image, v in votes)
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", [(0, pixels(i), "Training") for i in range(6)])
    out = tmp_path / "ferplus"
    report = prep.prepare("ferplus", out, csv_file=csv_file, labels_file=tmp_path / "fer2013new.csv")
    assert images_in(out) == ["test/contempt/fer0000004.png", "train/happiness/fer0000000.png"]
    assert report.skipped == {"FERPlus label NF": 1, "FERPlus label unknown": 1, "FERPlus label without majority": 1,
                              "no image name (removed by FERPlus)": 1}
    assert cv2.imread(str(out / "test/contempt/fer0000004.png"), cv2.IMREAD_UNCHANGED)[0, 0] == 4  # row 4's pixels


def test_image_folders_and_archive(tmp_path):
    """A RAF-DB style release: numeric class folders, test/ used as val, a corrupt image and a stray folder."""
    src = write_image_folder(tmp_path / "raf", classes=("1", "4"), per_class=2)
    (src / "val").rename(src / "test")
    (src / "train/4/broken.jpg").write_bytes(b"not an image")
    (src / "train/extra").mkdir()
    with tarfile.open(tmp_path / "raf.tar.gz", "w:gz") as t:
        t.add(src, arcname="RAF-DB")
    for source, out in ((src, tmp_path / "a"), (tmp_path / "raf.tar.gz", tmp_path / "b")):
        report = prep.prepare("rafdb", out, images=source)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
        assert files == ["train/happiness/train_0.jpg", "train/happiness/train_1.jpg", "train/surprise/train_0.jpg",
                         "train/surprise/train_1.jpg", "val/happiness/val_0.jpg", "val/happiness/val_1.jpg",
                         "val/surprise/val_0.jpg", "val/surprise/val_1.jpg"]
        assert any("broken.jpg" in p for p in report.problems) and any("extra" in p for p in report.problems)
    assert not (tmp_path / "b.extract").exists()


def test_subject_folds(tmp_path):
    """CK+ style file names: every subject is in val of exactly one fold and never in train and val together."""
    src = tmp_path / "ckplus48"
    rng = np.random.default_rng(0)
    for s in range(1, 13):
        for k, name in enumerate(("anger", "happy")):
            (src / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(src / name / f"S{s:03d}_00{k}_0000001{k}.png"), rng.integers(0, 255, (8, 8), np.uint8))
    (src / "happy" / "notes.png").write_bytes(b"x")  # no subject in the name
    out = tmp_path / "ck"
    report = prep.prepare("ckplus", out, images=src)
    seen = []
    for fold in range(10):
        subjects = {split: {p.name.split("_")[0] for p in (out / f"fold{fold}" / split).rglob("*.png")}
                    for split in ("train", "val")}
        assert subjects["val"] and not subjects["train"] & subjects["val"]
        assert len(subjects["train"] | subjects["val"]) == 12
        seen += sorted(subjects["val"])
        assert sorted(subjects["val"]) == report.folds[f"fold{fold}"]
    assert sorted(seen) == [f"S{s:03d}" for s in range(1, 13)]
    assert report.folds["fold0"] == ["S001", "S011"] and report.skipped["file name without subject/class"] == 1
    assert (out / "fold0/val/contempt").is_dir()  # empty class folders keep class indices aligned


def test_resolve_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAYOLO_DATASETS", str(tmp_path))
    assert resolve_dataset(str(tmp_path)) is None  # a folder: Ultralytics' own business
    assert resolve_dataset("imagenet10") is None and resolve_dataset("coco8.yaml") is None
    with pytest.raises(DatasetNotPreparedError) as error:
        resolve_dataset("fer2013.yaml")
    assert f"python tools/prepare_data.py fer2013 --csv fer2013.csv --out {tmp_path / 'fer2013'}" in str(error.value)
    (tmp_path / "fer2013/train").mkdir(parents=True)
    assert resolve_dataset("fer2013.yaml") == str(tmp_path / "fer2013")

    with pytest.raises(ValueError, match="ckplus-fold0.yaml ... data=ckplus-fold9.yaml"):
        resolve_dataset("ckplus.yaml")
    with pytest.raises(ValueError, match="fold 10"):
        resolve_dataset("ckplus-fold10.yaml")
    (tmp_path / "ckplus/fold3/train").mkdir(parents=True)
    assert resolve_dataset("ckplus-fold3.yaml") == str(tmp_path / "ckplus/fold3")

    own = tmp_path / "mine.yaml"
    own.write_text(f"path: {tmp_path / 'elsewhere'}\nnames: {{0: a, 1: b}}\n")
    with pytest.raises(DatasetNotPreparedError, match="--images <folder>"):
        resolve_dataset(own)
    (tmp_path / "elsewhere/train").mkdir(parents=True)
    assert resolve_dataset(str(own)) == str(tmp_path / "elsewhere")


cam = load_tool("cam")


class TinyCAMNet(torch.nn.Module):
    """conv -> GAP -> linear: Grad-CAM reduces to CAM, relu(sum_k w_ck A_k), which the test derives by hand."""

    def __init__(self):
        super().__init__()
        head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), head)

    def forward(self, x):
        return self.model(x)



def test_stock_cli_resolves_dataset_names(tmp_path, monkeypatch):
    from ultralytics.engine import exporter, trainer, validator

    monkeypatch.setenv("SPAYOLO_DATASETS", str(tmp_path))
    write_image_folder(tmp_path / "fer2013", classes=("angry", "happy", "sad"), per_class=2)
    for module in (trainer, validator, exporter):  # the three places Ultralytics checks a classification dataset
        data = module.check_cls_dataset("fer2013.yaml", split="val")
        assert Path(data["train"]) == tmp_path / "fer2013" / "train" and data["nc"] == 3
    r = run_cli([yolo_cli(), "classify", "train", "model=spayolo-n.yaml", "data=ckplus-fold2.yaml", "epochs=1",
                 "imgsz=32", "device=cpu"], cwd=tmp_path, env={"SPAYOLO_DATASETS": str(tmp_path)}, timeout=300)
    output = r.stdout + r.stderr
    assert r.returncode != 0 and "Dataset 'ckplus-fold2.yaml' is not prepared" in output
    assert f"python tools/prepare_data.py ckplus" in output and str(tmp_path / "ckplus" / "fold2") in output

def test_grad_cam_equals_cam_for_gap_linear_head():
    torch.manual_seed(0)
    net, x = TinyCAMNet().eval(), torch.rand(2, 3, 6, 6)
    maps, probs = cam.grad_cam(net, x.clone(), cam.target_layer(net), [1, 2])
    with torch.no_grad():
        acts, w = net.model[0](x), net.model[1][2].weight[1:]
        expected = torch.relu(torch.einsum("ck,bkhw->cbhw", w, acts))
        expected = expected / expected.amax((2, 3), keepdim=True)
        assert torch.allclose(probs, net(x).softmax(1))
    assert maps.shape == (2, 2, 6, 6) and torch.allclose(maps, expected, atol=1e-6)


def test_cam_cli_on_spayolo_checkpoint(tmp_path):
    from ultralytics import YOLO

    ckpt = tmp_path / "spayolo-n.pt"
    YOLO("spayolo-n.yaml").save(ckpt)  # untrained weights suffice to exercise hooks, head output and drawing
    faces = write_image_folder(tmp_path / "faces", per_class=1, size=40) / "val"
    out = tmp_path / "cam"
    assert cam.main(["--model", str(ckpt), "--source", str(faces), "--out", str(out), "--imgsz", "32"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "cam").glob("*.png"))
    assert pngs == [f"cam_{i}.png" for i in range(7)]  # one grid per class; the YAML model's names are 0..6
    grid = cv2.imread(str(tmp_path / "cam" / pngs[0]))
    assert grid.shape == (128, 2 * 128, 3)  # two faces, 128-px tiles


def test_kfold_tool_scores_last_epoch_of_each_fold(tmp_path, capsys):
    kfold = load_tool("kfold")
    for k in range(2):
        write_image_folder(tmp_path / "tiny" / f"fold{k}", per_class=2, size=32)
    args = [str(tmp_path / "tiny"), "--model", "spayolo-n.yaml", "--epochs", "1", "--project", str(tmp_path / "runs"),
            "imgsz=32", "batch=4", "workers=0", "device=cpu", "plots=False", "amp=False", "lr0=5e-4"]
    assert kfold.main(args) == 0
    report = json.loads((tmp_path / "runs" / "tiny-spayolo-n" / "kfold.json").read_text())
    assert set(report["top1_per_fold"]) == {"0", "1"} and 0 <= report["top1_mean"] <= 1
    assert report["overrides"]["imgsz"] == 32 and report["weights"] == "last epoch of each fold"
    assert report["overrides"]["lr0"] == 5e-4  # parsed as the yolo CLI does (YAML would keep "5e-4" a string)
    assert (tmp_path / "runs" / "tiny-spayolo-n" / "fold1" / "weights" / "last.pt").is_file()
    assert kfold.main([str(tmp_path / "tiny"), "imgsz"]) == 2 and "key=value" in capsys.readouterr().err
    assert kfold.main([str(tmp_path)]) == 2  # no fold folders there
    with pytest.raises(ValueError, match="fixed split"):
        kfold.fold_roots("fer2013")


def test_evaluate_tool_per_class_matches_confusion(tmp_path):
    from ultralytics.nn.tasks import ClassificationModel

    evaluate = load_tool("evaluate")
    names = ("happy", "sad")
    data = write_image_folder(tmp_path / "faces", classes=names, per_class=3, size=32)
    model = ClassificationModel("spayolo-n.yaml", nc=2, verbose=False)
    model.names = dict(enumerate(names))
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model, "train_args": {"imgsz": 32, "task": "classify"}}, ckpt)
    report = evaluate.evaluate(str(ckpt), str(data), imgsz=32, batch=2, device="cpu")
    confusion = np.array(report["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum() == report["images"] == 6
    assert report["support"] == {"happy": 3, "sad": 3}
    for i, name in enumerate(names):
        assert report["per_class"][name] == pytest.approx(confusion[i, i] / 3)
    assert report["top1"] == pytest.approx(np.trace(confusion) / 6, abs=1e-3)
    assert "| **all (top-1)** | 6 |" in evaluate.table(report)
    assert evaluate.main(["--model", str(tmp_path / "nope.pt"), "--data", str(data)]) == 2
