"""MTCNN face detector (Zhang et al., IEEE SPL 2016) in PyTorch, using the weights the `mtcnn` PyPI package ships.

Three cascaded nets: PNet scans an image pyramid for 12x12 face windows, RNet re-scores 24x24 crops of the
candidates, ONet re-scores 48x48 crops and regresses five landmarks. The whole cascade runs on the device of the
module (CPU or CUDA), batched over frames and pyramid scales; crops are cut with torchvision's roi_align.

The `mtcnn` package itself is never imported (its ``__init__`` imports TensorFlow); only its weight files are read.
The three nets export to ONNX (`MTCNN.export_onnx`) and can run in ONNX Runtime (`MTCNN.use_onnx`), about twice as
fast as PyTorch on a small CPU for these tiny convolutions; the cascade's glue (NMS, roi_align) stays in PyTorch.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

__all__ = ("MTCNN", "ONet", "PNet", "RNet", "mtcnn_weights_dir")

# example input of each net for ONNX export, and which of its axes stay dynamic (PNet is fully convolutional)
ONNX_INPUTS = {"pnet": ((1, 3, 48, 64), {0: "batch", 2: "height", 3: "width"}),
               "rnet": ((2, 3, 24, 24), {0: "batch"}),
               "onet": ((2, 3, 48, 48), {0: "batch"})}


def mtcnn_weights_dir() -> Path:
    """Folder holding {pnet,rnet,onet}.lz4 of the installed `mtcnn` package, found without importing it."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MTCNN weights need the `mtcnn` package (pip install mtcnn lz4 joblib; TensorFlow not needed)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    if not (folder / "pnet.lz4").is_file():
        raise FileNotFoundError(f"MTCNN weight files not found in {folder}")
    return folder


class _TFNet(nn.Module):
    """Base that copies a TensorFlow weight list (kernels HWIO, PReLU slopes (1,1,C), dense (in,out)) in layer order."""

    def load_tf(self, arrays: list[np.ndarray]) -> _TFNet:
        params = [p for p in self.parameters()]
        if len(params) != len(arrays):
            raise ValueError(f"{type(self).__name__} expects {len(params)} arrays, got {len(arrays)}")
        with torch.no_grad():
            for p, a in zip(params, arrays):
                t = torch.from_numpy(np.asarray(a, dtype=np.float32))
                if t.ndim == 4:  # conv kernel HWIO -> OIHW
                    t = t.permute(3, 2, 0, 1)
                elif t.ndim == 2:  # dense (in, out) -> Linear (out, in)
                    t = t.t()
                p.copy_(t.reshape(p.shape))
        return self

    @staticmethod
    def flatten_tf(x: torch.Tensor) -> torch.Tensor:
        # The TF port permutes (H,W,C)->(W,H,C) before Flatten (a leftover of Caffe's transposed images), so the
        # dense weights expect W-major, then H, then C order.
        return x.permute(0, 3, 2, 1).flatten(1)


def _conv_prelu(c1: int, c2: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(c1, c2, k), nn.PReLU(c2)]


class PNet(_TFNet):
    """Proposal net: fully convolutional 12x12 window classifier, stride 2; returns (box offsets, face prob)."""

    def __init__(self):
        super().__init__()
        # TF "same" max-pooling pads only at the end, which is what ceil_mode does
        self.body = nn.Sequential(*_conv_prelu(3, 10, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  *_conv_prelu(10, 16, 3), *_conv_prelu(16, 32, 3))
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(x)
        return self.box(x), self.cls(x).softmax(1)[:, 1]


class _CropNet(_TFNet):
    """RNet/ONet layout: conv body, dense + PReLU, then box offsets, optionally 10 landmark values, face prob."""

    def __init__(self, body: nn.Sequential, flat: int, hidden: int, landmarks: bool):
        super().__init__()
        self.body = body
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.PReLU(hidden))
        self.box = nn.Linear(hidden, 4)
        self.lmk = nn.Linear(hidden, 10) if landmarks else None  # before cls: the TF weight list's order
        self.cls = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.fc(self.flatten_tf(self.body(x)))
        prob = self.cls(x).softmax(1)[:, 1]
        return (self.box(x), prob) if self.lmk is None else (self.box(x), self.lmk(x), prob)


