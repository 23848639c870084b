"""Block-level tests: each spayolo block against hand-derived values, its paper's equations, gradients and ONNX Runtime.

SPAM (SPAYOLO eq. 1-10), the LANMSFF, WAMF and MSFF blocks, FERMam's selective scan and blocks, and the shared pieces.
"""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import n_params, onnx_run, ss2d_params
from spayolo.nn.common import PaddedDWConv, _tap_index, channel_shuffle
from spayolo.nn.fermam import ASFR, SS2D, ConvSSM, cross_merge, cross_scan
from spayolo.nn.lanmsff import (
    PWFS,
    LANMSFFBlock,
    LANMSFFConvBlock,
    LANMSFFHead,
    MassAtt,
    SameConv,
    SeparableConv,
    same_conv,
    subgrid_conv,
)
from spayolo.nn.msff import BFEU, FFM, MSFFModule
from spayolo.nn.scan import _cuda_kernel, random_scan_inputs, selective_scan, selective_scan_torch
from spayolo.nn.spam import FEP, GAM, SPAM, _dft2_matrix, _dft_basis, real_dft2
from spayolo.nn.wamf import MF, WA, CapsuleHead, squash

CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs: one thread is faster, and on a shared 2-core machine two threads spin against other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Pair(nn.Module):
    """Feeds two tensors to a list-`from` block, so it can be exported."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, a, b):
        return self.m([a, b])


class Many(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *x):
        return self.m(list(x))


def onnx_matches(m: nn.Module, *inputs: torch.Tensor, atol: float = 1e-4) -> None:
    m.eval()
    with torch.no_grad():
        ref = m(*inputs)
    ref = ref[0] if isinstance(ref, tuple) else ref  # a head in eval gives (probs, logits); exported, probs alone
    np.testing.assert_allclose(onnx_run(m, *inputs), ref.numpy(), atol=atol, rtol=0)


def backward_ok(m: nn.Module, *inputs: torch.Tensor) -> None:
    m.train()
    y = m(*inputs)
    y.square().mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --- shared pieces and conventions


@pytest.mark.parametrize("module", ["common", "fermam", "lanmsff", "msff", "spam", "wamf"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"spayolo.nn.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("block", [SPAM, ConvSSM, ASFR, MSFFModule, MassAtt, WA, GAM])
def test_width_keeping_blocks_name_themselves(block):
    with pytest.raises(ValueError, match=rf"{block.__name__} keeps its width.*c1=16 and c2=32"):
        block(16, 32)


def test_dft_basis_cached_by_a_prediction_still_trains():
    """Predict, then train at the same size: the cached basis must not be an inference tensor, which autograd refuses
    to save for backward."""
    for cache in (_dft_basis, _dft2_matrix, _tap_index):
        cache.cache_clear()
    with torch.inference_mode():
        for size in (5, 20):  # one (hw x hw) matrix, and the separable bases
            real_dft2(torch.randn(1, 2, size, size))
        PaddedDWConv(2, 2, 7)(torch.randn(1, 2, 4, 4))
    for size in (5, 20):
        x = torch.randn(1, 2, size, size, requires_grad=True)
        real_dft2(x).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    conv, x = PaddedDWConv(2, 2, 7), torch.randn(1, 2, 4, 4, requires_grad=True)
    conv(x).square().sum().backward()
    assert x.grad is not None and conv.conv.weight.grad is not None


# --- SPAM (SPAYOLO eq. 1-10)


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` in eval mode with seeded random BatchNorm statistics and affine terms (fresh ones are an identity,
    which a hand computation that forgot them would match), and FEP's channel scale and bias off their 1 and 0."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g))
        if isinstance(m, FEP):
            m.scale.data.copy_(torch.randn(m.scale.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return module.eval()


def conv_by_hand(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Ultralytics' 1x1 ``Conv`` in eval mode written out: SiLU(BN(W x))."""
    bn, w = conv.bn, conv.conv.weight.flatten(1)
    y = torch.einsum("oc,bchw->bohw", w, x)
    y = (y - bn.running_mean.view(-1, 1, 1)) / (bn.running_var.view(-1, 1, 1) + bn.eps).sqrt()
    y = y * bn.weight.view(-1, 1, 1) + bn.bias.view(-1, 1, 1)
    return y * y.sigmoid()


