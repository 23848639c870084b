"""Train a set of runs with one shared recipe, one after the other, and tabulate them (model zoo, recipe evidence).

    spayolo sweep zoo-fer2013 --project ~/runs/zoo --export weights/zoo
    spayolo sweep recipe-fer2013 --project ~/runs/recipe --only base,imgsz96
    spayolo sweep my-sweep.yaml --commands

A sweep file (``cfg/sweeps/*.yaml`` or any path) holds ``train:``, the ``YOLO.train`` arguments every run shares,
and ``runs:``, each run's name with what it changes (``model`` at least; ``group`` gathers seeds of one setting,
``note`` goes into the table). Runs train in order, never two at once (two trainings halve each other). Stopping
the command and starting it again continues an interrupted run with ``resume=True`` and skips finished ones.

Each finished run is scored on the dataset's val split (FER2013: PublicTest) with the checkpoint Ultralytics selects
there (best.pt): top-1 without and with flip TTA, mean per-class accuracy, parameters, PyTorch CPU latency at
batch 1, seconds per epoch (the median epoch, so a paused run does not count its pause) and training minutes
(epochs x that median). The table goes to the screen and to <project>/sweep.md, the figures to
<project>/sweep.json; ``--export`` copies each best.pt, FP16 and without optimizer state, to <dir>/<run>-<dataset>.pt.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import yaml

from spayolo.apps.args import add_checkpoint_args
from spayolo.errors import CheckpointError, UsageError
from spayolo.paths import SWEEPS_DIR, read_yaml

__all__ = ("load_sweep", "main", "markdown")

RUN_KEYS = ("group", "note")  # a run's keys that are not YOLO.train arguments


def load_sweep(source: str | Path) -> tuple[Path, dict, dict[str, dict]]:
    """The sweep file's path, shared train arguments and runs; errors name the file, the run and the key."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    path, cfg = read_yaml(source, SWEEPS_DIR, "sweep file not found: {source} (built-in sweeps: {known})")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("train"), dict) or not isinstance(cfg.get("runs"), dict):
        raise UsageError(f"{path}: needs a 'train:' mapping of shared arguments and a 'runs:' mapping of runs")
    train, runs = cfg["train"], {str(name): run or {} for name, run in cfg["runs"].items()}
    for where, args in [("train", train), *((f"runs.{name}", run) for name, run in runs.items())]:
        if not isinstance(args, dict):
            raise UsageError(f"{path}: {where} must be a mapping of arguments")
        unknown = [k for k in args if k not in DEFAULT_CFG_DICT and (where == "train" or k not in RUN_KEYS)]
        if unknown:
            raise UsageError(f"{path}: {where}: unknown argument(s) {', '.join(unknown)}")
        if where != "train" and "model" not in {**train, **args}:
            raise UsageError(f"{path}: {where} names no model")
    for fixed in ("project", "name", "resume"):
        if any(fixed in args for args in (train, *runs.values())):
            raise UsageError(f"{path}: '{fixed}' is set by spayolo sweep (--project and the run names), not the file")
    return path, train, runs


def _epoch_seconds(results: Path) -> tuple[int, float]:
    """Epochs trained and the median seconds per epoch; the stock time column restarts at 0 on every resume."""
    with open(results) as f:
        times = [float(row["time"]) for row in csv.DictReader(f, skipinitialspace=True)]
    spans = [t - prev if t > prev else t for prev, t in zip([0.0, *times], times)]
    return len(times), statistics.median(spans)


def score(folder: Path, trusted: bool) -> dict:
    """Accuracy of the run's best.pt on the val split (with and without flip TTA), size, CPU latency, epoch time.

    Data, image size and device are those the run trained with (its args.yaml).
    """
    import torch

    from spayolo.apps.evaluate import evaluate
    from spayolo.benchmark import measure_torch
    from spayolo.checkpoints import load_yolo
    from spayolo.runtime import usable_cores

    best = folder / "weights" / "best.pt"
    args = yaml.safe_load((folder / "args.yaml").read_text())
    data, imgsz, device = args["data"], args["imgsz"], args.get("device")
    plain = evaluate(str(best), data, imgsz, trusted=trusted, device=device)
    flipped = evaluate(str(best), data, imgsz, tta=True, trusted=trusted, device=device)
    model = load_yolo(best, trusted).model.float().eval()
    torch.set_num_threads(usable_cores())
    latency, _ = measure_torch(model, imgsz, torch.device("cpu"), repeats=30, batch=1)
    epochs, epoch_s = _epoch_seconds(folder / "results.csv")
    return {"top1": plain["top1"], "top1_tta": flipped["top1"], "mean_class_accuracy": plain["mean_class_accuracy"],
            "per_class": plain["per_class"], "params": sum(p.numel() for p in model.parameters()),
            "cpu_ms": latency, "epochs": epochs, "epoch_s": epoch_s, "best_mtime": best.stat().st_mtime}


