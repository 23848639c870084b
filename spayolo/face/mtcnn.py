"""MTCNN face detector (Zhang et al., IEEE SPL 2016): its cascade in NumPy and OpenCV around three small nets.

PNet scans an image pyramid for 12x12 face windows, RNet re-scores 24x24 crops of the candidates, ONet re-scores
48x48 crops and places five landmarks. The nets run as the ONNX files in weights/mtcnn/ on ONNX Runtime (made from
the `mtcnn` PyPI package's weights by ``python -m spayolo.face.mtcnn_torch``, MIT licence), or, for the torch
backend, as spayolo.face.mtcnn_torch's modules on a torch device; the cascade between them is this one module.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from spayolo.face.warp import affine_crops, block_mean
from spayolo.paths import packaged

__all__ = ("MTCNN", "MTCNN_FILES", "nms", "onnx_nets", "pack_pyramid", "pyramid_scales")

MTCNN_FILES = {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx"}
EMPTY = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def onnx_nets(folder: str | Path | None = None, device="cpu", providers=None, threads: int | None = None) -> dict:
    """PNet, RNet and ONet as ONNX Runtime sessions from ``folder`` (default: the shipped weights/mtcnn/)."""
    from spayolo.runtime import OnnxModel

    folder = Path(folder) if folder else packaged("weights", "mtcnn")
    return {name: OnnxModel(folder / file, device, providers, threads) for name, file in MTCNN_FILES.items()}


def pyramid_scales(h: int, w: int, min_face: float, factor: float) -> list[float]:
    """Scales mapping a min_face-sized face to PNet's 12 px window, shrinking by factor while the image is >= 12 px."""
    scales, s = [], 12.0 / min_face
    while min(h, w) * s >= 12:
        scales.append(s)
        s *= factor
    return scales


