"""Top-1, top-5, per-class and mean per-class accuracy of a classifier, through the stock Ultralytics validator.

    spayolo evaluate --model weights/spayolo-n-fer2013.pt --data fer2013.yaml
    spayolo evaluate --model weights/spayolo-n-fer2013.onnx --data path/to/folder --json report.json --tta flip+zoom

The numbers are those `yolo classify val` prints (same transforms, same confusion matrix; only imgsz is rounded to a
multiple of 16 as in training, so that 48 stays 48 where the stock validator makes it 64); this adds the per-class
view that FER needs, where classes are badly unbalanced (FER2013 PublicTest: 56 disgust vs 895 happy). With --tta
each image's class probabilities are averaged with those of its mirror image, and with --tta flip+zoom (the pipeline's
default) also with those of a zoomed-in view and its mirror (spayolo.tta; a dynamic-batch .onnx works too).
Without --imgsz the model is scored at the size it was trained at (.pt) or exported for (.onnx): a classifier
scored at another size loses tens of points.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
import torchvision.transforms as T
from ultralytics.data.augment import classify_transforms

from spayolo.apps.args import add_checkpoint_args, positive_int
from spayolo.checkpoints import load_yolo
from spayolo.engine.classify import FERValidator
from spayolo.errors import MissingFileError, UsageError
from spayolo.torch_classifier import trained_size
from spayolo.tta import DEFAULT_TTA, TTA_MODES, tta_mode, view_fractions

__all__ = ("TTAValidator", "evaluate", "main", "split_folder", "table")


class _StackedViews:
    """An image's views (transforms) stacked along the channels, a picklable dataset transform for loader workers."""

    def __init__(self, *views):
        self.views = views

    def __call__(self, image) -> torch.Tensor:
        return torch.cat([view(image) for view in self.views])


class TTAValidator(FERValidator):
    """The classification validator, scoring the mean probabilities of each image's test-time views (spayolo.tta).

    The dataset stacks each image's views along the channels, each cut from the decoded image (a zoomed view is
    resized from it, not from the model-sized copy); preprocess adds the mirror images and lays every view out in
    one batch, so the model (PyTorch or ONNX Runtime) runs once per batch.
    """

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, tta: str = "flip"):
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.tta = tta_mode(tta)
        if self.tta == "none":
            raise UsageError("TTAValidator scores test-time views; for tta 'none' use FERValidator")

    @classmethod
    def for_mode(cls, mode: str | bool):
        """What ``YOLO.val(validator=...)`` builds a validator with for a TTA mode: FERValidator for 'none'."""
        mode = tta_mode(mode)
        return FERValidator if mode == "none" else partial(cls, tta=mode)

    def build_dataset(self, img_path):
        dataset = super().build_dataset(img_path)
        size = self.args.imgsz
        zoomed = [T.Compose([classify_transforms(size=round(size / f)), T.CenterCrop(size)])
                  for f in view_fractions(self.tta)[1:]]
        dataset.torch_transforms = _StackedViews(dataset.torch_transforms, *zoomed)
        return dataset

    def preprocess(self, batch: dict) -> dict:
        batch = super().preprocess(batch)
        views = batch["img"].unflatten(1, (-1, 3)).transpose(0, 1)  # (B, V*3, S, S) -> (V, B, 3, S, S)
        batch["img"] = torch.cat([views, views.flip(-1)]).flatten(0, 1)
        return batch

    def postprocess(self, preds) -> torch.Tensor:
        probs = super().postprocess(preds)
        return probs.unflatten(0, (2 * len(view_fractions(self.tta)), -1)).mean(0)


def split_folder(data: str | Path, split: str) -> Path | None:
    """The image folder ``data`` names for ``split``; UsageError when the dataset has no such split.

    Ultralytics falls back to val/ for a missing test/ split; a report labelled 'test' must come from test/.
    """
    from spayolo.data import resolve_dataset

    root = Path(resolve_dataset(data) or data)
    if not root.is_dir():
        if len(root.parts) > 1:  # a path, never one of Ultralytics' dataset names (which it would try to download)
            raise MissingFileError(f"--data {data}: no such folder")
        return None  # left to Ultralytics (e.g. its own dataset names)
    if not (root / split).is_dir():
        have = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
        raise UsageError(f"--data {data}: no {split}/ split in {root} (splits there: {have})")
    return root / split


def evaluate(model: str, data: str, imgsz: int | None = None, split: str = "val", batch: int = 64,
             device: str | None = None, tta: str | bool = "none", trusted: bool = False) -> dict:
    """Validate `model` on `data` and return the accuracies, the confusion matrix (rows true) and the class names.

    ``imgsz`` None: the size the model was trained or exported at (``trained_size``), else 64. ``tta``: a mode of
    spayolo.tta ('none', 'flip', 'flip+zoom'; True means 'flip').
    """
    split_folder(data, split)
    tta = tta_mode(tta)
    imgsz = imgsz or trained_size(model, trusted) or 64
    metrics = load_yolo(model, trusted, task="classify").val(
        validator=TTAValidator.for_mode(tta), data=data, split=split, imgsz=imgsz, batch=batch, device=device,
        plots=False, verbose=False)
    matrix = metrics.confusion_matrix.matrix.T.astype(int)  # Ultralytics stores [predicted, true]
    names = [metrics.confusion_matrix.names[i] for i in range(len(matrix))]
    support = matrix.sum(1)
    per_class = {n: float(matrix[i, i] / support[i]) if support[i] else None for i, n in enumerate(names)}
    scored = [v for v in per_class.values() if v is not None]
    return {"model": str(model), "data": str(data), "split": split, "imgsz": imgsz, "tta": tta,
            "images": int(support.sum()), "top1": float(metrics.top1), "top5": float(metrics.top5),
            "mean_class_accuracy": sum(scored) / len(scored), "per_class": per_class,
            "support": dict(zip(names, map(int, support))), "confusion": matrix.tolist()}


def table(report: dict) -> str:
    """A Markdown table of the report, one row per class, then the totals."""
    rows = ["| class | images | accuracy |", "| --- | ---: | ---: |"]
    for name, acc in report["per_class"].items():
        rows.append(f"| {name} | {report['support'][name]} | {'-' if acc is None else f'{100 * acc:.1f} %'} |")
    rows.append(f"| **all (top-1)** | {report['images']} | **{100 * report['top1']:.2f} %** |")
    rows.append(f"| mean per class | | {100 * report['mean_class_accuracy']:.2f} % |")
    rows.append(f"| top-5 | | {100 * report['top5']:.2f} % |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spayolo evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="classifier .pt or .onnx")
    parser.add_argument("--data", required=True, help="dataset name (fer2013.yaml) or image folder with val/")
    parser.add_argument("--imgsz", type=positive_int, default=None,
                        help="input size (default: the size the model was trained or exported at, else 64)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tta", nargs="?", const="flip", default="none", choices=TTA_MODES,
                        help=f"test-time augmentation: --tta alone = flip (mirror image), --tta flip+zoom adds a "
                             f"zoomed view and its mirror (the pipeline's default is {DEFAULT_TTA})")
    parser.add_argument("--json", default=None, help="also write the report here")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)
    report = evaluate(args.model, args.data, args.imgsz, args.split, args.batch, args.device, args.tta,
                      args.trust_checkpoint)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
