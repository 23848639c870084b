"""Pieces shared by several papers' blocks: SE gate, small-map depthwise conv, channel shuffle, width check, head
output."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import DWConv

from spayolo.errors import UsageError
from spayolo.registry import register_layer

__all__ = ("PaddedDWConv", "SEGate", "channel_shuffle", "channels_last", "classify_output", "depthwise_conv",
           "in_layout_of", "keep_channels_last", "same_width")


def same_width(block: str, c1: int, c2: int | None) -> int:
    """Return ``c1`` for a block whose residual or gate keeps its width; UsageError naming the block if ``c2``
    differs.

    ``c2=None`` (the block built by hand, outside a YAML) means "same as ``c1``".
    """
    if c2 is not None and c2 != c1:
        raise UsageError(f"{block} keeps its width (residual or gate): c1={c1} and c2={c2} must match")
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


@lru_cache(maxsize=64)
def _tap_index(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, int, int]:
    """For a conv on an h x w map: the kernel tap (ky * kw + kx) joining each output to each input position, or
    kh * kw where no tap does, as an (Ho * Wo, H * W) index; and Ho, Wo.

    Built outside inference mode even when first asked for by a prediction: the cache outlives that call, and a later
    training step saves the index for backward.
    """
    with torch.inference_mode(False):
        taps, valid, out = [], [], []
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
            m = (n + 2 * p - d * (k - 1) - 1) // s + 1
            offset = torch.arange(n).view(1, n) - (torch.arange(m) * s - p).view(m, 1)  # input - window start
            tap = offset.div(d, rounding_mode="floor")
            taps.append(tap), valid.append((offset % d == 0) & (tap >= 0) & (tap < k)), out.append(m)
        index = taps[0][:, None, :, None] * kernel[1] + taps[1][None, :, None, :]  # (Ho, Wo, H, W)
        inside = valid[0][:, None, :, None] & valid[1][None, :, None, :]
        index = torch.where(inside, index, kernel[0] * kernel[1]).reshape(out[0] * out[1], size[0] * size[1])
        return index.to(device), out[0], out[1]


@register_layer
class PaddedDWConv(DWConv):
    """Ultralytics' ``DWConv`` (depthwise k x k, BN, SiLU), fast where the kernel is wider than the map.

    Same weights, same outputs. oneDNN's CPU depthwise convolution is at its slowest where its padding is as wide as
    the map, e.g. SPAM's 5x5 and 7x7 at P4 of a 64 px face (4x4). A forward alone is faster with the padding done
    first and the convolution unpadded. A training step spends most in that convolution's backward, so with gradients
    on each channel's convolution becomes an (HW x HW) matrix of its kernel taps gathered from the weights, whose
    backward is a matrix product. Larger maps keep the convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.depthwise(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.depthwise(x))

    def depthwise(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv(self.conv, x)  # Ultralytics' fuse() swaps in a conv with the BN folded in


def depthwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise ``conv``, fast where its kernel is wider than the map (see :class:`PaddedDWConv`).

    Same weights, same outputs: with gradients on, each channel's convolution becomes the (HW x HW) matrix of its
    kernel taps gathered from the weights; without, the padding is done first and the convolution runs unpadded.
    """
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if all(n >= d * (k - 1) + 1 for n, k, d in zip(size, conv.kernel_size, conv.dilation)):
        return conv(x)
    if torch.is_grad_enabled() and conv.groups == conv.in_channels == conv.out_channels:
        index, ho, wo = _tap_index(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, x.device)
        taps = F.pad(conv.weight.flatten(1), (0, 1))  # (C, kh * kw + 1): the last tap is the padding's zero
        y = torch.einsum("coi,bci->bco", taps[:, index], keep_channels_last(x).flatten(2)).unflatten(2, (ho, wo))
        y = in_layout_of(x, y)
        return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)
    ph, pw = conv.padding
    return F.conv2d(F.pad(x, (pw, pw, ph, ph)), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels_last and not also plain contiguous (a 1x1 map is both).

    Blocks that compute through matrix products keep this layout: an elementwise op, BatchNorm or SiLU that meets
    one channels_last and one contiguous operand falls off oneDNN's fast path (several times slower in bf16 on a
    CPU).
    """
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def in_layout_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` made channels_last where ``x`` is (see :func:`channels_last`), else ``y`` as it is."""
    return y.contiguous(memory_format=torch.channels_last) if channels_last(x) else y


class _ChannelsLastGradient(torch.autograd.Function):
    """Identity whose backward hands on its gradient channels_last, whatever layout the ops after it produced."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def keep_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x``, with its gradient made channels_last when ``x`` is channels_last and needs one.

    Batched matrix products over channels and (B, C, 1, 1) gates hand back gradients in other layouts, and the
    BatchNorm and SiLU backward before them then fall off oneDNN's fast path. A plain forward is untouched.
    """
    return _ChannelsLastGradient.apply(x) if x.requires_grad and channels_last(x) else x


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (ShuffleNet, Zhang et al., CVPR 2018, Sec. 3.1), in ``x``'s layout."""
    b, c, h, w = x.shape
    if channels_last(x):  # shuffle the last axis of the (b, h, w, c) view: one copy, and channels_last again
        return x.permute(0, 2, 3, 1).unflatten(3, (groups, c // groups)).transpose(3, 4).flatten(3).permute(0, 3, 1, 2)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def classify_output(head: nn.Module, logits: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' ``Classify`` contract for spayolo heads: logits in training, (probs, logits) in eval, probs
    exported.

    Ultralytics' exporter switches only its own ``Classify`` to export mode, so spayolo heads ask torch instead: under
    ONNX export, tracing (TorchScript, CoreML, OpenVINO) or ``torch.export`` they give the single probability output
    Ultralytics' runtimes expect.
    """
    if head.training:
        return logits
    probs = logits.softmax(1)
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting()
    return probs if exporting else (probs, logits)
