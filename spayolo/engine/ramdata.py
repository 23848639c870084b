"""A classification split decoded once into one uint8 array, and a loader that serves it in batches from RAM.

On a small CPU the stock loader decodes and transforms every image with PIL in the training process (Ultralytics sets
``workers=0`` on CPU), which costs more than the model's own forward and backward at FER sizes. Decoding once and
augmenting whole batches with tensor ops (:mod:`spayolo.engine.augment`) leaves the cores to the model.

Under distributed data parallel (DDP) training each rank takes its own share of every epoch (:class:`EpochSampler`),
and the ranks of one machine map one decoded copy from a file instead of holding one each (``RamImages(shared=...)``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from spayolo.errors import SpayoloError

__all__ = ("CacheSpaceError", "EpochSampler", "RamImages", "RamLoader", "shared_cache_prefix")

_MEMORY_SHARE = 0.5  # of the RAM available now; past it the cache would push the training into swap
_DECODE_CHUNK = 512  # images decoded at a time: the decoded copies in flight beside the array stay this few
_FORMAT = 1  # of the shared cache file; a new layout changes every file's name


class CacheSpaceError(SpayoloError, MemoryError):
    """``cache=ram``'s decoded split would not fit in the RAM available now (or, shared, on the disk holding it)."""


class RamImages:
    """Every image of a split as ``images`` uint8 (N, C, H, W), C = 1 when all images are gray, and ``labels`` (N,).

    Images are decoded into one array allocated up front; it is allocated again (the decoded part copied over) only
    at the first colour image of a split that began gray, and at the first image whose size differs from the first's.

    Args:
        samples: ``(file, class index, ...)`` rows, as ``ClassificationDataset.samples`` (already verified).
        transform: Applied to each RGB ``PIL.Image``, returning a float tensor in [0, 1] (the stock evaluation
            transform); without it the images keep their native size, all squashed to ``size`` when sizes differ.
        size: Side length used when the native sizes differ.
        shared: A path prefix, e.g. the split folder: the images go to the file
            ``<prefix>.ram-<host>-<key>.npy``, where ``key`` hashes the files (paths, sizes, times) and the
            transform, and ``images`` maps it, so the processes of one machine that map it share one copy in the
            page cache. An existing file is mapped, not decoded again: whoever goes first decodes.

    Attributes:
        file: The shared file, or None. reused: Whether it existed (decoded by an earlier process).
    """

    def __init__(self, samples: list, transform=None, size: int | None = None, shared: str | Path | None = None):
        files = [str(s[0]) for s in samples]
        self.labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
        self._transform, self._size = transform, size
        self.file, self.reused = None, False
        if not files:
            array = np.zeros((0, 3, 1, 1), np.uint8)
        elif shared is None:
            array = self._decode_all(files, _in_memory)[0]
        else:
            array = self._map_shared(files, Path(shared))
        self.images = torch.from_numpy(array)

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

    def _decode_all(self, files: list[str], allocate) -> tuple[np.ndarray, bool]:
        """The images of ``files`` in one array from ``allocate(shape, example)``; also whether they were squashed."""
        array, squashed = None, False
        with ThreadPool(2) as pool:  # cv2 and PIL release the GIL while decoding
            for first in range(0, len(files), _DECODE_CHUNK):
                for i, image in enumerate(pool.map(self._decode, files[first : first + _DECODE_CHUNK]), first):
                    if array is None:
                        array = allocate((len(files), 1 if _is_gray(image) else 3, *image.shape[1:]), files[i])
                    if not squashed and image.shape[1:] != array.shape[2:]:
                        if not self._size:
                            raise ValueError(f"images of different sizes ({files[0]}, {files[i]}): give RamImages a "
                                             "size")
                        resized = allocate((len(files), array.shape[1], self._size, self._size), files[i])
                        for j in range(i):
                            resized[j] = _squash(array[j], self._size)
                        array, squashed = resized, True
                    if squashed:
                        image = _squash(image, self._size)
                    if array.shape[1] == 1 and not _is_gray(image):
                        colour = allocate((len(files), 3, *array.shape[2:]), files[i])
                        colour[:i] = array[:i]
                        array = colour
                    array[i] = image[: array.shape[1]]
        return array, squashed

    def _map_shared(self, files: list[str], prefix: Path) -> np.ndarray:
        """Map the shared file of these files and transform, decoding it first when no earlier process did."""
        stem = prefix.with_name(f"{prefix.name}.ram-{_host()}-{_key(files, self._transform)}")
        native, squashed = stem.with_name(f"{stem.name}.npy"), stem.with_name(f"{stem.name}-{self._size}px.npy")
        self.file = next((f for f in (native, squashed) if f.is_file()), None)
        self.reused = self.file is not None
        if self.reused:
            _check_memory(self.file.stat().st_size, len(files), files[0])
        else:
            arrays = _FileArrays(stem)
            try:
                array, resized = self._decode_all(files, arrays)
                array.flush()
                self.file = squashed if resized else native
                os.replace(arrays.files[-1], self.file)  # atomic: no process maps a half-written file
            finally:
                for file in arrays.files:
                    file.unlink(missing_ok=True)
        return np.load(self.file, mmap_mode="c")  # private and writable: no copy while nothing writes

    def __len__(self) -> int:
        return len(self.labels)


