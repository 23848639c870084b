"""Every model YAML at every scale builds through the stock Ultralytics API, trains a step and predicts; model sizes."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import MODELS, REPO, build_model, input_sensitive, n_params, onnx_run, ss2d_params
from spayolo.nn.common import _tap_index
from spayolo.nn.fermam import ASFR, SS2D, ConvSSM
from spayolo.nn.spam import _dft2_matrix, _dft_basis
from spayolo.parser import ModelConfigError


def scales_of(path) -> list[str]:
    scales = yaml.safe_load(path.read_text()).get("scales")
    return list(scales) if scales else [""]


def yaml_name(stem: str, scale: str) -> str:
    return f"{stem}-{scale}.yaml" if scale else f"{stem}.yaml"


CASES = [(path.stem, scale) for path in MODELS for scale in scales_of(path)]
SCALED = [path.stem for path in MODELS if scales_of(path) != [""]]
UNSCALED = [path.stem for path in MODELS if scales_of(path) == [""]]
FERMAM = ("fermam-yolo", "fermam-yolo-noscan", "fermam-yolo-noasfr")


# Every scale is built in the quick run too (test_models_grow_with_scale, on the meta device); training a step at the
# larger scales takes 5-15 s each on a CPU, so those are marked slow.
@pytest.mark.parametrize("stem,scale", [
    pytest.param(stem, scale, id=yaml_name(stem, scale)[:-5], marks=[pytest.mark.slow] if scale not in "n" else [])
    for stem, scale in CASES
])
def test_yaml_builds_trains_and_predicts(stem, scale):
    from ultralytics.nn.tasks import guess_model_task

    torch.manual_seed(0)
    model = build_model(yaml_name(stem, scale), cache=scale == "n")
    assert model.yaml["nc"] == 7 and guess_model_task(model.yaml) == "classify"
    if scale:
        assert model.yaml["scale"] == scale
    else:
        assert not model.yaml.get("scale")  # an unscaled YAML builds at its one size and records no scale
    imgsz = 64 if "lanmsff" in stem or scale in "ns" else 32
    model.train()
    logits = model(torch.randn(2, 3, imgsz, imgsz))
    assert logits.shape == (2, 7)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 5])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        probs, raw = model(torch.randn(1, 3, imgsz, imgsz))
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-5) and raw.shape == (1, 7)


def test_nc_override():
    model = build_model("spayolo-n.yaml", nc=5).train()
    assert model.yaml["nc"] == 5 and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("stem", SCALED)
def test_models_grow_with_scale(stem):
    """Every scale builds (on the meta device: structure only) and the parameter count grows with n < s < m < l < x."""
    models = [build_model(f"{stem}-{scale}.yaml", meta=True) for scale in "nsmlx"]
    sizes = [n_params(model) for model in models]
    assert sizes == sorted(sizes) and len(set(sizes)) == 5
    if stem in FERMAM:
        for model, p5 in zip(models, (256, 512, 768, 1024, 1280)):  # min(1024, max_channels) * width
            blocks = [m for m in model.model if isinstance(m, (ConvSSM, ASFR))]
            assert [m.conv[1].conv.out_channels * 2 if isinstance(m, ConvSSM) else m.fuse.conv.out_channels
                    for m in blocks] == [p5 // 2, p5] + ([] if stem.endswith("noasfr") else [p5])


@pytest.mark.parametrize("stem", UNSCALED)
def test_unscaled_yaml_refuses_a_scale_letter(stem):
    """lanmsff-x.yaml must not quietly build the paper-size network and record scale x."""
    from ultralytics import YOLO

    with pytest.raises(ModelConfigError, match=rf"{stem}-x\.yaml: scale 'x' .*has no scales"):
        YOLO(f"{stem}-x.yaml")


def test_scale_letters_follow_yolov8_cls():
    """spayolo-X matches yolov8X-cls layer for layer except SPAM, which keeps the P4 width."""
    for scale, p4 in zip("nsmlx", (128, 256, 384, 512, 640)):
        spa = build_model(f"spayolo-{scale}.yaml", meta=True)
        stock = build_model(f"yolov8{scale}-cls.yaml", nc=7, meta=True)
        spam = spa.model[7]
        assert spam.hrm.fuse.conv.out_channels == p4
        assert n_params(spa) - n_params(spam) == n_params(stock)


def test_spayolo_s_matches_paper_size():
    """Paper: 5.7 M params and 14.4 GFLOPs (Ultralytics counts at 640); within 10 %."""
    from ultralytics.utils.torch_utils import get_flops

    model = build_model("spayolo-s.yaml", cache=False)
    assert abs(n_params(model) / 5.7e6 - 1) < 0.10, n_params(model)
    assert abs(get_flops(model, 640) / 14.4 - 1) < 0.10


def test_model_name_resolves_from_any_directory(tmp_path, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    assert YOLO("spayolo.yaml").model.yaml["nc"] == 7
    assert YOLO("spayolo-nofep-m.yaml").model.yaml["scale"] == "m"


def test_local_yaml_takes_precedence(tmp_path, monkeypatch):
    """As with Ultralytics' own names, a file in the working directory wins over the packaged one."""
    from ultralytics import YOLO

    text = (REPO / "cfg" / "models" / "spayolo.yaml").read_text().replace("nc: 7", "nc: 3")
    (tmp_path / "spayolo.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert YOLO("spayolo.yaml").model.yaml["nc"] == 3


def test_predict_then_train_in_one_process(tiny_dataset):
    """A prediction, then training a new model at the same size in the same process: no cached basis or index built
    under inference mode may reach the training step's backward."""
    from ultralytics import YOLO

    for cache in (_dft_basis, _dft2_matrix, _tap_index):
        cache.cache_clear()
    image = next((tiny_dataset / "val" / "happy").glob("*.jpg"))
    YOLO("spayolo-n.yaml").predict(image, imgsz=48, verbose=False)  # inference mode; SPAM sees 3x3 maps
    model = build_model("spayolo-n.yaml").train()
    model(torch.randn(2, 3, 48, 48)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lanmsff_paper_widths_kept_exactly(tmp_path):
    from ultralytics.nn.tasks import ClassificationModel

    model = build_model("lanmsff.yaml")  # channel_divisor: 1, so no rounding up to multiples of 8
    widths = []
    for i in (0, 3, 6, 9):
        model.model[i].register_forward_hook(lambda m, x, y: widths.append(y.shape[1]))
    model.eval()(torch.zeros(1, 3, 64, 64))
    assert widths == [66, 72, 78, 84]
    # the authors' Keras model (model.ipynb) has 358,406 parameters: 356,294 trainable + 2,112 BN statistics; here no
    # conv biases before BN (-1,056) and 3 input channels (+1,188), so 356,426, within 0.6 % of the paper's 0.358 M
    assert n_params(model) == 356_426
    bad = tmp_path / "bad-divisor.yaml"
    bad.write_text((REPO / "cfg" / "models" / "lanmsff.yaml").read_text().replace("channel_divisor: 1",
                                                                               "channel_divisor: 0"))
    with pytest.raises(ModelConfigError, match="bad-divisor.yaml.*channel_divisor"):
        ClassificationModel(str(bad), verbose=False)


@pytest.mark.parametrize("stem", ["lanmsff", "lanmsff-yolo-n"])
def test_lanmsff_zoo_weights_load_into_todays_blocks(stem):
    # the zoo's pickled models predate SameConv and the composed training path: their weights load into the model the
    # YAML builds now, which answers as the pickled one does and trains with finite gradients in bf16 channels_last
    from ultralytics import YOLO

    pickled = YOLO(str(REPO / "weights" / "zoo" / f"{stem}-fer2013.pt")).model.float().eval()
    model = build_model(f"{stem}.yaml")
    model.load_state_dict(pickled.state_dict())
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)[1], pickled(x)[1])
    model.train().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x.contiguous(memory_format=torch.channels_last))
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([1, 5])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- FERMam


