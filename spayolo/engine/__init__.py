"""Training-side additions to Ultralytics: optimizers the stock trainer does not offer."""

from __future__ import annotations

from .adan import Adan
from .optimizers import install_optimizers

__all__ = ("Adan", "install_optimizers")
