"""spayolo's trainer: the RAM + batch-augmentation path, CPU bf16, the loss, and exact resume, on tiny data."""

from __future__ import annotations

import platform
from copy import deepcopy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, identity_images, write_image_folder
from spayolo.engine import trainer as fer_trainer
from spayolo.engine.augment import BatchAugment, mix_batch
from spayolo.engine.loss import SmoothCrossEntropy
from spayolo.engine.ramdata import RamImages, RamLoader


def test_ram_batches_keep_each_image_with_its_label(tmp_path):
    samples = identity_images(tmp_path)
    data = RamImages(samples)
    assert data.images.shape == (12, 1, 48, 48)  # gray images are cached with one channel
    loader = RamLoader(data, dataset=None, batch_size=5, shuffle=True, seed=3, raw=True)
    augment = BatchAugment(64, scale=0.0, fliplr=0.5, degrees=0.0, hsv_v=0.0, erasing=0.0)
    seen = []
    for batch in loader:
        images = augment(batch["img"], torch.Generator().manual_seed(batch["seed"] & (2**63 - 1)))
        assert images.shape[-2:] == (64, 64)
        index = (images.flatten(1) * 255 / 10).round()
        assert (index == index[:, :1]).all()  # each output image is one source image, resampled whole
        seen += list(zip(index[:, 0].long().tolist(), batch["cls"].tolist()))
    assert sorted(i for i, _ in seen) == list(range(12))
    assert all(label == i % 3 for i, label in seen)


def test_epoch_order_depends_only_on_seed_and_epoch(tmp_path):
    data = RamImages(identity_images(tmp_path))
    loader = RamLoader(data, dataset=None, batch_size=12, shuffle=True, seed=0, raw=True)

    def epoch(k):
        loader.set_epoch(k)
        return next(iter(loader))["img"][:, 0, 0, 0].tolist()

    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)


def test_decoding_holds_the_array_and_one_chunk_of_images(tmp_path, monkeypatch):
    """The peak of cache=ram is the array the split is decoded into plus the images in flight (a chunk of results,
    and each decoding thread's BGR, RGB and channels-first copies), not every decoded image in a list beside the
    array stacked from it."""
    import tracemalloc

    from spayolo.engine import ramdata

    samples = identity_images(tmp_path, count=24, size=96)
    monkeypatch.setattr(ramdata, "_DECODE_CHUNK", 2)
    RamImages(samples[:1])  # imports the decoder before the count starts
    tracemalloc.start()
    try:
        data = RamImages(samples)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.images.shape == (24, 1, 96, 96) and data.images[:, 0, 0, 0].tolist() == [10 * i for i in range(24)]
    assert peak - data.images.nbytes < 10 * 3 * 96 * 96  # ten colour images' worth; the list alone holds 24


@pytest.mark.parametrize("order", ["gray colour small", "gray small colour", "small colour gray"])
def test_a_split_turning_colour_or_changing_size_keeps_every_decoded_image(tmp_path, order):
    """The array grows to three channels at the first colour image and to size x size at the first image whose size
    differs; every image decoded before is carried over as if it had been decoded after."""
    import cv2

    from spayolo.engine.ramdata import _squash

    rng = np.random.default_rng(0)
    images = {"gray": rng.integers(0, 255, (48, 48), np.uint8), "colour": rng.integers(0, 255, (48, 48, 3), np.uint8),
              "small": rng.integers(0, 255, (40, 40), np.uint8)}
    files = []
    for name in order.split():
        files.append(str(tmp_path / f"{name}.png"))
        cv2.imwrite(files[-1], images[name])
    data = RamImages([(f, 0) for f in files], size=32)
    rgb = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB).transpose(2, 0, 1) for f in files]
    np.testing.assert_array_equal(data.images.numpy(), np.stack([_squash(np.ascontiguousarray(x), 32) for x in rgb]))
    with pytest.raises(ValueError, match="different sizes"):
        RamImages([(f, 0) for f in files])
    gray = RamImages([(tmp_path / "gray.png", 0), (tmp_path / "colour.png", 0)])
    assert gray.images.shape == (2, 3, 48, 48) and (gray.images[0] == gray.images[0, :1]).all()


