"""MSFF blocks ("A Multi-Scale Feature Fusion Network for Facial Expression Recognition", Wang et al.).

The basic feature-extraction unit BFEU (eq. 2-4), the cascaded feature-extraction module (eq. 1) and the feature
fusion module FFM (eq. 5).
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from spayolo.errors import UsageError
from spayolo.registry import register_block, register_layer

from .common import same_width

__all__ = ("BFEU", "FFM", "MSFFModule")


@register_layer
class BFEU(nn.Module):
    """Basic feature-extraction unit (MSFF eq. 2-4): ReLU(3x3) and ReLU(5x5) branches, concatenated, 1x1 back to C.

    Each branch is ``int(c * e)`` wide: e = 1 is the paper; YOLO-scale models use less, since a full-width 5x5 costs
    25 C^2. Convs carry BN (Ultralytics ``Conv``); the 1x1 has no activation because the module's residual follows.

    Args:
        c (int): Input and output channels.
        e (float): Branch width as a fraction of ``c``.

    Examples:
        >>> BFEU(8)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, c: int, e: float = 1.0):
        super().__init__()
        c_ = max(int(c * e), 1)
        self.b3 = Conv(c, c_, 3, act=nn.ReLU())
        self.b5 = Conv(c, c_, 5, act=nn.ReLU())
        self.fuse = Conv(2 * c_, c, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat((self.b3(x), self.b5(x)), 1))


@register_block("same", repeats=True)
class MSFFModule(nn.Module):
    """MSFF feature-extraction module (eq. 1): m cascaded BFEUs (eq. 2-4) plus a residual, y = x + BFEU^m(x).

    ``n`` (m in the paper) is the YAML repeat count, scaled by the model depth like ``C2f``'s; ``e`` is the BFEU
    branch width as a fraction of C (1 in the paper).

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels; must equal ``c1`` because of the residual.
        n (int): Number of cascaded BFEUs.
        e (float): BFEU branch width as a fraction of ``c1``.

    Examples:
        >>> MSFFModule(8, 8, 2)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 1.0):
        super().__init__()
        same_width("MSFFModule", c1, c2)
        self.m = nn.Sequential(*(BFEU(c1, e) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


@register_block("same")
class FFM(nn.Module):
    """Feature fusion module (MSFF eq. 5): G = sigmoid(w1 F1 + w2 F2 + conv1x1([F1, F2])), scalar w1, w2 learned.

    Application (the paper gives only G): the gate blends the branches per element, out = G * F1 + (1 - G) * F2, so the
    output keeps F1's width and size and each position chooses its scale. ``from`` is [F1, F2]; both must already
    share shape (down/up-sample the other branch in the YAML). w1 = w2 = 0.5 initially.

    Args:
        c1 (list[int]): Widths of F1 and F2, equal.
        c2 (int): Output channels; must equal that width.

    Examples:
        >>> FFM([8, 8], 8)([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)]).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, c1: list[int], c2: int):
        super().__init__()
        if len(c1) != 2 or c1[0] != c1[1] or c2 != c1[0]:
            raise UsageError(f"FFM fuses two inputs of equal width into that width, got c1={c1}, c2={c2}")
        self.w = nn.Parameter(torch.full((2,), 0.5))
        self.conv = nn.Conv2d(2 * c2, c2, 1)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        f1, f2 = x
        gate = (self.w[0] * f1 + self.w[1] * f2 + self.conv(torch.cat((f1, f2), 1))).sigmoid()
        return f2 + gate * (f1 - f2)
