"""Pieces shared by several papers' blocks: SE gate, small-map depthwise conv, channel shuffle, width check, head output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import DWConv

from spayolo.registry import register_layer

__all__ = ("PaddedDWConv", "SEGate", "channel_shuffle", "classify_output", "same_width")


def same_width(block: str, c1: int, c2: int | None) -> int:
    """Return ``c1`` for a block whose residual or gate keeps its width; ValueError naming the block if ``c2`` differs.

    ``c2=None`` (the block built by hand, outside a YAML) means "same as ``c1``".
    """
    if c2 is not None and c2 != c1:
        raise ValueError(f"{block} keeps its width (residual or gate): c1={c1} and c2={c2} must match")
    return c1


@register_layer
class SEGate(nn.Module):
    """Squeeze-excitation weights sigma(W2 relu(W1 GAP(x))) (Hu et al., CVPR 2018, eq. 2-3), shape (B, c2, 1, 1).

    Args:
        c1 (int): Channels of the input that is pooled.
        c2 (int | None): Channels of the weights (the tensor they scale); ``c1`` when None, as in SE itself.
        r (int): Reduction ratio of the hidden layer.
        min_hidden (int): Smallest hidden width.

    Examples:
        >>> SEGate(64)(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 1, 1])
    """

    def __init__(self, c1: int, c2: int | None = None, r: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = max(c1 // r, min_hidden)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c1, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, c2 or c1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.pool(x)))).sigmoid()


@register_layer
class PaddedDWConv(DWConv):
    """Ultralytics' ``DWConv`` (depthwise k x k, BN, SiLU) that zero-pads explicitly when the kernel exceeds the map.

    Same weights, same outputs. oneDNN's CPU depthwise convolution takes a slow path when its implicit padding is as
    large as the map, e.g. SPAM's 5x5 and 7x7 at P4 of a 64 px face (4x4): there padding first and convolving without
    padding trains 2-3x faster. On larger maps the implicit padding is the faster one and is kept.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.depthwise(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.depthwise(x))

    def depthwise(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv  # Ultralytics' fuse() swaps in a conv with the BN folded in
        if min(int(x.shape[-2]), int(x.shape[-1])) >= max(conv.kernel_size):
            return conv(x)
        ph, pw = conv.padding
        return F.conv2d(F.pad(x, (pw, pw, ph, ph)), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (ShuffleNet, Zhang et al., CVPR 2018, Sec. 3.1)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def classify_output(head: nn.Module, logits: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' ``Classify`` contract for spayolo heads: logits in training, (probs, logits) in eval, probs exported.

    Ultralytics' exporter switches only its own ``Classify`` to export mode, so spayolo heads ask torch instead: under
    ONNX export, tracing (TorchScript, CoreML, OpenVINO) or ``torch.export`` they give the single probability output
    Ultralytics' runtimes expect.
    """
    if head.training:
        return logits
    probs = logits.softmax(1)
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting()
    return probs if exporting else (probs, logits)