class RNet(_CropNet):
    """Refinement net on 24x24 crops; returns (box offsets, face prob)."""

    def __init__(self):
        super().__init__(nn.Sequential(*_conv_prelu(3, 28, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       *_conv_prelu(28, 48, 3), nn.MaxPool2d(3, 2), *_conv_prelu(48, 64, 2)),
                         flat=576, hidden=128, landmarks=False)


class ONet(_CropNet):
    """Output net on 48x48 crops; returns (box offsets, landmarks x1..x5,y1..y5 in box units, face prob)."""

    def __init__(self):
        super().__init__(nn.Sequential(*_conv_prelu(3, 32, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       *_conv_prelu(32, 64, 3), nn.MaxPool2d(3, 2),
                                       *_conv_prelu(64, 64, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
                                       *_conv_prelu(64, 128, 2)),
                         flat=1152, hidden=256, landmarks=True)


def _pyramid(h: int, w: int, min_face: float, factor: float) -> list[float]:
    """Scales mapping a min_face-sized face to PNet's 12 px window, shrinking by factor while the image is >= 12 px."""
    scales, s = [], 12.0 / min_face
    while min(h, w) * s >= 12:
        scales.append(s)
        s *= factor
    return scales


def _pack(h: int, w: int, scales: list[float], gap: int = 2) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """Shelf-pack the pyramid levels into columns of one canvas (x0, y0, hs, ws), origins even to keep PNet's grid."""
    tiles, x0, y0, col_w = [], 0, 0, 0
    height = math.ceil(h * scales[0]) if scales else 0
    for s in scales:
        hs, ws = math.ceil(h * s), math.ceil(w * s)
        if y0 and y0 + hs > height:  # start a new column
            x0, y0, col_w = x0 + col_w + gap + (col_w + gap) % 2, 0, 0
        tiles.append((x0, y0, hs, ws))
        y0 += hs + gap + (hs + gap) % 2
        col_w = max(col_w, ws)
    width = max((t[0] + t[3] for t in tiles), default=0)
    return tiles, height, width


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow boxes (x1,y1,x2,y2) to squares about their centres, side = the longer side."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True) / 2
    return torch.cat([c - half, c + half], 1)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, idx: torch.Tensor, thr: float) -> torch.Tensor:
    """Greedy NMS on intersection over the smaller area (MTCNN's final 'Min' mode): drops boxes nested in a face."""
    order = scores.argsort(descending=True)
    b, i = boxes[order], idx[order]
    lt, rb = torch.maximum(b[:, None, :2], b[None, :, :2]), torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area = (b[:, 2:] - b[:, :2]).prod(1)
    overlap = (inter / torch.minimum(area[:, None], area[None]).clamp(min=1e-6) > thr) & (i[:, None] == i[None])
    keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
    for k in range(len(b)):  # few boxes survive ONet, so a Python loop over them is cheap
        if keep[k]:
            keep[k + 1 :] &= ~overlap[k, k + 1 :]
    return order[keep]


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply MTCNN's box regression: each corner moves by its offset times the box width/height."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * wh


class MTCNN(nn.Module):
    """MTCNN cascade; forward(batch) -> per-image (boxes (N,4) xyxy, scores (N,), landmarks (N,5,2)) tensors.

    Input is a float (B,3,H,W) RGB batch in 0-255. Defaults follow the reference implementation: min face 20 px,
    pyramid factor 0.709, thresholds (0.6, 0.7, 0.7), NMS IoU 0.5 within a scale, 0.7 across scales and
    after RNet, and 0.7 intersection-over-smaller-box after ONet.
    """

    def __init__(self, min_face: float = 20.0, factor: float = 0.709, thresholds=(0.6, 0.7, 0.7), weights=None):
        super().__init__()
        import joblib  # ships with the mtcnn package's dependencies; reads its .lz4 weight lists

        folder = Path(weights) if weights else mtcnn_weights_dir()
        self.pnet = PNet().load_tf(joblib.load(folder / "pnet.lz4"))
        self.rnet = RNet().load_tf(joblib.load(folder / "rnet.lz4"))
        self.onet = ONet().load_tf(joblib.load(folder / "onet.lz4"))
        self.min_face, self.factor, self.thresholds = min_face, factor, tuple(thresholds)
        self.runners = {"pnet": self.pnet, "rnet": self.rnet, "onet": self.onet}  # or their ONNX Runtime sessions
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.pnet.body[0].weight.device

    def export_onnx(self, folder: str | Path, opset: int = 17) -> list[Path]:
        """Write pnet.onnx, rnet.onnx and onet.onnx (dynamic batch; PNet also dynamic height and width)."""
        from spayolo.runtime import export_onnx_bytes

        folder, device = Path(folder), self.device
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, (shape, dynamic) in ONNX_INPUTS.items():
            paths.append(folder / f"{name}.onnx")
            paths[-1].write_bytes(export_onnx_bytes(getattr(self, name), torch.zeros(shape), dynamic, opset))
        self.to(device)  # export moved the nets to the CPU
        return paths

    def use_onnx(self, folder: str | Path | None = None, providers: list[str] | None = None) -> MTCNN:
        """Run the three nets in ONNX Runtime: from `folder` (files of export_onnx), else exported in memory now."""
        from spayolo.runtime import OnnxModule, export_onnx_bytes

        device = self.device
        for name, (shape, dynamic) in ONNX_INPUTS.items():
            if folder is not None:
                model = Path(folder) / f"{name}.onnx"
                if not model.is_file():
                    raise FileNotFoundError(f"MTCNN ONNX file not found: {model} (write it with MTCNN().export_onnx)")
            else:
                model = export_onnx_bytes(getattr(self, name), torch.zeros(shape), dynamic)
            self.runners[name] = OnnxModule(model, device, providers)
        self.to(device)
        return self

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        x = self._normalise(images)
        boxes, idx = self._stage1(x)
        boxes, _, idx = self._stage2(x, boxes, idx)
        return self._per_image(x, *self._stage3(x, boxes, idx))

    @torch.inference_mode()
    def refine(self, images: torch.Tensor, boxes: torch.Tensor, idx: torch.Tensor) -> list[tuple]:
        """ONet alone on known faces (boxes (N,4) xyxy in frames idx (N,)): re-locates them in new frames.

        The cheap half of detect-then-track on video: a face that moved less than about a quarter of its size is
        found again at ONet's cost only (about 1 ms per face on a CPU core instead of the full pyramid); one that
        moved further or left the frame is dropped until the next full detection. A known face needs only RNet's
        threshold to stay (hysteresis): ONet scores the tighter final boxes lower than the RNet boxes it was
        trained on.
        """
        x = self._normalise(images)
        return self._per_image(x, *self._stage3(x, _square(boxes.float()), idx, self.thresholds[1]))

    @staticmethod
    def _normalise(images: torch.Tensor) -> torch.Tensor:
        # the nets were trained on RGB scaled to [-1, 1]; a contiguous NCHW copy halves the pyramid's resize time
        return (images.contiguous().float() - 127.5) / 128

    @staticmethod
    def _per_image(x, boxes, scores, landmarks, idx) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        h, w = x.shape[2:]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        return [(boxes[idx == i], scores[idx == i], landmarks[idx == i]) for i in range(len(x))]

    def _stage1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PNet over one canvas per image holding all pyramid levels; returns squared candidate boxes and image ids."""
        b, _, h, w = x.shape
        scales = _pyramid(h, w, self.min_face, self.factor)
        empty = x.new_zeros((0, 4)), torch.zeros(0, dtype=torch.long, device=x.device)
        if not scales:
            return empty
        tiles, ch, cw = _pack(h, w, scales)
        canvas = x.new_zeros((b, 3, ch, cw))
        for s, (x0, y0, hs, ws) in zip(scales, tiles):
            canvas[:, :, y0 : y0 + hs, x0 : x0 + ws] = F.interpolate(x, size=(hs, ws), mode="area")
        reg, prob = self.runners["pnet"](canvas)
        bi, yi, xi = torch.nonzero(prob > self.thresholds[0], as_tuple=True)
        if not len(bi):
            return empty
        t = torch.tensor(tiles, dtype=torch.float32, device=x.device)  # (K, 4): x0, y0, hs, ws
        px, py = (xi * 2).float(), (yi * 2).float()  # window top-left on the canvas
        inside = ((px[:, None] >= t[:, 0]) & (px[:, None] + 12 <= t[:, 0] + t[:, 3])
                  & (py[:, None] >= t[:, 1]) & (py[:, None] + 12 <= t[:, 1] + t[:, 2]))
        keep = inside.any(1)  # windows straddling two levels are meaningless
        bi, yi, xi, px, py = bi[keep], yi[keep], xi[keep], px[keep], py[keep]
        k = inside[keep].float().argmax(1)
        s = torch.tensor(scales, dtype=torch.float32, device=x.device)[k, None]
        x1, y1 = px - t[k, 0], py - t[k, 1]
        boxes = torch.stack([x1, y1, x1 + 12, y1 + 12], 1) / s
        score = prob[bi, yi, xi]
        offsets = reg[bi, :, yi, xi]
        keep = batched_nms(boxes, score, bi * len(scales) + k, 0.5)  # within each level first
        boxes, score, offsets, bi = boxes[keep], score[keep], offsets[keep], bi[keep]
        keep = batched_nms(boxes, score, bi, 0.7)
        return _square(_regress(boxes[keep], offsets[keep])), bi[keep]

    def _crops(self, x: torch.Tensor, boxes: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
        rois = torch.cat([idx[:, None].float(), boxes], 1)
        return roi_align(x, rois, size, spatial_scale=1.0, sampling_ratio=2, aligned=False)

    def _stage2(self, x, boxes, idx):
        """RNet re-scores 24x24 crops; returns regressed, squared boxes, scores and image ids."""
        if not len(boxes):
            return boxes, boxes.new_zeros(0), idx
        reg, prob = self.runners["rnet"](self._crops(x, boxes, idx, 24))
        keep = prob > self.thresholds[1]
        boxes, reg, prob, idx = boxes[keep], reg[keep], prob[keep], idx[keep]
        keep = batched_nms(boxes, prob, idx, 0.7)
        return _square(_regress(boxes[keep], reg[keep])), prob[keep], idx[keep]

    def _stage3(self, x, boxes, idx, threshold: float | None = None):
        """ONet re-scores 48x48 crops and places five landmarks (in the un-regressed crop box, as it was trained)."""
        if not len(boxes):
            return boxes, boxes.new_zeros(0), boxes.new_zeros((0, 5, 2)), idx
        reg, lmk, prob = self.runners["onet"](self._crops(x, boxes, idx, 48))
        keep = prob > (self.thresholds[2] if threshold is None else threshold)
        boxes, reg, lmk, prob, idx = boxes[keep], reg[keep], lmk[keep], prob[keep], idx[keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        lmk = torch.stack([lmk[:, :5], lmk[:, 5:]], 2) * wh[:, None] + boxes[:, None, :2]
        boxes = _regress(boxes, reg)
        keep = _nms_min(boxes, prob, idx, 0.7)
        return boxes[keep], prob[keep], lmk[keep], idx[keep]
