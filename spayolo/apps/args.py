"""Command-line arguments shared by the spayolo commands, with the library's defaults (FERPipeline's signature)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from spayolo.tta import TTA_MODES

__all__ = ("add_checkpoint_args", "add_pipeline_args", "non_negative_float", "onnx_output", "pipeline_kwargs",
           "positive_float", "positive_int")


def _number(kind: type, name: str, ok):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {name}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, "a positive integer", lambda v: v > 0)
positive_float = _number(float, "a positive number", lambda v: v > 0)
non_negative_float = _number(float, "a number >= 0", lambda v: v >= 0)


def _defaults() -> dict:
    from spayolo.pipeline import FERPipeline

    return {k: p.default for k, p in inspect.signature(FERPipeline).parameters.items()}


def onnx_output(out: str, inputs: list[str]) -> Path:
    """--out as the path of an ONNX file to write: named .onnx, in a folder that exists, none of the ``inputs``."""
    from spayolo.errors import UsageError

    path = Path(out)
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"--out {path}: the result is an ONNX file, give a name ending in .onnx")
    if any(Path(i).resolve() == path.resolve() for i in inputs):
        raise UsageError(f"--out {path} is also an input: choose another output path")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: no folder {path.parent}")
    return path


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--trust-checkpoint: load .pt files without the restricted allow-list (spayolo.checkpoints)."""
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load .pt files with plain pickle; this runs any code in them: only for files you trust")


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    """The FERPipeline arguments, each defaulting to the value FERPipeline itself uses."""
    d = _defaults()
    parser.add_argument("--model", nargs="+", default=d["model"],
                        help="classifier .onnx/.pt or a shipped one by name, or several: an ensemble averaging their "
                             "probabilities (default: the shipped ensemble; spayolo-n-fer2013 alone is the fast one)")
    parser.add_argument("--detector", default=d["detector"], help="mtcnn, a YOLO face .pt/.onnx or a *yunet*.onnx")
    parser.add_argument("--device", default=d["device"], help="cpu, cuda or cuda:N")
    parser.add_argument("--backend", choices=("torch", "onnx"), default=d["backend"],
                        help="run the face detector and the classifier in ONNX Runtime (about 2x faster on a CPU) "
                             "or PyTorch (default: %(default)s)")
    parser.add_argument("--half", action="store_true", default=d["half"], help="FP16 classifier (CUDA, torch backend)")
    parser.add_argument("--imgsz", type=positive_int, default=d["imgsz"],
                        help="classifier input size (default: from the checkpoint)")
    parser.add_argument("--min-face", type=positive_float, default=d["min_face"],
                        help="smallest face kept, pixels (default: %(default)s)")
    parser.add_argument("--margin", type=non_negative_float, default=d["margin"],
                        help="fraction of the face box side added around it before cropping "
                             "(default: %(default)s)")
    parser.add_argument("--detect-every", type=positive_int, default=d["detect_every"],
                        help="video: full detection every n-th frame, tracked faces re-located in between "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=d["threads"],
                        help="ONNX Runtime threads per model (default: one per core, and an ensemble runs one "
                             "member per core at once)")
    parser.add_argument("--tta", choices=TTA_MODES, default=d["tta"],
                        help="test-time augmentation: average each face's probabilities over its crop and mirror image "
                             "(flip), and a zoomed-in crop and its mirror (flip+zoom) (default: %(default)s)")
    parser.add_argument("--no-tta", dest="tta", action="store_const", const="none", help="the same as --tta none")
    add_checkpoint_args(parser)


def pipeline_kwargs(args: argparse.Namespace) -> dict:
    """FERPipeline keyword arguments from parsed add_pipeline_args arguments."""
    model = args.model[0] if isinstance(args.model, list) and len(args.model) == 1 else args.model
    return {"model": model, "detector": args.detector, "device": args.device, "backend": args.backend,
            "half": args.half, "imgsz": args.imgsz, "min_face": args.min_face, "margin": args.margin,
            "detect_every": args.detect_every, "tta": args.tta, "trusted": args.trust_checkpoint,
            "threads": args.threads}
