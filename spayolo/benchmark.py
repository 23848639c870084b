"""Side-by-side benchmarks, measured in one run (``spayolo benchmark ...`` or ``python tools/benchmark.py ...``).

Classifiers: each spayolo model beside the stock yolov8-cls of the same scale (PyTorch, optionally ONNX Runtime).
Pipeline: end-to-end frames per second of detection + crop + classification on 640x480 video frames with 1 and with
5 faces, split by stage, for backends, classifiers (INT8, ensembles), detection intervals, threads and a busy machine
(spayolo.pipeline_benchmark; needs no torch, so it runs in the runtime install too).
Training: images per second of the stock trainer path and of spayolo's fast path (``cache=ram``, CPU bf16 where
native, channels_last) through the same ``YOLO.train``, on the same images, one model after the other, each run in a
fresh process as ``yolo classify train`` runs.

    spayolo benchmark --models spayolo-n lanmsff-yolo-n fermam-yolo-n --imgsz 64 --device cpu --onnx
    spayolo benchmark --pipeline --backend onnx --model weights/spayolo-n-fer2013.onnx x-int8.onnx --load 0 2
    spayolo benchmark --train --models spayolo-n --imgsz 64 --data fer2013.yaml
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the commands that need it: the pipeline benchmark runs without it
    import torch

__all__ = ("main", "measure_training")


def build(name: str, nc: int) -> torch.nn.Module:
    from ultralytics.nn.tasks import ClassificationModel

    return ClassificationModel(f"{name}.yaml", nc=nc, verbose=False).eval()


def stock_twin(name: str) -> str | None:
    """yolov8<scale>-cls for a scaled spayolo name, e.g. spayolo-n -> yolov8n-cls."""
    match = re.search(r"-([nslmx])$", name)
    return f"yolov8{match[1]}-cls" if match else None


def timed(run, warmup: int, repeats: int, sync) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_torch(model, imgsz: int, device: torch.device, repeats: int, batch: int) -> tuple[float, float]:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = model.to(device)
    with torch.inference_mode():
        x1 = torch.randn(1, 3, imgsz, imgsz, device=device)
        xb = torch.randn(batch, 3, imgsz, imgsz, device=device)
        latency = timed(lambda: model(x1), 3, repeats, sync)
        throughput = batch / timed(lambda: model(xb), 1, max(repeats // 5, 2), sync)
    return latency * 1e3, throughput


def scan_share(model, imgsz: int, device: torch.device, repeats: int) -> float:
    """Fraction of a batch-1 forward pass spent in FERMam's selective scan (0 for a model without one)."""
    import torch

    import spayolo.nn.fermam as fermam

    if not any(isinstance(m, fermam.SS2D) for m in model.modules()):
        return 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    scan, spent = fermam.selective_scan, [0.0]

    def timed_scan(*args):
        sync()
        start = time.perf_counter()
        y = scan(*args)
        sync()
        spent[0] += time.perf_counter() - start
        return y

    fermam.selective_scan = timed_scan  # SS2D looks the function up in its module at call time
    try:
        x = torch.randn(1, 3, imgsz, imgsz, device=device)
        with torch.inference_mode():
            model(x)
            spent[0] = 0.0
            start = time.perf_counter()
            for _ in range(repeats):
                model(x)
            sync()
            total = time.perf_counter() - start
    finally:
        fermam.selective_scan = scan
    return spent[0] / total


