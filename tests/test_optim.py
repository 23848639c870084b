"""The Adan optimizer (Xie et al., TPAMI 2024, Alg. 1) against its update rule written out by hand."""

from __future__ import annotations

import pytest
import torch

from spayolo.engine import Adan


def adan_reference(theta, grads, lr=0.1, betas=(0.98, 0.92, 0.99), eps=1e-8, wd=0.05):
    """Adan, Alg. 1, written out step by step with plain tensors."""
    b1, b2, b3 = betas
    m = v = n = torch.zeros_like(theta)
    previous = grads[0]
    for k, g in enumerate(grads, start=1):
        d = g - previous
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + b2 * d) ** 2
        step = (m / (1 - b1**k) + b2 * v / (1 - b2**k)) / ((n / (1 - b3**k)).sqrt() + eps)
        theta = (theta - lr * step) / (1 + lr * wd)
        previous = g
    return theta


def test_adan_matches_update_rule():
    torch.manual_seed(0)
    start = torch.randn(5)
    grads = [torch.randn(5) for _ in range(3)]
    param = torch.nn.Parameter(start.clone())
    optimizer = Adan([param], lr=0.1, weight_decay=0.05)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
    assert torch.allclose(param.detach(), adan_reference(start, grads), atol=1e-6)


def test_adan_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="three betas"):
        Adan([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 0.99))
