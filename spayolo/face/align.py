"""Eye-aligned square face crops: one affine sample per frame turns detector boxes and landmarks into model inputs."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .detectors import Detections

__all__ = ("aligned_crops",)


def _eye_angles(det: Detections, device: torch.device) -> torch.Tensor:
    """Rotation (radians) that levels the eyes of each face; 0 when the detector gives no landmarks."""
    if det.landmarks is None:
        return torch.zeros(len(det), device=device)
    eyes = torch.as_tensor(det.landmarks[:, :2], dtype=torch.float32, device=device)
    d = eyes[:, 1] - eyes[:, 0]
    return torch.atan2(d[:, 1], d[:, 0])


def aligned_crops(frame: np.ndarray, det: Detections, size: int, margin: float = 0.2, gray: bool = True,
                  device: torch.device | str = "cpu", fractions: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """Square crops (N,3,size,size) RGB in 0-1 of a BGR frame, box side grown by ``margin``, eyes made level.

    ``fractions``: the views to cut, each keeping that central fraction of the square's side (< 1: zoomed in, sampled
    from the frame itself); (V*N,3,size,size) for V of them, the N faces of each view in turn.

    One affine_grid + grid_sample per frame does rotation, scaling and cropping on ``device``; it samples at up to
    4x the output size and average-pools down so large faces are not aliased. ``gray`` replicates the luminance to
    the three channels (classifiers trained on grayscale FER images).
    """
    device, n = torch.device(device), len(det) * len(fractions)
    if not n:
        return torch.zeros(0, 3, size, size, device=device)
    boxes = torch.as_tensor(det.boxes, dtype=torch.float32, device=device)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).amax(1) * (1 + margin)
    # only the frame region any crop can reach (a rotated square stays within side / sqrt(2) of its centre) is
    # converted to float: the faces are a small part of a frame
    reach = (side * max(fractions) / math.sqrt(2))[:, None] + 2
    x0, y0 = ((centre - reach).amin(0).floor().clamp(min=0)).int().tolist()
    x1, y1 = (centre + reach).amax(0).ceil().int().tolist()
    region = frame[y0:y1, x0:x1]
    h, w = region.shape[:2]
    centre = (centre - centre.new_tensor([x0, y0])).repeat(len(fractions), 1)
    side = torch.cat([side * f for f in fractions])
    angle = _eye_angles(det, device).repeat(len(fractions))
    cos, sin = angle.cos() * side / 2, angle.sin() * side / 2
    # output (u, v) in [-1, 1] -> image point centre + R(angle) (side/2) (u, v) -> grid coords 2 p / size - 1
    theta = torch.stack([torch.stack([cos * 2 / w, -sin * 2 / w, centre[:, 0] * 2 / w - 1], 1),
                         torch.stack([sin * 2 / h, cos * 2 / h, centre[:, 1] * 2 / h - 1], 1)], 1)
    k = int(min(4, max(1, math.ceil(float(side.max()) / size))))
    grid = F.affine_grid(theta, [n, 3, size * k, size * k], align_corners=False)
    img = torch.from_numpy(np.ascontiguousarray(region)).to(device)
    img = img.flip(-1).permute(2, 0, 1)[None].float() / 255  # BGR HWC uint8 -> RGB 1CHW 0-1
    grid = grid.reshape(1, n * size * k, size * k, 2)  # all crops of the frame in one sampling call
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(3, n, size * k, size * k).transpose(0, 1)
    out = F.avg_pool2d(out, k) if k > 1 else out
    if gray:
        out = (out * out.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    return out.contiguous()
