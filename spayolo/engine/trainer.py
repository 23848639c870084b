"""The trainer behind ``yolo classify train`` once spayolo is installed: the stock one plus a fast CPU path.

Switched on by stock arguments, each documented in the README:

- ``cache=ram`` (or ``True``): decode the training and validation images once into uint8 tensors and augment whole
  training batches on the training device (:class:`~spayolo.engine.augment.BatchAugment`) instead of per image with
  PIL. ``degrees`` is honoured here (the stock classification loader ignores it).
- ``amp=True`` (the default) with ``cache=ram`` on a CPU: bfloat16 autocast where the CPU computes bf16 natively
  (AVX512-BF16 or AMX); stock Ultralytics trains fp32 on every CPU. Elsewhere it says so once and trains fp32. The
  stock data path stays fp32 on a CPU, as stock, so that training without ``cache=ram`` is Ultralytics' own.
- ``channels_last``: unset means on for the CPU fast path (faster convolutions there); ``True``/``False`` force it.
- ``mixup``/``cutmix`` (ignored by the stock classification trainer) mix any batch, and ``label_smoothing`` (an
  argument spayolo adds back) smooths the loss, on either path. ``ema=False`` (also spayolo's) validates and saves the
  trained weights themselves instead of their exponential moving average.
- ``distill=teacher.pt`` (spayolo's, with ``cache=ram``): knowledge distillation from the per-image probabilities
  that ``spayolo teach`` computed on the training split (:mod:`~spayolo.engine.distill`), weighted by
  ``distill_weight`` against the label loss and softened at temperature ``distill_temp``.
- With ``cache=ram`` under DDP (``device=0,1,...``) each rank trains on its own share of every epoch and the ranks
  of a machine map one decoded copy of each split (:meth:`FERTrainer.get_dataloader`). On a GPU the fast path
  changes the data path only: AMP, channels_last and the optimizer stay Ultralytics' own.
- ``imgsz`` is rounded up to a multiple of 16, not 32 (:data:`~spayolo.engine.classify.CLASSIFIER_STRIDE`), so that
  ``imgsz=48`` trains at FER2013's native size; the stock trainer would train it at 64.
- With ``cache=ram`` on a CPU, PyTorch computes on every core: Ultralytics keeps one core free for dataloader workers
  (``NUM_THREADS = cores - 1``) and then trains with none (``workers=0`` on CPU), so a 2-core machine used one. SGD,
  Adam and AdamW take PyTorch's fused CPU kernel there, global pools hand back channels_last gradients, and the training
  model's 1x1 convolutions run as the matrix products they are (:func:`pointwise_convs_as_matmul`), and glibc's
  malloc keeps freed activations for the next batch (:func:`keep_freed_memory`).

Every run also writes ``weights/last.state.pt`` beside ``last.pt``: the fp32 model, EMA and optimizer state that
the stock fp16 checkpoint rounds, so ``resume=True`` continues exactly where the run stopped (when no gradient
accumulation spans the stop, i.e. ``batch >= nbs``: the stock loop keeps its accumulation step count to itself).
"""

from __future__ import annotations

import ctypes
import platform
from copy import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import ultralytics.engine.trainer as base_trainer
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.patches import override_configs
from ultralytics.utils.torch_utils import torch_distributed_zero_first, unwrap_model

from spayolo.errors import MissingFileError, UsageError
from spayolo.nn.common import channels_last, keep_channels_last
from spayolo.runtime import usable_cores

from .augment import BatchAugment, mix_batch
from .classify import FERValidator, classifier_imgsz_rule
from .distill import load_teacher
from .loss import DistillationLoss, SmoothCrossEntropy
from .ramdata import RamImages, RamLoader, shared_cache_prefix
from .transfer import align_head

__all__ = ("STATE_FILE", "FERTrainer", "cpu_has_native_bf16", "keep_freed_memory",
           "keep_pool_gradients_channels_last", "pointwise_convs_as_matmul")

STATE_FILE = "last.state.pt"


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls and convolutions run natively (AVX512-BF16 or AMX), not emulated far below fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


