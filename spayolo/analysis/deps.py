"""The optional packages analysis needs, checked up front so that a command fails in one line before doing any work."""

from __future__ import annotations

import importlib.util

from spayolo.errors import MissingDependencyError

__all__ = ("require",)

EXTRAS = {"polars": "analyze", "matplotlib": "analyze", "ray": "ray"}


def require(*modules: str, what: str = "spayolo analyze") -> None:
    """MissingDependencyError naming the extra to install when one of ``modules`` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = ",".join(sorted({EXTRAS[m] for m in missing}))
        raise MissingDependencyError(f"{what} needs {' and '.join(missing)}, which this install lacks: "
                                     f"pip install 'spayolo[{extras}]' (or 'spayolo-runtime[{extras}]')")