def shared_cache_prefix(split: str | Path, run_dir: str | Path) -> Path:
    """Where the ranks of a machine keep their shared copy of ``split``: beside the split folder, as Ultralytics keeps
    its ``<split>.cache``, so a later run on the same data maps it; in the run folder where the dataset is read-only."""
    split = Path(split)
    return split if os.access(split.parent, os.W_OK) else Path(run_dir) / split.name


def _host() -> str:
    """This machine's name, file-name safe: machines sharing a file system each decode their own copy."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _key(files: list[str], transform) -> str:
    """A hash of what the decoded array depends on: the files in order, their sizes and times, and the transform."""
    digest = hashlib.sha256(f"{_FORMAT}\n{transform!r}\n".encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"{file}\n{stat.st_size}\n{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _check_memory(need: int, count: int, example: str) -> None:
    """Refuse a cache that would not fit in half of the RAM available now, naming the way out."""
    import psutil

    free = psutil.virtual_memory().available
    if need > _MEMORY_SHARE * free:
        raise CacheSpaceError(f"cache=ram: {count} images like {example} need {need / 2**30:.1f} GiB, more than half "
                              f"of the {free / 2**30:.1f} GiB available; train with cache=False")


def _in_memory(shape: tuple[int, ...], example: str) -> np.ndarray:
    _check_memory(int(np.prod(shape)), shape[0], example)
    return np.empty(shape, np.uint8)


class _FileArrays:
    """Allocates arrays as new ``.npy`` files beside ``stem``, their disk space reserved; ``files`` lists them."""

    def __init__(self, stem: Path):
        self.stem, self.files = stem, []

    def __call__(self, shape: tuple[int, ...], example: str) -> np.ndarray:
        need = int(np.prod(shape))
        _check_memory(need, shape[0], example)
        free = shutil.disk_usage(self.stem.parent).free
        if need > free:
            raise CacheSpaceError(f"cache=ram: the decoded copy shared by this machine's ranks needs "
                                  f"{need / 2**30:.1f} GiB in {self.stem.parent}, which has {free / 2**30:.1f} GiB "
                                  "free; free disk space there or train with cache=False")
        file = self.stem.with_name(f"{self.stem.name}.{os.getpid()}-{len(self.files)}.tmp.npy")
        self.files.append(file)
        array = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):  # a sparse file that meets a full disk kills the writer with SIGBUS
            with open(file, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.path.getsize(file))
        return array


def _squash(chw: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size; the random crop draws its own aspect ratio later, as the stock one does."""
    hwc = cv2.resize(chw.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(hwc.reshape(size, size, -1).transpose(2, 0, 1))


def _is_gray(chw: np.ndarray) -> bool:
    return bool((chw[0] == chw[1]).all() and (chw[1] == chw[2]).all())


class EpochSampler:
    """The images one rank takes from an epoch of ``n``, as Ultralytics' DDP loaders deal them; all of them, in order
    or shuffled, for a single process (``world_size=1``).

    Shuffled (training), as PyTorch's ``DistributedSampler``: one permutation per epoch, drawn from ``seed`` and the
    epoch alone, padded with its own first indices to a multiple of ``world_size`` and dealt in turn, rank r taking
    positions r, r + W, r + 2W, ...; so the ranks' k-th batches together hold batch k of one process at W times the
    batch size. In order (evaluation), as Ultralytics' ``ContiguousDistributedSampler``: consecutive, unpadded runs
    (the first ``n % W`` ranks one image more), so predictions gathered from the ranks count every image once.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        self.n, self.shuffle, self.seed, self.rank, self.world_size = int(n), shuffle, int(seed), rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, stream: int) -> torch.Generator:
        """A generator seeded by (seed, epoch, stream): the same draws for the same epoch in every run and rank."""
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, stream)) & (2**63 - 1))

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.n // self.world_size)
        return self.n // self.world_size + (self.rank < self.n % self.world_size)

    def indices(self) -> torch.Tensor:
        """This rank's share of the current epoch, in the order it trains on them."""
        if not self.shuffle:
            start = self.rank * (self.n // self.world_size) + min(self.rank, self.n % self.world_size)
            return torch.arange(start, start + len(self))
        order = torch.randperm(self.n, generator=self.generator(0))
        total = len(self) * self.world_size
        return order.repeat(-(-total // max(self.n, 1)))[:total][self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.indices().tolist())


class RamLoader:
    """Batches of a :class:`RamImages` as the stock trainer and validator expect them: ``{"img", "cls"}`` dicts.

    ``shuffle``: a new order each epoch, drawn from ``seed`` and the epoch set by :meth:`set_epoch`, so an epoch's
    batches are the same whether the run was interrupted or not. ``raw``: yield uint8 images for the trainer to
    augment on its device (training); otherwise float images in [0, 1], three channels (evaluation). Under DDP each
    rank iterates its share of the epoch (``sampler``, an :class:`EpochSampler`).

    Args:
        data: The cached split.
        dataset: The ``ClassificationDataset`` it came from; the trainer reads its length and transforms.
        batch_size, shuffle, seed, raw: As above.
        extras: Per-image tensors (first dimension N) served beside the images under their key, e.g. the teacher
            probabilities of knowledge distillation.
        rank, world_size: This process's rank and the number of ranks (DDP); 0 and 1 for a single process.
    """

    num_workers = 0
    drop_last = False

    def __init__(self, data: RamImages, dataset, batch_size: int, shuffle: bool, seed: int = 0, raw: bool = False,
                 extras: dict[str, torch.Tensor] | None = None, rank: int = 0, world_size: int = 1):
        self.data, self.dataset, self.batch_size = data, dataset, int(batch_size)
        self.extras = extras or {}
        for key, values in self.extras.items():
            if len(values) != len(data):
                raise ValueError(f"RamLoader extras['{key}'] has {len(values)} rows for {len(data)} images")
        self.shuffle, self.seed, self.raw = shuffle, int(seed), raw
        self.sampler = EpochSampler(len(data), shuffle, seed, rank, world_size)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        order = self.sampler.indices()
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = {"img": self.data.images[index], "cls": self.data.labels[index]}
            batch.update({key: values[index] for key, values in self.extras.items()})
            if self.raw:  # the trainer augments it with draws seeded per batch: the same batch in every run
                # keyed by the batch's first position in the epoch's dealt order (rank r's p-th image is at p W + r)
                position = start * self.sampler.world_size + self.sampler.rank
                batch["seed"] = hash((self.seed, self.epoch, position))
            else:
                batch["img"] = batch["img"].float().div_(255).expand(-1, 3, -1, -1).contiguous()
            yield batch

    def reset(self) -> None:
        """Nothing to rebuild: the stock trainer calls this when it switches augmentation stages."""

    def close(self) -> None:
        """No workers to stop."""
