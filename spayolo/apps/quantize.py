"""An ONNX classifier quantized to INT8 (QDQ), calibrated on the training faces of a dataset.

    spayolo quantize --model weights/spayolo-n-fer2013.onnx --data fer2013.yaml --out spayolo-n-fer2013-int8.onnx
    spayolo evaluate --model spayolo-n-fer2013-int8.onnx --data fer2013.yaml --tta flip+zoom   # its accuracy
    spayolo live --model spayolo-n-fer2013-int8.onnx

Calibrate on the training split (--split train, the default): ranges measured on the images a model is scored on
would leak them into the file. The docs' deployment page reports what INT8 costs in accuracy and buys in speed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spayolo.apps.args import onnx_output, positive_int

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    from spayolo.apps.evaluate import split_folder
    from spayolo.errors import MissingFileError, UsageError
    from spayolo.quantize import quantize

    parser = argparse.ArgumentParser(prog="spayolo quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the ONNX classifier (or exported ensemble) to quantize")
    parser.add_argument("--data", required=True, help="dataset name (fer2013.yaml) or image folder with train/")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"),
                        help="the images to calibrate on (default: %(default)s)")
    parser.add_argument("--images", type=positive_int, default=500,
                        help="calibration images drawn from the split (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the INT8 model's .onnx file")
    args = parser.parse_args(argv)
    model = Path(args.model)
    if not model.is_file():
        raise MissingFileError(f"--model {model}: no such file")
    if model.suffix.lower() != ".onnx":
        raise UsageError(f"--model {model}: quantize an ONNX file (yolo export ... format=onnx dynamic=True)")
    out = onnx_output(args.out, [args.model])
    folder = split_folder(args.data, args.split)
    print(f"wrote {quantize(model, folder, out, args.images)}")
    return 0