def test_augmentation_is_random_per_image_and_reproducible():
    images = torch.randint(0, 255, (16, 1, 48, 48), dtype=torch.uint8)
    augment = BatchAugment(48, scale=0.3, degrees=10, hsv_v=0.3, erasing=0.5)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    same = augment(images[:1].expand(16, -1, -1, -1), torch.Generator().manual_seed(1))
    assert len({tuple(x.flatten()[:64].tolist()) for x in same}) == 16  # one draw per image, not per batch
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_erasing_and_flip_match_the_stock_probabilities():
    ones = torch.full((2000, 1, 16, 16), 255, dtype=torch.uint8)
    erased = BatchAugment(16, scale=0.0, fliplr=0.0, hsv_v=0.0, erasing=0.3)(ones, torch.Generator().manual_seed(0))
    share = (erased.flatten(1).min(1).values == 0).float().mean()
    assert 0.26 < share < 0.34
    ramp = torch.arange(16, dtype=torch.uint8).mul(15).expand(2000, 1, 16, 16)
    flipped = BatchAugment(16, scale=0.0, fliplr=0.5, hsv_v=0.0, erasing=0.0)(ramp, torch.Generator().manual_seed(0))
    share = (flipped[:, 0, 0, 0] > flipped[:, 0, 0, -1]).float().mean()
    assert 0.45 < share < 0.55


def test_crop_boxes_follow_torchvision_random_resized_crop():
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    stock = torch.tensor([RandomResizedCrop.get_params(Image.new("L", (48, 40)), scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3))
                          for _ in range(4000)], dtype=torch.float)  # rows: top, left, height, width
    left, top, width, height = BatchAugment(64, scale=0.2).crop_boxes(4000, 40, 48, torch.Generator().manual_seed(0))
    assert (left >= 0).all() and (left + width <= 48).all() and (top >= 0).all() and (top + height <= 40).all()
    for ours, theirs in [((width / height).log(), (stock[:, 3] / stock[:, 2]).log()),
                         (width * height / (48 * 40), stock[:, 3] * stock[:, 2] / (48 * 40))]:
        assert abs(ours.mean() - theirs.mean()) < 0.01 and abs(ours.std() - theirs.std()) < 0.01
    assert BatchAugment(64, scale=0.0).crop_boxes(100, 48, 48, torch.Generator())[2].eq(48).all()  # whole image


