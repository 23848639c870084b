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


def test_adan_updates_each_tensor_of_a_group_by_its_own_steps():
    """The one-pass update of a group: several shapes and layouts, a tensor that joins a step late, one never used."""
    torch.manual_seed(0)
    starts = [torch.randn(3), torch.randn(4, 2, 3, 3).contiguous(memory_format=torch.channels_last), torch.randn(2)]
    grads = [[torch.randn_like(start) for _ in range(3)] for start in starts]
    params = [torch.nn.Parameter(start.clone()) for start in starts]
    unused = torch.nn.Parameter(torch.ones(2))
    optimizer = Adan([*params, unused], lr=0.1, weight_decay=0.05)
    late = params[2]
    for k in range(3):
        for param, g in zip(params, grads):
            param.grad = None if param is late and k == 0 else g[k].clone()
        optimizer.step()
    expected = [adan_reference(starts[0], grads[0]), adan_reference(starts[1], grads[1]),
                adan_reference(starts[2], grads[2][1:])]
    for param, want in zip(params, expected):
        assert torch.allclose(param.detach(), want, atol=1e-6)
    assert optimizer.state[late]["step"] == 2 and not optimizer.state[unused]
    assert torch.equal(unused.detach(), torch.ones(2))


def test_adan_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="three betas"):
        Adan([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 0.99))
