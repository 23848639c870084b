"""SPAM, the spectral-spatial attention module of SPAYOLO ("Spectral-spatial feature fusion for real-time FER")."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from spayolo.errors import UsageError
from spayolo.registry import register_block, register_layer

from .common import PaddedDWConv, SEGate, in_layout_of, keep_channels_last, same_width

__all__ = ("FEP", "GAM", "HRM", "SPAM", "real_dft2")


@lru_cache(maxsize=64)
def _dft_basis(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine DFT matrices of size n, built in float64 so the phase is exact before the cast.

    Built outside inference mode even when first asked for by a prediction: the cache outlives that call, and an
    inference tensor could never be saved for backward by a later training step.
    """
    with torch.inference_mode(False):
        k = torch.arange(n, dtype=torch.float64)
        phase = 2 * math.pi * torch.outer(k, k).remainder(n) / n
        return phase.cos().to(device, dtype), phase.sin().to(device, dtype)


@lru_cache(maxsize=64)
def _dft2_matrix(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Re(DFT2) of an h x w map as one symmetric (hw x hw) matrix, C_H (x) C_W - S_H (x) S_W, ortho-normalised."""
    with torch.inference_mode(False):  # cached: see _dft_basis
        cos_h, sin_h = _dft_basis(h, torch.device("cpu"), torch.float64)
        cos_w, sin_w = _dft_basis(w, torch.device("cpu"), torch.float64)
        matrix = (torch.kron(cos_h, cos_w) - torch.kron(sin_h, sin_w)) / math.sqrt(h * w)
        return matrix.to(device, dtype)


_ONE_MATRIX_AREA = 256  # up to 16x16 one (hw x hw) product is faster than two pairs of small ones


def real_dft2(x: torch.Tensor) -> torch.Tensor:
    """Re(FFT2(x)) over the last two dims, ortho-normalised, as matrix products (SPAYOLO eq. 3).

    For real x, Re(F) = C_H x C_W - S_H x S_W with C[u, h] = cos(2 pi u h / N) and S[u, h] = sin(2 pi u h / N), or, on
    the flattened map, one product with C_H (x) C_W - S_H (x) S_W. Matrix products beat an FFT at the 4x4 to 28x28
    maps SPAM sees and export to plain ONNX MatMul; the single product wins on small maps, where the four products
    are all overhead, and loses on large ones, where it costs (hw)^2 against hw (h + w).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed per exported image size; the basis becomes a constant
    if h * w <= _ONE_MATRIX_AREA:
        return in_layout_of(x, (x.flatten(-2) @ _dft2_matrix(h, w, x.device, x.dtype)).view_as(x))
    cos_h, sin_h = _dft_basis(h, x.device, x.dtype)
    cos_w, sin_w = (cos_h, sin_h) if w == h else _dft_basis(w, x.device, x.dtype)
    return in_layout_of(x, (cos_h @ x @ cos_w - sin_h @ x @ sin_w) / math.sqrt(h * w))


@register_layer
class HRM(nn.Module):
    """Hierarchical receptive-field module: 1/3/5/7 branches, weighted sums into Q and K (SPAYOLO eq. 1-2).

    Each branch is a standard 1x1 convolution followed, for k > 1, by a depthwise k x k one, i.e. a depthwise-separable
    k x k convolution. Q mixes branches 1/3/5 and K mixes 3/5/7 with learnable scalars, initialised so that K leans on
    the large kernels; both mixes go through one shared 1x1 fusion conv. With ``multiscale=False`` (the paper's
    ablation) one 1x1 conv yields Q and K directly.
    """

    def __init__(self, c1: int, c2: int, multiscale: bool = True):
        super().__init__()
        self.multiscale = multiscale
        if not multiscale:
            self.qk = Conv(c1, 2 * c2, 1)
            return
        self.branches = nn.ModuleList(
            nn.Sequential(Conv(c1, c2, 1), *([PaddedDWConv(c2, c2, k)] if k > 1 else [])) for k in (1, 3, 5, 7)
        )
        self.q_weights = nn.Parameter(torch.tensor([1 / 3, 1 / 3, 1 / 3]))  # branches 1, 3, 5
        self.k_weights = nn.Parameter(torch.tensor([0.2, 0.4, 0.4]))  # branches 3, 5, 7
        self.fuse = Conv(c2, c2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.multiscale:
            return self.qk(x).chunk(2, 1)
        f1, f3, f5, f7 = (branch(x) for branch in self.branches)
        wq, wk = self.q_weights, self.k_weights
        q = self.fuse(wq[0] * f1 + wq[1] * f3 + wq[2] * f5)
        k = self.fuse(wk[0] * f3 + wk[1] * f5 + wk[2] * f7)
        return q, k


@register_layer
class FEP(nn.Module):
    """Frequency-enhanced path: Re(FFT2) (eq. 3), channel scale/bias, SE weights (eq. 4, 6), 1x1 (eq. 5), reweight
    (eq. 7).

    The spectrum is ortho-normalised so its magnitude does not grow with the map size, and the 1x1 compression is a
    Conv (BN + SiLU) so that the DC term, which dominates the real spectrum, is normalised before it meets Q. The SE
    weights are computed from the c1-channel spectrum and scale the c2-channel compression.
    """

    def __init__(self, c1: int, c2: int, r: int = 16):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, c1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, c1, 1, 1))
        self.attention = SEGate(c1, c2, r)
        self.compress = Conv(c1, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = real_dft2(x) * self.scale + self.bias
        return self.compress(z) * self.attention(z)


@register_layer
class GAM(nn.Module):
    """Gated attention: A = sigmoid(Q * V) (eq. 8), g = sigmoid(W2 relu(W1 GAP(V))) (eq. 9), out = (A * V) g + X
    (eq. 10).

    ``attention="spatial"`` replaces eq. 8 with the authors' public code: A = sigmoid(Q^T K / sqrt(C)), an HW x HW map
    applied to V, for comparison. It costs O((HW)^2 C) and is not the default.
    """

    def __init__(self, c1: int, c2: int, attention: str = "gate", r: int = 16):
        super().__init__()
        if attention not in ("gate", "spatial"):
            raise UsageError(f"GAM attention must be 'gate' or 'spatial', got {attention!r}")
        self.attention = attention
        self.global_gate = SEGate(same_width("GAM", c1, c2), r=r)  # out = ... + X: V and X share the width

    def forward(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.attention == "gate":
            attended = (q * v).sigmoid() * v
        else:
            b, c, h, w = v.shape
            weights = (q.flatten(2).transpose(1, 2) @ k.flatten(2) / math.sqrt(c)).sigmoid()  # (B, HW, HW)
            attended = (v.flatten(2) @ weights.transpose(1, 2)).view(b, c, h, w)
        return attended * self.global_gate(v) + x


@register_block("same")
class SPAM(nn.Module):
    """Spectral-spatial attention module, SPAM = GAM(HRM, FEP) (SPAYOLO Fig. 2, eq. 1-10).

    Decisions where the paper is open:
    - K enters GAM through the values: V = K + FEP(X), so the large-kernel context (K) and the spectral context
      (FEP) are what the Q gate selects. In ``attention="spatial"`` mode K forms the HW x HW map and V = FEP(X).
    - The residual joins once, at the end (eq. 10), so SPAM keeps its input width and can be dropped into any stage.
    - Q, K and the FEP output are BN-normalised by their Conv layers; nothing else is normalised.
    - ``frequency=False`` drops FEP (V = K) and ``multiscale=False`` takes Q and K from one 1x1: the paper's ablations.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels; must equal ``c1`` because of the residual.
        attention (str): ``"gate"`` (the paper, default) or ``"spatial"`` (the authors' code).
        frequency (bool): Keep the frequency-enhanced path.
        multiscale (bool): Keep the 1/3/5/7 multi-branch HRM.

    Examples:
        >>> spam = SPAM(64, 64)
        >>> spam(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(self, c1: int, c2: int, attention: str = "gate", frequency: bool = True, multiscale: bool = True):
        super().__init__()
        same_width("SPAM", c1, c2)
        self.hrm = HRM(c1, c2, multiscale)
        self.fep = FEP(c1, c2) if frequency else None
        self.gam = GAM(c2, c2, attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = (keep_channels_last(t) for t in self.hrm(x))
        spectral = keep_channels_last(self.fep(x)) if self.fep is not None else None
        if self.gam.attention == "spatial":
            v = spectral if spectral is not None else k
        else:
            v = k + spectral if spectral is not None else k
        return self.gam(x, q, k, v)
