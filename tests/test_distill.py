"""Knowledge distillation: the teacher file (spayolo teach), its alignment with the training images, and the loss."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, TINY, identity_images
from spayolo.engine.distill import load_teacher, teacher_probabilities
from spayolo.engine.loss import DistillationLoss, SmoothCrossEntropy
from spayolo.engine.ramdata import RamImages, RamLoader


@pytest.fixture(scope="module")
def teacher_model(tiny_dataset, tmp_path_factory):
    """A classifier trained one epoch on the tiny dataset: what matters is that it is a real .pt checkpoint."""
    from ultralytics import YOLO

    yolo = YOLO("yolov8n-cls.yaml")
    project = tmp_path_factory.mktemp("teacher")
    yolo.train(data=str(tiny_dataset), epochs=1, cache="ram", project=str(project), name="t", **TINY)
    return project / "t" / "weights" / "last.pt"


def test_loss_interpolates_between_labels_and_teacher():
    logits, cls = torch.randn(6, 7, requires_grad=True), torch.randint(0, 7, (6,))
    teacher = torch.randn(6, 7).softmax(1)
    labels_only, _ = DistillationLoss(0.1, weight=0.0)(logits, {"cls": cls, "teacher": teacher})
    torch.testing.assert_close(labels_only, SmoothCrossEntropy(0.1)(logits, {"cls": cls})[0])
    agree = (logits.detach() / 2).softmax(1)  # the student already says what the teacher says, at T = 2
    matched, _ = DistillationLoss(weight=1.0, temperature=2.0)(logits, {"cls": cls, "teacher": agree})
    torch.testing.assert_close(matched, torch.tensor(0.0), atol=1e-6, rtol=0)
    loss, _ = DistillationLoss(weight=1.0)(logits, {"cls": cls, "teacher": teacher})
    loss.backward()
    torch.testing.assert_close(logits.grad, (logits.softmax(1) - teacher).detach() / 6)  # pulled to the teacher
    validation, _ = DistillationLoss(weight=0.7)(logits, {"cls": cls})  # no teacher: the label loss alone
    torch.testing.assert_close(validation, F.cross_entropy(logits, cls))


@pytest.mark.parametrize("kwargs, name", [({"weight": 1.5}, "distill_weight"), ({"temperature": 0}, "distill_temp")])
def test_loss_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DistillationLoss(**kwargs)


def test_ram_loader_serves_each_image_with_its_own_extras(tmp_path):
    data = RamImages(identity_images(tmp_path))
    rows = torch.arange(12.0).view(12, 1) * torch.ones(1, 3)  # row i belongs to image i
    loader = RamLoader(data, dataset=None, batch_size=5, shuffle=True, seed=1, raw=True, extras={"teacher": rows})
    served = []
    for batch in loader:
        index = batch["img"][:, 0, 0, 0].float() / 10
        torch.testing.assert_close(batch["teacher"][:, 0], index)
        served += index.tolist()
    assert sorted(served) == list(range(12)) and served != sorted(served)  # every image once, shuffled
    with pytest.raises(ValueError, match="extras\\['teacher'\\] has 11 rows for 12 images"):
        RamLoader(data, dataset=None, batch_size=5, shuffle=True, extras={"teacher": rows[:11]})


@pytest.fixture(scope="module")
def fer_folder(tmp_path_factory):
    """Two varied grey images for each FER2013 class, in train/ and val/, for the shipped classifier to score."""
    import cv2

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("fer") / "faces"
    for k, name in enumerate(("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")):
        (root / "val" / name).mkdir(parents=True)
        for i in range(2):
            blur = 1 + 2 * ((2 * k + i) % 4)
            image = cv2.GaussianBlur(rng.uniform(0, 255, (48, 48)).astype(np.uint8), (blur, blur), 0)
            cv2.imwrite(str(root / "val" / name / f"val_{i}.jpg"), image)
    shutil.copytree(root / "val", root / "train")  # Ultralytics splits a dataset without train/ on its own
    return root


@pytest.mark.slow
def test_teacher_probabilities_are_what_the_flip_tta_validator_scores(fer_folder):
    from spayolo.apps.evaluate import evaluate
    from spayolo.classifier import FAST_MODEL

    model = REPO / "weights" / f"{FAST_MODEL}.pt"
    teacher = teacher_probabilities([(str(model), None)], fer_folder / "val")
    assert teacher["split"] == "val" and teacher["names"][3] == "happy"
    assert teacher["files"][0] == "angry/val_0.jpg" and teacher["labels"].tolist() == [k // 2 for k in range(14)]
    torch.testing.assert_close(teacher["probs"].sum(1), torch.ones(14))
    predicted = teacher["probs"].argmax(1)
    confusion = torch.zeros(7, 7, dtype=torch.long).index_put_((teacher["labels"], predicted), torch.tensor(1),
                                                               accumulate=True)
    assert confusion.tolist() == evaluate(str(model), str(fer_folder), tta=True)["confusion"]
    assert len(set(predicted.tolist())) > 1  # a classifier that answers one class everywhere would prove nothing
    small = teacher_probabilities([(str(model), 48)], fer_folder / "val")
    both = teacher_probabilities([(str(model), None), (str(model), 48)], fer_folder / "val")
    assert both["models"] == [str(model), f"{model}:48"]
    torch.testing.assert_close(both["probs"], (teacher["probs"] + small["probs"]) / 2)
    assert not torch.allclose(small["probs"], teacher["probs"])


@pytest.mark.slow
def test_teacher_rows_follow_the_training_samples(teacher_model, tiny_dataset, tmp_path):
    file = tmp_path / "teacher.pt"
    torch.save(teacher_probabilities([(str(teacher_model), None)], tiny_dataset / "train", tta=False), file)
    teacher = torch.load(file, weights_only=True)
    folder = tiny_dataset / "train"
    samples = [(folder / f, int(c)) for f, c in zip(teacher["files"], teacher["labels"])][::-1]
    torch.testing.assert_close(load_teacher(file, samples, folder, teacher["names"]), teacher["probs"].flip(0))

    with pytest.raises(ValueError, match="holds the 'train' split; this run trains on 'val'"):
        load_teacher(file, samples, tiny_dataset / "val", teacher["names"])
    with pytest.raises(ValueError, match="has classes \\['happy', 'sad'\\], the data has \\['sad', 'happy'\\]"):
        load_teacher(file, samples, folder, {0: "sad", 1: "happy"})
    with pytest.raises(ValueError, match="lacks 1 of the 9 training images, e.g. happy/new.jpg"):
        load_teacher(file, [*samples, (folder / "happy" / "new.jpg", 0)], folder, teacher["names"])
    torch.save({"probs": teacher["probs"]}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a teacher file"):
        load_teacher(tmp_path / "other.pt", samples, folder, teacher["names"])


@pytest.mark.slow
def test_training_distills_with_mixup_and_refuses_the_stock_path(teacher_model, tiny_dataset, tmp_path):
    from ultralytics import YOLO

    from spayolo.apps.teach import main as teach

    file = tmp_path / "teacher.pt"
    assert teach(["--models", str(teacher_model), "--data", str(tiny_dataset), "--out", str(file)]) == 0
    teachers, criteria = [], []

    def record(trainer):
        criterion = trainer.model.criterion
        criteria.append(criterion)

        def spy(preds, batch):
            teachers.append(batch.get("teacher"))
            return criterion(preds, batch)

        trainer.model.criterion = spy

    yolo = YOLO("spayolo-n.yaml")
    yolo.add_callback("on_train_start", record)
    args = dict(data=str(tiny_dataset), epochs=1, project=str(tmp_path), name="kd", **TINY)
    yolo.train(cache="ram", distill=str(file), distill_weight=0.8, distill_temp=2.0, mixup=1.0, **args)
    assert isinstance(criteria[0], DistillationLoss) and (criteria[0].weight, criteria[0].temperature) == (0.8, 2.0)
    assert len(teachers) == 2 and all(t.shape == (4, 2) for t in teachers)  # 8 images, batch 4
    torch.testing.assert_close(torch.cat(teachers).sum(1), torch.ones(8))
    with pytest.raises(ValueError, match="needs cache=ram"):
        YOLO("spayolo-n.yaml").train(cache=False, distill=str(file), **args)
    with pytest.raises(ValueError, match="spayolo teach"):
        YOLO("spayolo-n.yaml").train(cache="ram", distill_model=str(teacher_model), **args)


@pytest.mark.slow
def test_teach_refuses_a_folder_as_output_and_mismatched_classes(teacher_model, tiny_dataset, tmp_path):
    from spayolo.apps.teach import main as teach, parse_model

    assert parse_model("a/b.pt:96") == ("a/b.pt", 96) and parse_model("C:/b.pt") == ("C:/b.pt", None)
    with pytest.raises(ValueError, match="is a folder"):
        teach(["--models", str(teacher_model), "--data", str(tiny_dataset), "--out", str(tmp_path)])
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    (other / "train" / "sad").rename(other / "train" / "surprise")
    with pytest.raises(ValueError, match="has classes \\['happy', 'sad'\\], .*train has \\['happy', 'surprise'\\]"):
        teach(["--models", str(teacher_model), "--data", str(other), "--out", str(tmp_path / "t.pt")])
