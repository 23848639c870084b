"""Whole-batch image augmentation with tensor ops: the stock classification recipe, random per image, on any device."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spayolo.errors import UsageError

__all__ = ("BatchAugment", "mix_batch")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _first_fit(b: int, area: float, area_range: tuple[float, float], ratio_range: tuple[float, float],
               limits: tuple[float, float], generator: torch.Generator, tries: int = 10):
    """torchvision's rejection draw of RandomResizedCrop and RandomErasing, for a batch: up to ``tries`` draws per
    image of (area share, aspect), the first whose rounded sides ``sqrt(area * aspect)``, ``sqrt(area / aspect)`` are
    at least 1 and below ``limits``; returns both sides and whether any draw fitted.

    Clamping an oversized draw instead would stretch the faces: the kept crops are near square (mean |log aspect|
    0.08 at scale 0.2 against 0.11 for clamped draws).
    """
    shares = _uniform(b * tries, *area_range, generator).view(b, tries) * area
    ratio = _uniform(b * tries, math.log(ratio_range[0]), math.log(ratio_range[1]), generator).exp().view(b, tries)
    first, second = (shares * ratio).sqrt().round(), (shares / ratio).sqrt().round()
    fits = (first >= 1) & (first < limits[0]) & (second >= 1) & (second < limits[1])
    pick = fits.float().argmax(1, keepdim=True)  # the first fitting draw
    return first.gather(1, pick).squeeze(1), second.gather(1, pick).squeeze(1), fits.any(1)


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, size, size), align_corners=False)`` as broadcast products: on a CPU its batched
    matrix product with an inner size of 3 costs many times these elementwise ops."""
    centres = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1  # pixel centres
    u, v = centres.view(1, 1, size), centres.view(1, size, 1)
    a, b, c = (theta[..., j, None, None] for j in range(3))  # (B, 2, 1, 1) each: the x and y rows of theta
    return torch.stack([a[:, i] * u + b[:, i] * v + c[:, i] for i in (0, 1)], -1)  # (B, size, size, 2): x, y


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as torchvision's rgb_to_grayscale, (B, 1, H, W); a 1-channel batch is its own luma."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)


class BatchAugment:
    """The augmentations of Ultralytics' ``classify_augmentations``, vectorised over a batch, each image its own draw.

    One affine resample per image does RandomResizedCrop (area ``1 - scale`` to 1, aspect 3/4 to 4/3, boxes drawn as
    torchvision draws them), horizontal and vertical flips and a rotation of up to ``degrees`` (which the stock
    classification loader ignores); then ColorJitter's brightness/contrast (``hsv_v``) and saturation (``hsv_s``) in a
    random order per image, and RandomErasing (``erasing``: area 2-33 %, aspect 0.3-3.3, value 0). Parameters are drawn
    on the CPU from the given generator, so a seeded epoch is reproduced exactly on any device.

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
            raise UsageError(f"scale={scale}: the crop keeps 1 - scale to 1 of the image area, so 0 <= scale < 1")
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
        b, _, h, w = x.shape
        left, top, crop_w, crop_h = self.crop_boxes(b, h, w, generator)
        centre_x, centre_y = (2 * left + crop_w) / w - 1, (2 * top + crop_h) / h - 1
        crop_w, crop_h = crop_w / w, crop_h / h  # in half-widths of the normalised [-1, 1] image
        flip_x = torch.where(torch.rand(b, generator=generator) < self.fliplr, -1.0, 1.0)
        flip_y = torch.where(torch.rand(b, generator=generator) < self.flipud, -1.0, 1.0)
        angle = _uniform(b, -self.degrees, self.degrees, generator).deg2rad()
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([
            torch.stack([crop_w * flip_x * cos, -crop_h * flip_y * sin, centre_x], 1),
            torch.stack([crop_w * flip_x * sin, crop_h * flip_y * cos, centre_y], 1),
        ], 1).to(x.device)
        return F.grid_sample(x, _affine_grid(theta, self.imgsz), mode="bilinear", padding_mode="border",
                             align_corners=False)

    def crop_boxes(self, b: int, h: int, w: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """RandomResizedCrop's boxes (left, top, width, height in pixels) for ``b`` images of h x w, as torchvision
        draws them: area ``1 - scale`` to 1, aspect 3/4 to 4/3, redrawn until the box fits, else a central crop."""
        crop_w, crop_h, fitted = _first_fit(b, h * w, (1.0 - self.scale, 1.0), (3 / 4, 4 / 3), (w + 1, h + 1),
                                            generator)
        crop_w = torch.where(fitted, crop_w, min(w, round(h * 4 / 3)))  # the central crop at the nearest aspect
        crop_h = torch.where(fitted, crop_h, min(h, round(w * 4 / 3)))
        left = (torch.rand(b, generator=generator) * (w - crop_w + 1)).floor()
        top = (torch.rand(b, generator=generator) * (h - crop_h + 1)).floor()
        left, top = torch.where(fitted, left, (w - crop_w) // 2), torch.where(fitted, top, (h - crop_h) // 2)
        return left, top, crop_w, crop_h

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
        """RandomErasing(p=erasing): a zero rectangle of 2-33 % of the area, aspect 0.3-3.3, anywhere inside; as in
        torchvision, an image whose ten draws all reach an edge's full length stays whole."""
        if self.erasing <= 0:
            return x
        b, _, h, w = x.shape
        eh, ew, fitted = _first_fit(b, h * w, (0.02, 0.33), (0.3, 3.3), (h, w), generator)
        top = (torch.rand(b, generator=generator) * (h - eh + 1)).floor()
        left = (torch.rand(b, generator=generator) * (w - ew + 1)).floor()
        erased = (torch.rand(b, generator=generator) < self.erasing) & fitted
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