def measure_onnx(model, imgsz: int, repeats: int, batch: int) -> tuple[float, float]:
    import torch

    from spayolo.export import onnx_bytes
    from spayolo.runtime import OnnxModel

    runner = OnnxModel(onnx_bytes(model, torch.zeros(1, 3, imgsz, imgsz), {0: "batch"}))
    x1, xb = np.random.rand(1, 3, imgsz, imgsz), np.random.rand(batch, 3, imgsz, imgsz)
    latency = timed(lambda: runner(x1), 3, repeats, lambda: None)
    throughput = batch / timed(lambda: runner(xb), 1, max(repeats // 5, 2), lambda: None)
    return latency * 1e3, throughput


# The README recipes' augmentation; both paths get the same arguments but these, and the optimizer of --optimizer
# (at its README learning rate, which does not change the speed).
RECIPE = {"warmup_epochs": 0, "fliplr": 0.5, "flipud": 0.0, "scale": 0.2,
          "degrees": 10, "erasing": 0.3, "auto_augment": None, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.3}
TRAIN_PATHS = {"stock": {"cache": False, "amp": False}, "fast": {"cache": "ram", "amp": True}}
WARMUP_BATCHES = 3


def train_images(data: str) -> int:
    """Images in the training split of an image folder or a spayolo dataset name (fer2013.yaml)."""
    from ultralytics.data.utils import IMG_FORMATS

    from spayolo.data import resolve_dataset

    root = Path(resolve_dataset(data) or data) / "train"
    count = sum(1 for f in root.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
    if not count:
        raise FileNotFoundError(f"--data {data}: no training images under {root}")
    return count


def measure_training(model: str, data: str, imgsz: int, batch: int, batches: int, device: str, path: dict,
                     optimizer: str = "SGD") -> dict:
    """Train ``batches`` batches of one epoch through ``YOLO.train``; time the steady batches and the epoch's end.

    Returns images/s over the batches after the first few, and the seconds from the last batch to the end of the
    epoch (validation on the whole val split, checkpoint saving), which every full epoch pays too.
    """
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    marks = {"batches": []}
    yolo = YOLO(f"{model}.yaml")
    yolo.add_callback("on_train_batch_end", lambda trainer: marks["batches"].append(time.perf_counter()))
    yolo.add_callback("on_train_epoch_end", lambda trainer: marks.setdefault("train_end", time.perf_counter()))
    yolo.add_callback("on_fit_epoch_end", lambda trainer: marks.setdefault("fit_end", time.perf_counter()))
    level = LOGGER.level
    LOGGER.setLevel("WARNING")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yolo.train(data=data, imgsz=imgsz, epochs=1, batch=batch, fraction=batches * batch, device=device,
                       project=tmp, name="run", plots=False, seed=0, verbose=False, optimizer=optimizer,
                       lr0=0.01 if optimizer == "SGD" else 1e-3, **RECIPE, **path)
    finally:
        LOGGER.setLevel(level)
    stamps = marks["batches"][min(WARMUP_BATCHES, len(marks["batches"]) - 2):]
    images = (len(stamps) - 1) * batch
    return {"img/s": images / (stamps[-1] - stamps[0]), "end_s": marks["fit_end"] - marks["train_end"]}


def measure_training_alone(*args) -> dict:
    """:func:`measure_training` in a fresh process: the fast path tunes process-wide state (threads, glibc's malloc
    thresholds) that would otherwise carry over into the stock runs measured after it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_training, *args).result()


def benchmark_training(args) -> None:
    """Stock vs fast training path per model, the stock yolov8-cls of its scale first; the ratio on the last line.

    A small shared CPU changes speed by 20-50 % within minutes, so the paths alternate in ``--rounds`` rounds (stock
    first in even rounds, fast first in odd ones) and each ratio pairs the two runs of one round: the table gives the
    median images/s per path and the median ratio with its range over the rounds.
    """
    names = []
    for name in args.models:
        names += [n for n in (stock_twin(name), name) if n and n not in names]
    from spayolo.engine.trainer import cpu_has_native_bf16
    from spayolo.runtime import usable_cores

    epoch_images = train_images(args.data)
    runs = {(name, label): [] for name in names for label in TRAIN_PATHS}
    for round_index in range(args.rounds):
        for name in names:
            labels = list(TRAIN_PATHS) if round_index % 2 == 0 else list(reversed(TRAIN_PATHS))
            for label in labels:
                runs[name, label].append(measure_training_alone(name, args.data, args.imgsz, args.batch,
                                                                args.batches, args.device, TRAIN_PATHS[label],
                                                                args.optimizer))
    print(f"training: device={args.device} imgsz={args.imgsz} batch={args.batch} batches={args.batches} "
          f"rounds={args.rounds} optimizer={args.optimizer} cores={usable_cores()} "
          f"native bf16={cpu_has_native_bf16()} epoch={epoch_images} images ({args.data})")
    print(f"{'model':<18}{'path':<7}{'img/s':>9}{'epoch end s':>13}{'s/epoch':>10}{'fast/stock':>12}{'range':>14}")
    ratios = {}
    for (name, label), measured in runs.items():
        speed, end = (statistics.median(run[key] for run in measured) for key in ("img/s", "end_s"))
        ratio = spread = ""
        if label == "fast":
            per_round = [f["img/s"] / s["img/s"] for f, s in zip(measured, runs[name, "stock"])]
            ratios[name] = statistics.median(per_round)
            ratio, spread = f"x{ratios[name]:.2f}", f"x{min(per_round):.2f}-{max(per_round):.2f}"
        seconds = epoch_images / speed + end
        print(f"{name:<18}{label:<7}{speed:>9.1f}{end:>13.1f}{seconds:>10.0f}{ratio:>12}{spread:>14}")
    print(f"{args.models[0]} fast/stock images/s: x{ratios[args.models[0]]:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spayolo benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["spayolo-n"], help="YAML names without .yaml, with scale")
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nc", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="batch for the throughput column")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch CPU threads for the classifier table; ONNX Runtime threads per model for the "
                             "pipeline, one configuration each (default: the libraries' own)")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (CPU provider)")
    parser.add_argument("--pipeline", action="store_true", help="benchmark end-to-end FER on video frames instead")
    parser.add_argument("--model", nargs="+", default=None,
                        help="pipeline: classifiers, one configuration each; a+b is an ensemble (default: the shipped)")
    parser.add_argument("--backend", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"],
                        help="pipeline: backends, one configuration each (default: both)")
    parser.add_argument("--detect-every", type=int, nargs="+", default=[1, 5],
                        help="pipeline: full detection every n-th frame, one configuration each (default: 1 5)")
    parser.add_argument("--load", type=int, nargs="+", default=[0],
                        help="pipeline: busy processes beside it on the same cores, one configuration each")
    parser.add_argument("--frames", type=int, default=40, help="pipeline frames per configuration and clip")
    parser.add_argument("--train", action="store_true", help="benchmark the stock vs the fast training path instead")
    parser.add_argument("--data", default="fer2013.yaml", help="training: image folder or dataset name")
    parser.add_argument("--batches", type=int, default=60, help="training: batches per path, model and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (training: stock/fast; pipeline)")
    parser.add_argument("--optimizer", default="SGD",
                        help="training: SGD (the shipped default's recipe), Adan (the paper's), AdamW, ...")
    args = parser.parse_args(argv)
    if args.pipeline:
        from spayolo.pipeline_benchmark import pipeline_benchmark

        pipeline_benchmark(args.backend, args.model or [None], args.detect_every, args.threads or [None], args.load,
                           args.frames, args.rounds, args.device)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads[0])
    if args.train:
        return benchmark_training(args)

    from ultralytics.utils.torch_utils import get_flops

    device = torch.device(args.device)
    names = []
    for name in args.models:
        twin = stock_twin(name)
        names += [n for n in (twin, name) if n and n not in names]
    rows = {}
    for name in names:
        model = build(name, args.nc)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        row = {"params_M": params, "GFLOPs@640": get_flops(model, 640),
               f"GFLOPs@{args.imgsz}": get_flops(model, args.imgsz)}
        row["ms_b1"], row[f"img/s_b{args.batch}"] = measure_torch(model, args.imgsz, device, args.repeats, args.batch)
        row["scan_share"] = scan_share(model, args.imgsz, device, args.repeats)
        if args.onnx:
            onnx = measure_onnx(model, args.imgsz, args.repeats, args.batch)
            row["onnx_ms_b1"], row[f"onnx_img/s_b{args.batch}"] = onnx
        rows[name] = row
    columns = list(next(iter(rows.values())))
    print(f"device={device} imgsz={args.imgsz} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'model':<22}" + "".join(f"{c:>16}" for c in columns) + f"{'vs stock (ms, img/s)':>24}"
          + (f"{f'onnx speed-up (b1, b{args.batch})':>24}" if args.onnx else ""))
    for name, row in rows.items():
        twin = stock_twin(name)
        ratio = ""
        if twin in rows and twin != name:
            base = rows[twin]
            ratio = f"x{row['ms_b1'] / base['ms_b1']:.2f}, x{row[columns[4]] / base[columns[4]]:.2f}"
        onnx = ""
        if args.onnx:
            onnx = f"x{row['ms_b1'] / row['onnx_ms_b1']:.2f}, x{row[columns[-1]] / row[columns[4]]:.2f}"
        print(f"{name:<22}" + "".join(f"{row[c]:>16.3f}" for c in columns) + f"{ratio:>24}{onnx:>24}")


if __name__ == "__main__":
    main()
