"""LANMSFF blocks ("A Lightweight Attention-based Deep Network via Multi-Scale Feature Fusion for Multi-View FER").

MassAtt (eq. 3-4), point-wise feature selection PWFS (eq. 2), the shuffle-split dual-path block, the multi-level
classification head, and the separable conv of the authors' code (github AE-1129/LANMSFF, ``model.ipynb``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv

from spayolo.errors import UsageError
from spayolo.registry import register_block, register_layer

from .common import (
    SEGate,
    channel_shuffle,
    classify_output,
    depthwise_conv,
    keep_channels_last,
    same_width,
)

__all__ = ("LANMSFFBlock", "LANMSFFConvBlock", "LANMSFFHead", "MassAtt", "PWFS", "SameConv", "SeparableConv",
           "same_conv", "subgrid_conv")


@register_block("same")
class MassAtt(nn.Module):
    """Mass attention Y = X * A_c * A_s (LANMSFF eq. 3-4): a dense channel gate times an encoder-decoder spatial map.

    Channel path: an :class:`SEGate` with reduction 4, GAP -> FC(C, C/4) + ReLU -> FC(C/4, C) + sigmoid. Spatial path:
    the channel mean goes through two 3x3 stride-2 convs (1 -> 2 -> 4 channels, ReLU) and two 3x3 stride-2 transposed
    convs (4 -> 4 -> 1, ReLU then sigmoid). Each transposed conv is given the size of the map it mirrors, so odd sizes
    (7x7, 13x13) come back to exactly H x W with no crop or interpolation. The spatial path runs in fp32 under autocast:
    at P4/P5 of a small face it reaches 1x1 maps, where oneDNN's bf16 weight gradient of a strided 3x3 (transposed)
    conv in ``channels_last`` comes out NaN, and its four channels cost nothing in fp32.

    Args:
        c1 (int): Input channels.
        c2 (int | None): Output channels; must equal ``c1`` (None means ``c1``).
        r (int): Reduction ratio of the channel gate.

    Examples:
        >>> MassAtt(16)(torch.randn(2, 16, 7, 7)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, c1: int, c2: int | None = None, r: int = 4):
        super().__init__()
        self.channel = SEGate(same_width("MassAtt", c1, c2), r=r, min_hidden=1)
        self.down1 = nn.Conv2d(1, 2, 3, 2, 1)
        self.down2 = nn.Conv2d(2, 4, 3, 2, 1)
        self.up1 = nn.ConvTranspose2d(4, 4, 3, 2, 1)
        self.up2 = nn.ConvTranspose2d(4, 1, 3, 2, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel(x) * self.spatial(x)

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """A_s (eq. 4), (B, 1, H, W), computed in fp32 (class doc)."""
        with torch.autocast(x.device.type, enabled=False):
            s0 = x.float().mean(1, keepdim=True)
            s1 = self.act(self.down1(s0))
            s2 = self.act(self.down2(s1))
            up = self.act(self.up1(s2, output_size=s1.shape[-2:]))
            return self.up2(up, output_size=s0.shape[-2:]).sigmoid().to(x.dtype)


def _pwfs_width(c1: int) -> int:
    return -(-c1 // 3)


@register_block(_pwfs_width)
class PWFS(nn.Module):
    """Point-wise feature selection (LANMSFF eq. 2): three channel groups reduced to (max + min) / 2 per position.

    Output channel j takes x[j], x[j + g], x[j + 2g] with g = ceil(C / 3), so C -> ceil(C / 3) and there are no
    parameters. When C is not divisible by 3 the last group is short; its missing members repeat the middle group's
    value at the same position, so max and min run over the members that exist. C < 3 is rejected.

    Args:
        c1 (int): Input channels, at least 3.
        c2 (int | None): Output channels; must be ``ceil(c1 / 3)`` (None means that).

    Examples:
        >>> PWFS(9)(torch.randn(2, 9, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    def __init__(self, c1: int, c2: int | None = None):
        super().__init__()
        if c1 < 3:
            raise UsageError(f"PWFS needs at least 3 channels to form three groups, got {c1}")
        if c2 is not None and c2 != _pwfs_width(c1):
            raise UsageError(f"PWFS maps {c1} channels to {_pwfs_width(c1)}, not {c2}")
        self.g = _pwfs_width(c1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, x = self.g, keep_channels_last(x)
        missing = 3 * g - x.shape[1]
        if missing:  # the short last group takes the middle group's members at the same positions
            x = torch.cat((x, x[:, 2 * g - missing : 2 * g]), 1)
        groups = x.unflatten(1, (3, g))  # a view in either layout: no copy of the three groups
        return (groups.amax(1) + groups.amin(1)) / 2


def same_conv(x: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """Stride-1 conv of ``x`` by an odd kernel, padded to keep the size, without the kernel rows and columns that only
    ever read the padding: a dilation-2 3x3 kernel on a 2x2 map is the 1x1 conv of its centre tap.

    The taps left out multiply zeros, so the output and every gradient are the full conv's (theirs are zero). Under
    CPU autocast a dilated kernel runs as :func:`subgrid_conv`: oneDNN's bf16 weight gradient of a dilated conv in
    channels_last comes out wrong on some CPUs and shapes (AMD EPYC, 72 -> 36 channels on 32x32 maps: relative error
    0.4, or NaN), that of the undilated conv right.
    """
    (kh, kw), (h, w) = weight.shape[-2:], x.shape[-2:]
    rh, rw = min(kh // 2, (h - 1) // dilation[0]), min(kw // 2, (w - 1) // dilation[1])  # taps reaching the map
    weight = weight[..., kh // 2 - rh : kh // 2 + rh + 1, kw // 2 - rw : kw // 2 + rw + 1]
    if dilation != (1, 1) and (rh or rw) and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return subgrid_conv(x, weight, dilation)
    return F.conv2d(x, weight, None, 1, (dilation[0] * rh, dilation[1] * rw), dilation)


def subgrid_conv(x: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """:func:`same_conv` of a dilated kernel as the undilated conv of each of the ``dh x dw`` sub-grids of ``x``.

    A tap of a dilation-d kernel steps d pixels, so output pixel (i, j) reads only pixels of its own sub-grid
    ``x[..., i % dh::dh, j % dw::dw]``: the sub-grids, stacked in the batch, take the kernel undilated. ``x`` is
    zero-padded to whole sub-grids, the zeros its padding would read, and the output cropped back. Each rearrangement
    is one copy in channels_last, the layout oneDNN trains fastest in.
    """
    (dh, dw), (b, c, h, w) = dilation, x.shape
    if h % dh or w % dw:
        x = F.pad(x, (0, -w % dw, 0, -h % dh))
    hs, ws = x.shape[-2] // dh, x.shape[-1] // dw
    grids = x.permute(0, 2, 3, 1).reshape(b, hs, dh, ws, dw, c).permute(0, 2, 4, 1, 3, 5)  # (b, dh, dw, hs, ws, c)
    grids = grids.reshape(b * dh * dw, hs, ws, c).permute(0, 3, 1, 2)  # channels_last (b dh dw, c, hs, ws)
    y = same_conv(grids, weight, (1, 1)).permute(0, 2, 3, 1)  # (b dh dw, hs, ws, o)
    y = y.reshape(b, dh, dw, hs, ws, -1).permute(0, 3, 1, 4, 2, 5).reshape(b, hs * dh, ws * dw, -1)
    return y.permute(0, 3, 1, 2)[..., :h, :w].contiguous(memory_format=torch.channels_last)


@register_layer
class SameConv(Conv):
    """Ultralytics' ``Conv`` (stride 1, size-keeping padding) that trains through :func:`same_conv`.

    Same weights, same outputs; a dilated kernel on a map narrower than its reach trains as the smaller kernel it is
    (oneDNN's bf16 backward of a conv whose padding covers the map is slow).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():  # evaluation and export run the stock conv
            return self.act(self.bn(same_conv(x, self.conv.weight, self.conv.dilation)))
        return super().forward(x)


@register_block("out")
class SeparableConv(nn.Module):
    """Depthwise k x k then pointwise 1x1 conv, BN, activation: Keras' SeparableConv2D + BN as LANMSFF's code uses it.

    No activation between the depthwise and pointwise convs, unlike Ultralytics' ``DWConv`` + ``Conv``; the activation
    is Ultralytics' ``Conv.default_act`` (a YAML's ``activation:``), so the block follows the model like ``Conv`` does.

    Same weights, same outputs; only training takes other paths, so evaluation and export run the two convs as they
    are. Under CPU autocast (bf16) the block trains as the one dense conv it equals, kernel ``P[o, i] * D[i]``
    (:func:`same_conv`): oneDNN's bf16 depthwise backward takes many times its forward (with dilation most of all, and
    in channels_last from 32x32 maps its weight gradient comes out wrong), and the depthwise output is one more
    full-size map to write and read back, while a dense bf16 conv runs on the CPU's matrix units, so the larger kernel
    costs less. Other training goes through :func:`~spayolo.nn.common.depthwise_conv`, fast on maps narrower than
    its kernel.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels.
        k (int): Depthwise kernel size.
        d (int): Depthwise dilation.

    Examples:
        >>> SeparableConv(8, 16, 3, d=2)(torch.randn(2, 8, 9, 9)).shape
        torch.Size([2, 16, 9, 9])
    """

    def __init__(self, c1: int, c2: int, k: int = 3, d: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(c1, c1, k, padding=d * (k - 1) // 2, dilation=d, groups=c1, bias=False)
        self.pointwise = nn.Conv2d(c1, c2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = Conv.default_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw = self.depthwise
        if self.composes(x):
            y = same_conv(x, self.pointwise.weight * dw.weight.transpose(0, 1), dw.dilation)
        else:
            y = self.pointwise(depthwise_conv(dw, x) if self.training else dw(x))
        return self.act(self.bn(y))

    def composes(self, x: torch.Tensor) -> bool:
        """Whether ``x`` trains through the composed dense conv: training, gradients, CPU autocast, odd kernel."""
        cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        odd = all(k % 2 for k in self.depthwise.kernel_size)  # same_conv's size-keeping padding
        return self.training and torch.is_grad_enabled() and cpu_autocast and odd


@register_block("out")
class LANMSFFConvBlock(nn.Module):
    """Plain block of LANMSFF (Fig. 1, blocks 1 and 3 of the authors' code): 3x3 conv, separable 3x3 conv, 3x3 conv.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels of each of the three convs.

    Examples:
        >>> LANMSFFConvBlock(3, 12)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 12, 16, 16])
    """

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.convs = nn.Sequential(Conv(c1, c2, 3), SeparableConv(c2, c2, 3), Conv(c2, c2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


@register_block("out")
class LANMSFFBlock(nn.Module):
    """Dual-path block of LANMSFF (Fig. 2; ``two_path`` + MassAtt + 1x1 in the authors' code): plain and dilated paths.

    The input is channel-shuffled and split in halves: a plain 3x3 conv on one half and a dilation-2 3x3 conv on the
    other, c2/2 outputs each, concatenated. Both paths then read the whole concatenation twice more, first as separable
    3x3 convs, then as 3x3 convs, each path keeping its dilation, so they exchange features at every step and cover
    receptive fields 3/5/7 and 5/9/13. MassAtt (eq. 3-4) weights the c2-channel result and a 1x1 conv mixes it.
    ``massatt=False`` is the paper's ablation without MassAtt (Table XII). The authors shuffle the channels by a random
    permutation drawn once; a fixed two-group interleave is the same operation with a reproducible draw. The dilated
    path's plain convs are :class:`SameConv`, which skips the taps a small map's padding leaves idle.

    Args:
        c1 (int): Input channels, even (split into the two paths).
        c2 (int): Output channels, even (c2/2 per path).
        massatt (bool): Keep MassAtt.

    Examples:
        >>> LANMSFFBlock(16, 24)(torch.randn(2, 16, 7, 7)).shape
        torch.Size([2, 24, 7, 7])
    """

    def __init__(self, c1: int, c2: int, massatt: bool = True):
        super().__init__()
        if c1 % 2 or c2 % 2:
            raise UsageError(f"LANMSFFBlock splits its channels between two paths: c1={c1} and c2={c2} must be even")
        h1, h2 = c1 // 2, c2 // 2
        self.split = nn.ModuleList((Conv(h1, h2, 3), SameConv(h1, h2, 3, d=2)))
        self.separable = nn.ModuleList((SeparableConv(c2, h2, 3), SeparableConv(c2, h2, 3, d=2)))
        self.full = nn.ModuleList((Conv(c2, h2, 3), SameConv(c2, h2, 3, d=2)))
        self.attention = MassAtt(c2) if massatt else nn.Identity()
        self.project = Conv(c2, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each path's gradient comes back as a channel slice of the concatenation's, on which the BN and activation
        # backward fall off oneDNN's fast path: keep_channels_last hands them a whole channels_last copy instead
        halves = channel_shuffle(x, 2).chunk(2, 1)
        x = torch.cat([keep_channels_last(path(half)) for path, half in zip(self.split, halves)], 1)
        for paths in (self.separable, self.full):
            x = torch.cat([keep_channels_last(path(x)) for path in paths], 1)
        return self.project(self.attention(x))


@register_block("classes")
class LANMSFFHead(nn.Module):
    """Multi-level head of LANMSFF (Fig. 1, eq. 2): PWFS-reduced GAP of earlier stages + GAP of the last, then Linear.

    ``c1`` lists the input widths, the last being the final stage. Each earlier stage is reduced by PWFS before global
    average pooling (C -> ceil(C/3)); ``pwfs=False`` pools the full maps instead (the ablation of Table XII). Behaves
    like Ultralytics' ``Classify``: logits in training, (probs, logits) in eval, probs when exported.

    Args:
        c1 (list[int]): Widths of the inputs, earlier stages first, the final stage last.
        c2 (int): Number of classes.
        pwfs (bool): Reduce the earlier stages with PWFS before pooling.
        dropout (float): Dropout before the linear layer.

    Examples:
        >>> head = LANMSFFHead([9, 8, 16], 7).eval()
        >>> probs, logits = head([torch.randn(2, 9, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)])
        >>> probs.shape
        torch.Size([2, 7])
    """

    def __init__(self, c1: list[int], c2: int, pwfs: bool = True, dropout: float = 0.0):
        super().__init__()
        c1 = [c1] if isinstance(c1, int) else list(c1)
        self.select = nn.ModuleList(PWFS(c) if pwfs else nn.Identity() for c in c1[:-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        width = sum(_pwfs_width(c) if pwfs else c for c in c1[:-1]) + c1[-1]
        self.linear = nn.Linear(width, c2)

    def forward(self, x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | tuple:
        x = [x] if isinstance(x, torch.Tensor) else x
        pooled = [self.pool(select(f)).flatten(1) for select, f in zip(self.select, x[:-1])]
        return classify_output(self, self.linear(self.drop(torch.cat((*pooled, self.pool(x[-1]).flatten(1)), 1))))
