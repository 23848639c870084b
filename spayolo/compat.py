"""The Ultralytics releases spayolo supports, checked before anything touches Ultralytics' internals."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import MissingDependencyError

__all__ = ("ULTRALYTICS_RANGE", "UnsupportedUltralyticsError", "check_ultralytics")

# spayolo.integration lists the internals it patches and tests/test_registry.py pins them. Widen the range only after
# those tests pass on the new release.
ULTRALYTICS_RANGE = (8, 4, 190), (8, 5, 0)
_RANGE_TEXT = "ultralytics>=8.4.190,<8.5"


class UnsupportedUltralyticsError(MissingDependencyError):
    """Ultralytics is missing or outside the supported range; the message names the range and the pip command."""


def _parse(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def check_ultralytics() -> str:
    """Return the installed Ultralytics version, or raise UnsupportedUltralyticsError naming the supported range."""
    try:
        installed = version("ultralytics")
    except PackageNotFoundError as error:
        raise UnsupportedUltralyticsError(f"spayolo needs {_RANGE_TEXT}, and Ultralytics is not installed") from error
    low, high = ULTRALYTICS_RANGE
    if not low <= _parse(installed) < high:
        raise UnsupportedUltralyticsError(
            f"spayolo supports {_RANGE_TEXT}, found ultralytics=={installed}: run `pip install '{_RANGE_TEXT}'`"
        )
    return installed
