"""Selective scan (Mamba S6, Gu & Dao 2023, Alg. 2) in chunked pure PyTorch, with mamba_ssm's CUDA kernel when present.

The recurrence, per channel d and state n, is h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t and y_t = C_t h_t + D u_t.
Within a chunk of length L it unrolls to h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) dt_s B_s u_s, S the cumulative
sum of the log-decays dt A <= 0, i.e. a masked (L x L) decay matrix times the inputs plus the carried state. Only the
chunks are looped over, so the traced/ONNX graph has ceil(T / L) copies of a handful of ops (49..784 tokens, 4..49
chunks at L=16), and every op is a stock one (CumSum, Where, Exp, MatMul).
The decay matrix costs d n L per token, so the chunk length trades CPU time (L=32 ran 2-10x slower than L=16 at 196
tokens) against graph size.

Precision: the scan always runs in float32, whatever the input dtype or autocast, and its output is cast back. Under
float16/bfloat16 the error versus a float32 reference is therefore the rounding of the inputs and outputs only: expect
about 1e-3 relative (atol 1e-2 on unit-scale outputs) for float16 and 1e-2 relative (atol 5e-2) for bfloat16.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ("random_scan_inputs", "selective_scan", "selective_scan_chunked")


@lru_cache(maxsize=1)
def _cuda_kernel():
    """mamba_ssm's fused selective scan, or None; imported on first CUDA use only, never required."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., L) log-decays -> (..., L, L) with [t, s] = sum_{s<k<=t} a_k for s <= t and -inf above the diagonal.

    Each entry is a direct sum of the a_k between s and t (a cumsum of a masked copy), not a difference of two running
    sums, so it neither loses precision when S_t is large nor can it become positive; the -inf mask goes in before exp.
    """
    length = a.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril()
    strict = lower.tril(-1)
    terms = a.unsqueeze(-1).expand(*a.shape, length).masked_fill(~strict, 0.0)  # [t, s] = a_t for t > s
    return terms.cumsum(-2).masked_fill(~lower, float("-inf"))


def selective_scan_chunked(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, chunk_size=16):
    """Chunked pure-PyTorch selective scan; same arguments (typed there) and result as :func:`selective_scan`."""
    dtype, (b, d, length) = u.dtype, u.shape
    with torch.autocast(u.device.type, enabled=False):
        u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        if B.dim() == 3:  # one B and C shared by all channels
            B, C = B.unsqueeze(1), C.unsqueeze(1)
        g, n = B.shape[1:3]
        # Layout (batch, group, channel-in-group, state, time): channels of group i read B[:, i] and C[:, i].
        log_decay = delta.view(b, g, d // g, 1, length) * A.view(g, d // g, n, 1)
        inputs = (delta * u).view(b, g, d // g, 1, length) * B.unsqueeze(2)
        state = inputs.new_zeros(inputs.shape[:-1])
        ys = []
        for start in range(0, length, chunk_size):
            a = log_decay[..., start : start + chunk_size]
            h = (_segsum(a).exp() @ inputs[..., start : start + chunk_size, None]).squeeze(-1)
            h = h + a.cumsum(-1).exp() * state.unsqueeze(-1)
            state = h[..., -1]
            ys.append((h * C[:, :, None, :, start : start + chunk_size]).sum(3))
        y = torch.cat(ys, -1).view(b, d, length)
        if D is not None:
            y = y + D.float()[:, None] * u
    return y.to(dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 16,
) -> torch.Tensor:
    """y = S6(u): mamba_ssm's ``selective_scan_fn`` on CUDA when installed, else :func:`selective_scan_chunked`.

    Args:
        u (torch.Tensor): Inputs, (batch, d, T).
        delta (torch.Tensor): Step sizes before ``delta_bias`` and softplus, (batch, d, T).
        A (torch.Tensor): State matrix diagonals, (d, n), negative for a stable scan.
        B (torch.Tensor): Input projections, (batch, n, T) or (batch, g, n, T) with g dividing d (channel group i
            of d / g channels reads B[:, i]).
        C (torch.Tensor): Output projections, shaped like B.
        D (torch.Tensor, optional): Skip weights, (d,).
        delta_bias (torch.Tensor, optional): Added to delta, (d,).
        delta_softplus (bool): Apply softplus to delta (after the bias).
        chunk_size (int): Tokens per chunk of the pure-PyTorch path.

    Returns:
        (torch.Tensor): Outputs, (batch, d, T), in u's dtype.

    Examples:
        >>> y = selective_scan(*random_scan_inputs(2, 8, 4, 49), delta_softplus=True)
        >>> y.shape
        torch.Size([2, 8, 49])
    """
    if u.is_cuda and not torch.onnx.is_in_onnx_export() and _cuda_kernel() is not None:
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        return _cuda_kernel()(u, delta, A.float(), B, C, D, None, delta_bias, delta_softplus)
    return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk_size)


def random_scan_inputs(
    batch: int,
    d: int,
    n: int,
    length: int,
    groups: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Seeded ``(u, delta, A, B, C, D, delta_bias)`` at the scale SS2D feeds the scan, for tests and timing.

    Examples:
        >>> import time
        >>> args = random_scan_inputs(1, 4 * 64, 16, 196, groups=4)
        >>> t0 = time.perf_counter(); _ = selective_scan(*args, delta_softplus=True); dt = time.perf_counter() - t0
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, groups, n, length) if groups > 1 else (batch, n, length)
    u, delta = torch.randn(batch, d, length, generator=gen), torch.randn(batch, d, length, generator=gen) - 2
    A = -torch.rand(d, n, generator=gen) * n - 0.5
    B, C = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    D, delta_bias = torch.randn(d, generator=gen), torch.rand(d, generator=gen) - 0.5
    return tuple(t.to(device, dtype) for t in (u, delta, A, B, C, D, delta_bias))