def se_by_hand(gate: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Squeeze-excitation weights sigma(W2 relu(W1 GAP(x) + b1) + b2), shape (B, C, 1, 1)."""
    hidden = (gate.fc1.weight.flatten(1) @ x.mean((2, 3)).T).T + gate.fc1.bias
    return ((gate.fc2.weight.flatten(1) @ hidden.relu().T).T + gate.fc2.bias).sigmoid()[..., None, None]


def fep_by_hand(fep: FEP, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    spectrum = (torch.fft.fft2(x.double()).real / math.sqrt(h * w)).float()  # eq. 3: Re(FFT2), ortho-normalised
    z = spectrum * fep.scale + fep.bias  # the learnable channel scale and bias of the spectrum
    return conv_by_hand(fep.compress, z) * se_by_hand(fep.attention, z)  # eq. 5 (1x1), eq. 4 and 6 (SE), eq. 7


def test_fep_follows_equations_3_to_7():
    """FEP's SE weights come from the c1-channel spectrum and scale the c2-channel compression."""
    fep = randomised(FEP(4, 6, r=2))
    x = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fep(x), fep_by_hand(fep, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["gate", "spatial"])
def test_spam_follows_equations_1_to_10(attention):
    """Q and K mix the 1/3/5 and 3/5/7 branches (eq. 1-2); V = K + FEP(X) for the gate, V = FEP(X) with K forming
    the spatial map; then GAM (eq. 8-10) with the SE gate taken from V."""
    spam = randomised(SPAM(8, 8, attention=attention))
    hrm = spam.hrm
    hrm.q_weights.data = torch.tensor([0.7, -0.2, 0.4])  # unequal, so a swapped branch shows
    hrm.k_weights.data = torch.tensor([-0.3, 0.9, 0.5])
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        f1, f3, f5, f7 = (branch(x) for branch in hrm.branches)
        q = conv_by_hand(hrm.fuse, 0.7 * f1 - 0.2 * f3 + 0.4 * f5)  # eq. 1
        k = conv_by_hand(hrm.fuse, -0.3 * f3 + 0.9 * f5 + 0.5 * f7)  # eq. 2
        spectral = fep_by_hand(spam.fep, x)
        if attention == "gate":
            v = k + spectral
            attended = (q * v).sigmoid() * v  # eq. 8
        else:
            v = spectral
            weights = (torch.einsum("bci,bcj->bij", q.flatten(2), k.flatten(2)) / math.sqrt(8)).sigmoid()
            attended = torch.einsum("bij,bcj->bci", weights, v.flatten(2)).view_as(v)  # position i attends to j
        expected = attended * se_by_hand(spam.gam.global_gate, v) + x  # eq. 9-10
        torch.testing.assert_close(spam(x), expected, atol=1e-5, rtol=1e-5)


def test_spam_ablations_drop_their_part():
    """frequency=False: V = K; multiscale=False: Q and K are the two halves of one 1x1 Conv."""
    spam = randomised(SPAM(8, 8, frequency=False, multiscale=False))
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        q, k = conv_by_hand(spam.hrm.qk, x).chunk(2, 1)
        expected = (q * k).sigmoid() * k * se_by_hand(spam.gam.global_gate, k) + x
        torch.testing.assert_close(spam(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 7, 7), (1, 4, 14, 14), (1, 2, 16, 17), (2, 2, 28, 28),
                                   (1, 2, 6, 10)])
def test_real_dft2_matches_fft(shape):
    x = torch.randn(shape, dtype=torch.float32)
    h, w = shape[-2:]
    expected = torch.fft.fft2(x.double()).real / math.sqrt(h * w)
    assert torch.allclose(real_dft2(x).double(), expected, atol=1e-5)


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous" if t.is_contiguous() else f"strides {t.stride()}"


@pytest.mark.parametrize("autocast", [False, True])
def test_spam_trains_channels_last_throughout(autocast):
    """In a channels_last training step every SPAM output and every gradient that reaches a BatchNorm is
    channels_last: one contiguous operand sends oneDNN's BatchNorm/SiLU to a 3-5x slower path (bf16 on a CPU)."""
    torch.manual_seed(0)
    spam = SPAM(16, 16).train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    seen, hooks = [], []
    for name, module in spam.named_modules():  # Ultralytics' SiLU is one module shared by every Conv: unhook after
        hooks.append(module.register_forward_hook(
            lambda m, i, out, name=name: seen.append((f"{name} output", _layout(out)))
            if isinstance(out, torch.Tensor) and out.dim() == 4 else None))
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_full_backward_hook(
                lambda m, gi, go, name=name: seen.append((f"{name} grad", _layout(go[0])))))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = spam(x)
        y.backward(torch.randn_like(y))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) > 40
    assert [entry for entry in seen if entry[1] != "channels_last"] == []


@pytest.mark.parametrize("k, s, d, hw", [(7, 1, 1, (4, 4)), (5, 1, 1, (4, 4)), (7, 1, 1, (2, 2)), (3, 1, 1, (4, 4)),
                                         (7, 1, 1, (9, 9)), (5, 2, 1, (4, 6)), (3, 1, 2, (3, 3)), (3, 2, 2, (4, 5))])
