"""Subject-independent k-fold cross-validation with the stock Ultralytics trainer (CK+, JAFFE, KDEF protocols).

    python tools/kfold.py ckplus --model weights/spayolo-n-fer2013.pt --epochs 10 imgsz=64 batch=32 lr0=5e-4

Each fold trains on <root>/fold<k>/train and is scored on <root>/fold<k>/val with its *last* epoch's weights: the
val folds are the test data of the protocol, so picking the best epoch on them (Ultralytics' best.pt) would inflate
the result. Prints per-fold top-1 and the mean +- standard deviation, and writes them to <project>/<name>/kfold.json.
Extra key=value arguments go to `YOLO.train` unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ultralytics.cfg import DEFAULT_CFG_DICT


def fold_roots(dataset: str) -> list[Path]:
    """The fold folders of a prepared dataset: a dataset name (fold0 ... via its YAML) or a folder holding fold*/."""
    from spayolo.data import dataset_cfg, resolve_dataset

    if Path(dataset).is_dir():
        folds = [p for p in Path(dataset).glob("fold*") if p.name[4:].isdigit() and (p / "train").is_dir()]
        folds.sort(key=lambda p: int(p.name[4:]))
        if not folds:
            raise FileNotFoundError(f"{dataset} holds no fold<k>/train folders (make them with tools/prepare_data.py)")
        return folds
    cfg = dataset_cfg(dataset)
    if not cfg.get("folds"):
        raise ValueError(f"{cfg['name']} has a fixed split, not folds: train on it with data={cfg['name']}.yaml")
    return [Path(resolve_dataset(f"{cfg['name']}-fold{k}.yaml")) for k in range(cfg["folds"])]


def parse_overrides(items: list[str]) -> dict:
    """key=value pairs for YOLO.train, parsed as the `yolo` CLI parses them; keys checked against its settings."""
    from ultralytics.cfg import smart_value

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_CFG_DICT:
            raise ValueError(f"'{item}' is not a key=value Ultralytics training argument")
        overrides[key] = smart_value(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset name with folds (ckplus, jaffe, kdef) or a folder of fold<k>/")
    parser.add_argument("--model", default="spayolo-n.yaml", help="YAML to train from scratch or .pt to fine-tune")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--folds", type=int, nargs="*", help="only these fold indices (default: all)")
    parser.add_argument("--project", default="runs/kfold")
    parser.add_argument("--name", default=None, help="run name (default: <dataset>-<model stem>)")
    args, rest = parser.parse_known_args(argv)
    try:
        folds = fold_roots(args.dataset)
        overrides = parse_overrides(rest)
    except (FileNotFoundError, ValueError) as error:
        print(f"kfold: {error}", file=sys.stderr)
        return 2
    from ultralytics import YOLO

    name = args.name or f"{Path(args.dataset).name}-{Path(args.model).stem}"
    out = Path(args.project) / name
    scores = {}
    for k, root in enumerate(folds):
        if args.folds and k not in args.folds:
            continue
        model = YOLO(args.model)
        model.train(data=str(root), epochs=args.epochs, project=str(out.resolve()), name=f"fold{k}", exist_ok=True,
                    **overrides)
        last = out / f"fold{k}" / "weights" / "last.pt"
        metrics = YOLO(str(last)).val(data=str(root), split="val", imgsz=overrides.get("imgsz", 64),
                                      batch=overrides.get("batch", 32), device=overrides.get("device"), plots=False,
                                      project=str(out.resolve()), name=f"fold{k}-val", exist_ok=True)
        scores[k] = float(metrics.top1)
        print(f"fold {k}: top-1 {scores[k]:.4f} ({root})")
    mean = statistics.fmean(scores.values())
    std = statistics.stdev(scores.values()) if len(scores) > 1 else 0.0
    report = {"dataset": args.dataset, "model": args.model, "epochs": args.epochs, "overrides": overrides,
              "top1_per_fold": scores, "top1_mean": mean, "top1_std": std, "weights": "last epoch of each fold"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "kfold.json").write_text(json.dumps(report, indent=2))
    print(f"{name}: top-1 {mean:.4f} +- {std:.4f} over {len(scores)} folds -> {out / 'kfold.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
