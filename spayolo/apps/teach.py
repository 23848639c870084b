"""Write a teacher file for knowledge distillation: one or more classifiers' probabilities on every training image.

    spayolo teach --models weights/spayolo-n-fer2013.pt big.pt:96 --data fer2013.yaml --out teacher.pt
    yolo classify train model=spayolo-n.yaml data=fer2013.yaml cache=ram distill=teacher.pt distill_weight=0.5

Each image's probabilities are averaged over the models and, unless --no-tta, over the image and its mirror: the
ensemble the flip-TTA pipeline would be, folded into soft targets. A model runs at the size it was trained at unless
``path:imgsz`` says otherwise. Make the file on the training split only: a teacher that saw the validation images
would leak them into the student.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from spayolo.apps.args import add_checkpoint_args, positive_int
from spayolo.apps.evaluate import split_folder
from spayolo.engine.distill import teacher_probabilities
from spayolo.errors import UsageError

__all__ = ("main", "parse_model")


def parse_model(spec: str) -> tuple[str, int | None]:
    """``path`` or ``path:imgsz`` -> (path, imgsz or None); a Windows drive letter is not a size."""
    path, _, size = spec.rpartition(":")
    if path and size.isdigit() and int(size) > 0:
        return path, int(size)
    return spec, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spayolo teach", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="teacher classifiers, .pt or .onnx[:imgsz]")
    parser.add_argument("--data", required=True, help="dataset name (fer2013.yaml) or image folder with train/")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--out", required=True, help="the teacher file to write (.pt)")
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="without the mirror images")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)
    folder = split_folder(args.data, args.split)
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: name the teacher file, e.g. {out / 'teacher.pt'}")
    teacher = teacher_probabilities([parse_model(m) for m in args.models], folder, args.batch, args.device, args.tta,
                                    args.trust_checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(teacher, out)
    agree = (teacher["probs"].argmax(1) == teacher["labels"]).float().mean()
    print(f"{out}: {len(teacher['files'])} images of {folder}, {len(args.models)} model(s), flip TTA {args.tta}; "
          f"the teacher's top-1 on them: {100 * agree:.2f} %")
    return 0

