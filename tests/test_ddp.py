"""The fast path (cache=ram) beyond one CPU process: DDP shares, one decoded copy per machine, and the device
branches a GPU takes; on CPUs, two-process runs over torch.distributed's gloo backend standing in for NCCL."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, identity_images
from spayolo.engine import ramdata
from spayolo.engine.augment import BatchAugment, mix_batch
from spayolo.engine.ramdata import CacheSpaceError, EpochSampler, RamImages, RamLoader, shared_cache_prefix

WORLD = 2
SPLITS = {"train": {"a": 4, "b": 3}, "val": {"a": 3, "b": 2}}  # odd counts: a padded training share, uneven val


@pytest.mark.parametrize("n, world", [(7, 3), (8, 2), (2, 3)])
def test_training_shares_deal_one_process_order_as_distributed_sampler(n, world):
    """Rank r trains on positions r, r + W, ... of the single-process order, padded with its start as PyTorch's
    DistributedSampler pads: equal shares whose k-th batches together are the single-process batch k at W x batch."""
    from torch.utils.data.distributed import DistributedSampler

    single = EpochSampler(n, shuffle=True, seed=5)
    for epoch in (0, 3):
        single.set_epoch(epoch)
        order = single.indices()
        assert sorted(order.tolist()) == list(range(n))
        shares = []
        for rank in range(world):
            sampler = EpochSampler(n, shuffle=True, seed=5, rank=rank, world_size=world)
            sampler.set_epoch(epoch)
            dealt = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
            assert sampler.indices().tolist() == order[dealt].tolist() and len(sampler) == len(dealt)
            shares.append(sampler.indices())
        positions = torch.stack(shares, 1).flatten()  # rank r's p-th image sits at position p * W + r
        assert positions.tolist() == order.repeat(world)[: len(positions)].tolist()


@pytest.mark.parametrize("n, world", [(7, 3), (5, 2), (2, 3)])
def test_evaluation_shares_are_ultralytics_contiguous_runs(n, world):
    from ultralytics.data.build import ContiguousDistributedSampler

    shares = [EpochSampler(n, shuffle=False, rank=rank, world_size=world).indices().tolist() for rank in range(world)]
    assert shares == [list(ContiguousDistributedSampler(range(n), world, rank=rank)) for rank in range(world)]
    assert sum(shares, []) == list(range(n))  # every image once: gathered predictions count each one once


def test_rank_batches_follow_their_share_with_their_own_augmentation_seeds(tmp_path):
    data = RamImages(identity_images(tmp_path, count=11))
    seeds, single = [], RamLoader(data, dataset=None, batch_size=4, shuffle=True, seed=2, raw=True)
    single.set_epoch(1)
    for start, batch in zip(range(0, 11, 4), single):  # one process: seeds keyed by (seed, epoch, batch start)
        assert batch["seed"] == hash((2, 1, start))
    for rank in range(WORLD):
        loader = RamLoader(data, dataset=None, batch_size=2, shuffle=True, seed=2, raw=True, rank=rank, world_size=2)
        loader.set_epoch(1)
        images = [batch["img"][:, 0, 0, 0] // 10 for batch in loader]  # identity images: pixel = 10 x index
        assert torch.cat(images).tolist() == loader.sampler.indices().tolist()
        assert len(loader) == 3 and [len(x) for x in images] == [2, 2, 2]
        seeds += [batch["seed"] for batch in loader]
    assert len(set(seeds)) == len(seeds)  # no two batches of an epoch share their augmentation draws


def test_shared_copy_is_written_once_then_mapped_until_the_images_change(tmp_path):
    import cv2

    samples = identity_images(tmp_path, count=6)
    in_memory = RamImages(samples)
    first = RamImages(samples, shared=tmp_path / "train")
    assert first.file.parent == tmp_path and first.file.name.startswith("train.ram-") and not first.reused
    assert [f.name for f in tmp_path.glob("train.ram-*")] == [first.file.name]  # no temporary file left
    torch.testing.assert_close(first.images, in_memory.images, rtol=0, atol=0)
    again = RamImages(samples, shared=tmp_path / "train")
    assert again.reused and again.file == first.file
    torch.testing.assert_close(again.images, in_memory.images, rtol=0, atol=0)
    if sys.platform.startswith("linux"):  # mapped from the file, not copied into this process
        assert str(first.file) in Path("/proc/self/maps").read_text()

    from ultralytics.data.augment import classify_transforms

    evaluated = RamImages(samples, transform=classify_transforms(32), shared=tmp_path / "train")
    assert not evaluated.reused and evaluated.file != first.file and evaluated.images.shape[-1] == 32
    cv2.imwrite(str(samples[2][0]), np.full((48, 48), 77, np.uint8))
    changed = RamImages(samples, shared=tmp_path / "train")
    assert not changed.reused and changed.file not in (first.file, evaluated.file)
    assert changed.images[2].unique().tolist() == [77]


def test_shared_copy_checks_ram_and_disk_before_decoding(tmp_path, monkeypatch):
    import cv2
    import psutil

    samples = identity_images(tmp_path, count=4)  # gray, 48 x 48: 2304 bytes each
    colour = np.zeros((48, 48, 3), np.uint8)
    colour[..., 2] = 1
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    samples.append((tmp_path / "colour.png", 0))  # the array grows to three channels at the last image
    available = psutil.virtual_memory().available
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2 * 5 * 2304 - 2))
    with pytest.raises(CacheSpaceError, match="train with cache=False"):
        RamImages(samples, shared=tmp_path / "train")
    with pytest.raises(MemoryError):  # what library users already catch
        RamImages(samples)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    monkeypatch.setattr(ramdata.shutil, "disk_usage", lambda path: SimpleNamespace(free=2 * 5 * 2304))
    with pytest.raises(CacheSpaceError, match=re.escape(f"GiB in {tmp_path}")):  # the gray file fits, the colour not
        RamImages(samples, shared=tmp_path / "train")
    assert not list(tmp_path.glob("train.ram-*"))  # nothing half-written is left to be mapped later


def test_shared_copy_lives_beside_the_split_else_in_the_run_folder(tmp_path, monkeypatch):
    split, run = tmp_path / "faces" / "train", tmp_path / "runs" / "r"
    split.mkdir(parents=True)
    assert shared_cache_prefix(split, run) == split
    monkeypatch.setattr(ramdata.os, "access", lambda path, mode: Path(path) != split.parent)
    assert shared_cache_prefix(split, run) == run / "train"


def test_batch_augmentation_and_mixing_stay_on_the_images_device():
    """On an accelerator the parameters are drawn on the CPU and moved to the images' device; the meta device, like
    CUDA, refuses any CPU tensor left in an op, so a missing move fails here as it would on a GPU."""
    images = torch.randint(0, 255, (8, 1, 48, 48), dtype=torch.uint8).to("meta")
    augment = BatchAugment(32, scale=0.3, fliplr=0.5, flipud=0.5, degrees=10, hsv_v=0.3, erasing=0.5)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (8, 1, 32, 32) and out.dtype == torch.float32
    colour = augment(images.expand(-1, 3, -1, -1), torch.Generator().manual_seed(0))  # saturation needs 3 channels
    assert colour.device.type == "meta"
    augment.hsv_s = 0.5
    assert augment.jitter(colour, torch.Generator().manual_seed(0)).device.type == "meta"
    targets = F.one_hot(torch.arange(8) % 3, 3).float().to("meta")
    mixed = mix_batch(out.expand(-1, 3, -1, -1).contiguous(), targets, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert mixed.device.type == "meta" and mixed.shape == (8, 3)


def _stub_trainer(device: str):
    from spayolo.engine.trainer import FERTrainer

    trainer = object.__new__(FERTrainer)  # what preprocess_batch reads of a trainer set up for training
    trainer.device, trainer.data = torch.device(device), {"nc": 3}
    trainer.args = SimpleNamespace(mixup=0.5, cutmix=0.5)
    trainer.augment = BatchAugment(32, degrees=10, hsv_v=0.3, erasing=0.5)
    trainer._memory_format, trainer._mix_generator = torch.contiguous_format, torch.Generator()
    return trainer


def _raw_batch() -> dict:
    images = torch.randint(0, 255, (6, 1, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return {"img": images, "cls": torch.arange(6) % 3, "teacher": torch.full((6, 3), 1 / 3), "seed": 7}


def test_preprocess_moves_uint8_batches_and_everything_it_adds_to_the_device(monkeypatch):
    import contextlib

    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())  # no meta backend
    batch = _stub_trainer("meta").preprocess_batch(_raw_batch())
    assert {key: value.device.type for key, value in batch.items()} == dict.fromkeys(
        ("img", "cls", "teacher", "target"), "meta")
    assert batch["img"].shape == (6, 3, 32, 32) and batch["target"].shape == (6, 3)


def test_setup_on_an_accelerator_leaves_amp_layout_and_optimizer_to_ultralytics(monkeypatch):
    """On a GPU the fast path changes the data path only: AMP (fp16 with a grad scaler), channels_last and the
    optimizer stay Ultralytics' own; bf16 autocast, fused kernels and the CPU layout tricks are for CPUs."""
    from ultralytics.models.yolo.classify import ClassificationTrainer

    from spayolo.engine import trainer as fer_trainer

    seen = {}

    def stock_setup(self):
        seen["channels_last"], self.amp = self.args.channels_last, True

    monkeypatch.setattr(ClassificationTrainer, "_setup_train", stock_setup)
    monkeypatch.setattr(ClassificationTrainer, "build_optimizer",
                        lambda self, model, *args: torch.optim.SGD(model.parameters(), lr=0.1))
    monkeypatch.setattr(fer_trainer, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(fer_trainer, "keep_freed_memory", lambda: seen.setdefault("malloc", True))
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # the CPU branch's, kept from this session
    for device, channels_last in (("cuda", None), ("cuda", True), ("cpu", None)):
        trainer = _stub_trainer(device)
        trainer.args = SimpleNamespace(cache="ram", amp=True, channels_last=channels_last, ema=True)
        trainer.model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1))
        trainer._setup_train()
        fused = trainer.build_optimizer(trainer.model).param_groups[0]["fused"]
        pointwise = isinstance(trainer.model[0], fer_trainer.PointwiseMatmul)
        if device == "cuda":
            assert seen.pop("channels_last") is channels_last and trainer.amp is True and "malloc" not in seen
            assert trainer._memory_format == torch.contiguous_format and not fused and not pointwise
        else:  # the CPU branch, for contrast: no native bf16 here, so fp32
            assert seen.pop("channels_last") is False and trainer.amp is False and seen.pop("malloc")
            assert trainer._memory_format == torch.channels_last and fused and pointwise


