"""FERMam's blocks, Conv-SSM and ASFR ("A lightweight dual-source and multi-scale fusion framework for FER", 2026)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv, DWConv

from spayolo.errors import UsageError
from spayolo.registry import register_block, register_layer

from .common import channel_shuffle, same_width
from .scan import selective_scan

__all__ = ("ASFR", "ASR", "SS2D", "ConvSSM", "cross_merge", "cross_scan")


def cross_scan(x: torch.Tensor, directions: int = 4) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, C, HW) token sequences: row-major[, column-major], then the same reversed (VMamba Fig. 2).

    ``directions=2`` keeps row-major and its reverse: every token still sees every other one, at half the cost.
    """
    orders = [x.flatten(2)] if directions == 2 else [x.flatten(2), x.transpose(2, 3).flatten(2)]
    xs = torch.stack(orders, 1)
    return torch.cat([xs, xs.flip(-1)], 1)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`cross_scan`: (B, K, C, HW) back to (B, C, H, W), summing the K directions."""
    b, k, c, _ = ys.shape
    ys = ys[:, : k // 2] + ys[:, k // 2 :].flip(-1)
    y = ys[:, 0].reshape(b, c, h, w)
    return y if k == 2 else y + ys[:, 1].reshape(b, c, w, h).transpose(2, 3)


@register_layer
class SS2D(nn.Module):
    """2-D selective scan (VMamba SS2D): in-proj, depthwise conv, cross scan, S6 (Mamba eq. 2a-2b), cross merge, gate.

    Each direction k has its own x-projection (dt, B, C from the tokens), dt projection, A = -exp(A_log) and D, so the
    scan runs once over K x d channels with B, C grouped per direction. Initialisation follows Mamba: A_log = log(1..n),
    dt in [1e-3, 0.1] log-uniformly through the softplus bias, D = 1. The merged output is layer-normalised per token
    (VMamba's out-norm) before the gate ``act(z)`` (SiLU in Conv-SSM, sigmoid in ASFR).

    Args:
        c (int): Input and output channels.
        d_state (int): SSM state size n.
        expand (float): Inner width d = expand * c.
        directions (int): 4 (row, column and their reverses) or 2 (row and its reverse).
        gate (nn.Module): Activation of the gate branch.
    """

    def __init__(self, c: int, d_state: int = 16, expand: float = 1, directions: int = 4,
                 gate: nn.Module | None = None):
        super().__init__()
        if directions not in (2, 4):
            raise UsageError(f"SS2D scans 2 or 4 directions, got {directions}")
        d, k = int(expand * c), directions
        self.d, self.k, self.n, self.r = d, k, d_state, math.ceil(c / 16)
        self.in_proj = nn.Conv2d(c, 2 * d, 1, bias=False)  # x and the gate z
        self.dw = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.act = nn.SiLU()
        self.x_proj = nn.Conv1d(k * d, k * (self.r + 2 * d_state), 1, groups=k, bias=False)
        self.dt_proj = nn.Conv1d(k * self.r, k * d, 1, groups=k, bias=False)
        nn.init.uniform_(self.dt_proj.weight, -self.r**-0.5, self.r**-0.5)
        dt = torch.exp(torch.rand(k * d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float).log().repeat(k * d, 1))
        self.D = nn.Parameter(torch.ones(k * d))
        self.norm = nn.LayerNorm(d)
        self.gate = gate or nn.SiLU()
        self.out_proj = nn.Conv2d(d, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x, z = self.in_proj(x).chunk(2, 1)
        xs = cross_scan(self.act(self.dw(x)), self.k).reshape(b, self.k * self.d, h * w)
        dt, B, C = self.x_proj(xs).view(b, self.k, -1, h * w).split([self.r, self.n, self.n], 2)
        dt = self.dt_proj(dt.reshape(b, self.k * self.r, h * w))
        y = selective_scan(xs, dt, -self.A_log.exp(), B, C, self.D, self.dt_bias, True)
        y = cross_merge(y.view(b, self.k, self.d, h * w), h, w)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out_proj(y * self.gate(z))


@register_block("same")
class ConvSSM(nn.Module):
    """Conv-SSM, FERMam's dual-source block: conv path || SS2D path, concatenate, channel shuffle, residual.

    Decisions where the paper is open:
    - The channels split in half; the conv path is a depthwise 3x3 then a pointwise Conv (both BN + SiLU), the scan
      path is :class:`SS2D` with four directions, expand 1 and a SiLU gate.
    - ``scan=False`` (ablation) passes the scan half through unchanged, so what remains is the conv path plus the
      shuffle and residual at the same width: the ablation removes exactly the state-space source.

    Args:
        c1 (int): Input channels, even.
        c2 (int): Output channels; must equal ``c1`` because of the residual.
        scan (bool): Keep the state-space path.
        d_state (int): SSM state size.

    Examples:
        >>> ConvSSM(64, 64)(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(self, c1: int, c2: int, scan: bool = True, d_state: int = 16):
        super().__init__()
        if same_width("ConvSSM", c1, c2) % 2:
            raise UsageError(f"ConvSSM splits its input in two halves: c1={c1} must be even")
        c = c1 // 2
        self.conv = nn.Sequential(DWConv(c, c, 3), Conv(c, c, 1))
        self.ssm = SS2D(c, d_state) if scan else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, 1)
        return x + channel_shuffle(torch.cat([self.conv(a), self.ssm(b)], 1), 2)


@register_layer
class ASR(nn.Module):
    """Adaptive state-space refinement of a pyramid level: 1x1 + depthwise 3x3 Conv, then y + SS2D(y) gated by sigmoid.

    The scan is streamlined: two directions (row-major and its reverse) and a small state.
    """

    def __init__(self, c1: int, c2: int, d_state: int = 4):
        super().__init__()
        self.conv = nn.Sequential(Conv(c1, c2, 1), DWConv(c2, c2, 3))
        self.ssm = SS2D(c2, d_state, directions=2, gate=nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + self.ssm(y)


@register_block("same")
class ASFR(nn.Module):
    """ASFR pyramid: the input average-pooled per factor, refined by an :class:`ASR`, upsampled, fused by 1x1, residual.

    Decisions where the paper is open:
    - Factors (1, 2, 4) with a floor pooling window clipped to the map, so a 2x2 map still has three levels; each
      level is bilinearly upsampled back (ONNX Resize), concatenated and fused by a 1x1 Conv (BN + SiLU).
    - Each level works at ``e * c1`` channels to keep the pyramid light; the block adds its input back.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels; must equal ``c1`` because of the residual.
        scales (tuple[int, ...]): Pooling factors, one level each.
        e (float): Level width as a fraction of ``c1``.
        d_state (int): SSM state size of each level.

    Examples:
        >>> ASFR(64, 64)(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(self, c1: int, c2: int, scales: tuple[int, ...] = (1, 2, 4), e: float = 0.25, d_state: int = 4):
        super().__init__()
        same_width("ASFR", c1, c2)
        c_ = max(int(c1 * e), 8)
        self.scales = tuple(scales)
        self.levels = nn.ModuleList(ASR(c1, c_, d_state) for _ in self.scales)
        self.fuse = Conv(c_ * len(self.scales), c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])  # the window is an attribute in ONNX, so it is fixed at export
        outs = []
        for s, level in zip(self.scales, self.levels):
            y = level(F.avg_pool2d(x, (min(s, h), min(s, w))) if s > 1 else x)
            outs.append(y if s == 1 else F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        return x + self.fuse(torch.cat(outs, 1))
