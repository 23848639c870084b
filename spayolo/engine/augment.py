"""Whole-batch image augmentation with tensor ops: the stock classification recipe, random per image, on any device."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ("BatchAugment", "mix_batch")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as torchvision's rgb_to_grayscale, (B, 1, H, W); a 1-channel batch is its own luma."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)


class BatchAugment:
    """The augmentations of Ultralytics' ``classify_augmentations``, vectorised over a batch, each image its own draw.

    One affine resample per image does RandomResizedCrop (area ``1 - scale`` to 1, aspect 3/4 to 4/3), horizontal and
    vertical flips and a rotation of up to ``degrees`` (which the stock classification loader ignores); then
    ColorJitter's brightness/contrast (``hsv_v``) and saturation (``hsv_s``) in a random order per image, and
    RandomErasing (``erasing``: area 2-33 %, aspect 0.3-3.3, value 0). Parameters are drawn on the CPU from the given
    generator, so a seeded epoch is reproduced exactly on any device.

    Args:
        imgsz: Output side length.
        scale, fliplr, flipud, degrees, hsv_v, hsv_s, erasing: The trainer arguments of the same names.

    Examples:
        >>> augment = BatchAugment(64, scale=0.2, degrees=10, erasing=0.3)
        >>> out = augment(torch.randint(0, 255, (8, 1, 48, 48), dtype=torch.uint8), torch.Generator().manual_seed(0))
        >>> out.shape, out.dtype
        (torch.Size([8, 1, 64, 64]), torch.float32)
    """

    def __init__(self, imgsz: int, scale: float = 0.5, fliplr: float = 0.5, flipud: float = 0.0, degrees: float = 0.0,
                 hsv_v: float = 0.4, hsv_s: float = 0.0, erasing: float = 0.4):
        if not 0.0 <= scale < 1.0:
            raise ValueError(f"scale={scale}: the crop keeps 1 - scale to 1 of the image area, so 0 <= scale < 1")
        self.imgsz, self.scale, self.fliplr, self.flipud = int(imgsz), float(scale), float(fliplr), float(flipud)
        self.degrees, self.hsv_v, self.hsv_s, self.erasing = float(degrees), float(hsv_v), float(hsv_s), float(erasing)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, C, H, W) on any device -> float32 (B, C, imgsz, imgsz) in [0, 1]."""
        x = images.float().div_(255)
        x = self.resample(x, generator)
        x = self.jitter(x, generator)
        return self.erase(x, generator)

    def resample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Crop, flip and rotate in one bilinear resample per image (normalised coordinates, as affine_grid).

        Border padding repeats the edge pixels, as resizing does; zero padding would darken the outer ring of every
        upsampled image (a 48 px face sampled at 64 px reaches past its outer pixel centres).
        """
        b = x.shape[0]
        area = _uniform(b, 1.0 - self.scale, 1.0, generator)
        ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), generator).exp()
        crop_w, crop_h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        centre_x = (torch.rand(b, generator=generator) * 2 - 1) * (1 - crop_w)
        centre_y = (torch.rand(b, generator=generator) * 2 - 1) * (1 - crop_h)
        flip_x = torch.where(torch.rand(b, generator=generator) < self.fliplr, -1.0, 1.0)
        flip_y = torch.where(torch.rand(b, generator=generator) < self.flipud, -1.0, 1.0)
        angle = _uniform(b, -self.degrees, self.degrees, generator).deg2rad()
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([
            torch.stack([crop_w * flip_x * cos, -crop_h * flip_y * sin, centre_x], 1),
            torch.stack([crop_w * flip_x * sin, crop_h * flip_y * cos, centre_y], 1),
        ], 1).to(x.device)
        grid = F.affine_grid(theta, [b, x.shape[1], self.imgsz, self.imgsz], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ColorJitter(brightness=hsv_v, contrast=hsv_v, saturation=hsv_s), its ops in a random order per image."""
        b = x.shape[0]
        ops = []
        if self.hsv_v > 0:
            ops += [(self._brightness, self.hsv_v), (self._contrast, self.hsv_v)]
        if self.hsv_s > 0 and x.shape[1] == 3:
            ops.append((self._saturation, self.hsv_s))
        if not ops:
            return x
        factors = [_uniform(b, max(0.0, 1 - f), 1 + f, generator).to(x.device).view(b, 1, 1, 1) for _, f in ops]
        order = torch.stack([torch.randperm(len(ops), generator=generator) for _ in range(b)]).to(x.device)
        for slot in range(len(ops)):
            for k, ((op, _), factor) in enumerate(zip(ops, factors)):
                chosen = (order[:, slot] == k).view(b, 1, 1, 1)
                x = torch.where(chosen, op(x, factor), x)
        return x

    @staticmethod
    def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        return (x * factor).clamp_(0, 1)

    @staticmethod
    def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        mean = _grayscale(x).mean((1, 2, 3), keepdim=True)
        return (factor * x + (1 - factor) * mean).clamp_(0, 1)

    @staticmethod
    def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        return (factor * x + (1 - factor) * _grayscale(x)).clamp_(0, 1)

    def erase(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """RandomErasing(p=erasing): a zero rectangle of 2-33 % of the area, aspect 0.3-3.3, anywhere inside."""
        if self.erasing <= 0:
            return x
        b, _, h, w = x.shape
        area = _uniform(b, 0.02, 0.33, generator) * h * w
        ratio = _uniform(b, math.log(0.3), math.log(3.3), generator).exp()
        eh = (area * ratio).sqrt().round().clamp(1, h - 1)
        ew = (area / ratio).sqrt().round().clamp(1, w - 1)
        top = (torch.rand(b, generator=generator) * (h - eh + 1)).floor()
        left = (torch.rand(b, generator=generator) * (w - ew + 1)).floor()
        erased = torch.rand(b, generator=generator) < self.erasing
        rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
                  & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & erased.view(b, 1, 1))
        return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)