# --- two gloo ranks on this machine's CPUs, as Ultralytics' DDP workers (one per GPU) run ---


def identity_splits(root: Path) -> Path:
    """Class folders of gray images whose every pixel is 10 x (1 + the image's index in its split)."""
    import cv2

    for split, classes in SPLITS.items():
        i = 0
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for _ in range(count):
                cv2.imwrite(str(root / split / name / f"{i:02d}.png"), np.full((48, 48), 10 * (i + 1), np.uint8))
                i += 1
    return root


def gloo_worker(data: str, project: str, out: str) -> None:
    """One rank (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment, as torchrun sets them): a whole
    two-epoch run, the same run stopped after its first epoch, and its resumption; what each saw goes to ``out``."""
    import datetime
    from unittest import mock

    import torch.distributed as dist
    import ultralytics.engine.validator as stock_validator
    from ultralytics.utils import RANK
    from ultralytics.utils.torch_utils import unwrap_model

    from spayolo.engine.trainer import FERTrainer

    class CpuDDP(torch.nn.parallel.DistributedDataParallel):
        """Ultralytics passes ``device_ids=[device.index]``, [None] on a CPU, which DDP refuses for a CPU module."""

        def __init__(self, module, device_ids=None, **kwargs):
            super().__init__(module, **kwargs)

    class GlooTrainer(FERTrainer):
        """FERTrainer as Ultralytics' DDP worker runs it, its process group gloo on CPUs instead of NCCL on GPUs."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.world_size = WORLD  # Ultralytics counts the GPUs in device=; a CPU counts as none
            self.seen = {}

        def _setup_ddp(self):
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))

        def preprocess_batch(self, batch):
            self.seen.setdefault(self.epoch, []).extend((batch["img"][:, 0, 0, 0] // 10 - 1).tolist())
            return super().preprocess_batch(batch)

        def final_eval(self):
            # the stock final validation of a DDP rank loads best.pt onto CUDA device current_device()
            with mock.patch.object(stock_validator, "RANK", -1):
                super().final_eval()

    class Stop(Exception):
        pass

    def stop_after_first_epoch(trainer):
        raise Stop

    def report(trainer) -> dict:
        loaders = {"train": trainer.train_loader, "val": trainer.test_loader}
        maps = Path("/proc/self/maps").read_text() if sys.platform.startswith("linux") else None
        return {"seen": trainer.seen, "start_epoch": trainer.start_epoch,
                "state": {k: v.clone() for k, v in unwrap_model(trainer.model).state_dict().items()},
                "ema": {k: v.clone() for k, v in trainer.ema.ema.state_dict().items()},
                "files": {k: (str(v.data.file), v.data.reused) for k, v in loaders.items()},
                "mapped": None if maps is None else all(str(v.data.file) in maps for v in loaders.values()),
                "val_share": trainer.test_loader.sampler.indices().tolist(),
                "val_images": int(trainer.validator.confusion_matrix.matrix.sum()),
                "metrics": trainer.metrics}

    args = dict(TINY, model="yolov8n-cls.yaml", data=data, project=project, epochs=2, cache="ram", amp=False,
                mixup=0.3)
    runs = {}
    with mock.patch.object(torch.nn.parallel, "DistributedDataParallel", CpuDDP):
        whole = GlooTrainer(overrides={**args, "name": "whole"})
        whole.train()
        runs["whole"] = report(whole)
        cut = GlooTrainer(overrides={**args, "name": "cut"})
        cut.add_callback("on_fit_epoch_end", stop_after_first_epoch)
        try:
            cut.train()
        except Stop:
            dist.barrier()  # rank 0 has written last.pt before stopping
        resumed = GlooTrainer(overrides={"resume": str(Path(project) / "cut" / "weights" / "last.pt")})
        resumed.train()
        runs["resumed"] = report(resumed)
    torch.save(runs, Path(out) / f"rank{RANK}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gloo_runs(tmp_path_factory):
    """Both ranks' reports of the runs in :func:`gloo_worker`, and the dataset they trained on."""
    root = tmp_path_factory.mktemp("gloo")
    data, out = identity_splits(root / "faces"), root / "out"
    out.mkdir()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD),
           "LOCAL_WORLD_SIZE": str(WORLD), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_ddp; "
            f"test_ddp.gloo_worker({str(data)!r}, {str(root / 'runs')!r}, {str(out)!r})")
    ranks = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    try:
        logs = [rank.communicate(timeout=900)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    failed = [f"rank {r} failed:\n{log[-5000:]}" for r, (rank, log) in enumerate(zip(ranks, logs)) if rank.returncode]
    assert not failed, "\n".join(failed)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], data


