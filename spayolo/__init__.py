"""spayolo: facial expression recognition networks as Ultralytics YOLOv8-cls variants."""

from __future__ import annotations

from . import _autoload  # registers with Ultralytics now or as soon as its parser is imported

__version__ = "0.2.0"
__all__ = ("FERPipeline", "__version__", "register")


def register() -> None:
    """Register spayolo's blocks, model names, dataset names and optimizers with Ultralytics now (otherwise automatic).

    Needed only with ``SPAYOLO_AUTOLOAD=0``; raises UnsupportedUltralyticsError outside the supported range.
    """
    from .integration import install  # here, not at the top: ``import spayolo`` runs at every start, without torch

    _autoload.enable()
    install()


def __getattr__(name: str):
    # The pipeline pulls in OpenCV and the face detector; load it only when asked for.
    if name == "FERPipeline":
        from .pipeline import FERPipeline

        return FERPipeline
    raise AttributeError(f"module 'spayolo' has no attribute {name!r}")
