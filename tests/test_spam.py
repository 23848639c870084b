"""SPAM blocks (SPAYOLO eq. 1-10) and the Adan optimizer, checked against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from spayolo.engine import Adan
from spayolo.nn.spam import GAM, SPAM, real_dft2


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 4, 14, 14), (2, 2, 28, 28), (1, 2, 6, 10)])
def test_real_dft2_matches_fft(shape):
    x = torch.randn(shape, dtype=torch.float32)
    h, w = shape[-2:]
    expected = torch.fft.fft2(x.double()).real / math.sqrt(h * w)
    assert torch.allclose(real_dft2(x).double(), expected, atol=1e-5)


def test_spam_parameter_count_by_hand():
    c = 16
    # HRM: 4 pointwise Conv(c,c) = 4(c^2 + 2c) [weights + BN], depthwise 3/5/7 = c(9+25+49) + 3*2c, mix weights 3+3,
    # shared fusion Conv = c^2 + 2c. FEP: scale+bias 2c, SE (hidden 8) 17c + 8, compress c^2 + 2c. GAM: SE 17c + 8.
    expected = 4 * (c * c + 2 * c) + c * 83 + 6 * c + 6 + (c * c + 2 * c) + 2 * c + (17 * c + 8) + (c * c + 2 * c) + (17 * c + 8)
    assert expected == 6 * c * c + 137 * c + 22
    assert n_params(SPAM(c, c)) == expected
    assert n_params(SPAM(c, c, frequency=False)) == expected - (2 * c + 17 * c + 8 + c * c + 2 * c)
    # multiscale=False: one Conv(c, 2c, 1) = 2c^2 + 4c replaces the branches, mix weights and fusion.
    assert n_params(SPAM(c, c, multiscale=False)) == 2 * c * c + 4 * c + (c * c + 21 * c + 8) + (17 * c + 8)


@pytest.mark.parametrize("attention", ["gate", "spatial"])
@pytest.mark.parametrize("size", [7, 13])
def test_spam_shape_and_gradients(attention, size):
    torch.manual_seed(0)
    block = SPAM(32, 32, attention=attention)
    x = torch.randn(2, 32, size, size, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_gam_follows_equations_8_to_10():
    torch.manual_seed(0)
    gam = GAM(8, 8).eval()
    x, q, k, v = (torch.randn(1, 8, 5, 5) for _ in range(4))
    gate = gam.global_gate
    g = torch.sigmoid(gate.fc2(torch.relu(gate.fc1(v.mean((2, 3), keepdim=True)))))
    expected = (torch.sigmoid(q * v) * v) * g + x
    assert torch.allclose(gam(x, q, k, v), expected, atol=1e-6)


def test_spam_rejects_width_change_and_unknown_attention():
    with pytest.raises(ValueError, match="c1=16 and c2=32"):
        SPAM(16, 32)
    with pytest.raises(ValueError, match="'gate' or 'spatial'"):
        SPAM(16, 16, attention="global")


def test_spam_is_deterministic_given_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        block = SPAM(16, 16).eval()
        outputs.append(block(torch.randn(1, 16, 9, 9)))
    assert torch.equal(*outputs)


def test_spam_onnx_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    block = SPAM(16, 16).eval()
    x = torch.randn(2, 16, 14, 14)
    path = tmp_path / "spam.onnx"
    torch.onnx.export(block, (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(3, 16, 14, 14)):
        (onnx_out,) = session.run(None, {"x": batch.numpy()})
        assert abs(onnx_out - block(batch).detach().numpy()).max() < 1e-4


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
