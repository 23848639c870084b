"""A PyTorch expression classifier for FERPipeline: a .pt checkpoint, a YOLO object, a ClassificationModel or a plain
nn.Module, run on a torch device, or exported in memory to run on ONNX Runtime (the full install's .pt on the ONNX
backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from spayolo.classifier import OnnxClassifier, mean_over_views, names_list, probabilities
from spayolo.errors import CheckpointError, UsageError

__all__ = ("TorchClassifier", "checked_device", "trained_size")


def checked_device(device) -> torch.device:
    """A torch.device that exists on this machine; UsageError naming the device otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UsageError(f"device {device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N' (--device)") from error
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"device '{device}' is not available on this machine (CUDA GPUs: "
                         f"{torch.cuda.device_count()}): use device='cpu' (--device cpu)")
    return device


def _size(imgsz) -> int | None:
    imgsz = imgsz[0] if isinstance(imgsz, (list, tuple)) else imgsz
    return int(imgsz) if isinstance(imgsz, int) or str(imgsz).isdigit() else None


def _module(model, trusted: bool) -> tuple[nn.Module, str, int | None]:
    """The nn.Module inside a .pt path, an Ultralytics YOLO object, a ClassificationModel or a plain module, its name,
    and the input size it was trained at where that is known (a checkpoint's train_args, a loaded model's args)."""
    from ultralytics.engine.model import Model

    if isinstance(model, (str, Path)):
        from spayolo.checkpoints import load_checkpoint

        module, ckpt = load_checkpoint(model, trusted)
        if module.task != "classify":
            raise CheckpointError(f"{model} is a {module.task} model, not a classifier: pass a classification "
                                  f"checkpoint (.pt/.onnx) as --model, and a face detector with --detector")
        return module, str(model), _size((ckpt.get("train_args") or {}).get("imgsz"))
    if isinstance(model, Model):  # YOLO("x.pt"): the ClassificationModel it wraps
        trained = ((model.ckpt or {}).get("train_args") or {}).get("imgsz")
        return model.model, str(getattr(model, "ckpt_path", None) or type(model).__name__), _size(trained)
    if isinstance(model, nn.Module):  # a model Ultralytics loaded keeps its training arguments as ``args``
        args = getattr(model, "args", None)
        trained = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
        return model, type(model).__name__, _size(trained)
    raise UsageError(f"classifier must be a .pt/.onnx path, a YOLO object or an nn.Module, got {type(model).__name__}")


class _Probabilities(nn.Module):
    """The model's class scores alone: Ultralytics' Classify returns (probabilities, logits) in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


class TorchClassifier:
    """A classifier run in PyTorch on ``device`` (FP16 with ``half``); ``sizes`` from its training args or ``imgsz``."""

    def __init__(self, model, device="cpu", half: bool = False, trusted: bool = False, imgsz: int | None = None):
        self.device, self.half = checked_device(device), half
        self.model, self.source, trained = _module(model, trusted)
        self.sizes = (int(imgsz or trained or 64),)
        names = getattr(self.model, "names", None)
        self.names = names_list(names) if names is not None else None
        self.model = _Probabilities(self.model).to(self.device).eval()
        self.model = self.model.half() if half else self.model.float()

    @torch.inference_mode()
    def _run(self, x: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(x[0]).to(self.device)
        return probabilities(self.model(batch.half() if self.half else batch).float().cpu().numpy())

    def __call__(self, views: dict[int, np.ndarray], mirror: bool = False) -> np.ndarray:
        """(N, nc) probabilities from views {size: (V,N,3,S,S) float32 RGB 0-1}."""
        return mean_over_views(self._run, [views[self.sizes[0]]], mirror)

    def to_onnx(self, threads: int | None = None) -> OnnxClassifier:
        """The same model exported in memory (dynamic batch) and run on ONNX Runtime, on this device."""
        from spayolo.export import onnx_bytes

        size = self.sizes[0]
        onnx = OnnxClassifier(onnx_bytes(self.model, torch.zeros(1, 3, size, size), {0: "batch"}), str(self.device),
                              threads=threads, source=self.source)
        self.model.to(self.device)  # the export moved it to the CPU
        onnx.names, onnx.sizes = self.names, self.sizes
        return onnx


def trained_size(model: str | Path, trusted: bool = False) -> int | None:
    """The input size a classifier .onnx was exported for or a .pt trained at; None when the file does not say.

    Raises MissingFileError or CheckpointError (naming the file) for a model that cannot be loaded.
    """
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        sizes = OnnxClassifier(path).sizes
        return sizes[0] if sizes and len(sizes) == 1 else None
    return _module(path, trusted)[2]