def test_batch_augmentation_gives_torchvisions_pixels_for_the_same_draws():
    """Crop, flip, brightness and contrast (both orders) given the same boxes and factors: the batch path and the
    stock PIL/torchvision transforms differ by PIL's rounding, not by any shift, scale or colour change."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    faces = F.avg_pool2d(torch.rand(32, 1, 52, 52, generator=g), 5, 1).mul(255).round().to(torch.uint8)  # smooth 48 px
    b, size = len(faces), 64
    left, top = torch.randint(0, 6, (b,), generator=g).float(), torch.randint(0, 6, (b,), generator=g).float()
    width = 48 - left - torch.randint(0, 4, (b,), generator=g)
    height = 48 - top - torch.randint(0, 4, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    brightness, contrast = 0.7 + 0.6 * torch.rand(b, generator=g), 0.7 + 0.6 * torch.rand(b, generator=g)
    augment = BatchAugment(size, fliplr=float(flip.all()), hsv_v=0.3, erasing=0.0)
    augment.crop_boxes = lambda *_: (left, top, width, height)
    ours = augment.resample(faces.float() / 255, g)
    ours = torch.where(flip.view(b, 1, 1, 1), ours.flip(-1), ours)
    for order in ((0, 1), (1, 0)):
        batch, theirs = ours, []
        for op in order:
            factor = (brightness if op == 0 else contrast).view(b, 1, 1, 1)
            batch = augment._brightness(batch, factor) if op == 0 else augment._contrast(batch, factor)
        for i in range(b):
            image = TF.resized_crop(Image.fromarray(faces[i, 0].numpy()), int(top[i]), int(left[i]), int(height[i]),
                                    int(width[i]), [size, size], TF.InterpolationMode.BILINEAR)
            image = TF.hflip(image) if flip[i] else image
            for op in order:
                adjust = TF.adjust_brightness if op == 0 else TF.adjust_contrast
                image = adjust(image, float((brightness, contrast)[op][i]))
            theirs.append(TF.to_tensor(image))
        difference = (batch - torch.stack(theirs))[..., 2:-2, 2:-2] * 255  # the outer ring: crop-edge resampling
        assert difference.abs().mean() < 1.5 and abs(difference.mean()) < 1.2, order  # PIL truncates each colour op


def test_batch_affine_grid_equals_torchs():
    from spayolo.engine.augment import _affine_grid

    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta, [16, 1, 24, 24], align_corners=False)
    torch.testing.assert_close(_affine_grid(theta, 24), expected, atol=1e-6, rtol=0)


def test_pooled_heads_get_channels_last_gradients_of_the_same_values():
    """The fast path's pool hook changes the layout of the head's gradients (oneDNN's fast BatchNorm/SiLU backward),
    never their values."""
    from ultralytics.nn.modules import Classify, Conv

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv(3, 8, 3), Classify(8, 5)).train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    plain = torch.autograd.grad(net(x).square().sum(), net[0].conv.weight)[0]
    fer_trainer.keep_pool_gradients_channels_last(net)
    layouts = []
    net[1].conv.bn.register_full_backward_hook(
        lambda m, grad_in, grad_out: layouts.append(grad_out[0].is_contiguous(memory_format=torch.channels_last)))
    hooked = torch.autograd.grad(net(x).square().sum(), net[0].conv.weight)[0]
    assert layouts == [True]
    torch.testing.assert_close(hooked, plain)



def test_pointwise_convs_as_matmul_keep_values_gradients_and_layout():
    from ultralytics.nn.modules import C2f, Classify, Conv

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv(3, 8, 3), C2f(8, 8, 1), Classify(8, 5)).train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = net(x)
    plain = torch.autograd.grad(y.square().sum(), [x, *net.parameters()])
    fer_trainer.pointwise_convs_as_matmul(net)
    assert sum(isinstance(m, fer_trainer.PointwiseMatmul) for m in net.modules()) == 3  # C2f cv1, cv2; head conv
    assert isinstance(net[0].conv, torch.nn.Conv2d) and not isinstance(net[0].conv, fer_trainer.PointwiseMatmul)
    outputs = []
    net[1].cv1.conv.register_forward_hook(lambda m, i, o: outputs.append(o))
    matmul_y = net(x)
    torch.testing.assert_close(matmul_y, y)
    assert outputs[0].is_contiguous(memory_format=torch.channels_last)
    for ours, theirs in zip(torch.autograd.grad(matmul_y.square().sum(), [x, *net.parameters()]), plain):
        torch.testing.assert_close(ours, theirs)
    assert net(x.contiguous()).shape == y.shape  # a contiguous map takes the convolution

def test_mixed_images_and_targets_agree():
    value = torch.tensor([0.1, 0.5, 0.9])
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    images = value[labels].view(-1, 1, 1, 1).expand(-1, 3, 16, 16).clone()
    targets = mix_batch(images, F.one_hot(labels, 3).float(), mixup=0.5, cutmix=0.5,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    torch.testing.assert_close(images.mean((1, 2, 3)), targets @ value)  # lambda of the pixels = lambda of the labels
    assert (targets.max(1).values < 1).any()


def test_loss_equals_stock_on_hard_labels_and_smooths():
    logits, cls = torch.randn(6, 7), torch.randint(0, 7, (6,))
    loss, _ = SmoothCrossEntropy()(logits, {"cls": cls})
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, cls))
    smooth, _ = SmoothCrossEntropy(0.1)(logits, {"cls": cls})
    manual = -(torch.full((6, 7), 0.1 / 7).scatter_add(1, cls[:, None], torch.full((6, 1), 0.9))
               * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(smooth, manual)
    with pytest.raises(ValueError, match="label_smoothing"):
        SmoothCrossEntropy(1.5)


def forward_dtypes(yolo):
    """Record the dtype of the first convolution's output during training."""
    seen = []

    def hook(trainer):
        first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)

    yolo.add_callback("on_train_start", hook)
    return seen


