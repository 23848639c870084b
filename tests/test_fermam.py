"""FERMam: the chunked selective scan against a sequential reference, Conv-SSM and ASFR blocks, YAMLs and ONNX export."""

from __future__ import annotations

import io
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import spayolo  # noqa: F401  installs the parser hooks
import spayolo.nn.fermam  # noqa: F401  registers ConvSSM and ASFR
from spayolo.nn.fermam import ASFR, SS2D, ConvSSM, cross_merge, cross_scan
from spayolo.nn.scan import _cuda_kernel, random_scan_inputs, selective_scan, selective_scan_chunked

CUDA = torch.cuda.is_available()
YAMLS = ("fermam-yolo", "fermam-yolo-noscan", "fermam-yolo-noasfr")


def reference_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """Token-by-token S6 recurrence: h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t."""
    batch, d, length = u.shape
    delta = delta + delta_bias[:, None]
    delta = F.softplus(delta) if delta_softplus else delta
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    B, C = B.repeat_interleave(d // B.shape[1], 1), C.repeat_interleave(d // C.shape[1], 1)  # (batch, d, n, T)
    h, ys = u.new_zeros(batch, d, A.shape[1]), []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[..., t] * u[:, :, t, None]
        ys.append((h * C[..., t]).sum(-1))
    return torch.stack(ys, -1) + D[:, None] * u


def build(name: str):
    from ultralytics.nn.tasks import ClassificationModel

    with mock.patch.object(ClassificationModel, "info"):  # info() profiles GFLOPs at 640 px: too slow for a test
        return ClassificationModel(f"{name}.yaml", verbose=False)


def onnx_run(model: torch.nn.Module, x: torch.Tensor):
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, opset_version=17, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


# --- selective scan -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 16, 49, 50, 100])
@pytest.mark.parametrize("groups", [1, 4])
def test_scan_matches_sequential_reference(length, groups):
    args = random_scan_inputs(2, 8, 4, length, groups=groups, seed=length)
    y = selective_scan_chunked(*args, delta_softplus=True, chunk_size=16)
    torch.testing.assert_close(y, reference_scan(*args), rtol=1e-5, atol=1e-5)


def test_scan_chunk_size_does_not_change_result():
    args = random_scan_inputs(1, 8, 4, 49, seed=1)
    ys = [selective_scan_chunked(*args, delta_softplus=True, chunk_size=L) for L in (8, 32, 64)]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ys[0], ys[2], rtol=1e-5, atol=1e-5)


def test_scan_no_softplus_and_strong_decay_stay_finite():
    u, delta, A, B, C, D, bias = random_scan_inputs(1, 4, 4, 40, seed=2)
    A = A * 1e3  # decays of exp(-1e4) per step: everything beyond the current token underflows to 0, never to nan
    delta = delta.abs() + 1
    y = selective_scan_chunked(u, delta, A, B, C, D, bias, False, 16)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, reference_scan(u, delta, A, B, C, D, bias, False), rtol=1e-5, atol=1e-5)


def test_scan_gradients_match_reference():
    args = [t.requires_grad_() for t in random_scan_inputs(1, 4, 4, 20, groups=2, seed=3)]
    grads = torch.autograd.grad(selective_scan_chunked(*args, delta_softplus=True, chunk_size=8).sum(), args)
    expected = torch.autograd.grad(reference_scan(*args).sum(), args)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_scan_cuda_half_precision(dtype, atol):
    args = random_scan_inputs(2, 64, 16, 196, groups=4, seed=4)
    expected = reference_scan(*args)
    y = selective_scan_chunked(*(t.cuda().to(dtype) for t in args), delta_softplus=True)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), expected, rtol=atol, atol=atol * expected.abs().max().item())


@pytest.mark.skipif(not CUDA or _cuda_kernel() is None, reason="needs CUDA and mamba_ssm")
def test_scan_cuda_kernel_agrees_with_chunked():
    args = [t.cuda() for t in random_scan_inputs(2, 64, 16, 196, groups=4, seed=5)]
    torch.testing.assert_close(selective_scan(*args, delta_softplus=True),
                               selective_scan_chunked(*args, delta_softplus=True), rtol=1e-4, atol=1e-4)


