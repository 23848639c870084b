"""Module zoo: LANMSFF, WAMF and MSFF blocks and their YOLOv8-cls model YAMLs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from spayolo.nn.lanmsff import PWFS, LANMSFFBlock, LANMSFFHead, MassAtt
from spayolo.nn.msff import BFEU, FFM, MSFFModule
from spayolo.nn.wamf import MF, WA, CapsuleHead, squash


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs: one thread is faster, and on a shared 2-core machine two threads spin against other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


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
    import onnxruntime as ort

    m.eval()
    with torch.no_grad():
        ref = m(*inputs)
    f = io.BytesIO()
    names = [f"x{i}" for i in range(len(inputs))]
    torch.onnx.export(m, inputs, f, opset_version=17, dynamo=False, input_names=names)
    session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    np.testing.assert_allclose(out, ref.numpy(), atol=atol, rtol=0)


def backward_ok(m: nn.Module, *inputs: torch.Tensor) -> None:
    m.train()
    y = m(*inputs)
    y.square().mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- LANMSFF


@pytest.mark.parametrize("hw", [(7, 7), (13, 13), (8, 8), (5, 9), (1, 1)])
def test_massatt_shape_odd_sizes(hw):
    x = torch.randn(2, 16, *hw)
    assert MassAtt(16)(x).shape == x.shape


def test_massatt_params_and_values():
    m = MassAtt(16)
    # channel path: Linear(16, 4) 16*4+4 = 68, Linear(4, 16) 4*16+16 = 80 -> 148
    # spatial path: conv 1->2 1*2*9+2 = 20, conv 2->4 2*4*9+4 = 76, deconv 4->4 4*4*9+4 = 148, deconv 4->1 4*1*9+1 = 37
    assert n_params(m) == 148 + 20 + 76 + 148 + 37 == 429
    # zeroed last layers: A_c = sigmoid(0) = 0.5 and A_s = sigmoid(0) = 0.5, so Y = X / 4 (eq. 3)
    for layer in (m.channel[4], m.up2):
        nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(m(x), x / 4)


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
    # h = 16/2 = 8; six 3x3 Conv(8, 8): 8*8*9 + 2*8 (BN) = 592 each -> 3552; MassAtt(16) = 429;
    # 1x1 Conv(16, 24): 16*24 + 2*24 = 432
    m = LANMSFFBlock(16, 24)
    assert n_params(m) == 3552 + 429 + 432 == 4413
    assert n_params(LANMSFFBlock(16, 24, massatt=False)) == 3552 + 432
    x = torch.randn(2, 16, 7, 7)
    assert m(x).shape == (2, 24, 7, 7)
    backward_ok(m, x)
    with pytest.raises(ValueError, match="even"):
        LANMSFFBlock(15, 16)


def test_lanmsff_head_modes():
    # PWFS widths ceil(9/3) + ceil(8/3) = 3 + 3, plus the last stage's 16 -> Linear(22, 7) = 22*7 + 7 = 161
    head = LANMSFFHead([9, 8, 16], 7)
    assert n_params(head) == 161
    assert n_params(LANMSFFHead([9, 8, 16], 7, pwfs=False)) == (9 + 8 + 16) * 7 + 7 == 238
    x = [torch.randn(2, 9, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    assert head.train()(x).shape == (2, 7)
    probs, logits = head.eval()(x)
    torch.testing.assert_close(probs, logits.softmax(1))
    head.export = True
    torch.testing.assert_close(head(x), probs)


# ---------------------------------------------------------------- WAMF


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
        for r in range(head.iters):
            c = logit.softmax(1)
            v = squash((c[..., None] * u_hat).sum(0))
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


# ---------------------------------------------------------------- MSFF


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


# ---------------------------------------------------------------- export, determinism


def _export_cases():
    head_l = LANMSFFHead([9, 8, 16], 7)
    caps = CapsuleHead(16, 7, types=4)
    for h in (head_l, caps):
        h.export = True
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


def test_deterministic_given_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        cases = _export_cases()
        with torch.no_grad():
            outs.append([m.eval()(*inputs) for m, *inputs in cases.values()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- model YAMLs

SCALED = ["lanmsff-yolo", "lanmsff-yolo-nopwfs", "lanmsff-yolo-nomassatt", "wamf-yolo", "wamf-yolo-nowa",
          "wamf-yolo-nomf", "msff-yolo"]


@pytest.fixture
def no_flops(monkeypatch):
    """ClassificationModel always prints a summary; skip its GFLOPs profiling, which the test does not check."""
    import ultralytics.utils.torch_utils as torch_utils

    monkeypatch.setattr(torch_utils, "get_flops", lambda *args, **kwargs: 0.0)


@pytest.mark.parametrize("name", [f"{b}-n.yaml" for b in SCALED] + ["lanmsff.yaml", "msff.yaml"])
def test_yaml_forward_backward(name, no_flops):
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO(name)
    model = yolo.model
    assert model.yaml["nc"] == 7 and yolo.task == "classify"
    x = torch.randn(2, 3, 64, 64)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 7)
    nn.functional.cross_entropy(logits, torch.tensor([1, 5])).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        probs, raw = model(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


@pytest.mark.parametrize("base", SCALED)
def test_yaml_builds_every_scale(base, no_flops):
    from ultralytics import YOLO

    sizes = []
    for scale in "smlx":
        with torch.device("meta"):  # structure and parameter counts only; no memory, no init cost
            model = YOLO(f"{base}-{scale}.yaml").model
        assert model.yaml["nc"] == 7
        sizes.append(n_params(model))
    assert sizes == sorted(sizes) and len(set(sizes)) == 4  # every scale builds and grows with s < m < l < x


def test_lanmsff_paper_widths_kept_exactly(no_flops, tmp_path):
    from ultralytics import YOLO

    from spayolo.parser import ModelConfigError

    model = YOLO("lanmsff.yaml").model  # channel_divisor: 1, so no rounding up to multiples of 8
    widths = []
    hooks = [model.model[i].register_forward_hook(lambda m, x, y: widths.append(y.shape[1])) for i in (1, 3, 5, 7)]
    model.eval()(torch.zeros(1, 3, 64, 64))
    assert widths == [66, 72, 78, 84]
    for hook in hooks:
        hook.remove()
    bad = tmp_path / "bad-divisor.yaml"
    bad.write_text((REPO / "cfg" / "models" / "lanmsff.yaml").read_text().replace("channel_divisor: 1",
                                                                               "channel_divisor: 0"))
    with pytest.raises(ModelConfigError, match="bad-divisor.yaml.*channel_divisor"):
        YOLO(str(bad))