# glibc's mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel (process-wide).

    Every training step frees and allocates again the same activations, a few MB each. By default glibc serves such
    blocks with fresh mmaps below a threshold it moves at run time and trims the top of its heap, so a step can pay
    page faults on memory it has just given back, and a run switches between a fast and a slow step time
    unpredictably. Fixed thresholds (up to glibc's maximum mmap threshold, 32 MB) keep it at the fast one; the
    process keeps its peak memory. Returns False, changing nothing, where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return all(libc.mallopt(option, value) == 1 for option, value in MALLOC_SETTINGS.items())


def _keep_input_channels_last(module, args):
    return (keep_channels_last(args[0]), *args[1:])


def keep_pool_gradients_channels_last(model: torch.nn.Module) -> None:
    """Make every global average pool of a channels_last model hand its gradient back channels_last.

    A pool's backward spreads the gradient over the map in the contiguous layout, and the BatchNorm and SiLU
    backward of the conv before it then leave oneDNN's fast path, several times slower for the 1280-channel conv of
    Ultralytics' classification head in bf16 on a CPU. The pool's input goes through
    :func:`~spayolo.nn.common.keep_channels_last`, as SPAM's own matrix products do.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.AdaptiveAvgPool2d):
            module.register_forward_pre_hook(_keep_input_channels_last)



class PointwiseMatmul(torch.nn.Conv2d):
    """A 1x1 convolution that computes a channels_last map as the matrix product it is, (B*H*W, c1) @ (c1, c2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not channels_last(x):
            return super().forward(x)
        b, _, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).flatten(0, 2), self.weight.flatten(1), self.bias)  # a view, no copy
        return y.view(b, h, w, -1).permute(0, 3, 1, 2)


def pointwise_convs_as_matmul(model: torch.nn.Module) -> None:
    """Run the 1x1 convolutions of a channels_last training model as matrix products: same weights, same values.

    oneDNN's bf16 convolution backward is several times its forward on the 2-8 px maps of a 64 px face, a GEMM's is
    not. Only the model being trained changes class; the EMA that checkpoints save is copied before, so checkpoints
    hold plain ``Conv2d`` layers.
    """
    for module in model.modules():
        if (type(module) is torch.nn.Conv2d and module.kernel_size == (1, 1) and module.stride == (1, 1)
                and module.padding == (0, 0) and module.dilation == (1, 1) and module.groups == 1):
            module.__class__ = PointwiseMatmul


def _rank_and_world(local_rank: int) -> tuple[int, int]:
    """This process's rank and the number of ranks under DDP; (0, 1) outside it, where Ultralytics passes -1."""
    if local_rank == -1 or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _seed_loader_epoch(trainer) -> None:
    if isinstance(trainer.train_loader, RamLoader):
        trainer.train_loader.set_epoch(trainer.epoch)


