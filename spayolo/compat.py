"""The Ultralytics releases spayolo supports, checked before anything touches Ultralytics' internals."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ("ULTRALYTICS_RANGE", "check_ultralytics")

# spayolo wraps parse_model, yaml_model_load's helpers and BaseTrainer.build_optimizer; tests/test_internals.py
# pins what it relies on. Widen the range only after those tests pass on the new release.
ULTRALYTICS_RANGE = (8, 4, 190), (8, 5, 0)
_RANGE_TEXT = "ultralytics>=8.4.190,<8.5"


def _parse(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def check_ultralytics() -> str:
    """Return the installed Ultralytics version, or raise ImportError naming the supported range."""
    try:
        installed = version("ultralytics")
    except PackageNotFoundError as error:
        raise ImportError(f"spayolo needs {_RANGE_TEXT}, and Ultralytics is not installed") from error
    low, high = ULTRALYTICS_RANGE
    if not low <= _parse(installed) < high:
        raise ImportError(
            f"spayolo supports {_RANGE_TEXT}, found ultralytics=={installed}: "
            f"run `pip install '{_RANGE_TEXT}'`"
        )
    return installed