def test_padded_dwconv_equals_dwconv_on_any_map(k, s, d, hw):
    from ultralytics.nn.modules import DWConv
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    torch.manual_seed(0)
    stock, padded = DWConv(8, 8, k, s, d), PaddedDWConv(8, 8, k, s, d)
    padded.load_state_dict(stock.state_dict())
    x = torch.randn(2, 8, *hw, requires_grad=True)
    (stock_out, stock_grad), (out, grad) = ((y, torch.autograd.grad(y.square().sum(), x)[0])
                                            for y in (stock(x), padded(x)))
    torch.testing.assert_close(out, stock_out)
    torch.testing.assert_close(grad, stock_grad)
    padded.eval().conv = fuse_conv_and_bn(padded.conv, padded.bn)
    for grad_enabled in (True, False):  # a training step takes the tap matrix, a forward alone the padded conv
        with torch.set_grad_enabled(grad_enabled):
            torch.testing.assert_close(padded.forward_fuse(x), stock.eval()(x))


def test_spam_parameter_count_by_hand():
    c = 16
    # HRM: 4 pointwise Conv(c,c) = 4(c^2 + 2c) [weights + BN], depthwise 3/5/7 = c(9+25+49) + 3*2c, mix weights 3+3,
    # shared fusion Conv = c^2 + 2c. FEP: scale+bias 2c, SE (hidden 8) 17c + 8, compress c^2 + 2c. GAM: SE 17c + 8.
    hrm = 4 * (c * c + 2 * c) + c * 83 + 6 * c + 6 + (c * c + 2 * c)
    expected = hrm + 2 * c + (17 * c + 8) + (c * c + 2 * c) + (17 * c + 8)
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


# --- LANMSFF


@pytest.mark.parametrize("hw", [(7, 7), (13, 13), (8, 8), (5, 9), (1, 1)])
def test_massatt_shape_odd_sizes(hw):
    x = torch.randn(2, 16, *hw)
    assert MassAtt(16)(x).shape == x.shape


def test_massatt_params_and_values():
    m = MassAtt(16)
    # channel path (SE gate, reduction 4): 1x1 conv 16 -> 4 16*4+4 = 68, 1x1 conv 4 -> 16 4*16+16 = 80 -> 148
    # spatial path: conv 1->2 1*2*9+2 = 20, conv 2->4 2*4*9+4 = 76, deconv 4->4 4*4*9+4 = 148, deconv 4->1 4*1*9+1 = 37
    assert n_params(m) == 148 + 20 + 76 + 148 + 37 == 429
    # zeroed last layers: A_c = sigmoid(0) = 0.5 and A_s = sigmoid(0) = 0.5, so Y = X / 4 (eq. 3)
    for layer in (m.channel.fc2, m.up2):
        nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(m(x), x / 4)


def test_massatt_spatial_path_trains_in_fp32_under_bf16_autocast():
    # oneDNN's bf16 weight gradient of a strided 3x3 conv on a 1x1 map (channels_last) is NaN for some batches: the
    # spatial path reaches 1x1 at P4/P5 of a 64 px face, so it must not compute in bf16
    m = MassAtt(16).to(memory_format=torch.channels_last)
    seen = []
    for layer in (m.down1, m.down2, m.up1, m.up2):
        layer.register_forward_hook(lambda mod, inputs, out: seen.append(out.dtype))
    for seed in range(8):
        torch.manual_seed(seed)
        x = torch.randn(64, 16, 2, 2).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters()), f"seed {seed}: non-finite gradient"
    assert set(seen) == {torch.float32}


def test_pwfs_divisible_values():
    x = torch.randn(2, 9, 4, 4)
    groups = torch.stack((x[:, 0:3], x[:, 3:6], x[:, 6:9]))
    ref = (groups.max(0).values + groups.min(0).values) / 2  # eq. 2
    torch.testing.assert_close(PWFS(9)(x), ref)
    assert n_params(PWFS(9)) == 0


def test_pwfs_not_divisible():
    # C = 8: g = ceil(8/3) = 3 groups' members {0,3,6}, {1,4,7}, {2,5} -> the last output uses only channels 2 and 5
    x = torch.randn(2, 8, 3, 3)
    y = PWFS(8)(x)
    assert y.shape == (2, 3, 3, 3)
    for j, members in enumerate(([0, 3, 6], [1, 4, 7], [2, 5])):
        g = x[:, members]
        torch.testing.assert_close(y[:, j], (g.amax(1) + g.amin(1)) / 2)
    # C = 4: g = 2, the last group is empty, so output 0 reduces channels {0, 2} and output 1 channels {1, 3}
    x = torch.randn(1, 4, 2, 2)
    a, b = x[:, 0], x[:, 2]
    torch.testing.assert_close(PWFS(4)(x)[:, 0], (torch.maximum(a, b) + torch.minimum(a, b)) / 2)
    with pytest.raises(ValueError, match="at least 3"):
        PWFS(2)


