"""Grad-CAM heatmaps (Selvaraju et al., ICCV 2017, eq. 1-2) over faces for any spayolo/Ultralytics classifier.

    spayolo cam --model runs/classify/train/weights/best.pt --source faces/ --out cam/

writes cam/cam_<class>.png per class: one tile per image, the face overlaid with the map of that class's logit
and the class probability. The hooked layer is the backbone's last layer before the head (``--layer -2`` of the
Ultralytics layer list); any index of that list works. Runs on CPU. Unreadable images are skipped, each named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spayolo.apps.args import add_checkpoint_args, positive_int
from spayolo.checkpoints import load_yolo
from spayolo.errors import MissingFileError, UsageError
from spayolo.sources import image_files

__all__ = ("class_grids", "grad_cam", "grid", "load_images", "main", "overlay", "target_layer")


def target_layer(model: nn.Module, layer: int = -2) -> nn.Module:
    """Layer ``layer`` of an Ultralytics model's layer list; -2 is the last one before the head."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        raise TypeError(f"{type(model).__name__} has no Ultralytics layer list (.model); pass the layer module")
    if not -len(layers) <= layer < len(layers):
        raise UsageError(f"--layer {layer}: the model has layers 0 to {len(layers) - 1} (or -{len(layers)} to -1)")
    return layers[layer]


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, classes: list[int]) -> tuple:
    """Grad-CAM maps (len(classes), B, H, W) in [0, 1] at the input's size, and the class probabilities (B, nc).

    One forward pass serves all classes. The class score is the logit, not the softmax output (the paper's y^c
    before softmax), so a map does not fade as the prediction saturates. Each map is scaled by its own maximum; an
    all-negative map stays 0.
    """
    saved = {}

    def keep(module, inputs, output):
        saved["act"] = output[0] if isinstance(output, (list, tuple)) else output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            out = model(x.requires_grad_(True))  # input grad keeps the graph even for frozen checkpoint weights
    finally:
        handle.remove()
    logits = out[1] if isinstance(out, (list, tuple)) else out  # Classify in eval: (probs, logits)
    act, maps = saved["act"], []
    for i, cls in enumerate(classes):
        (grad,) = torch.autograd.grad(logits[:, cls].sum(), act, retain_graph=i < len(classes) - 1)
        weights = grad.mean((2, 3), keepdim=True)  # eq. 1: alpha_k^c = GAP of d y^c / d A^k
        maps.append(F.relu((weights * act).sum(1)).detach())  # eq. 2
    cam = F.interpolate(torch.stack(maps, 1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam / cam.amax((2, 3), keepdim=True).clamp_min(1e-12)
    return cam.transpose(0, 1), logits.detach().softmax(1)


def overlay(image: np.ndarray, cam: np.ndarray, size: int = 128, alpha: float = 0.5) -> np.ndarray:
    """BGR tile: the RGB ``image`` (H, W, 3) blended with a JET-coloured ``cam`` (H, W), resized to ``size``."""
    heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)
    tile = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 1 - alpha, heat, alpha, 0)
    return cv2.resize(tile, (size, size), interpolation=cv2.INTER_LINEAR)


def grid(tiles: list[np.ndarray], captions: list[str], cols: int = 8) -> np.ndarray:
    """Tiles in rows of ``cols``, each with its caption drawn by OpenCV (no font files needed)."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    canvas = np.zeros((rows * h, min(cols, len(tiles)) * w, 3), np.uint8)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        tile = tile.copy()
        cv2.putText(tile, caption, (3, h - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return canvas


def load_images(source: list[str | Path], imgsz: int) -> tuple[list[str], torch.Tensor, list[np.ndarray]]:
    """Files (or folders of them) -> names, the model input as in Ultralytics' classify val/predict, RGB previews."""
    from PIL import Image
    from ultralytics.data.augment import classify_transforms

    files = []
    for s in map(Path, source):
        files += image_files(s, recursive=True) if s.is_dir() else [s]
    transform = classify_transforms(imgsz)
    names, tensors, previews = [], [], []
    for file in files:
        try:
            image = Image.open(file).convert("RGB")
        # PIL, and Ultralytics' patch of Image.open, report bad files in many types: OSError, bomb-sized headers,
        # broken chunks, the missing HEIF plugin they try for unidentified files
        except Exception as error:
            print(f"spayolo cam: skipping unreadable {file}: {error}", file=sys.stderr)
            continue
        tensor = transform(image)
        names.append(file.name)
        tensors.append(tensor)
        previews.append(np.uint8(tensor.permute(1, 2, 0).clamp(0, 1).numpy() * 255))  # mean 0, std 1 in Ultralytics
    if not tensors:
        raise MissingFileError(f"no images found in {source}")
    return names, torch.stack(tensors), previews


def class_grids(model: nn.Module, names: dict, x: torch.Tensor, previews: list[np.ndarray], out: Path,
                layer: int = -2, files: list[str] | None = None) -> list[Path]:
    """Write out/cam_<class>.png for every class of ``model`` and return their paths."""
    model = model.float().eval()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    cams, probs = grad_cam(model, x.clone(), target_layer(model, layer), list(names))
    for cls, name in names.items():
        tiles = [overlay(p, c) for p, c in zip(previews, cams[cls].numpy())]
        captions = [f"{name} {probs[i, cls]:.2f}" + (f" {files[i][:10]}" if files else "") for i in range(len(x))]
        path = out / f"cam_{name}.png"
        cv2.imwrite(str(path), grid(tiles, captions))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spayolo cam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="classifier checkpoint (.pt) or model YAML")
    parser.add_argument("--source", required=True, nargs="+", help="face images or folders of them")
    parser.add_argument("--out", default="cam", help="output folder")
    parser.add_argument("--layer", type=int, default=-2, help="index of the hooked layer (default: last before head)")
    parser.add_argument("--imgsz", type=positive_int, help="input size (default: the checkpoint's training imgsz)")
    parser.add_argument("--max-images", type=positive_int, default=32, help="images per grid")
    add_checkpoint_args(parser)
    args = parser.parse_args(argv)

    model = load_yolo(args.model, args.trust_checkpoint).model
    train_args = getattr(model, "args", {})
    imgsz = args.imgsz or int((train_args if isinstance(train_args, dict) else vars(train_args)).get("imgsz", 64))
    files, x, previews = load_images(args.source, imgsz)
    files, x, previews = files[:args.max_images], x[:args.max_images], previews[:args.max_images]
    for path in class_grids(model, model.names, x, previews, Path(args.out), args.layer, files):
        print(path)
    return 0

