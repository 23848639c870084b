"""Pieces shared by several papers' blocks: the squeeze-excitation gate and channel shuffle."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ("SEGate", "channel_shuffle", "classify_output")


class SEGate(nn.Module):
    """Squeeze-excitation weights sigma(W2 relu(W1 GAP(x))) (Hu et al., CVPR 2018, eq. 2-3), shape (B, C, 1, 1)."""

    def __init__(self, c: int, r: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = max(c // r, min_hidden)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.pool(x)))).sigmoid()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (ShuffleNet, Zhang et al., CVPR 2018, Sec. 3.1)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def classify_output(head: nn.Module, logits: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' ``Classify`` contract for spayolo heads: logits in training, (probs, logits) in eval, probs exported.

    Ultralytics' exporter flags only its own ``Classify`` (``export = True``), so a trace or ONNX export also counts as
    exporting here: exported spayolo heads then give the single probability output Ultralytics' runtimes expect.
    """
    if head.training:
        return logits
    probs = logits.softmax(1)
    exporting = head.export or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
    return probs if exporting else (probs, logits)