def markdown(rows: dict[str, dict]) -> str:
    """The sweep as a Markdown table, then mean, spread and range of every group with more than one run."""
    lines = ["| run | model | epochs | top-1 | top-1, flip TTA | mean per class | params | CPU ms, batch 1 | s/epoch | "
             "training min | note |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {Path(r['model']).stem} | {r['epochs']} | {100 * r['top1']:.2f} % | "
                     f"{100 * r['top1_tta']:.2f} % | {100 * r['mean_class_accuracy']:.2f} % | "
                     f"{r['params'] / 1e6:.3f} M | {r['cpu_ms']:.1f} | {r['epoch_s']:.0f} | "
                     f"{r['epochs'] * r['epoch_s'] / 60:.0f} | {r.get('note', '')} |")
    groups: dict[str, list[float]] = {}
    for r in rows.values():
        if r.get("group"):
            groups.setdefault(r["group"], []).append(100 * r["top1"])
    for group, top1 in groups.items():
        if len(top1) > 1:
            lines.append(f"\n{group}: top-1 {statistics.fmean(top1):.2f} +- {statistics.stdev(top1):.2f} % "
                         f"(range {min(top1):.2f}-{max(top1):.2f} %, {len(top1)} runs)")
    return "\n".join(lines)


def command_line(project: Path, name: str, args: dict) -> str:
    """The stock CLI command that trains one run of the sweep."""
    args = {"model": args["model"], **args}  # the model first, as in the README's commands
    words = [f"{k}={'None' if v is None else v}" for k, v in args.items()]
    return " ".join(["yolo classify train", *words, f"project={project}", f"name={name}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spayolo sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a built-in sweep name (zoo-fer2013, recipe-fer2013) or a sweep YAML file")
    parser.add_argument("--project", default="runs/sweep", help="folder of the run folders and the table")
    parser.add_argument("--only", default=None, help="only these runs, comma-separated")
    parser.add_argument("--export", default=None, help="copy each run's best.pt (FP16, no optimizer) into this folder")
    parser.add_argument("--commands", action="store_true", help="print each run's yolo command and train nothing")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)
    path, train, runs = load_sweep(args.sweep)
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        missing = [name for name in wanted if name not in runs]
        if missing:
            raise UsageError(f"--only {args.only}: {path} has no run {', '.join(missing)} (runs: {', '.join(runs)})")
        runs = {name: runs[name] for name in wanted}
    project = Path(args.project).expanduser().resolve()
    if args.commands:
        for name, run in runs.items():
            print(command_line(project, name, {**train, **{k: v for k, v in run.items() if k not in RUN_KEYS}}))
        return 0

    from spayolo.checkpoints import load_yolo, training_state

    report = project / "sweep.json"
    rows = json.loads(report.read_text()) if report.is_file() else {}
    for name, run in runs.items():
        folder = project / name
        train_args = {**train, **{k: v for k, v in run.items() if k not in RUN_KEYS}}
        state = training_state(folder, train_args)
        print(f"spayolo sweep: {name}: {state}")
        if state == "interrupted":
            load_yolo(folder / "weights" / "last.pt", args.trust_checkpoint).train(resume=True)
        elif state == "new":
            load_yolo(train_args["model"], args.trust_checkpoint).train(
                **{k: v for k, v in train_args.items() if k != "model"}, project=str(project), name=name,
                exist_ok=True)
        best = folder / "weights" / "best.pt"
        scores = rows.get(name, {})
        if scores.get("best_mtime") != best.stat().st_mtime:
            scores = score(folder, args.trust_checkpoint)
        # group and note come from the sweep file as it is now: editing them needs no new scoring
        scores = {k: v for k, v in scores.items() if k not in ("model", *RUN_KEYS)}
        rows[name] = {"model": train_args["model"], **{k: run[k] for k in RUN_KEYS if k in run}, **scores}
        report.write_text(json.dumps(rows, indent=2))
        if args.export:
            from ultralytics.utils.torch_utils import strip_optimizer

            out = Path(args.export) / f"{name}-{Path(str(train_args['data'])).stem}.pt"
            out.parent.mkdir(parents=True, exist_ok=True)
            if not strip_optimizer(best, s=str(out)):
                raise CheckpointError(f"{best}: not an Ultralytics checkpoint, nothing exported to {out}")
    table = markdown({name: rows[name] for name in runs})
    (project / "sweep.md").write_text(table + "\n")
    print(table)
    return 0
