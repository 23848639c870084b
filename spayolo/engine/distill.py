"""Knowledge distillation from precomputed teacher probabilities (Hinton et al., 2015): make them, and read them back.

A teacher file holds, for every image of one split, the class probabilities of one or more classifiers averaged over
the models and, with flip TTA, over each image and its mirror: an ensemble's knowledge at no cost per training step.
``spayolo teach`` writes it; ``yolo classify train ... cache=ram distill=teacher.pt`` trains a student on it
(:class:`~spayolo.engine.loss.DistillationLoss`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from spayolo.errors import MissingFileError, UsageError

__all__ = ("load_teacher", "teacher_probabilities")

FORMAT = "spayolo-teacher-1"


def teacher_probabilities(models: list[tuple[str, int | None]], folder: str | Path, batch: int = 256,
                          device: str = "cpu", tta: bool = True, trusted: bool = False) -> dict:
    """The mean class probabilities of ``models`` (``(path, imgsz or None)``: the size it was trained at) on every
    image under ``folder``, seen as the validator sees it (resize, centre crop); with ``tta`` also its mirror image.

    Returns the teacher file's content: ``files`` (relative to ``folder``), ``labels`` (N,), ``probs`` (N, classes),
    ``names``, ``split`` (the folder's name), ``models`` and ``tta``.
    """
    from spayolo.classifier import Ensemble, load_classifier
    from spayolo.torch_classifier import trained_size

    from .scoring import folder_probabilities

    members = []
    for path, imgsz in models:
        size = imgsz or trained_size(path, trusted)
        if not size:
            raise UsageError(f"teacher {path}: give its input size (path:imgsz); the file does not say it")
        members.append(load_classifier(str(path), "torch", device, trusted=trusted, imgsz=size))
    folder = Path(folder)
    scored = folder_probabilities(Ensemble(members), folder, "flip" if tta else "none", batch)
    return {"format": FORMAT, "files": [Path(f).relative_to(folder).as_posix() for f in scored["files"]],
            "labels": torch.from_numpy(scored["labels"]), "probs": torch.from_numpy(scored["probs"]),
            "names": dict(enumerate(scored["names"])), "split": folder.name,
            "models": [f"{p}:{s}" if s else str(p) for p, s in models], "tta": tta}


def load_teacher(file: str | Path, samples: list, folder: str | Path, names: dict[int, str]) -> torch.Tensor:
    """The teacher probabilities of ``file`` for the training ``samples`` of ``folder``, row i for sample i.

    Raises:
        MissingFileError: No such file.
        UsageError: The file is not a teacher file, was made on another split or with other classes, or lacks some of
            the samples; the message names the file and what differs.
    """
    file, folder = Path(file), Path(folder)
    if not file.is_file():
        raise MissingFileError(f"distill={file}: no such teacher file (spayolo teach writes one)")
    teacher = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(teacher, dict) or teacher.get("format") != FORMAT:
        raise UsageError(f"distill={file} is not a teacher file written by spayolo teach")
    if teacher["split"] != folder.name:
        raise UsageError(f"distill={file} holds the '{teacher['split']}' split; this run trains on '{folder.name}'")
    if list(teacher["names"].values()) != list(names.values()):
        raise UsageError(f"distill={file} has classes {list(teacher['names'].values())}, the data has "
                         f"{list(names.values())}")
    row = {f: i for i, f in enumerate(teacher["files"])}
    wanted = [Path(s[0]).relative_to(folder).as_posix() for s in samples]
    missing = [f for f in wanted if f not in row]
    if missing:
        raise UsageError(f"distill={file} lacks {len(missing)} of the {len(wanted)} training images, e.g. "
                         f"{missing[0]}: run spayolo teach again on {folder}")
    return teacher["probs"][[row[f] for f in wanted]].float()
