"""Where spayolo's data files live (model, dataset and sweep YAMLs, shipped weights), in a wheel or in a checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ("DATASETS_CFG_DIR", "KFOLD_DIR", "MODELS_DIR", "SWEEPS_DIR", "packaged")

_PACKAGE = Path(__file__).resolve().parent


def packaged(*parts: str) -> Path:
    """A data path: inside the installed package (wheel), else at the repo root (checkout or editable install)."""
    return next((p.joinpath(*parts) for p in (_PACKAGE, _PACKAGE.parent) if p.joinpath(*parts).exists()),
                _PACKAGE.joinpath(*parts))


MODELS_DIR = packaged("cfg", "models")
DATASETS_CFG_DIR = packaged("cfg", "datasets")
SWEEPS_DIR = packaged("cfg", "sweeps")
KFOLD_DIR = packaged("cfg", "kfold")
