"""Side-by-side benchmark: each spayolo model beside the stock yolov8-cls of the same scale, in one run.

Example:
    python tools/benchmark.py --models spayolo-n lanmsff-yolo-n fermam-yolo-n --imgsz 64 --device cpu --onnx
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch


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
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = model.to(device)
    with torch.inference_mode():
        x1 = torch.randn(1, 3, imgsz, imgsz, device=device)
        xb = torch.randn(batch, 3, imgsz, imgsz, device=device)
        latency = timed(lambda: model(x1), 3, repeats, sync)
        throughput = batch / timed(lambda: model(xb), 1, max(repeats // 5, 2), sync)
    return latency * 1e3, throughput


def measure_onnx(model, imgsz: int, repeats: int, batch: int) -> tuple[float, float]:
    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model.cpu(), (torch.randn(1, 3, imgsz, imgsz),), str(path), opset_version=17, dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x1 = np.random.randn(1, 3, imgsz, imgsz).astype(np.float32)
    xb = np.random.randn(batch, 3, imgsz, imgsz).astype(np.float32)
    latency = timed(lambda: session.run(None, {"images": x1}), 3, repeats, lambda: None)
    throughput = batch / timed(lambda: session.run(None, {"images": xb}), 1, max(repeats // 5, 2), lambda: None)
    return latency * 1e3, throughput


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["spayolo-n"], help="YAML names without .yaml, with scale")
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nc", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="batch for the throughput column")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (CPU provider)")
    args = parser.parse_args(argv)

    from ultralytics.utils.torch_utils import get_flops

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = []
    for name in args.models:
        twin = stock_twin(name)
        names += [n for n in (twin, name) if n and n not in names]
    rows = {}
    for name in names:
        model = build(name, args.nc)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        row = {"params_M": params, "GFLOPs@640": get_flops(model, 640), f"GFLOPs@{args.imgsz}": get_flops(model, args.imgsz)}
        row["ms_b1"], row[f"img/s_b{args.batch}"] = measure_torch(model, args.imgsz, device, args.repeats, args.batch)
        if args.onnx:
            row["onnx_ms_b1"], row[f"onnx_img/s_b{args.batch}"] = measure_onnx(model, args.imgsz, args.repeats, args.batch)
        rows[name] = row
    columns = list(next(iter(rows.values())))
    print(f"device={device} imgsz={args.imgsz} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'model':<22}" + "".join(f"{c:>16}" for c in columns) + f"{'vs stock (ms, img/s)':>24}")
    for name, row in rows.items():
        twin = stock_twin(name)
        ratio = ""
        if twin in rows and twin != name:
            base = rows[twin]
            ratio = f"x{row['ms_b1'] / base['ms_b1']:.2f}, x{row[columns[4]] / base[columns[4]]:.2f}"
        print(f"{name:<22}" + "".join(f"{row[c]:>16.3f}" for c in columns) + f"{ratio:>24}")


if __name__ == "__main__":
    main()
