"""Which test-time views pay: score sets of face views for an ensemble of classifiers on a prepared image folder.

    python benchmarks/tta_views.py ~/.cache/spayolo/datasets/fer2013/val
    python benchmarks/tta_views.py ~/.cache/spayolo/datasets/fer2013/val --model weights/spayolo-n-fer2013.onnx

A view keeps the central ``fraction`` of the face's side, shifted by ``dy, dx`` in units of the margin it leaves
(-1: flush with the top or left edge, 1: with the bottom or right), and is cut as spayolo.tta cuts the pipeline's
zoomed view: the image resized so that the view fills the input size, then cropped. Every view is scored with its
mirror image. Probabilities of every view are computed once; the table then scores the pipeline's ``flip+zoom``
views, each one-view extension of the face alone, and a greedy search that adds the best view while top-1 grows.
Prints top-1 and mean per-class accuracy; members are averaged as spayolo.classifier's Ensemble averages them.
"""

from __future__ import annotations

import argparse
from itertools import product

import numpy as np

from spayolo.classifier import DEFAULT_MODELS, OnnxClassifier
from spayolo.tta import ZOOM_FRACTION

CENTRED = [(f, 0, 0) for f in (1.0, 0.94, ZOOM_FRACTION, 0.85, 0.8, 0.75)]
SHIFTED = [(f, dy, dx) for f in (ZOOM_FRACTION, 0.8) for dy, dx in product((-1, 1), (-1, 1))] + [
    (ZOOM_FRACTION, dy, dx) for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0))]
VIEWS = CENTRED + SHIFTED
PIPELINE = [(1.0, 0, 0), (ZOOM_FRACTION, 0, 0)]


def label(view: tuple) -> str:
    """A view as its side fraction and, if shifted, the edges it is flush with."""
    fraction, dy, dx = view
    edges = "-".join(e for e in ({-1: "top", 1: "bottom"}.get(dy), {-1: "left", 1: "right"}.get(dx)) if e)
    return f"{fraction:.3g}" + (f" {edges}" if edges else "")


def view_batch(images: list, size: int, fraction: float, dy: int, dx: int) -> np.ndarray:
    """(N,3,S,S) inputs in 0-1: each image resized so that the view fills ``size``, then the view cut out."""
    import torch
    from ultralytics.data.augment import classify_transforms

    resize = classify_transforms(size=round(size / fraction))
    margin = round(size / fraction) - size
    top, left = round(margin / 2 * (1 + dy)), round(margin / 2 * (1 + dx))
    return torch.stack([resize(im)[:, top:top + size, left:left + size] for im in images]).numpy()


def view_probabilities(model: OnnxClassifier, images: list, batch: int = 256) -> np.ndarray:
    """(V, 2, N, classes): every view of VIEWS, as cut and mirrored."""
    size = model.sizes[0]

    def scored(x: np.ndarray) -> np.ndarray:
        return np.concatenate([model({size: x[k:k + batch][None]}) for k in range(0, len(x), batch)])

    out = []
    for view in VIEWS:
        x = view_batch(images, size, *view)
        out.append([scored(x), scored(np.ascontiguousarray(x[..., ::-1]))])
    return np.array(out)


def main() -> None:
    import cv2
    from PIL import Image
    from ultralytics.data.dataset import ClassificationDataset

    from spayolo.engine.scoring import accuracies, folder_samples

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="prepared split: one sub-folder of images per class")
    parser.add_argument("--model", nargs="+", default=[str(m) for m in DEFAULT_MODELS["onnx"]],
                        help="ONNX classifiers averaged (default: the pipeline's)")
    args = parser.parse_args()
    samples, names = folder_samples(args.folder)
    images = [Image.fromarray(cv2.cvtColor(ClassificationDataset.imread(f), cv2.COLOR_BGR2RGB)) for f, _ in samples]
    labels = np.array([c for _, c in samples])
    probs = np.mean([view_probabilities(OnnxClassifier(m), images) for m in args.model], 0)

    def score(views: list) -> tuple[float, float]:
        found = accuracies(probs[[VIEWS.index(v) for v in views]].mean((0, 1)), labels, names)
        return 100 * found["top1"], 100 * found["mean_class_accuracy"]

    def row(label: str, views: list) -> None:
        top1, per_class = score(views)
        print(f"| {label} | {len(views) * 2} | {top1:.2f} % | {per_class:.2f} % |")

    print("| views (each with its mirror) | views | top-1 | mean per class |\n| --- | ---: | ---: | ---: |")
    row("the face alone (`flip`)", PIPELINE[:1])
    row("the pipeline's `flip+zoom`", PIPELINE)
    for view in VIEWS[1:]:
        row(f"the face + {label(view)}", [VIEWS[0], view])
    chosen = list(PIPELINE)
    while best := max((v for v in VIEWS if v not in chosen), key=lambda v: score(chosen + [v])[0], default=None):
        if score(chosen + [best])[0] <= score(chosen)[0]:
            break
        chosen.append(best)
        row(f"greedy: + {label(best)}", chosen)


if __name__ == "__main__":
    main()
