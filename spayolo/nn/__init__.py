"""spayolo's blocks; importing this package registers every one of them for model YAMLs."""

from __future__ import annotations

from .common import PaddedDWConv, SEGate, channel_shuffle, classify_output
from .fermam import ASFR, ASR, SS2D, ConvSSM, cross_merge, cross_scan
from .lanmsff import PWFS, LANMSFFBlock, LANMSFFConvBlock, LANMSFFHead, MassAtt, SameConv, SeparableConv
from .msff import BFEU, FFM, MSFFModule
from .scan import selective_scan, selective_scan_torch
from .spam import FEP, GAM, HRM, SPAM, real_dft2
from .wamf import MF, WA, CapsuleHead, squash

__all__ = (
    "ASFR",
    "ASR",
    "BFEU",
    "CapsuleHead",
    "ConvSSM",
    "FEP",
    "FFM",
    "GAM",
    "HRM",
    "LANMSFFBlock",
    "LANMSFFConvBlock",
    "LANMSFFHead",
    "MF",
    "MSFFModule",
    "MassAtt",
    "PWFS",
    "PaddedDWConv",
    "SEGate",
    "SameConv",
    "SeparableConv",
    "SPAM",
    "SS2D",
    "WA",
    "channel_shuffle",
    "classify_output",
    "cross_merge",
    "cross_scan",
    "real_dft2",
    "selective_scan",
    "selective_scan_torch",
    "squash",
)
