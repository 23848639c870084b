"""PyTorch modules to ONNX in memory: what the full install uses to run a .pt model on ONNX Runtime or ship it."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

__all__ = ("onnx_bytes",)


def onnx_bytes(model: nn.Module, example: torch.Tensor, dynamic: dict[int, str], opset: int = 17,
               outputs: list[str] | None = None) -> bytes:
    """``model`` (float32, eval, CPU) serialized to ONNX, input 'images' with the given dynamic axes, outputs named
    ``outputs`` (torch's defaults if None)."""
    buffer = io.BytesIO()
    model = model.cpu().float().eval()
    with warnings.catch_warnings():  # the exporter's notes (constant folding, its own deprecation) are not the user's
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example.cpu().float(),), buffer, opset_version=opset, dynamo=False,
                          input_names=["images"], output_names=outputs, dynamic_axes={"images": dynamic})
    return buffer.getvalue()
