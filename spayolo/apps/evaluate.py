"""Top-1, top-5, per-class and mean per-class accuracy of a classifier, an ensemble, or what FERPipeline runs.

    spayolo evaluate --data fer2013.yaml                   # FERPipeline()'s model(s), input size(s) and TTA
    spayolo evaluate --model weights/spayolo-n-fer2013.pt --data fer2013.yaml
    spayolo evaluate --model a.pt b.onnx --data path/to/folder --json report.json --tta flip+zoom   # an ensemble

Images are read as `yolo classify val` reads them (short side resized to the input size, centre crop) and scored
by the classifier code the pipeline runs (spayolo.classifier, spayolo.engine.scoring); this adds the per-class view
that FER needs, where classes are badly unbalanced (FER2013 PublicTest: 56 disgust vs 895 happy). With --tta each
image's class probabilities are averaged with those of its mirror image, and with --tta flip+zoom also with those of
a zoomed-in view and its mirror (spayolo.tta). Without --model it scores the pipeline's default as the pipeline runs
it, TTA included; with --model, TTA only when asked. Each model is scored at the size it was trained at (.pt) or
exported for (.onnx) unless --imgsz says otherwise: a classifier scored at another size loses tens of points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spayolo.apps.args import add_checkpoint_args, positive_int
from spayolo.errors import MissingFileError, UsageError
from spayolo.tta import DEFAULT_TTA, TTA_MODES, tta_mode

__all__ = ("evaluate", "main", "split_folder", "table")


def split_folder(data: str | Path, split: str) -> Path:
    """The image folder ``data`` (a folder, or a dataset name spayolo prepares) holds for ``split``; one line naming
    --data when there is no such folder or split (Ultralytics would download a name it knows, or score val/ for a
    missing test/)."""
    from spayolo.data import resolve_dataset

    root = Path(resolve_dataset(data) or data)
    if not root.is_dir():
        raise MissingFileError(f"--data {data}: no such folder, and not a dataset name spayolo knows")
    if not (root / split).is_dir():
        have = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
        raise UsageError(f"--data {data}: no {split}/ split in {root} (splits there: {have})")
    return root / split


def evaluate(model, data: str, imgsz: int | None = None, split: str = "val", batch: int = 64,
             device: str | None = None, tta: str | bool = "none", trusted: bool = False) -> dict:
    """Score ``model`` on ``data``: the accuracies, the confusion matrix (rows true) and the class names.

    ``model``: a .pt or .onnx path, a list of them (an ensemble), or None for FERPipeline()'s default. ``imgsz``:
    the input size of a single model, None for the size it was trained or exported at (else 64). ``tta``: a mode of
    spayolo.tta ('none', 'flip', 'flip+zoom'; True means 'flip').
    """
    from spayolo.classifier import load_classifier
    from spayolo.engine.scoring import accuracies, folder_probabilities

    folder = split_folder(data, split)
    classifier = load_classifier(model, "onnx" if model is None else "torch", device or "cpu", trusted=trusted,
                                 imgsz=imgsz)
    scored = folder_probabilities(classifier, folder, tta, batch)
    sizes, members = list(classifier.sizes), getattr(classifier, "members", [classifier])
    return {"model": [str(m.source) for m in members] if len(members) > 1 else str(classifier.source),
            "data": str(data), "split": split, "imgsz": sizes[0] if len(sizes) == 1 else sizes, "tta": tta_mode(tta),
            **accuracies(scored["probs"], scored["labels"], scored["names"])}


def table(report: dict) -> str:
    """A Markdown table of the report, one row per class, then the totals, under a line saying what was scored."""
    models = report["model"] if isinstance(report["model"], list) else [report["model"]]
    rows = [f"{' + '.join(Path(m).name for m in models)}, TTA {report['tta']}: {report['data']} {report['split']}",
            "", "| class | images | accuracy |", "| --- | ---: | ---: |"]
    for name, acc in report["per_class"].items():
        rows.append(f"| {name} | {report['support'][name]} | {'-' if acc is None else f'{100 * acc:.1f} %'} |")
    rows.append(f"| **all (top-1)** | {report['images']} | **{100 * report['top1']:.2f} %** |")
    rows.append(f"| mean per class | | {100 * report['mean_class_accuracy']:.2f} % |")
    rows.append(f"| top-5 | | {100 * report['top5']:.2f} % |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spayolo evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=None,
                        help="classifier .pt or .onnx, or several (an ensemble); default: what FERPipeline() runs")
    parser.add_argument("--data", required=True, help="dataset name (fer2013.yaml) or image folder with val/")
    parser.add_argument("--imgsz", type=positive_int, default=None,
                        help="input size of a single model (default: the size it was trained or exported at, else 64)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tta", nargs="?", const="flip", default=None, choices=TTA_MODES,
                        help=f"test-time augmentation: --tta alone = flip (mirror image), --tta flip+zoom adds a "
                             f"zoomed view and its mirror (default: {DEFAULT_TTA} without --model, as the pipeline "
                             f"runs, else none)")
    parser.add_argument("--json", default=None, help="also write the report here")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)
    model = args.model[0] if args.model and len(args.model) == 1 else args.model
    tta = args.tta or (DEFAULT_TTA if model is None else "none")
    report = evaluate(model, args.data, args.imgsz, args.split, args.batch, args.device, tta, args.trust_checkpoint)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