def test_lanmsff_block():
    # h1 = 16/2 = 8, h2 = 24/2 = 12. split: 2 x Conv(8, 12, 3) = 2 * (8*12*9 + 2*12) = 1776;
    # separable: 2 x (24*9 depthwise + 24*12 pointwise + 2*12 BN) = 1056; full: 2 x Conv(24, 12, 3) = 2 * 2616 = 5232;
    # MassAtt(24): SE 24*6+6 + 6*24+24 = 318, spatial 20 + 76 + 148 + 37 = 281; 1x1 Conv(24, 24): 576 + 48 = 624
    m = LANMSFFBlock(16, 24)
    assert n_params(m) == 1776 + 1056 + 5232 + 599 + 624 == 9287
    assert n_params(LANMSFFBlock(16, 24, massatt=False)) == 9287 - 599
    x = torch.randn(2, 16, 7, 7)
    assert m(x).shape == (2, 24, 7, 7)
    backward_ok(m, x)
    with pytest.raises(ValueError, match="even"):
        LANMSFFBlock(15, 16)
    with pytest.raises(ValueError, match="even"):
        LANMSFFBlock(16, 15)


def test_separable_conv_has_no_activation_between_its_convs():
    m = SeparableConv(4, 6, 3, d=2)
    assert n_params(m) == 4 * 9 + 4 * 6 + 2 * 6  # depthwise, pointwise, BN
    x = torch.randn(1, 4, 9, 9)
    inner = m.pointwise(m.depthwise(x))
    torch.testing.assert_close(m.eval()(x), m.act(m.bn(inner)))
    assert n_params(LANMSFFConvBlock(3, 12)) == (3 * 12 * 9 + 24) + (12 * 9 + 12 * 12 + 24) + (12 * 12 * 9 + 24)


def _stacked_pwfs(x: torch.Tensor, g: int) -> torch.Tensor:
    """PWFS (eq. 2) as first written: the three groups stacked, the short last one completed by the middle one."""
    first, middle, last = x[:, :g], x[:, g : 2 * g], x[:, 2 * g :]
    groups = torch.stack((first, middle, torch.cat((last, middle[:, last.shape[1] :]), 1)))
    return (groups.amax(0) + groups.amin(0)) / 2


