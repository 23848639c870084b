"""WAMF blocks ("Facial expression recognition based on wide attention and multi-scale fusion").

Wide attention WA, multi-scale fusion MF and the capsule classifier with dynamic routing.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from spayolo.errors import UsageError
from spayolo.registry import register_block

from .common import classify_output, same_width

__all__ = ("MF", "WA", "CapsuleHead", "squash")


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Capsule non-linearity v = |s|^2 / (1 + |s|^2) * s / |s| (Sabour et al., NeurIPS 2017, eq. 1)."""
    n2 = (s * s).sum(dim, keepdim=True)
    return s * (n2 / (1 + n2) / torch.sqrt(n2 + eps))


@register_block("same")
class WA(nn.Module):
    """Wide attention (WAMF, WA module): H- and W-direction avg + max pooling, recombined into a per-pixel weight.

    Recombination (the paper leaves it open): per direction the average and the max descriptors are concatenated
    along channels ([avg, max], 2C) and mapped by one 1x1 conv shared by both directions to C channels with a sigmoid,
    giving g_h (B, C, H, 1) and g_w (B, C, 1, W). The weight is their outer product g_h * g_w (B, C, H, W), a
    per-pixel, per-channel weight, and the output is x * g_h * g_w.

    Args:
        c1 (int): Input channels.
        c2 (int | None): Output channels; must equal ``c1`` (None means ``c1``).

    Examples:
        >>> WA(8)(torch.randn(2, 8, 5, 7)).shape
        torch.Size([2, 8, 5, 7])
    """

    def __init__(self, c1: int, c2: int | None = None):
        super().__init__()
        same_width("WA", c1, c2)
        self.mix = nn.Conv2d(2 * c1, c1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        along_w = torch.cat((x.mean(3, keepdim=True), x.amax(3, keepdim=True)), 1)  # (B, 2C, H, 1)
        along_h = torch.cat((x.mean(2, keepdim=True), x.amax(2, keepdim=True)), 1)  # (B, 2C, 1, W)
        return x * self.mix(along_w).sigmoid() * self.mix(along_h).sigmoid()


@register_block("same")
class MF(nn.Module):
    """Multi-scale fusion (WAMF, MF module): a stage's input, convolved with a k x k kernel, fused into its output.

    ``from`` is [stage output, stage input]. The input branch is a k x k ``Conv`` with stride ``s`` (the stage's
    downsampling, so sizes match) to the output's width; the two are concatenated and a 1x1 ``Conv`` restores the
    output's width, so MF keeps the stage output's channels and size. The paper uses k = 7, 5, 3 in successive stages.

    Args:
        c1 (list[int]): Widths of the stage output and the stage input.
        c2 (int): Output channels (the stage output's width in the YAMLs).
        k (int): Kernel of the input branch.
        s (int): Stride of the input branch: the stage's downsampling.

    Examples:
        >>> MF([16, 8], 16, 7, 2)([torch.randn(2, 16, 4, 4), torch.randn(2, 8, 7, 7)]).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, c1: list[int], c2: int, k: int = 3, s: int = 2):
        super().__init__()
        c_out, c_in = c1
        self.branch = Conv(c_in, c_out, k, s)
        self.fuse = Conv(2 * c_out, c2, 1)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        out, inp = x
        branch = self.branch(inp)
        if branch.shape[-2:] != out.shape[-2:]:
            raise UsageError(f"MF: input branch is {tuple(branch.shape[-2:])} but the stage output is "
                             f"{tuple(out.shape[-2:])}; set s to the stage's stride")
        return self.fuse(torch.cat((out, branch), 1))


@register_block("classes")
class CapsuleHead(nn.Module):
    """Capsule classifier of WAMF: primary capsules, dynamic routing (Sabour et al. 2017, Procedure 1), class lengths.

    Primary capsules: a 1x1 conv gives ``types`` capsules of ``dim`` values at every position (squashed); each type has
    its own transform to every class capsule (shared over positions, so any input size works). Routing runs ``iters``
    (3) rounds of softmax-over-classes coupling, squash and agreement update. The N predictions (N = positions x types:
    128 at 64 px, 1,568 at 224 px) enter a class capsule's input scaled by nc / N, a mean over its share of them instead
    of their sum (agreement still uses them unscaled): summed, 128 agreeing predictions pushed every class length to
    ~1 within an epoch, where squash's gradient vanishes and training stalled at the majority class. Routing runs in
    fp32 under autocast (its squash and softmax compare near-equal lengths). Scores: the class-capsule lengths lie in
    [0, 1), so the logits are ``scale * length`` with a learned ``scale`` (initial 10) and the head is trained with
    Ultralytics' cross-entropy instead of the margin loss; softmax and top-1/top-5 then rank classes by capsule length.
    Behaves like ``Classify``: logits in training, (probs, logits) in eval, probs when exported. There is no
    ``linear`` layer, so changing ``nc`` needs a rebuild from the YAML.

    Args:
        c1 (int): Input channels.
        c2 (int): Number of classes.
        types (int): Primary capsule types per position.
        dim (int): Primary capsule length.
        out_dim (int): Class capsule length.
        iters (int): Routing rounds.

    Examples:
        >>> CapsuleHead(16, 7, types=4).train()(torch.randn(2, 16, 3, 3)).shape
        torch.Size([2, 7])
    """

    def __init__(self, c1: int, c2: int, types: int = 32, dim: int = 8, out_dim: int = 16, iters: int = 3):
        super().__init__()
        self.nc, self.types, self.dim, self.out_dim, self.iters = c2, types, dim, out_dim, iters
        self.primary = nn.Conv2d(c1, types * dim, 1)
        self.weight = nn.Parameter(torch.randn(types, dim, c2 * out_dim) / math.sqrt(dim))
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | tuple:
        if isinstance(x, list):
            x = torch.cat(x, 1)
        with torch.autocast(x.device.type, enabled=False):
            v = self.class_capsules(x.to(self.primary.weight.dtype))
        return classify_output(self, self.scale * torch.sqrt((v * v).sum(-1) + 1e-8))

    def class_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c1, H, W) features -> (B, nc, out_dim) class capsules after dynamic routing."""
        b = x.shape[0]
        u = self.primary(x).flatten(2).transpose(1, 2).reshape(b, -1, self.types, 1, self.dim)  # (B, HW, T, 1, D)
        u_hat = (squash(u) @ self.weight).reshape(b, -1, self.nc, self.out_dim)  # (B, N = HW*T, nc, D_out)
        share = self.nc / u_hat.shape[1]  # uniform coupling gives each class N / nc predictions
        logits_b = torch.zeros_like(u_hat[..., 0])
        for i in range(self.iters):
            v = squash(share * (logits_b.softmax(2).unsqueeze(-1) * u_hat).sum(1))  # (B, nc, D_out)
            if i < self.iters - 1:
                logits_b = logits_b + (u_hat * v.unsqueeze(1)).sum(-1)
        return v
