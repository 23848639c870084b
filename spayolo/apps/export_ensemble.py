"""Several classifiers as one ONNX file: one ONNX Runtime session for an ensemble in a deployment.

    spayolo export-ensemble weights/spayolo-n-fer2013.pt weights/spayolo-s-fer2013.pt --out ensemble.onnx
    spayolo live --model ensemble.onnx

Each member keeps its own input size (the file has one input per size, ``images_<size>``); the output is the mean of
the members' class probabilities. Members: .pt checkpoints, or .onnx files exported with a dynamic batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spayolo.apps.args import add_checkpoint_args

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    from spayolo.ensemble import export_ensemble
    from spayolo.errors import UsageError

    parser = argparse.ArgumentParser(prog="spayolo export-ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="the member classifiers (.pt, or .onnx with a dynamic batch)")
    parser.add_argument("--out", required=True, help="the ensemble's .onnx file")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out}: the ensemble is an ONNX file, give a name ending in .onnx")
    if any(Path(m).resolve() == out.resolve() for m in args.models):
        raise UsageError(f"--out {out} is also a member: choose another output path")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent}")
    print(f"wrote {export_ensemble(args.models, out, args.trust_checkpoint)}")
    return 0
