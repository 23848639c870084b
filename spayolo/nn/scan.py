"""Selective scan (Mamba S6, Gu & Dao 2023, Alg. 2): a pure-PyTorch recurrence, or mamba_ssm's CUDA kernel when present.

The recurrence, per channel d and state n, is h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t and y_t = C_t h_t + D u_t. The
decays and inputs of all tokens are computed in a few whole-tensor ops; only the two-op update of h is looped over the
T tokens, in time-major layout so that each step reads and writes one contiguous slice. That costs d n per token,
where a chunked form (a masked L x L decay matrix per chunk, as in Mamba-2's SSD) costs d n L: at the 4 to 196
tokens it was measured on, the loop is the faster one on a CPU, in training and in inference. The traced/ONNX graph
holds T copies of the update (Mul, Add), every op a stock one.

Precision: the scan always runs in float32, whatever the input dtype or autocast, and its output is cast back. Under
float16/bfloat16 the error versus a float32 reference is therefore the rounding of the inputs and outputs only: expect
about 1e-3 relative (atol 1e-2 on unit-scale outputs) for float16 and 1e-2 relative (atol 5e-2) for bfloat16.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ("random_scan_inputs", "selective_scan", "selective_scan_torch")


@lru_cache(maxsize=1)
def _cuda_kernel():
    """mamba_ssm's fused selective scan, or None; imported on first CUDA use only, never required."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Pure-PyTorch selective scan, token by token; the arguments and result of :func:`selective_scan`."""
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
        # Layout (time, batch, group, channel-in-group, state): channels of group i read B[:, i] and C[:, i].
        B, C = (t.permute(3, 0, 1, 2).unsqueeze(3) for t in (B, C))
        dt = delta.view(b, g, d // g, length).permute(3, 0, 1, 2).unsqueeze(-1)
        decay = (dt * A.view(g, d // g, n)).exp()
        inputs = dt * u.view(b, g, d // g, length).permute(3, 0, 1, 2).unsqueeze(-1) * B
        state, states = torch.zeros_like(inputs[0]), []
        for t in range(length):  # from a zero state, so that A gets a (zero) gradient even from one token
            state = decay[t] * state + inputs[t]
            states.append(state)
        y = (torch.stack(states) * C).sum(-1)  # (time, batch, group, channel)
        y = y.permute(1, 2, 3, 0).reshape(b, d, length)
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
) -> torch.Tensor:
    """y = S6(u): mamba_ssm's ``selective_scan_fn`` on CUDA when installed, else :func:`selective_scan_torch`.

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
    return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)


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