class FERTrainer(ClassificationTrainer):
    """``ClassificationTrainer`` with the RAM/batch-augmentation data path, CPU bf16 and exact resume (module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "distill_model", None):
            raise UsageError(f"distill_model={self.args.distill_model}: Ultralytics distils Detect-head features, "
                             "which a classifier lacks; for a classifier write a teacher file with spayolo teach and "
                             "train with cache=ram distill=<that file>")
        self.add_callback("on_train_epoch_start", _seed_loader_epoch)
        self.augment = None
        self._memory_format = torch.contiguous_format
        self._mix_generator = torch.Generator().manual_seed(self.args.seed)  # stock batches carry no seed

    @property
    def ram_cache(self) -> bool:
        return self.args.cache is True or str(self.args.cache).lower() in ("ram", "true")

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        """The stock DataLoader, or with ``cache=ram`` a :class:`RamLoader` over the split decoded once.

        Under DDP (``rank``, the local rank, is not -1) each rank takes its own share of every epoch
        (:class:`~spayolo.engine.ramdata.EpochSampler`) and the ranks of a machine map one decoded copy: its first
        rank decodes the split into a file (:func:`~spayolo.engine.ramdata.shared_cache_prefix`), or finds it there
        from an earlier run, while the others wait, then map it.
        """
        train = mode == "train"
        if not self.ram_cache:
            if train and getattr(self.args, "distill", None):
                raise UsageError(f"distill={self.args.distill} needs cache=ram: the teacher's probabilities are "
                                 "looked up per image in the RAM cache")
            return super().get_dataloader(dataset_path, batch_size, rank, mode)
        share, ranks = _rank_and_world(rank)
        shared = shared_cache_prefix(dataset_path, self.save_dir) if ranks > 1 else None
        with torch_distributed_zero_first(rank):  # a machine's first rank writes the dataset's caches, the rest read
            with override_configs(self.args, {"cache": False}):  # the stock dataset would cache its own copy
                dataset = self.build_dataset(dataset_path, mode)
            if not dataset.samples:
                raise MissingFileError(f"No images found in the '{mode}' split of {dataset_path}")
            count = len(dataset.samples)
            LOGGER.info(f"{colorstr(mode + ':')} " + (f"decoding {count} images into RAM (cache=ram)" if shared is None
                        else f"{count} images in one copy for this machine's ranks, beside {shared} (cache=ram)"))
            data = RamImages(dataset.samples, transform=None if train else dataset.torch_transforms,
                             size=self.args.imgsz, shared=shared)
        if data.file:
            LOGGER.info(f"{colorstr(mode + ':')} {'mapped, decoded by an earlier run' if data.reused else 'decoded'}: "
                        f"{data.file}")
        extras = {}
        if train:
            args = self.args
            self.augment = BatchAugment(args.imgsz, args.scale, args.fliplr, args.flipud, args.degrees, args.hsv_v,
                                        args.hsv_s, args.erasing)
            if getattr(args, "distill", None):
                teacher = load_teacher(args.distill, dataset.samples, dataset_path, self.data["names"])
                # softened once, before batching, so that MixUp/CutMix mix what the loss compares
                extras["teacher"] = teacher.clamp_min(1e-8).log().div_(args.distill_temp).softmax(1)
                LOGGER.info(f"{colorstr('distill:')} {args.distill}, weight {args.distill_weight}, "
                            f"temperature {args.distill_temp}")
        else:
            unwrap_model(self.model).transforms = dataset.torch_transforms  # what predict() applies, as stock
        loader = RamLoader(data, dataset, batch_size, shuffle=train, seed=self.args.seed, raw=train, extras=extras,
                           rank=share, world_size=ranks)
        if train and ranks > 1:
            repeated = len(loader.sampler) * ranks - len(data)
            LOGGER.info(f"{colorstr('DDP:')} each of {ranks} ranks trains on its own {len(loader.sampler)} images of "
                        "every epoch" + (f", {repeated} of them repeated to even the shares" if repeated else ""))
        return loader

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """The stock model; a pretrained head's rows follow this dataset's class names (:func:`align_head`)."""
        model = super().get_model(cfg, weights, verbose)
        if weights is not None and self.args.pretrained is not False and not self.resume:
            matched = align_head(model, weights, self.data["names"])
            if matched:
                LOGGER.info(f"{colorstr('classes:')} pretrained head rows matched by name: {matched}")
        return model

    def set_model_attributes(self):
        """Stock class names, and the loss that knows label smoothing, mixed labels and a teacher."""
        super().set_model_attributes()
        smoothing = getattr(self.args, "label_smoothing", 0.0)
        if getattr(self.args, "distill", None):
            self.model.criterion = DistillationLoss(smoothing, self.args.distill_weight, self.args.distill_temp)
        else:
            self.model.criterion = SmoothCrossEntropy(smoothing)

    def preprocess_batch(self, batch: dict) -> dict:
        """Move to the device; augment raw RAM batches there and mix any batch, outside autocast (fp32 draws)."""
        seed = batch.pop("seed", None)
        batch = super().preprocess_batch(batch)
        generator = self._mix_generator if seed is None else torch.Generator().manual_seed(seed & (2**63 - 1))
        with torch.autocast(self.device.type, enabled=False):
            if batch["img"].dtype == torch.uint8:
                images = self.augment(batch["img"], generator)
                batch["img"] = images.expand(-1, 3, -1, -1).contiguous(memory_format=self._memory_format)
            if "teacher" in batch:
                batch["teacher"] = batch["teacher"].to(self.device)
            if self.args.mixup > 0 or self.args.cutmix > 0:
                targets = F.one_hot(batch["cls"], self.data["nc"]).float()
                if "teacher" in batch:
                    targets = torch.cat([targets, batch["teacher"]], 1)
                mixed = mix_batch(batch["img"], targets, self.args.mixup, self.args.cutmix, generator)
                batch["target"] = mixed[:, : self.data["nc"]]
                if "teacher" in batch:
                    batch["teacher"] = mixed[:, self.data["nc"] :]
        return batch

    def _setup_train(self):
        """Stock setup, then CPU bf16 autocast and channels_last, which the stock trainer turns off on CPU."""
        cpu = self.device.type == "cpu"
        channels_last = self.args.channels_last
        if cpu:
            self.args.channels_last = False  # applied below; the stock setup only warns about it on CPU
        with classifier_imgsz_rule(base_trainer):
            super()._setup_train()
        self.args.channels_last = channels_last
        if not getattr(self.args, "ema", True):
            self.ema.decay = lambda updates: 0.0  # every update copies the weights: the "EMA" is the model
        self._memory_format = torch.contiguous_format
        if not cpu:
            return
        if self.ram_cache and self.args.amp not in (False, "fp32", "False"):
            self.amp = cpu_has_native_bf16()
            if self.amp:
                self.args.amp = True  # the stock loop then enters torch.autocast("cpu"), whose dtype is bfloat16
                LOGGER.info(f"{colorstr('AMP:')} bfloat16 autocast on this CPU (native bf16)")
            else:
                LOGGER.info(f"{colorstr('AMP:')} this CPU has no native bf16 (AVX512-BF16 or AMX): training in fp32")
        if self.ram_cache:
            torch.set_num_threads(usable_cores())
            keep_freed_memory()
        if channels_last or (channels_last is None and self.ram_cache):
            self._memory_format = torch.channels_last
            self.model.to(memory_format=torch.channels_last)
            keep_pool_gradients_channels_last(self.model)
            pointwise_convs_as_matmul(self.model)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """The stock optimizer; on the CPU fast path SGD, Adam and AdamW run PyTorch's fused CPU kernel, the same
        update in one pass over each tensor instead of a few ops per tensor."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        fusable = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
        if self.ram_cache and self.device.type == "cpu" and type(optimizer) in fusable:
            for group in optimizer.param_groups:
                group.update(fused=True, foreach=False)
        return optimizer

    def get_validator(self):
        """The stock validator at the size this run trains at (see :class:`~spayolo.engine.classify.FERValidator`)."""
        return FERValidator(self.test_loader, self.save_dir, args=copy(self.args), _callbacks=self.callbacks)

    def save_model(self):
        """Stock checkpoints, plus the exact fp32 state that ``resume=True`` restores (see module doc)."""
        saved = super().save_model()
        state = {
            "epoch": self.epoch,
            "model": unwrap_model(self.model).state_dict(),
            "ema": self.ema.ema.state_dict(),
            "updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }
        torch.save(state, self.wdir / STATE_FILE)
        return saved

    def resume_training(self, ckpt):
        """Stock resume from the rounded checkpoint, then the exact state when it belongs to the same epoch."""
        super().resume_training(ckpt)
        if ckpt is None or not self.resume:
            return
        file = Path(self.args.resume).with_name(STATE_FILE)
        state = torch.load(file, map_location=self.device, weights_only=True) if file.is_file() else None
        if state is None or state["epoch"] != ckpt.get("epoch"):
            LOGGER.warning(f"resume: no exact state {file} for epoch {ckpt.get('epoch', -1) + 1}; "
                           "continuing from the fp16-rounded checkpoint")
            return
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.ema.load_state_dict(state["ema"])
        self.ema.updates = state["updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])

    def final_eval(self):
        """A finished run cannot be resumed: drop its resume state, then the stock final validation."""
        (self.wdir / STATE_FILE).unlink(missing_ok=True)
        return super().final_eval()

