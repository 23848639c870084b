"""spayolo's blocks; importing this package registers every one of them for model YAMLs."""

from __future__ import annotations

from .common import SEGate, channel_shuffle
from .spam import FEP, GAM, HRM, SPAM, real_dft2

__all__ = ("FEP", "GAM", "HRM", "SPAM", "SEGate", "channel_shuffle", "real_dft2")
