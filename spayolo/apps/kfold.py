"""Subject-independent k-fold cross-validation with the stock Ultralytics trainer (CK+, JAFFE, KDEF protocols).

    spayolo kfold ckplus --model weights/spayolo-n-fer2013.pt --epochs 10 batch=32 lr0=5e-4
    spayolo kfold ckplus --folds 0,3 --epochs 10 imgsz=64

Each fold trains on <root>/fold<k>/train and is scored on <root>/fold<k>/val with its *last* epoch's weights, at
the size it was trained at, without and with test-time augmentation (--tta; the pipeline's default mode unless told):
the val folds are the test data of the protocol, so picking the best epoch on them (Ultralytics' best.pt) would
inflate the result. Prints per-fold top-1 and the mean +- standard deviation, and writes them with each fold's mean
per-class accuracy and TTA confusion matrix, and the top-1 and per-class accuracy pooled over all folds' images, to
<project>/<name>/kfold.json after every fold, so a failing fold keeps the finished ones. Run
again, the same command skips the training of the folds that finished with the same arguments (it scores them again,
so another --tta re-scores a finished run) and resumes an interrupted one. Extra key=value
arguments go to `YOLO.train` unchanged; without `imgsz=` a checkpoint is fine-tuned at the size it was trained at
(Ultralytics keeps a checkpoint's imgsz).

Nested cross-validation (--select FILE, e.g. the built-in ckplus-recipes): a file of candidate recipes, each a few
`YOLO.train` arguments over the command line's. For each outer fold k every candidate trains on the folds other than k
and k+1 and is scored (with TTA) on fold k+1; the best one (the first listed on a tie) then trains on fold k's training
part and is scored on fold k. Fold k's images never take part in choosing its recipe, so the outer scores stay
test scores; kfold.json records each fold's inner scores and choice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from spayolo.apps.args import add_checkpoint_args, positive_int
from spayolo.apps.evaluate import evaluate
from spayolo.apps.prepare import link_or_copy
from spayolo.checkpoints import load_yolo, training_state
from spayolo.errors import MissingFileError, SpayoloError, UsageError
from spayolo.paths import KFOLD_DIR, read_yaml
from spayolo.tta import DEFAULT_TTA, TTA_MODES

__all__ = ("fold_roots", "inner_split", "load_candidates", "main", "parse_folds", "parse_overrides")


def fold_roots(dataset: str) -> list[Path]:
    """The fold folders of a prepared dataset: a dataset name (fold0 ... via its YAML) or a folder holding fold*/."""
    from spayolo.data import dataset_cfg, resolve_dataset

    if Path(dataset).is_dir():
        folds = [p for p in Path(dataset).glob("fold*") if p.name[4:].isdigit() and (p / "train").is_dir()]
        folds.sort(key=lambda p: int(p.name[4:]))
        if not folds:
            raise MissingFileError(f"{dataset} holds no fold<k>/train folders (make them with spayolo prepare)")
        return folds
    cfg = dataset_cfg(dataset)
    if not cfg.get("folds"):
        raise UsageError(f"{cfg['name']} has a fixed split, not folds: train on it with data={cfg['name']}.yaml")
    return [Path(resolve_dataset(f"{cfg['name']}-fold{k}.yaml")) for k in range(cfg["folds"])]


def parse_overrides(items: list[str]) -> dict:
    """key=value pairs for YOLO.train, parsed as the `yolo` CLI parses them; keys checked against its settings."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, smart_value

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_CFG_DICT:
            raise UsageError(f"'{item}' is not a key=value Ultralytics training argument")
        overrides[key] = smart_value(value)
    return overrides


def parse_folds(text: str | None, count: int) -> list[int]:
    """'0,3' -> [0, 3]; None -> every fold. A fold the dataset lacks is an error, not an empty run."""
    if text is None:
        return list(range(count))
    try:
        folds = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise UsageError(f"--folds {text}: expected comma-separated fold indices, e.g. --folds 0,3") from None
    wrong = [k for k in folds if not 0 <= k < count]
    if wrong or not folds:
        raise UsageError(f"--folds {text}: the dataset has folds 0-{count - 1}")
    return folds


