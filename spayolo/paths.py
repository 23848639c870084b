"""Where spayolo's data files live (model, dataset and sweep YAMLs, shipped weights), in a wheel or in a checkout."""

from __future__ import annotations

from pathlib import Path

from .errors import MissingFileError, UsageError

__all__ = ("DATASETS_CFG_DIR", "KFOLD_DIR", "MODELS_DIR", "SWEEPS_DIR", "packaged", "read_yaml")

_PACKAGE = Path(__file__).resolve().parent


def packaged(*parts: str) -> Path:
    """A data path: inside the installed package (wheel), else at the repo root (checkout or editable install)."""
    return next((p.joinpath(*parts) for p in (_PACKAGE, _PACKAGE.parent) if p.joinpath(*parts).exists()),
                _PACKAGE.joinpath(*parts))


MODELS_DIR = packaged("cfg", "models")
DATASETS_CFG_DIR = packaged("cfg", "datasets")
SWEEPS_DIR = packaged("cfg", "sweeps")
KFOLD_DIR = packaged("cfg", "kfold")


def read_yaml(source: str | Path, builtin: Path, not_found: str) -> tuple[Path, object]:
    """A YAML file given as a path, or by the name of one in ``builtin``; its path and content. ``not_found`` is the
    error's text, formatted with ``source`` and ``known`` (the built-in names); invalid YAML names the file."""
    path = Path(source)
    if not path.is_file() and path.parent == Path() and builtin.joinpath(path.with_suffix(".yaml").name).is_file():
        path = builtin / path.with_suffix(".yaml").name
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(builtin.glob("*.yaml")))
        raise MissingFileError(not_found.format(source=source, known=known))
    import yaml  # here, not at the top: the runtime install reads no YAML and ships without PyYAML

    try:
        return path, yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML ({error})") from None
