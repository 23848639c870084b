"""Several classifiers as one ONNX file: one ONNX Runtime session for an ensemble in a deployment.

    spayolo export-ensemble weights/spayolo-n-fer2013.pt weights/spayolo-s-fer2013.pt --out ensemble.onnx
    spayolo live --model ensemble.onnx

Each member keeps its own input size (the file has one input per size, ``images_<size>``); the output is the mean of
the members' class probabilities. Members: .pt checkpoints, or .onnx files exported with a dynamic batch.
"""

from __future__ import annotations

import argparse

from spayolo.apps.args import add_checkpoint_args, onnx_output

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    from spayolo.ensemble import export_ensemble

    parser = argparse.ArgumentParser(prog="spayolo export-ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="the member classifiers (.pt, or .onnx with a dynamic batch)")
    parser.add_argument("--out", required=True, help="the ensemble's .onnx file")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)
    out = onnx_output(args.out, args.models)
    print(f"wrote {export_ensemble(args.models, out, args.trust_checkpoint)}")
    return 0