# --- blocks ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directions", [2, 4])
def test_cross_scan_merge_round_trip(directions):
    x = torch.randn(2, 3, 4, 5)
    xs = cross_scan(x, directions)
    assert xs.shape == (2, directions, 3, 20)
    if directions == 4:  # column-major order walks down the first column first
        torch.testing.assert_close(xs[0, 1, 0, :4], x[0, 0, :, 0])
    torch.testing.assert_close(xs[:, -1], xs[:, directions // 2 - 1].flip(-1))
    torch.testing.assert_close(cross_merge(xs, 4, 5), directions * x)


def ss2d_params(c, n, k):
    """Hand count of SS2D(c, n, expand=1, directions=k), r = ceil(c / 16)."""
    r = -(-c // 16)
    return (c * 2 * c  # in_proj, x and z, no bias
            + c * 9 + c  # depthwise 3x3 with bias
            + k * (r + 2 * n) * c  # per-direction x_proj -> (dt, B, C)
            + k * c * r + k * c  # per-direction dt_proj and dt bias
            + k * c * n + k * c  # A_log and D
            + 2 * c  # LayerNorm
            + c * c)  # out_proj


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_block_param_counts():
    assert ss2d_params(8, 16, 4) == 1952 and ss2d_params(8, 4, 2) == 544
    conv_path = (8 * 9 + 2 * 8) + (8 * 8 + 2 * 8)  # DWConv 3x3 + BN, Conv 1x1 + BN on half of 16
    assert count(ConvSSM(16, 16)) == conv_path + 1952 == 2120
    assert count(ConvSSM(16, 16, scan=False)) == conv_path
    level = (32 * 8 + 2 * 8) + (8 * 9 + 2 * 8) + 544  # Conv 1x1 32->8, DWConv 3x3, SS2D(8, n=4, 2 directions)
    assert count(ASFR(32, 32)) == 3 * level + (24 * 32 + 2 * 32) == 3544


@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (2, 16, 4, 6), (2, 16, 1, 1)])
def test_block_shapes_and_backward(shape):
    x = torch.randn(shape, requires_grad=True)
    for block in (ConvSSM(16, 16), ConvSSM(16, 16, scan=False), ASFR(16, 16), SS2D(16, directions=2)):
        y = block.train()(x)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    assert torch.isfinite(x.grad).all()


def test_blocks_reject_bad_widths():
    with pytest.raises(ValueError):
        ConvSSM(16, 32)
    with pytest.raises(ValueError):
        ConvSSM(15, 15)
    with pytest.raises(ValueError):
        ASFR(16, 8)
    with pytest.raises(ValueError):
        SS2D(8, directions=3)


def test_ss2d_init():
    m = SS2D(16, d_state=4)
    torch.testing.assert_close(-m.A_log.exp()[0], -torch.arange(1.0, 5.0))
    dt = F.softplus(m.dt_bias)
    assert (dt > 0.9e-4).all() and (dt < 0.11).all()


def test_deterministic_given_seed():
    x = torch.randn(1, 16, 6, 6)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(torch.nn.Sequential(ConvSSM(16, 16), ASFR(16, 16)).eval()(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_convssm_onnx_matches_torch():
    torch.manual_seed(0)
    m = ConvSSM(16, 16).eval()
    x = torch.randn(1, 16, 10, 10)  # 100 tokens: six full chunks of 16 and a partial one
    with torch.no_grad():
        expected = m(x)
    torch.testing.assert_close(onnx_run(m, x), expected, rtol=1e-4, atol=1e-4)


# --- models ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_builds_at_every_scale(name):
    models = [build(f"{name}-{s}") for s in "nsmlx"]
    sizes = [count(m) for m in models]
    assert sizes == sorted(sizes) and len(set(sizes)) == 5
    for model, p5 in zip(models, (256, 512, 768, 1024, 1280)):  # min(1024, max_channels) * width
        blocks = [m for m in model.model if isinstance(m, (ConvSSM, ASFR))]
        assert [m.conv[1].conv.out_channels * 2 if isinstance(m, ConvSSM) else m.fuse.conv.out_channels
                for m in blocks] == [p5 // 2, p5] + ([] if name.endswith("noasfr") else [p5])


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_forward_backward_n(name):
    torch.manual_seed(0)
    model = build(f"{name}-n").train()
    kinds = [type(m).__name__ for m in model.model]
    assert kinds.count("ConvSSM") == 2 and kinds.count("ASFR") == (0 if name.endswith("noasfr") else 1)
    scans = sum(isinstance(m, SS2D) for m in model.modules())
    assert scans == {"fermam-yolo": 5, "fermam-yolo-noscan": 3, "fermam-yolo-noasfr": 2}[name]
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 7)
    y.logsumexp(1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_model_ablations_differ_by_the_dropped_parts():
    full, noscan, noasfr = (count(build(f"{name}-n")) for name in YAMLS)
    # n scale: Conv-SSM at P4 (128 ch) and P5 (256 ch) scan half the width; ASFR works at 256 / 4 = 64 per level
    assert full - noscan == ss2d_params(64, 16, 4) + ss2d_params(128, 16, 4)
    level = (256 * 64 + 2 * 64) + (64 * 9 + 2 * 64) + ss2d_params(64, 4, 2)
    assert full - noasfr == 3 * level + (3 * 64 * 256 + 2 * 256)


def test_fermam_yolo_n_onnx_matches_torch():
    torch.manual_seed(0)
    model = build("fermam-yolo-n").eval()
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # Classify returns probabilities only, as in Ultralytics' exporter
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(onnx_run(model, x), expected, rtol=1e-4, atol=1e-4)
