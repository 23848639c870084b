"""A classifier's (or an ensemble's) class probabilities on every image of a folder, and the accuracies they give.

Images are read as Ultralytics' classification validator reads them (decoded, RGB, short side resized to the input
size, centre crop) and scored by spayolo.classifier's models, the code FERPipeline runs. Test-time views follow
spayolo.tta: a zoomed view is cut from the decoded image, as the pipeline cuts it from the frame, and with any TTA
every view is also mirrored. ``spayolo evaluate`` reports these accuracies; ``spayolo teach`` keeps the probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spayolo.errors import MissingFileError, UsageError
from spayolo.tta import tta_mode, view_fractions

__all__ = ("accuracies", "folder_probabilities", "folder_samples")


def folder_samples(folder: str | Path) -> tuple[list[tuple[str, int]], list[str]]:
    """The ``(file, class)`` rows and class names of an image folder, in the order the stock dataset reads it."""
    from torchvision.datasets import ImageFolder
    from ultralytics.data.utils import IMG_FORMATS

    found = ImageFolder(str(folder), allow_empty=True, is_valid_file=lambda f: f.rsplit(".", 1)[-1].lower() in
                        IMG_FORMATS)
    if not found.samples:
        raise MissingFileError(f"no images in {folder} (expected one sub-folder of images per class)")
    return found.samples, found.classes


class _Views(torch.utils.data.Dataset):
    """Each image as {input size: its views (V,3,S,S) in 0-1} and its class."""

    def __init__(self, samples: list, sizes: tuple[int, ...], fractions: tuple[float, ...]):
        import torchvision.transforms as T
        from ultralytics.data.augment import classify_transforms

        self.samples = samples
        self.views = {s: [classify_transforms(size=s)] + [T.Compose([classify_transforms(size=round(s / f)),
                                                                     T.CenterCrop(s)]) for f in fractions[1:]]
                      for s in sizes}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import cv2
        from PIL import Image
        from ultralytics.data.dataset import ClassificationDataset

        file, label = self.samples[i]
        bgr = ClassificationDataset.imread(file)  # the stock decoder, PIL fallback and unicode paths included
        if bgr is None:
            raise UsageError(f"cannot decode image {file}")
        image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return {s: torch.stack([view(image) for view in views]) for s, views in self.views.items()}, label


def folder_probabilities(classifier, folder: str | Path, tta: str | bool = "none", batch: int = 64) -> dict:
    """``classifier``'s probabilities (N, classes) for the N images under ``folder``, with their ``labels``,
    ``files`` and class ``names``; the classifier's class names must be the folder's."""
    samples, names = folder_samples(folder)
    if classifier.names is not None and classifier.names != names:
        raise UsageError(f"{classifier.source} has classes {classifier.names}, {folder} has {names}")
    tta = tta_mode(tta)
    loader = torch.utils.data.DataLoader(_Views(samples, classifier.sizes, view_fractions(tta)), batch_size=batch)
    probs = [classifier({s: v.transpose(0, 1).numpy() for s, v in views.items()}, mirror=tta != "none")
             for views, _ in loader]
    return {"probs": np.concatenate(probs), "labels": np.array([c for _, c in samples]),
            "files": [f for f, _ in samples], "names": names}


def accuracies(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Top-1, top-5, per-class and mean per-class accuracy, class support and the confusion matrix (rows true)."""
    predicted = probs.argmax(1)
    confusion = np.zeros((len(names), len(names)), int)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    per_class = {n: float(confusion[i, i] / support[i]) if support[i] else None for i, n in enumerate(names)}
    scored = [v for v in per_class.values() if v is not None]
    top5 = (np.argsort(-probs, 1)[:, :5] == labels[:, None]).any(1)
    return {"images": int(len(labels)), "top1": float((predicted == labels).mean()), "top5": float(top5.mean()),
            "mean_class_accuracy": sum(scored) / len(scored), "per_class": per_class,
            "support": dict(zip(names, map(int, support))), "confusion": confusion.tolist()}
