"""A classification split decoded once into one uint8 tensor, and a loader that serves it in batches from RAM.

On a small CPU the stock loader decodes and transforms every image with PIL in the training process (Ultralytics sets
``workers=0`` on CPU), which costs more than the model's own forward and backward at FER sizes. Decoding once and
augmenting whole batches with tensor ops (:mod:`spayolo.engine.augment`) leaves the cores to the model.
"""

from __future__ import annotations

from multiprocessing.pool import ThreadPool

import cv2
import numpy as np
import torch
from PIL import Image

__all__ = ("RamImages", "RamLoader")

_MEMORY_SHARE = 0.5  # of the RAM available now; past it the cache would push the training into swap


class RamImages:
    """Every image of a split as ``images`` uint8 (N, C, H, W), C = 1 when all images are gray, and ``labels`` (N,).

    Args:
        samples: ``(file, class index, ...)`` rows, as ``ClassificationDataset.samples`` (already verified).
        transform: Applied to each RGB ``PIL.Image``, returning a float tensor in [0, 1] (the stock evaluation
            transform); without it the images keep their native size, all squashed to ``size`` when sizes differ.
        size: Side length used when the native sizes differ.
    """

    def __init__(self, samples: list, transform=None, size: int | None = None):
        files = [str(s[0]) for s in samples]
        self.labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
        self._transform = transform
        if files:
            _check_memory(len(files), self._decode(files[0]).nbytes, files[0])
        with ThreadPool(2) as pool:  # cv2 and PIL release the GIL while decoding
            arrays = pool.map(self._decode, files)
        if len({a.shape for a in arrays}) > 1:
            if not size:
                raise ValueError(f"images of {len({a.shape for a in arrays})} different sizes: give RamImages a size")
            arrays = [_squash(a, size) for a in arrays]
        gray = all(_is_gray(a) for a in arrays)
        stacked = np.stack([a[:1] if gray else a for a in arrays]) if arrays else np.zeros((0, 3, 1, 1), np.uint8)
        self.images = torch.from_numpy(stacked)

    def _decode(self, file: str) -> np.ndarray:
        from ultralytics.data.dataset import ClassificationDataset

        bgr = ClassificationDataset.imread(file)  # the stock decoder, PIL fallback and unicode paths included
        if bgr is None:
            raise ValueError(f"cannot decode image {file}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self._transform is None:
            return np.ascontiguousarray(rgb.transpose(2, 0, 1))
        tensor = self._transform(Image.fromarray(rgb))
        return (tensor * 255).round_().clamp_(0, 255).to(torch.uint8).numpy()

    def __len__(self) -> int:
        return len(self.labels)


def _check_memory(count: int, bytes_each: int, example: str) -> None:
    """Refuse a cache that would not fit in half of the RAM available now, naming the way out."""
    import psutil

    need, free = count * bytes_each, psutil.virtual_memory().available
    if need > _MEMORY_SHARE * free:
        raise MemoryError(f"cache=ram: {count} images like {example} need {need / 2**30:.1f} GiB, more than half "
                          f"of the {free / 2**30:.1f} GiB available; train with cache=False")


def _squash(chw: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size; the random crop draws its own aspect ratio later, as the stock one does."""
    hwc = cv2.resize(chw.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(hwc.reshape(size, size, -1).transpose(2, 0, 1))


def _is_gray(chw: np.ndarray) -> bool:
    return bool((chw[0] == chw[1]).all() and (chw[1] == chw[2]).all())


class _Indices:
    """What the stock trainer reads of a DataLoader's sampler: its length."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class RamLoader:
    """Batches of a :class:`RamImages` as the stock trainer and validator expect them: ``{"img", "cls"}`` dicts.

    ``shuffle``: a new order each epoch, drawn from ``seed`` and the epoch set by :meth:`set_epoch`, so an epoch's
    batches are the same whether the run was interrupted or not. ``raw``: yield uint8 images for the trainer to
    augment on its device (training); otherwise float images in [0, 1], three channels (evaluation).

    Args:
        data: The cached split.
        dataset: The ``ClassificationDataset`` it came from; the trainer reads its length and transforms.
        batch_size, shuffle, seed, raw: As above.
        extras: Per-image tensors (first dimension N) served beside the images under their key, e.g. the teacher
            probabilities of knowledge distillation.
    """

    num_workers = 0
    drop_last = False

    def __init__(self, data: RamImages, dataset, batch_size: int, shuffle: bool, seed: int = 0, raw: bool = False,
                 extras: dict[str, torch.Tensor] | None = None):
        self.data, self.dataset, self.batch_size = data, dataset, int(batch_size)
        self.extras = extras or {}
        for key, values in self.extras.items():
            if len(values) != len(data):
                raise ValueError(f"RamLoader extras['{key}'] has {len(values)} rows for {len(data)} images")
        self.shuffle, self.seed, self.raw = shuffle, int(seed), raw
        self.sampler = _Indices(len(data))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_generator(self, stream: int) -> torch.Generator:
        """A generator seeded by (seed, epoch, stream): the same draws for the same epoch in every run."""
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, stream)) & (2**63 - 1))

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self):
        n = len(self.data)
        order = torch.randperm(n, generator=self.epoch_generator(0)) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            batch = {"img": self.data.images[index], "cls": self.data.labels[index]}
            batch.update({key: values[index] for key, values in self.extras.items()})
            if self.raw:  # the trainer augments it with draws seeded per batch: the same batch in every run
                batch["seed"] = hash((self.seed, self.epoch, start))
            else:
                batch["img"] = batch["img"].float().div_(255).expand(-1, 3, -1, -1).contiguous()
            yield batch

    def reset(self) -> None:
        """Nothing to rebuild: the stock trainer calls this when it switches augmentation stages."""

    def close(self) -> None:
        """No workers to stop."""