@pytest.mark.slow
def test_ddp_ranks_train_disjoint_shares_of_the_one_process_epoch(gloo_runs):
    ranks, _ = gloo_runs
    n, seed = sum(SPLITS["train"].values()), TINY["seed"]
    for epoch in (0, 1):
        single = EpochSampler(n, shuffle=True, seed=seed)
        single.set_epoch(epoch)
        seen = [ranks[r]["whole"]["seen"][epoch] for r in range(WORLD)]
        assert len(seen[0]) == len(seen[1]) == -(-n // WORLD)
        dealt = torch.tensor(seen).T.flatten()  # rank r's p-th image at position p * W + r
        assert dealt[:n].tolist() == single.indices().tolist()  # the epoch of one process, each image once
        assert dealt[n:].tolist() == single.indices()[: len(dealt) - n].tolist()  # padded as DistributedSampler
    assert ranks[0]["resumed"]["seen"] == {1: ranks[0]["whole"]["seen"][1]}  # the resumed epoch, same shares
    assert ranks[1]["resumed"]["seen"] == {1: ranks[1]["whole"]["seen"][1]}


@pytest.mark.slow
def test_ddp_validation_gathers_each_image_once(gloo_runs):
    ranks, _ = gloo_runs
    n = sum(SPLITS["val"].values())
    assert ranks[0]["whole"]["val_share"] + ranks[1]["whole"]["val_share"] == list(range(n))
    assert ranks[0]["whole"]["val_images"] == n  # rank 0 scored the gathered predictions
    assert "metrics/accuracy_top1" in ranks[0]["whole"]["metrics"]


@pytest.mark.slow
def test_ddp_ranks_map_one_decoded_copy_per_machine(gloo_runs):
    ranks, data = gloo_runs
    for split in ("train", "val"):
        (file, written), (mapped, reused) = ranks[0]["whole"]["files"][split], ranks[1]["whole"]["files"][split]
        assert file == mapped and not written and reused  # rank 0 decoded it, rank 1 mapped it
        assert [str(f) for f in data.glob(f"{split}.ram-*.npy")] == [file]  # beside the split, one file
        assert all(r["resumed"]["files"][split] == (file, True) for r in ranks)  # a later run maps it again
    train = sorted((data / "train").glob("*/*.png"))
    torch.testing.assert_close(torch.from_numpy(np.load(ranks[0]["whole"]["files"]["train"][0])),
                               RamImages([(f, 0) for f in train]).images, rtol=0, atol=0)
    if sys.platform.startswith("linux"):
        assert all(r[run]["mapped"] for r in ranks for run in ("whole", "resumed"))


@pytest.mark.slow
def test_ddp_training_keeps_ranks_in_step_and_resumes_exactly(gloo_runs):
    """The ranks' weights stay equal (their BatchNorm statistics are their own: Ultralytics' DDP does not broadcast
    buffers; rank 0's are saved), and a run resumed after its first epoch ends where the whole run ended."""
    ranks, _ = gloo_runs
    assert ranks[0]["resumed"]["start_epoch"] == 1
    for key, value in ranks[0]["whole"]["ema"].items():  # what checkpoints save
        torch.testing.assert_close(ranks[0]["resumed"]["ema"][key], value, rtol=0, atol=0, msg=key)
    for key, value in ranks[0]["whole"]["state"].items():
        torch.testing.assert_close(ranks[0]["resumed"]["state"][key], value, rtol=0, atol=0, msg=key)
        if value.is_floating_point() and "running_" not in key:
            for run in ("whole", "resumed"):
                torch.testing.assert_close(ranks[1][run]["state"][key], value, rtol=0, atol=0, msg=key)