@pytest.mark.parametrize("stem", FERMAM)
def test_fermam_blocks_per_yaml(stem):
    model = build_model(f"{stem}-n.yaml", meta=True)
    kinds = [type(m).__name__ for m in model.model]
    assert kinds.count("ConvSSM") == 2 and kinds.count("ASFR") == (0 if stem.endswith("noasfr") else 1)
    scans = sum(isinstance(m, SS2D) for m in model.modules())
    assert scans == {"fermam-yolo": 5, "fermam-yolo-noscan": 3, "fermam-yolo-noasfr": 2}[stem]


def test_fermam_ablations_differ_by_the_dropped_parts():
    full, noscan, noasfr = (n_params(build_model(f"{stem}-n.yaml", meta=True)) for stem in FERMAM)
    # n scale: Conv-SSM at P4 (128 ch) and P5 (256 ch) scan half the width; ASFR works at 256 / 4 = 64 per level
    assert full - noscan == ss2d_params(64, 16, 4) + ss2d_params(128, 16, 4)
    level = (256 * 64 + 2 * 64) + (64 * 9 + 2 * 64) + ss2d_params(64, 4, 2)
    assert full - noasfr == 3 * level + (3 * 64 * 256 + 2 * 256)


def test_fermam_yolo_n_onnx_matches_torch():
    model = input_sensitive(build_model("fermam-yolo-n.yaml"))
    model.model[-1].export = True  # Ultralytics' Classify: probabilities only, as its exporter sets
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # two faces, two answers: agreeing on them means something
    torch.testing.assert_close(torch.from_numpy(onnx_run(model, x)), expected, rtol=1e-4, atol=1e-4)