def load_candidates(source: str) -> dict[str, dict]:
    """The recipes of a --select file (a path or a built-in name): {name: YOLO.train arguments over the command
    line's}, strings read as the yolo CLI reads them (YAML keeps 5e-3 a string); errors name the file and the
    candidate."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, smart_value

    path, cfg = read_yaml(source, KFOLD_DIR, "--select {source}: no such file (built-in: {known})")
    candidates = cfg.get("candidates") if isinstance(cfg, dict) else None
    if not isinstance(candidates, dict) or len(candidates) < 2:
        raise UsageError(f"{path}: needs 'candidates:', a mapping of two or more recipes (name: {{key: value}})")
    recipes = {}
    for name, args in candidates.items():
        args = args or {}
        if not isinstance(args, dict):
            raise UsageError(f"{path}: candidates.{name} must be a mapping of YOLO.train arguments")
        unknown = [key for key in args if key not in DEFAULT_CFG_DICT]
        if unknown:
            raise UsageError(f"{path}: candidates.{name}: unknown argument(s) {', '.join(unknown)}")
        recipes[str(name)] = {key: smart_value(v) if isinstance(v, str) else v for key, v in args.items()}
    return recipes


def inner_split(roots: list[Path], k: int, out: Path) -> Path:
    """Outer fold k's inner split under ``out``: train/ holds every fold but k and k+1, val/ holds fold k+1, so fold k
    stays unseen. Hard links to the prepared images (copies where links fail), every class folder in both splits (a
    class a fold lacks keeps its index). Needs 3 or more folds."""
    held = (k + 1) % len(roots)
    target = out / f"fold{k}"
    shutil.rmtree(target, ignore_errors=True)  # rebuilt each time: cheap, and never stale
    classes = {d.name for root in roots for d in (root / "val").iterdir() if d.is_dir()}
    for split, folds in (("train", [j for j in range(len(roots)) if j not in (k, held)]), ("val", [held])):
        for name in classes:
            (target / split / name).mkdir(parents=True)
        for j in folds:
            for image in (roots[j] / "val").glob("*/*"):
                if image.is_file():
                    link_or_copy(image, target / split / image.parent.name / image.name)
    return target


def train_and_score(model: str, data: Path, run: Path, epochs: int, overrides: dict, tta: str,
                    trust: bool) -> tuple[dict, dict]:
    """Train ``model`` on data/train into ``run`` (skipped when finished with these arguments, resumed when
    interrupted); score its last epoch on data/val without and with TTA, at the size it trained at."""
    if not any(p.is_file() for p in (data / "train").glob("*/*")):
        raise MissingFileError(f"{data / 'train'}: no images to train on (expected one sub-folder of images per class)")
    state = training_state(run, {"model": model, "epochs": epochs, **overrides})
    if state == "interrupted":
        load_yolo(run / "weights" / "last.pt").train(resume=True)
    elif state == "new":
        load_yolo(model, trust).train(data=str(data), epochs=epochs, project=str(run.parent), name=run.name,
                                      exist_ok=True, **overrides)
    last = run / "weights" / "last.pt"
    scoring = dict(batch=overrides.get("batch", 32), device=overrides.get("device"))
    plain = evaluate(str(last), str(data), **scoring)
    return plain, evaluate(str(last), str(data), plain["imgsz"], tta=tta, **scoring)


def select_recipe(args, roots: list[Path], k: int, out: Path, overrides: dict,
                  candidates: dict[str, dict]) -> tuple[str, dict]:
    """Nested selection for outer fold k: each candidate trained on the inner split and scored with TTA on its
    validation fold; returns the best (first on a tie) and every candidate's score."""
    data = inner_split(roots, k, out / "inner-data")
    scores = {}
    for name, recipe in candidates.items():
        recipe = {**overrides, **recipe}
        epochs = recipe.pop("epochs", args.epochs)
        _, augmented = train_and_score(args.model, data, out / "inner" / name / f"fold{k}", epochs, recipe, args.tta,
                                       args.trust_checkpoint)
        scores[name] = augmented["top1"]
        print(f"fold {k}: candidate {name} scores {scores[name]:.4f} on fold {(k + 1) % len(roots)} (inner)")
    return max(scores, key=scores.get), scores


SCORES = ("top1", "top1_tta", "mean_class_accuracy")  # each kept per fold and as mean +- std over the folds


def _pooled(confusions: list[list[list[int]]], names: list[str]) -> dict:
    """Top-1 and per-class accuracy over every scored image of the folds, each image scored by its own fold's model
    (how many papers report k-fold results, where the fold sizes differ)."""
    total = [[sum(c[i][j] for c in confusions) for j in range(len(names))] for i in range(len(names))]
    support = [sum(row) for row in total]
    return {"top1": sum(total[i][i] for i in range(len(names))) / sum(support),
            "per_class": {n: total[i][i] / support[i] if support[i] else None for i, n in enumerate(names)},
            "support": dict(zip(names, support)), "confusion": total}


