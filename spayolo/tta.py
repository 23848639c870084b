"""Test-time augmentation modes: which views of a face a classifier's probabilities are averaged over.

- ``none``: the face crop alone.
- ``flip``: the crop and its mirror image.
- ``flip+zoom``: those two, and a zoomed-in copy of both that keeps the central ``ZOOM_FRACTION`` of the crop's side.

A zoomed view is cut from the source image, not from the model-sized crop: upsampling the crop first blurs the detail
the zoom is for, and scored lower on FER2013 PublicTest (the docs' results page has the figures).
"""

from __future__ import annotations

from spayolo.errors import UsageError

__all__ = ("DEFAULT_TTA", "TTA_MODES", "ZOOM_FRACTION", "tta_mode", "view_fractions")

TTA_MODES = ("none", "flip", "flip+zoom")
DEFAULT_TTA = "flip+zoom"
# 8/9: FER2013's 48 px faces upsampled to 72 px and the central 64 kept. Chosen on FER2013 PublicTest with the two
# SGD-recipe models (seeds 0 and 1), so it is tuned to FER2013's framing of a face.
ZOOM_FRACTION = 8 / 9


def tta_mode(value: str | bool | None) -> str:
    """A TTA mode name from a mode name or a bool (True = 'flip', False or None = 'none')."""
    if value is None or isinstance(value, bool):
        return "flip" if value else "none"
    if value not in TTA_MODES:
        raise UsageError(f"tta must be one of {', '.join(TTA_MODES)} (or True / False), got {value!r}")
    return value


def view_fractions(mode: str) -> tuple[float, ...]:
    """The side fractions of the crop that ``mode`` classifies (each also mirrored unless the mode is 'none')."""
    return (1.0, ZOOM_FRACTION) if tta_mode(mode) == "flip+zoom" else (1.0,)