def mix_batch(images: torch.Tensor, targets: torch.Tensor, mixup: float, cutmix: float,
              generator: torch.Generator) -> torch.Tensor:
    """MixUp (Zhang et al., ICLR 2018) or CutMix (Yun et al., ICCV 2019) per image, with the image before it in the
    (shuffled) batch; returns the mixed ``targets`` (N, K) and mixes ``images`` in place.

    Each image is mixed up with probability ``mixup`` (lambda ~ Beta(0.8, 0.8), as timm) or else cut-mixed with
    probability ``cutmix`` (a box of 1 - lambda of the area, lambda ~ Beta(1, 1), lambda then set to the box's true
    share); the targets (one-hot labels, teacher probabilities) mix with the same lambda.
    """
    b, _, h, w = images.shape
    draw = torch.rand(b, generator=generator)
    mixed_up, cut = draw < mixup, (draw >= mixup) & (draw < mixup + cutmix)
    seed = int(torch.randint(2**62, (1,), generator=generator))  # Beta draws from numpy, seeded by the generator
    lam = torch.where(mixed_up, torch.from_numpy(np.random.default_rng(seed).beta(0.8, 0.8, b)).float(), 1.0)
    partner = images.roll(1, 0)
    if cut.any():
        side = (1 - torch.rand(b, generator=generator)).sqrt()  # box side share: area 1 - lambda, lambda ~ U(0, 1)
        cy, cx = torch.rand(b, generator=generator) * h, torch.rand(b, generator=generator) * w
        top, bottom = (cy - side * h / 2).clamp(0, h).round(), (cy + side * h / 2).clamp(0, h).round()
        left, right = (cx - side * w / 2).clamp(0, w).round(), (cx + side * w / 2).clamp(0, w).round()
        rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        box = ((rows >= top.view(b, 1, 1)) & (rows < bottom.view(b, 1, 1)) & (cols >= left.view(b, 1, 1))
               & (cols < right.view(b, 1, 1)) & cut.view(b, 1, 1))
        lam = torch.where(cut, 1 - (bottom - top) * (right - left) / (h * w), lam)
        images.copy_(torch.where(box.unsqueeze(1).to(images.device), partner, images))
    weight = torch.where(mixed_up, lam, torch.ones(b)).view(b, 1, 1, 1).to(images.device, images.dtype)
    images.mul_(weight).add_(partner * (1 - weight))
    lam = lam.to(targets.device).view(b, 1)
    return lam * targets + (1 - lam) * targets.roll(1, 0)
