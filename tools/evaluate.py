"""Top-1, top-5, per-class and mean per-class accuracy of a classifier, through the stock Ultralytics validator.

    python tools/evaluate.py --model weights/spayolo-n-fer2013.pt --data fer2013.yaml --imgsz 64
    python tools/evaluate.py --model weights/spayolo-n-fer2013.onnx --data path/to/folder --json report.json

The numbers are those `yolo classify val` prints (same transforms, same confusion matrix); this adds the per-class
view that FER needs, where classes are badly unbalanced (FER2013 PublicTest: 56 disgust vs 895 happy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate(model: str, data: str, imgsz: int, split: str = "val", batch: int = 64, device: str | None = None) -> dict:
    """Validate `model` on `data` and return the accuracies, the confusion matrix (rows true) and the class names."""
    from ultralytics import YOLO

    task = "classify" if str(model).endswith(".onnx") else None
    metrics = YOLO(model, task=task).val(data=data, split=split, imgsz=imgsz, batch=batch, device=device,
                                          plots=False, verbose=False)
    matrix = metrics.confusion_matrix.matrix.T.astype(int)  # Ultralytics stores [predicted, true]
    names = [metrics.confusion_matrix.names[i] for i in range(len(matrix))]
    support = matrix.sum(1)
    per_class = {n: float(matrix[i, i] / support[i]) if support[i] else None for i, n in enumerate(names)}
    scored = [v for v in per_class.values() if v is not None]
    return {"model": str(model), "data": str(data), "split": split, "imgsz": imgsz, "images": int(support.sum()),
            "top1": float(metrics.top1), "top5": float(metrics.top5), "mean_class_accuracy": sum(scored) / len(scored),
            "per_class": per_class, "support": dict(zip(names, map(int, support))), "confusion": matrix.tolist()}


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="classifier .pt or .onnx")
    parser.add_argument("--data", required=True, help="dataset name (fer2013.yaml) or image folder with val/")
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        print(f"evaluate: model not found: {args.model}", file=sys.stderr)
        return 2
    report = evaluate(args.model, args.data, args.imgsz, args.split, args.batch, args.device)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