@pytest.mark.parametrize("c", [9, 8, 7])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_pwfs_equals_stacked_groups_with_gradients(c, memory_format):
    # small integers make ties common: amax/amin split a tied gradient evenly, the view of the groups must as well
    torch.manual_seed(0)
    x = torch.randint(-2, 3, (2, c, 4, 5)).float().contiguous(memory_format=memory_format).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, ref = PWFS(c)(x), _stacked_pwfs(x_ref, -(-c // 3))
    torch.testing.assert_close(y, ref)
    weights = torch.randn(ref.shape)
    (y * weights).sum().backward(), (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_channel_shuffle_keeps_channels_last():
    x = torch.randn(2, 12, 3, 5)
    y = channel_shuffle(x, 3)
    assert torch.equal(y, x[:, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]])  # ShuffleNet's interleave of 3 groups of 4
    y_cl = channel_shuffle(x.contiguous(memory_format=torch.channels_last), 3)
    assert torch.equal(y_cl, y) and y_cl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("hw,d", [((2, 2), 2), ((1, 1), 1), ((2, 5), 2), ((4, 4), 2), ((9, 7), 2), ((1, 6), 3)])
def test_same_conv_leaves_out_only_taps_that_read_padding(hw, d):
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, *hw, requires_grad=True), torch.randn(6, 4, 3, 3, requires_grad=True)
    y, ref = same_conv(x, w, (d, d)), F.conv2d(x, w, None, 1, d, d)
    torch.testing.assert_close(y, ref)
    weights = torch.randn(ref.shape)
    grads, ref_grads = (torch.autograd.grad((out * weights).sum(), (x, w)) for out in (y, ref))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("hw,d", [((8, 8), (2, 2)), ((9, 7), (2, 2)), ((5, 6), (3, 3)), ((6, 6), (2, 1)),
                                  ((1, 3), (2, 2))])
def test_subgrid_conv_equals_the_dilated_conv(hw, d):
    torch.manual_seed(0)
    x = torch.randn(3, 5, *hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 5, 3, 3, requires_grad=True)
    y, ref = subgrid_conv(x, w, d), F.conv2d(x, w, None, 1, d, d)
    torch.testing.assert_close(y, ref)
    assert y.is_contiguous(memory_format=torch.channels_last)
    weights = torch.randn(ref.shape)
    grads, ref_grads = (torch.autograd.grad((out * weights).sum(), (x, w)) for out in (y, ref))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def _close(a: torch.Tensor, b: torch.Tensor, name: str, scale: torch.Tensor) -> None:
    """fp32 equality up to summation order: within 1e-5 of ``scale``, the largest value of that kind."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(scale), msg=lambda m: f"{name}: {m}")


def _compare_training(m, ref, x, forward_ref) -> None:
    """Train-mode outputs, input and parameter gradients, and BN statistics of ``m`` and of ``forward_ref(ref, x)``.

    A parameter gradient is a sum over the batch and the map, so its rounding error scales with the largest gradient
    (a gate's bias sums terms that nearly cancel).
    """
    ref.load_state_dict(m.state_dict())
    x_ref = x.detach().contiguous().requires_grad_()
    y, y_ref = m.train()(x), forward_ref(ref.train(), x_ref)
    _close(y, y_ref, "output", y_ref.abs().max())
    weights = torch.randn(y.shape)
    (y * weights).sum().backward(), (y_ref * weights).sum().backward()
    _close(x.grad, x_ref.grad, "input gradient", x_ref.grad.abs().max())
    largest = max(p.grad.abs().max() for p in ref.parameters())
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        _close(p.grad, p_ref.grad, f"{name} gradient", largest)
    for (name, b), b_ref in zip(m.named_buffers(), ref.buffers()):
        _close(b.float(), b_ref.float(), name, b_ref.float().abs().max())


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("hw", [(2, 2), (5, 7), (8, 8)])
def test_separable_conv_composed_equals_depthwise_then_pointwise(monkeypatch, d, hw):
    torch.manual_seed(0)
    monkeypatch.setattr(SeparableConv, "composes", lambda self, x: True)  # the CPU-autocast training path, in fp32
    x = torch.randn(3, 6, *hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    _compare_training(SeparableConv(6, 5, 3, d=d), SeparableConv(6, 5, 3, d=d), x,
                      lambda m, x: m.act(m.bn(m.pointwise(m.depthwise(x)))))


def test_separable_conv_composes_only_to_train_under_cpu_autocast():
    m, x = SeparableConv(4, 4), torch.randn(1, 4, 5, 5)
    assert not m.composes(x) and not SeparableConv(4, 4, 2).composes(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.composes(x) and not SeparableConv(4, 4, 2).composes(x)  # even kernel: no size-keeping padding
        assert not m.eval().composes(x)  # evaluation and export run the two convs
        with torch.no_grad():
            assert not m.train().composes(x)


@pytest.mark.parametrize("hw", [(2, 2), (8, 8)])
def test_same_conv_module_equals_ultralytics_conv(hw):
    from ultralytics.nn.modules import Conv

    torch.manual_seed(0)
    x = torch.randn(3, 4, *hw, requires_grad=True)
    _compare_training(SameConv(4, 6, 3, d=2), Conv(4, 6, 3, d=2), x, lambda m, x: m(x))


@pytest.mark.parametrize("hw", [(2, 2), (8, 8)])
def test_lanmsff_block_fast_paths_equal_the_reference(monkeypatch, hw):
    # channels_last shuffle, the composed separable convs, SameConv and whole-gradient copies against the block as
    # first written (NCHW shuffle, each conv as its own modules), in fp32
    from ultralytics.nn.modules import Conv

    def reference(m, x):
        b, c, h, w = x.shape
        halves = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w).chunk(2, 1)
        conv = lambda p, x: p.act(p.bn(p.conv(x)))  # noqa: E731
        x = torch.cat([conv(p, half) for p, half in zip(m.split, halves)], 1)
        x = torch.cat([p.act(p.bn(p.pointwise(p.depthwise(x)))) for p in m.separable], 1)
        x = torch.cat([conv(p, x) for p in m.full], 1)
        return m.project(m.attention(x))

    torch.manual_seed(0)
    monkeypatch.setattr(SeparableConv, "composes", lambda self, x: True)
    m = LANMSFFBlock(16, 24).to(memory_format=torch.channels_last)
    assert isinstance(m.split[1], SameConv) and type(m.split[0]) is Conv
    x = torch.randn(3, 16, *hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    _compare_training(m, LANMSFFBlock(16, 24), x, reference)


@pytest.mark.parametrize("block,c1,c2", [(SeparableConv, 16, 8), (SeparableConv, 72, 36), (SameConv, 72, 36),
                                         (SameConv, 33, 36)])
def test_dilated_convs_bf16_gradients_match_fp32(block, c1, c2):
    # oneDNN's bf16 weight gradients of dilated convs in channels_last come out wrong on maps from 32x32: the
    # depthwise one (relative error ~1, or inf) and, on an AMD EPYC, the dense one at the shapes of the paper's
    # LANMSFF at 64 px (72 or 33 -> 36 channels: relative error 0.4, or NaN). Trained as composed dense convs and
    # sub-grids, they must give the fp32 gradients within bf16 rounding
    torch.manual_seed(0)
    m = block(c1, c2, 3, d=2).train().to(memory_format=torch.channels_last)
    x = torch.randn(4, c1, 32, 32).contiguous(memory_format=torch.channels_last)
    weights, grads = torch.randn(4, c2, 32, 32), {}
    for amp in (False, True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = m(x)
        (y.float() * weights).sum().backward()
        grads[amp] = [p.grad.clone() for p in m.parameters()]
    for bf16, fp32 in zip(grads[True], grads[False]):
        assert (bf16 - fp32).norm() / fp32.norm() < 3e-2


@pytest.mark.parametrize("size", [1, 2, 4])
def test_lanmsff_block_trains_finite_in_bf16_channels_last(size):
    # the composed and cropped convs meet 1x1-4x4 maps at P4/P5 of a 64 px face, where oneDNN's bf16 backward has
    # produced NaN before (MassAtt); a batch as large as training's
    m = LANMSFFBlock(16, 24).to(memory_format=torch.channels_last)
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randn(64, 16, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.float().square().mean().backward()
        assert torch.isfinite(x.grad).all(), f"seed {seed}"
        assert all(torch.isfinite(p.grad).all() for p in m.parameters()), f"seed {seed}"
        m.zero_grad()


def test_lanmsff_head_modes():
    # PWFS widths ceil(9/3) + ceil(8/3) = 3 + 3, plus the last stage's 16 -> Linear(22, 7) = 22*7 + 7 = 161
    head = LANMSFFHead([9, 8, 16], 7)
    assert n_params(head) == 161
    assert n_params(LANMSFFHead([9, 8, 16], 7, pwfs=False)) == (9 + 8 + 16) * 7 + 7 == 238
    x = [torch.randn(2, 9, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    assert head.train()(x).shape == (2, 7)
    probs, logits = head.eval()(x)
    torch.testing.assert_close(probs, logits.softmax(1))
    traced = torch.jit.trace(Many(head), tuple(x))  # exporting (ONNX, TorchScript): the probabilities alone
    torch.testing.assert_close(traced(*x), probs)


# --- WAMF


def test_wa():
    m = WA(8)
    assert n_params(m) == 2 * 8 * 8 + 8 == 136  # one shared 1x1 conv 2C -> C with bias
    x = torch.randn(2, 8, 5, 7)
    assert m(x).shape == x.shape
    nn.init.zeros_(m.mix.weight), nn.init.zeros_(m.mix.bias)
    torch.testing.assert_close(m(x), x / 4)  # both direction gates are sigmoid(0) = 0.5


def test_mf():
    m = MF([16, 8], 16, 7, 2)
    # branch Conv(8, 16, 7, s=2): 8*16*49 + 32 = 6304; fuse Conv(32, 16, 1): 32*16 + 32 = 544
    assert n_params(m) == 6304 + 544 == 6848
    out, inp = torch.randn(2, 16, 4, 4), torch.randn(2, 8, 7, 7)  # stride 2 with padding: ceil(7/2) = 4
    assert m([out, inp]).shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="stride"):
        m([out, torch.randn(2, 8, 4, 4)])


def naive_routing(head: CapsuleHead, x: torch.Tensor) -> torch.Tensor:
    """Dynamic routing written per primary capsule (Sabour et al. 2017, Procedure 1), for reference."""
    t, d = head.types, head.dim
    p = head.primary(x)  # (B, T*D, H, W)
    b_, _, h, w = p.shape
    lengths = []
    for s in range(b_):
        u_hat = []
        for i in range(h * w):
            for k in range(t):
                u = squash(p[s, k * d : (k + 1) * d].flatten(1)[:, i])
                u_hat.append((u @ head.weight[k]).view(head.nc, head.out_dim))
        u_hat = torch.stack(u_hat)  # (N, nc, D_out)
        logit = torch.zeros(u_hat.shape[:2])
        for _ in range(head.iters):
            c = logit.softmax(1)
            v = squash((c[..., None] * u_hat).sum(0) * head.nc / len(u_hat))  # mean over each class's share
            logit = logit + (u_hat * v).sum(-1)
        lengths.append(v.norm(dim=-1))
    return head.scale * torch.stack(lengths)


def test_capsule_head():
    head = CapsuleHead(16, 7, types=4, dim=8, out_dim=16)
    # primary 1x1: 16*(4*8) + 32 = 544; transforms 4 types * 8 * (7*16) = 3584; logit scale 1
    assert n_params(head) == 544 + 3584 + 1 == 4129
    x = torch.randn(2, 16, 3, 3)
    logits = head.train()(x)
    assert logits.shape == (2, 7)
    assert ((logits >= 0) & (logits < head.scale)).all()  # scaled capsule lengths in [0, scale)
    torch.testing.assert_close(logits, naive_routing(head, x), atol=1e-5, rtol=1e-4)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 6]))  # what ClassificationModel.loss applies
    loss.backward()
    assert torch.isfinite(head.weight.grad).all() and head.scale.grad is not None
    probs, raw = head.eval()(x)
    torch.testing.assert_close(probs, raw.softmax(1))


def test_capsule_head_scores_do_not_grow_with_the_feature_map():
    """Class capsules average their predictions: the same face features at 2x2 or 8x8 positions score the same.

    Summed instead (Sabour et al.'s 1,152 MNIST capsules), a 64 px face's 128 agreeing predictions saturated every
    class length near 1, where squash has no gradient, and wamf-yolo-n trained to the majority class only.
    """
    torch.manual_seed(0)
    head = CapsuleHead(16, 7).eval()
    features = torch.randn(1, 16, 1, 1)
    _, small = head(features.expand(1, 16, 2, 2))
    _, large = head(features.expand(1, 16, 8, 8))
    torch.testing.assert_close(small, large)


def test_capsule_head_routes_in_fp32_under_bf16_autocast():
    head = CapsuleHead(16, 7, types=4).train()
    x = torch.randn(2, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x.bfloat16())
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(x.bfloat16().float()), atol=1e-5, rtol=1e-4)


# --- MSFF


def test_msff_module():
    # BFEU(8): 3x3 Conv 8*8*9 + 16 = 592, 5x5 Conv 8*8*25 + 16 = 1616, 1x1 Conv 16*8 + 16 = 144 -> 2352; m = 2 units
    m = MSFFModule(8, 8, 2)
    assert n_params(BFEU(8)) == 592 + 1616 + 144 == 2352
    assert n_params(m) == 2 * 2352
    # e = 0.25: branches 2 wide: 8*2*9 + 4 = 148, 8*2*25 + 4 = 404, 1x1 4*8 + 16 = 48
    assert n_params(BFEU(8, 0.25)) == 148 + 404 + 48
    x = torch.randn(2, 8, 5, 5)
    assert m(x).shape == x.shape
    nn.init.zeros_(m.m[-1].fuse.bn.weight)  # last BFEU outputs zero: the residual (eq. 1) passes x unchanged
    torch.testing.assert_close(m.eval()(x), x)
    with pytest.raises(ValueError, match="residual"):
        MSFFModule(8, 16)


def test_ffm():
    m = FFM([8, 8], 8)
    assert n_params(m) == 2 + 16 * 8 + 8 == 138  # w1, w2 and the 1x1 conv 2C -> C with bias
    f1, f2 = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        gate = (0.5 * f1 + 0.5 * f2 + m.conv(torch.cat((f1, f2), 1))).sigmoid()  # eq. 5 at w1 = w2 = 0.5
        torch.testing.assert_close(m([f1, f2]), gate * f1 + (1 - gate) * f2)
    with pytest.raises(ValueError):
        FFM([8, 16], 8)


# --- zoo export


def _export_cases():
    head_l = LANMSFFHead([9, 8, 16], 7)
    caps = CapsuleHead(16, 7, types=4)
    return {
        "MassAtt": (MassAtt(12), torch.randn(1, 12, 7, 7)),
        "PWFS": (PWFS(8), torch.randn(1, 8, 5, 5)),
        "LANMSFFBlock": (LANMSFFBlock(12, 16), torch.randn(1, 12, 13, 13)),
        "LANMSFFHead": (Many(head_l), torch.randn(1, 9, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)),
        "WA": (WA(8), torch.randn(1, 8, 5, 7)),
        "MF": (Pair(MF([16, 8], 16, 5, 2)), torch.randn(1, 16, 4, 4), torch.randn(1, 8, 8, 8)),
        "CapsuleHead": (caps, torch.randn(1, 16, 3, 3)),
        "MSFFModule": (MSFFModule(8, 8, 2), torch.randn(1, 8, 6, 6)),
        "FFM": (Pair(FFM([8, 8], 8)), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)),
    }


@pytest.mark.parametrize("name", list(_export_cases()))
def test_onnx_export(name):
    torch.manual_seed(0)
    m, *inputs = _export_cases()[name]
    onnx_matches(m, *inputs)


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


# --- FERMam: selective scan


@pytest.mark.parametrize("length", [1, 7, 16, 49, 50, 100])
@pytest.mark.parametrize("groups", [1, 4])
def test_scan_matches_sequential_reference(length, groups):
    args = random_scan_inputs(2, 8, 4, length, groups=groups, seed=length)
    y = selective_scan_torch(*args, delta_softplus=True)
    torch.testing.assert_close(y, reference_scan(*args), rtol=1e-5, atol=1e-5)


def test_scan_no_softplus_and_strong_decay_stay_finite():
    u, delta, A, B, C, D, bias = random_scan_inputs(1, 4, 4, 40, seed=2)
    A = A * 1e3  # decays of exp(-1e4) per step: everything beyond the current token underflows to 0, never to nan
    delta = delta.abs() + 1
    y = selective_scan_torch(u, delta, A, B, C, D, bias, False)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, reference_scan(u, delta, A, B, C, D, bias, False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 20])  # one token (a 1x1 map): A still gets its gradient, zero
def test_scan_gradients_match_reference(length):
    args = [t.requires_grad_() for t in random_scan_inputs(1, 4, 4, length, groups=2, seed=3)]
    grads = torch.autograd.grad(selective_scan_torch(*args, delta_softplus=True).sum(), args)
    expected = torch.autograd.grad(reference_scan(*args).sum(), args)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_scan_cuda_half_precision(dtype, atol):
    args = random_scan_inputs(2, 64, 16, 196, groups=4, seed=4)
    expected = reference_scan(*args)
    y = selective_scan_torch(*(t.cuda().to(dtype) for t in args), delta_softplus=True)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), expected, rtol=atol, atol=atol * expected.abs().max().item())


@pytest.mark.skipif(not CUDA or _cuda_kernel() is None, reason="needs CUDA and mamba_ssm")
def test_scan_cuda_kernel_agrees_with_pure_pytorch():
    args = [t.cuda() for t in random_scan_inputs(2, 64, 16, 196, groups=4, seed=5)]
    torch.testing.assert_close(selective_scan(*args, delta_softplus=True),
                               selective_scan_torch(*args, delta_softplus=True), rtol=1e-4, atol=1e-4)


# --- FERMam: blocks


@pytest.mark.parametrize("directions", [2, 4])
def test_cross_scan_merge_round_trip(directions):
    x = torch.randn(2, 3, 4, 5)
    xs = cross_scan(x, directions)
    assert xs.shape == (2, directions, 3, 20)
    if directions == 4:  # column-major order walks down the first column first
        torch.testing.assert_close(xs[0, 1, 0, :4], x[0, 0, :, 0])
    torch.testing.assert_close(xs[:, -1], xs[:, directions // 2 - 1].flip(-1))
    torch.testing.assert_close(cross_merge(xs, 4, 5), directions * x)


def test_block_param_counts():
    assert ss2d_params(8, 16, 4) == 1952 and ss2d_params(8, 4, 2) == 544
    conv_path = (8 * 9 + 2 * 8) + (8 * 8 + 2 * 8)  # DWConv 3x3 + BN, Conv 1x1 + BN on half of 16
    assert n_params(ConvSSM(16, 16)) == conv_path + 1952 == 2120
    assert n_params(ConvSSM(16, 16, scan=False)) == conv_path
    level = (32 * 8 + 2 * 8) + (8 * 9 + 2 * 8) + 544  # Conv 1x1 32->8, DWConv 3x3, SS2D(8, n=4, 2 directions)
    assert n_params(ASFR(32, 32)) == 3 * level + (24 * 32 + 2 * 32) == 3544


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
    """Mamba's initialisation: A = -(1..n) per channel, D = 1, dt = softplus(dt_bias) log-uniform in [1e-3, 0.1]."""
    torch.manual_seed(0)
    m = SS2D(64, d_state=4)  # 4 directions x 64 channels: 256 draws of dt
    torch.testing.assert_close(-m.A_log.exp(), -torch.arange(1.0, 5.0).expand(256, 4))
    torch.testing.assert_close(m.D.detach(), torch.ones(256))
    log_dt = F.softplus(m.dt_bias).log10()
    assert (log_dt >= -3 - 1e-5).all() and (log_dt <= -1 + 1e-5).all()
    assert log_dt.min() < -2.9 and log_dt.max() > -1.1 and abs(log_dt.mean() + 2) < 0.15  # spread over the range


def test_convssm_onnx_matches_torch():
    torch.manual_seed(0)
    m = ConvSSM(16, 16).eval()
    x = torch.randn(1, 16, 10, 10)  # 100 tokens: the traced graph unrolls the recurrence over all of them
    with torch.no_grad():
        expected = m(x)
    torch.testing.assert_close(torch.from_numpy(onnx_run(m, x)), expected, rtol=1e-4, atol=1e-4)
