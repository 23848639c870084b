"""Many affine crops of one image in one OpenCV call: the sampling under MTCNN's crops and the classifier's."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ("affine_crops", "block_mean")

MAX_ROWS = 32000  # cv2.remap refuses maps of SHRT_MAX (32767) rows or more


def affine_crops(image: np.ndarray, matrices: np.ndarray, size: int, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """(N, size, size, C) bilinear samples of ``image`` (HxWxC): output pixel (u, v) of crop n reads the source at
    ``matrices[n] @ (u, v, 1)``, in pixel-index coordinates; outside the image as ``border`` says (0 if constant)."""
    grid = np.arange(size, dtype=np.float32)
    m = matrices.astype(np.float32)[:, :, :, None, None]  # (N, 2, 3, 1, 1) against the (size, size) grid
    maps = m[:, :, 0] * grid[None, :] + m[:, :, 1] * grid[:, None] + m[:, :, 2]  # (N, 2, size, size): x, y
    channels = image.shape[2] if image.ndim == 3 else 1
    out = np.empty((len(matrices), size, size, channels), image.dtype)
    per = max(1, MAX_ROWS // size)
    for start in range(0, len(matrices), per):
        part = maps[start : start + per]
        sampled = cv2.remap(image, part[:, 0].reshape(-1, size), part[:, 1].reshape(-1, size), cv2.INTER_LINEAR,
                            borderMode=border)
        out[start : start + per] = sampled.reshape(len(part), size, size, channels)
    return out


def block_mean(images: np.ndarray, k: int) -> np.ndarray:
    """(N, H, W, C) images shrunk k times by averaging each k x k block: a sum of k * k strided views, several times
    faster than a mean over reshaped axes, which NumPy reduces element by element."""
    if k == 1:
        return images
    total = images[:, ::k, ::k].astype(np.float32)
    for dy in range(k):
        for dx in range(k):
            if dy or dx:
                total += images[:, dy::k, dx::k]
    return total / (k * k)