def _write(out: Path, report: dict) -> None:
    for key in SCORES:
        scores = list(report[f"{key}_per_fold"].values())
        report[f"{key}_mean"] = statistics.fmean(scores) if scores else None
        report[f"{key}_std"] = statistics.stdev(scores) if len(scores) > 1 else 0.0
    confusions = list(report["confusion_tta_per_fold"].values())
    report["pooled_tta"] = _pooled(confusions, report["names"]) if confusions else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "kfold.json").write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spayolo kfold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset name with folds (ckplus, jaffe, kdef) or a folder of fold<k>/")
    parser.add_argument("--model", default="spayolo-n.yaml", help="YAML to train from scratch or .pt to fine-tune")
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--folds", default=None, help="only these fold indices, comma-separated (default: all)")
    parser.add_argument("--project", default="runs/kfold")
    parser.add_argument("--name", default=None, help="run name (default: <dataset>-<model stem>)")
    parser.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                        help="the test-time augmentation of the second score (spayolo.tta; default: %(default)s)")
    parser.add_argument("--select", default=None, metavar="FILE",
                        help="choose each fold's recipe among a file's candidates by nested cross-validation (a YAML "
                             "path or a built-in name: ckplus-recipes)")
    add_checkpoint_args(parser)
    args, rest = parser.parse_known_args(argv)
    roots = fold_roots(args.dataset)
    folds = parse_folds(args.folds, len(roots))
    overrides = parse_overrides(rest)
    candidates = load_candidates(args.select) if args.select else None
    if candidates and len(roots) < 3:
        raise UsageError(f"--select: nested selection needs 3 or more folds, {args.dataset} has {len(roots)}")
    load_yolo(args.model, args.trust_checkpoint)  # a bad model fails here, before any training

    name = args.name or f"{Path(args.dataset).name}-{Path(args.model).stem}"
    out = Path(args.project).resolve() / name
    report = {"dataset": args.dataset, "model": args.model, "epochs": args.epochs, "overrides": overrides,
              "folds": folds, "tta": args.tta, "complete": False, **{f"{key}_per_fold": {} for key in SCORES},
              "imgsz_per_fold": {}, "confusion_tta_per_fold": {}, "names": None,
              "weights": "last epoch of each fold"}
    if candidates:
        report.update(select=args.select, candidates=candidates, inner_top1_tta_per_fold={}, chosen_per_fold={})
    for k in folds:
        root, run = roots[k], out / f"fold{k}"
        try:
            recipe, epochs = overrides, args.epochs
            if candidates:
                chosen, report["inner_top1_tta_per_fold"][k] = select_recipe(args, roots, k, out, overrides, candidates)
                report["chosen_per_fold"][k] = chosen
                recipe = {**overrides, **candidates[chosen]}
                epochs = recipe.pop("epochs", args.epochs)
            plain, augmented = train_and_score(args.model, root, run, epochs, recipe, args.tta, args.trust_checkpoint)
            imgsz = plain["imgsz"]
        except Exception as error:  # keep the finished folds on record whatever stopped this one
            report["failed"] = {k: f"{type(error).__name__}: {error}"}
            _write(out, report)
            if not isinstance(error, SpayoloError):
                raise  # a bug, or a failure no message of spayolo's explains: its traceback, the record kept
            print(f"spayolo kfold: fold {k} failed ({error}); finished folds are in {out / 'kfold.json'}",
                  file=sys.stderr)
            return 1
        for key, value in zip(SCORES, (plain["top1"], augmented["top1"], plain["mean_class_accuracy"])):
            report[f"{key}_per_fold"][k] = value
        report["imgsz_per_fold"][k] = imgsz
        report["confusion_tta_per_fold"][k] = augmented["confusion"]  # rows true
        report["names"] = list(augmented["per_class"])
        _write(out, report)
        chosen = f", recipe {report['chosen_per_fold'][k]}" if candidates else ""
        print(f"fold {k}: top-1 {plain['top1']:.4f}, with {args.tta} TTA {augmented['top1']:.4f} at imgsz {imgsz} "
              f"({root}{chosen})")
    report["complete"] = True
    _write(out, report)
    print(f"{name}: top-1 {report['top1_mean']:.4f} +- {report['top1_std']:.4f}, with {args.tta} TTA "
          f"{report['top1_tta_mean']:.4f} +- {report['top1_tta_std']:.4f} over {len(folds)} folds (pooled over their "
          f"images: {report['pooled_tta']['top1']:.4f}) -> {out / 'kfold.json'}")
    return 0