def record_calls(monkeypatch, name: str) -> list:
    """Replace ``spayolo.engine.trainer.<name>`` by a recorder of its calls' arguments."""
    calls = []
    monkeypatch.setattr(fer_trainer, name, lambda *args: calls.append(args))
    return calls


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_sets_glibcs_thresholds():
    """glibc accepts every threshold (mallopt returns 1 only for a value in range, e.g. mmap <= 32 MB)."""
    assert fer_trainer.keep_freed_memory()


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False])
def test_amp_on_cpu_trains_bf16_only_where_native(tiny_dataset, tmp_path, monkeypatch, native, caplog):
    from ultralytics import YOLO

    monkeypatch.setattr(fer_trainer, "cpu_has_native_bf16", lambda: native)
    malloc_tuned = record_calls(monkeypatch, "keep_freed_memory")
    yolo = YOLO("spayolo-n.yaml")
    seen = forward_dtypes(yolo)
    yolo.train(data=str(tiny_dataset), epochs=1, cache="ram", amp=True, project=str(tmp_path), name="r", **TINY)
    assert isinstance(yolo.trainer, fer_trainer.FERTrainer)
    assert malloc_tuned == [()]
    assert set(seen) == {torch.bfloat16 if native else torch.float32}
    assert yolo.trainer.model.model[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(group["fused"] for group in yolo.trainer.optimizer.param_groups)  # AdamW's fused CPU kernel
    assert any(isinstance(m, fer_trainer.PointwiseMatmul) for m in yolo.trainer.model.modules())
    for saved in (yolo.trainer.ema.ema, yolo.model):  # the EMA and the best.pt that YOLO loads after training
        assert not any(isinstance(m, fer_trainer.PointwiseMatmul) for m in saved.modules())


@pytest.mark.slow
def test_fast_path_sgd_is_fused_and_takes_the_stock_step(tiny_dataset, tmp_path):
    """The shipped default's SGD (Nesterov momentum, per-group weight decay) runs fused on the fast path, and a
    fused step from the trained state moves every parameter as PyTorch's per-tensor SGD does."""
    from ultralytics import YOLO

    yolo = YOLO("yolov8n-cls.yaml")
    yolo.train(data=str(tiny_dataset), epochs=1, cache="ram", project=str(tmp_path), name="r",
               **{**TINY, "optimizer": "SGD", "lr0": 0.01})
    fused = yolo.trainer.optimizer
    assert all(group["fused"] and group["nesterov"] for group in fused.param_groups)
    assert any(group["weight_decay"] > 0 for group in fused.param_groups)

    params = [p for group in fused.param_groups for p in group["params"]]
    copies = [[p.detach().clone().requires_grad_() for p in group["params"]] for group in fused.param_groups]
    reference = torch.optim.SGD([{"params": group} for group in copies], lr=0.01)
    reference.load_state_dict(deepcopy(fused.state_dict()))  # hyperparameters and (copied) momentum buffers
    copies = [c for group in copies for c in group]
    for group in reference.param_groups:
        group.update(fused=False, foreach=False)
    torch.manual_seed(0)
    for p, c in zip(params, copies):
        p.grad = torch.randn_like(p)
        c.grad = p.grad.clone()
    fused.step()
    reference.step()
    for p, c in zip(params, copies):
        torch.testing.assert_close(p, c)


@pytest.mark.slow
def test_stock_path_is_untouched_by_default(tiny_dataset, tmp_path, monkeypatch):
    from ultralytics import YOLO

    malloc_tuned = record_calls(monkeypatch, "keep_freed_memory")
    yolo = YOLO("spayolo-n.yaml")
    seen = forward_dtypes(yolo)
    yolo.train(data=str(tiny_dataset), epochs=1, project=str(tmp_path), name="r", **TINY)
    assert set(seen) == {torch.float32}
    assert not malloc_tuned
    assert type(yolo.trainer.train_loader).__name__ == "InfiniteDataLoader"
    assert not any(group["fused"] for group in yolo.trainer.optimizer.param_groups)
    assert not any(isinstance(m, fer_trainer.PointwiseMatmul) for m in yolo.trainer.model.modules())


@pytest.mark.parametrize("ema", [True, False])
def test_ema_false_validates_the_trained_weights(tiny_dataset, tmp_path, ema):
    from ultralytics import YOLO

    yolo = YOLO("yolov8n-cls.yaml")
    yolo.train(data=str(tiny_dataset), epochs=1, cache="ram", ema=ema, project=str(tmp_path), name="r", **TINY)
    model, average = yolo.trainer.model.state_dict(), yolo.trainer.ema.ema.state_dict()
    same = all(torch.equal(model[k].float(), v.float()) for k, v in average.items() if v.dtype.is_floating_point)
    assert same is not ema


def test_fine_tuning_matches_the_pretrained_head_rows_by_class_name(tmp_path, tiny_ckpt):
    from ultralytics import YOLO

    source = YOLO(tiny_ckpt).model  # angry, disgust, fear, happy, sad, surprise, neutral
    torch.manual_seed(0)
    for p in source.model[-1].linear.parameters():
        torch.nn.init.normal_(p)
    ckpt = tmp_path / "fer.pt"
    torch.save({"model": source, "train_args": {"imgsz": 32, "task": "classify"}}, ckpt)
    ckplus = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
    data = write_image_folder(tmp_path / "ckplus", classes=ckplus, per_class=1)
    heads = []
    yolo = YOLO(ckpt)
    before_training = lambda t: heads.append(deepcopy(t.model.model[-1].linear.state_dict()))  # noqa: E731
    yolo.add_callback("on_pretrain_routine_end", before_training)
    yolo.train(data=str(data), epochs=1, project=str(tmp_path), name="r", **TINY)
    head, pretrained = heads[0], source.model[-1].linear
    for new, old in zip(ckplus, (0, None, 1, 2, 3, 4, 5)):
        if old is None:  # contempt: no FER2013 row, an even start
            assert not head["weight"][1].any() and head["bias"][1] == pretrained.bias.mean()
        else:
            assert torch.equal(head["weight"][ckplus.index(new)], pretrained.weight[old]), new
    assert yolo.trainer.model.names == dict(enumerate(ckplus))


def final_state(trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_resume_continues_exactly(tiny_dataset, tmp_path):
    from ultralytics import YOLO

    args = dict(data=str(tiny_dataset), epochs=3, cache="ram", mixup=0.3, project=str(tmp_path), **TINY)
    torch.manual_seed(0)  # both runs start from the same initial weights
    whole = YOLO("spayolo-n.yaml")
    whole.train(name="whole", **args)

    class Stop(Exception):
        pass

    def stop_after_second_epoch(trainer):
        if trainer.epoch == 1:
            raise Stop

    torch.manual_seed(0)
    cut = YOLO("spayolo-n.yaml")
    cut.add_callback("on_fit_epoch_end", stop_after_second_epoch)
    with pytest.raises(Stop):
        cut.train(name="cut", **args)
    last = tmp_path / "cut" / "weights" / "last.pt"
    assert (last.parent / fer_trainer.STATE_FILE).is_file()
    resumed = YOLO(last)
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 2
    expected, got = final_state(whole.trainer), final_state(resumed.trainer)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert not (last.parent / fer_trainer.STATE_FILE).exists()  # a finished run keeps no resume state


@pytest.mark.parametrize("cache", ["ram", False])
def test_imgsz_48_trains_and_scores_at_fer2013s_native_size(tiny_dataset, tmp_path, monkeypatch, cache):
    """Stock Ultralytics rounds a classifier's imgsz up to a multiple of 32: 48 would train and validate at 64."""
    from ultralytics import YOLO

    from spayolo.apps.evaluate import evaluate
    from spayolo.engine.classify import FERValidator

    sizes = {"train": set(), "val": set()}

    def recording(stage: str, stock):
        def preprocess(self, batch):
            batch = stock(self, batch)
            sizes[stage].add(tuple(batch["img"].shape[2:]))
            return batch

        return preprocess

    monkeypatch.setattr(fer_trainer.FERTrainer, "preprocess_batch",
                        recording("train", fer_trainer.FERTrainer.preprocess_batch))
    monkeypatch.setattr(FERValidator, "preprocess", recording("val", FERValidator.preprocess))
    yolo = YOLO("yolov8n-cls.yaml")
    yolo.train(data=str(tiny_dataset), epochs=1, cache=cache, project=str(tmp_path), name="r", **{**TINY, "imgsz": 48})
    assert yolo.trainer.args.imgsz == 48
    assert sizes == {"train": {(48, 48)}, "val": {(48, 48)}}

    from spayolo.engine import scoring

    seen, views = set(), scoring._Views.__getitem__
    monkeypatch.setattr(scoring._Views, "__getitem__",
                        lambda self, i: seen.update(v.shape[2:] for v in views(self, i)[0].values()) or views(self, i))
    report = evaluate(str(tmp_path / "r" / "weights" / "best.pt"), str(tiny_dataset), 48)
    assert report["images"] > 0 and report["imgsz"] == 48 and seen == {(48, 48)}


def test_validator_rounds_imgsz_for_a_classifier_not_a_detection_grid():
    from ultralytics.models.yolo.classify import ClassificationValidator

    from spayolo.engine.classify import FERValidator

    assert ClassificationValidator(args={"imgsz": 48}).args.imgsz == 64
    assert [FERValidator(args={"imgsz": size}).args.imgsz for size in (48, 50, 8, "96")] == [48, 64, 32, 96]


def test_predictor_keeps_a_classifiers_imgsz(tmp_path):
    from ultralytics import YOLO

    yolo = YOLO("yolov8n-cls.yaml")
    yolo.predict(np.zeros((60, 60, 3), np.uint8), imgsz=48, verbose=False)
    assert yolo.predictor.imgsz == [48, 48]
