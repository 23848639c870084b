"""spayolo's blocks; importing this package registers every one of them for model YAMLs."""

from __future__ import annotations

from .common import SEGate, channel_shuffle, classify_output
from .lanmsff import PWFS, LANMSFFBlock, LANMSFFHead, MassAtt
from .msff import BFEU, FFM, MSFFModule
from .spam import FEP, GAM, HRM, SPAM, real_dft2
from .wamf import MF, WA, CapsuleHead, squash

__all__ = (
    "BFEU",
    "FEP",
    "FFM",
    "GAM",
    "HRM",
    "MF",
    "PWFS",
    "SPAM",
    "WA",
    "CapsuleHead",
    "LANMSFFBlock",
    "LANMSFFHead",
    "MSFFModule",
    "MassAtt",
    "SEGate",
    "channel_shuffle",
    "classify_output",
    "real_dft2",
    "squash",
)
