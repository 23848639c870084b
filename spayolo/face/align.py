"""Eye-aligned square face crops: detector boxes and landmarks turned into classifier inputs with one OpenCV call."""

from __future__ import annotations

import math

import numpy as np

from spayolo.face.detectors import Detections
from spayolo.face.warp import affine_crops, block_mean

__all__ = ("LUMA", "aligned_crops", "eye_angles")

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights of R, G, B: what FER2013's gray faces hold


def eye_angles(det: Detections) -> np.ndarray:
    """Rotation (radians) that levels the eyes of each face; 0 when the detector gives no landmarks."""
    if det.landmarks is None:
        return np.zeros(len(det), np.float32)
    d = det.landmarks[:, 1] - det.landmarks[:, 0]
    return np.arctan2(d[:, 1], d[:, 0]).astype(np.float32)


def aligned_crops(frame: np.ndarray, det: Detections, size: int, margin: float = 0.2, gray: bool = True,
                  fractions: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Square crops (N,3,size,size) float32 RGB in 0-1 of a BGR frame, box side grown by ``margin``, eyes made level.

    ``fractions``: the views to cut, each keeping that central fraction of the square's side (< 1: zoomed in, sampled
    from the frame itself); (V*N,3,size,size) for V of them, the N faces of each view in turn. Each crop is sampled
    at up to 4x the output size and averaged down, so large faces are not aliased. ``gray`` replicates the luma to
    the three channels (classifiers trained on grayscale FER images).
    """
    n = len(det) * len(fractions)
    if not n:
        return np.zeros((0, 3, size, size), np.float32)
    boxes = det.boxes.astype(np.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).max(1) * (1 + margin)
    # only the frame region any crop can reach (a rotated square stays within side / sqrt(2) of its centre) is
    # converted to float: the faces are a small part of a frame
    reach = (side * max(fractions) / math.sqrt(2))[:, None] + 2
    x0, y0 = np.floor((centre - reach).min(0)).clip(0, None).astype(int)
    x1, y1 = np.ceil((centre + reach).max(0)).astype(int)
    region = frame[y0:y1, x0:x1].astype(np.float32)
    centre = np.tile(centre - np.array([x0, y0], np.float32), (len(fractions), 1))
    side = np.concatenate([side * f for f in fractions])
    angle = np.tile(eye_angles(det), len(fractions))
    k = int(min(4, max(1, math.ceil(float(side.max()) / size))))
    # output pixel (u, v) -> offset (a u + b, a v + b) in [-1, 1] of the square, rotated by the eye angle, scaled by
    # half the side, about the centre; pixel centres sit at index + 0.5
    a, b = 2 / (size * k), 1 / (size * k) - 1
    cos, sin = np.cos(angle) * side / 2, np.sin(angle) * side / 2
    matrices = np.stack([np.stack([cos * a, -sin * a, centre[:, 0] - 0.5 + b * (cos - sin)], 1),
                         np.stack([sin * a, cos * a, centre[:, 1] - 0.5 + b * (sin + cos)], 1)], 1)
    crops = block_mean(affine_crops(region, matrices, size * k), k)
    rgb = crops[..., ::-1] / 255  # BGR -> RGB
    if gray:
        rgb = np.repeat(rgb @ LUMA[:, None], 3, axis=-1)
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32)
