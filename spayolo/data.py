"""Facial-expression dataset names (``fer2013.yaml``, ``ckplus-fold3.yaml``) mapped to their prepared folders."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from .errors import MissingFileError, UsageError
from .paths import DATASETS_CFG_DIR

__all__ = ("DATASETS_CFG_DIR", "DatasetNotPreparedError", "dataset_cfg", "datasets_root", "resolve_dataset")

_FOLD_NAME = re.compile(r"^(?P<base>.+)-fold(?P<fold>\d+)$")


class DatasetNotPreparedError(MissingFileError):
    """A known dataset whose folder is missing; the message holds the command that prepares it."""


def datasets_root() -> Path:
    """Where relative ``path:`` fields live: $SPAYOLO_DATASETS, else ~/.cache/spayolo/datasets."""
    return Path(os.environ.get("SPAYOLO_DATASETS") or Path.home() / ".cache" / "spayolo" / "datasets").expanduser()


def dataset_cfg(name: str | Path) -> dict:
    """Load a dataset YAML (packaged name or file) and add ``name``, ``yaml_file`` and the absolute ``root``."""
    file = Path(name)
    if not file.is_file():
        file = DATASETS_CFG_DIR / f"{Path(name).stem}.yaml"
    if not file.is_file():
        known = ", ".join(sorted(p.stem for p in DATASETS_CFG_DIR.glob("*.yaml")))
        raise MissingFileError(f"No dataset YAML '{name}'; packaged datasets: {known}")
    cfg = yaml.safe_load(file.read_text()) or {}
    cfg["name"], cfg["yaml_file"] = file.stem, str(file)
    path = Path(str(cfg.get("path", file.stem))).expanduser()
    cfg["root"] = path if path.is_absolute() else datasets_root() / path
    return cfg


def _find(data: str | Path) -> tuple[Path, int | None] | None:
    """The YAML behind ``data`` and the fold its name asks for, or None when spayolo does not know the name."""
    path = Path(str(data))
    if path.suffix not in (".yaml", ".yml"):
        return None
    if path.is_file():
        return path, None
    if path.parent != Path("."):
        return None
    if (DATASETS_CFG_DIR / f"{path.stem}.yaml").is_file():
        return DATASETS_CFG_DIR / f"{path.stem}.yaml", None
    match = _FOLD_NAME.match(path.stem)
    if match and (DATASETS_CFG_DIR / f"{match['base']}.yaml").is_file():
        return DATASETS_CFG_DIR / f"{match['base']}.yaml", int(match["fold"])
    return None


def resolve_dataset(data: str | Path) -> str | None:
    """Map a dataset YAML name to its prepared image folder, None when ``data`` is not a spayolo dataset YAML.

    ``fer2013.yaml`` resolves to ``<root>/fer2013``; a k-fold dataset is named per fold, ``ckplus-fold3.yaml`` ->
    ``<root>/ckplus/fold3``. A YAML file on disk with a ``path:`` field works the same way. A known dataset that is
    not prepared raises DatasetNotPreparedError with the exact ``spayolo prepare`` command.
    """
    found = _find(data)
    if found is None:
        return None
    file, fold = found
    cfg = dataset_cfg(file)
    if "path" not in cfg and "names" not in cfg:
        return None  # some other YAML (e.g. a model); leave it to Ultralytics
    name, root, folds = cfg["name"], cfg["root"], cfg.get("folds")
    if folds and fold is None:
        raise UsageError(f"{name} has no fixed split: train on one of its {folds} subject-independent folds, "
                         f"data={name}-fold0.yaml ... data={name}-fold{folds - 1}.yaml")
    if fold is not None and not (folds and 0 <= fold < folds):
        raise UsageError(f"{name} has {folds or 'no'} folds; '{data}' asks for fold {fold}")
    target = root / f"fold{fold}" if fold is not None else root
    if (target / "train").is_dir():
        return str(target)
    command = f"spayolo prepare {name} {cfg.get('prepare', '--images <folder>')} --out {root}"
    raise DatasetNotPreparedError(f"Dataset '{data}' is not prepared: {target} has no train/ folder. "
                                  f"Prepare it from its raw release ({file}) with:\n  {command}")