def pack_pyramid(h: int, w: int, scales: list[float], gap: int = 2) -> tuple[list[tuple[int, int, int, int]], int, int]:
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


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None,
        smaller: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best first.

    A box is dropped when its overlap with a better kept box of the same group exceeds ``threshold``; overlap is the
    IoU (OpenCV's NMSBoxes, which PNet's hundreds of windows need), or with ``smaller`` the intersection over the
    smaller box (MTCNN's last stage, a few boxes: drops boxes nested in a face).
    """
    if not len(boxes):
        return np.zeros(0, np.int64)
    if groups is not None:  # shift each group apart so that boxes of two groups never overlap
        boxes = boxes + (groups * (boxes.max() - boxes.min() + 1))[:, None].astype(boxes.dtype)
    if not smaller:
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).astype(np.float64)
        # scores shifted above NMSBoxes' score cut (it keeps scores above 0); the order, all it uses, is the same
        return np.asarray(cv2.dnn.NMSBoxes(xywh, scores.astype(np.float32) + 1, 0.0, threshold), np.int64).ravel()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order, keep = np.argsort(-scores, kind="stable"), []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        wh = np.minimum(boxes[best, 2:], boxes[rest, 2:]) - np.maximum(boxes[best, :2], boxes[rest, :2])
        inter = np.clip(wh, 0, None).prod(1)
        order = rest[inter / np.maximum(np.minimum(area[best], area[rest]), 1e-9) <= threshold]
    return np.array(keep, np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes (x1,y1,x2,y2) grown to squares about their centres, side = the longer side."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], 1)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MTCNN's box regression: each corner moves by its offset times the box width/height."""
    return boxes + offsets * np.tile(boxes[:, 2:] - boxes[:, :2], 2)


class MTCNN:
    """MTCNN cascade: BGR uint8 frames of one size -> per frame (boxes (N,4) xyxy, scores (N,), landmarks (N,5,2)).

    ``nets`` maps pnet/rnet/onet to callables taking a float32 NCHW batch and returning their outputs as arrays
    (default: the shipped ONNX files on the CPU). Defaults follow the reference implementation: min face 20 px,
    pyramid factor 0.709, thresholds (0.6, 0.7, 0.7), NMS IoU 0.5 within a scale, 0.7 across scales and after
    RNet, and 0.7 intersection-over-smaller-box after ONet.
    """

    def __init__(self, nets: dict | None = None, min_face: float = 20.0, factor: float = 0.709,
                 thresholds=(0.6, 0.7, 0.7)):
        self.nets = nets or onnx_nets()
        self.min_face, self.factor, self.thresholds = min_face, factor, tuple(thresholds)

    def __call__(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        x = self._normalise(images)
        boxes, idx = self._stage1(images, x)
        boxes, idx = self._stage2(x, boxes, idx)
        return self._per_image(x, *self._stage3(x, boxes, idx))

    def refine(self, images: list[np.ndarray], boxes: np.ndarray, idx: np.ndarray) -> list[tuple]:
        """ONet alone on known faces (boxes (N,4) xyxy in frames idx (N,)): re-locates them in new frames.

        The cheap half of detect-then-track on video: a face that moved less than about a quarter of its size is
        found again at ONet's cost only instead of the full pyramid's; one that moved further or left the frame is
        dropped until the next full detection. A known face needs only RNet's threshold to stay (hysteresis): ONet
        scores the tighter final boxes lower than the RNet boxes it was trained on.
        """
        x = self._normalise(images)
        return self._per_image(x, *self._stage3(x, square(boxes.astype(np.float32)), idx, self.thresholds[1]))

    @staticmethod
    def _normalise(images: list[np.ndarray]) -> list[np.ndarray]:
        """RGB float32 scaled to [-1, 1], the nets' training input."""
        return [(cv2.cvtColor(im, cv2.COLOR_BGR2RGB).astype(np.float32) - 127.5) / 128 for im in images]

    @staticmethod
    def _per_image(x, boxes, scores, landmarks, idx) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        h, w = x[0].shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return [(boxes[idx == i], scores[idx == i], landmarks[idx == i]) for i in range(len(x))]

    def _stage1(self, images: list[np.ndarray], x: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """PNet over one canvas per image holding all pyramid levels; returns squared candidate boxes and image ids."""
        h, w = images[0].shape[:2]
        scales = pyramid_scales(h, w, self.min_face, self.factor)
        if not scales:
            return EMPTY
        tiles, ch, cw = pack_pyramid(h, w, scales)
        canvas = np.zeros((len(x), ch, cw, 3), np.float32)
        for image, level in zip(x, canvas):
            for x0, y0, hs, ws in tiles:
                level[y0 : y0 + hs, x0 : x0 + ws] = cv2.resize(image, (ws, hs), interpolation=cv2.INTER_AREA)
        offsets, prob = self.nets["pnet"](canvas.transpose(0, 3, 1, 2))
        bi, yi, xi = np.nonzero(prob > self.thresholds[0])
        if not len(bi):
            return EMPTY
        t = np.array(tiles, np.float32)  # (K, 4): x0, y0, hs, ws
        px, py = (xi * 2).astype(np.float32), (yi * 2).astype(np.float32)  # window top-left on the canvas
        inside = ((px[:, None] >= t[:, 0]) & (px[:, None] + 12 <= t[:, 0] + t[:, 3])
                  & (py[:, None] >= t[:, 1]) & (py[:, None] + 12 <= t[:, 1] + t[:, 2]))
        keep = inside.any(1)  # windows straddling two levels are meaningless
        bi, yi, xi, px, py = bi[keep], yi[keep], xi[keep], px[keep], py[keep]
        k = inside[keep].argmax(1)
        x1, y1 = px - t[k, 0], py - t[k, 1]
        boxes = np.stack([x1, y1, x1 + 12, y1 + 12], 1) / np.asarray(scales, np.float32)[k, None]
        score, offsets = prob[bi, yi, xi], offsets[bi, :, yi, xi]
        keep = nms(boxes, score, 0.5, bi * len(scales) + k)  # within each level first
        boxes, score, offsets, bi = boxes[keep], score[keep], offsets[keep], bi[keep]
        keep = nms(boxes, score, 0.7, bi)
        return square(regress(boxes[keep], offsets[keep])), bi[keep]

    @staticmethod
    def _crops(x: list[np.ndarray], boxes: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
        """(N,3,size,size) crops of the boxes: 2x2 bilinear samples per output pixel, averaged (as roi_align does)."""
        crops = np.empty((len(boxes), size, size, 3), np.float32)
        for i, image in enumerate(x):
            mine = np.flatnonzero(idx == i)
            if len(mine):
                b = boxes[mine]
                scale = (b[:, 2:] - b[:, :2]) / (2 * size)  # the box's side over the samples across it
                matrices = np.zeros((len(b), 2, 3), np.float32)
                matrices[:, 0, 0], matrices[:, 1, 1] = scale[:, 0], scale[:, 1]
                matrices[:, :, 2] = b[:, :2] + scale / 2  # sample k sits at x1 + (k + 0.5) * scale
                samples = affine_crops(image, matrices, 2 * size, cv2.BORDER_CONSTANT)
                crops[mine] = block_mean(samples, 2)
        return crops.transpose(0, 3, 1, 2)

    def _stage2(self, x, boxes, idx):
        """RNet re-scores 24x24 crops; returns regressed, squared boxes and image ids."""
        if not len(boxes):
            return boxes, idx
        offsets, prob = self.nets["rnet"](self._crops(x, boxes, idx, 24))
        keep = prob > self.thresholds[1]
        boxes, offsets, prob, idx = boxes[keep], offsets[keep], prob[keep], idx[keep]
        keep = nms(boxes, prob, 0.7, idx)
        return square(regress(boxes[keep], offsets[keep])), idx[keep]

    def _stage3(self, x, boxes, idx, threshold: float | None = None):
        """ONet re-scores 48x48 crops and places five landmarks (in the un-regressed crop box, as it was trained)."""
        if not len(boxes):
            return boxes, np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32), idx
        offsets, landmarks, prob = self.nets["onet"](self._crops(x, boxes, idx, 48))
        keep = prob > (self.thresholds[2] if threshold is None else threshold)
        boxes, offsets, landmarks, prob, idx = boxes[keep], offsets[keep], landmarks[keep], prob[keep], idx[keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        landmarks = np.stack([landmarks[:, :5], landmarks[:, 5:]], 2) * wh[:, None] + boxes[:, None, :2]
        boxes = regress(boxes, offsets)
        keep = nms(boxes, prob, 0.7, idx, smaller=True)
        return boxes[keep], prob[keep], landmarks[keep], idx[keep]
