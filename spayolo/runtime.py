"""ONNX Runtime plumbing shared by the face detector and the classifier: provider choice and in-memory export."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

__all__ = ("OnnxModule", "export_onnx_bytes", "onnx_providers", "onnx_session")


def onnx_providers(device: torch.device | str, providers: list[str] | None = None) -> list[str]:
    """`providers` if given; else CUDA then CPU where onnxruntime-gpu and a CUDA device are there, else CPU."""
    if providers:
        return list(providers)
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ImportError("the ONNX backend needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu)") from error
    cuda = torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def onnx_session(model: bytes | str | Path, device: torch.device | str = "cpu", providers: list[str] | None = None):
    """An onnxruntime InferenceSession for a file or serialized model, on the providers `onnx_providers` picks."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT's idle threads otherwise busy-wait after each run, starving the PyTorch work between runs (crops, NMS)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=onnx_providers(device, providers))


def export_onnx_bytes(model: nn.Module, example: torch.Tensor, dynamic: dict[int, str], opset: int = 17) -> bytes:
    """Serialize `model` (float32, eval, CPU) to ONNX with input 'images' and the given dynamic axes of it."""
    buffer = io.BytesIO()
    model = model.cpu().float().eval()
    torch.onnx.export(model, (example.cpu().float(),), buffer, opset_version=opset, dynamo=False,
                      input_names=["images"], dynamic_axes={"images": dynamic})
    return buffer.getvalue()


class OnnxModule:
    """An ONNX Runtime session called like the PyTorch module it was exported from: tensor in, tensor(s) out.

    Outputs come back on the input's device, so code written around the module runs unchanged. A model exported with
    a fixed batch size (``yolo export`` without ``dynamic=True``) takes any batch too, run that many inputs at a time.
    """

    def __init__(self, model: bytes | str | Path, device: torch.device | str = "cpu", providers: list[str] | None = None):
        self.session = onnx_session(model, device, providers)
        first = self.session.get_inputs()[0]
        self.input = first.name
        self.batch = first.shape[0] if isinstance(first.shape[0], int) else None  # None: a dynamic batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.batch is None or len(x) == self.batch:
            return self._run(x)
        n = len(x)
        padded = torch.cat([x, x.new_zeros(-n % self.batch, *x.shape[1:])])  # the last chunk filled up with zeros
        parts = [self._run(chunk) for chunk in padded.split(self.batch)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(outputs)[:n] for outputs in zip(*parts))
        return torch.cat(parts)[:n]

    def _run(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {self.input: x.detach().float().cpu().numpy()})
        outputs = tuple(torch.from_numpy(o).to(x.device) for o in outputs)
        return outputs[0] if len(outputs) == 1 else outputs
