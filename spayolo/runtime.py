"""ONNX Runtime plumbing of the deployment path: devices, providers, thread counts and sessions, NumPy in and out.

Nothing here imports torch: the face detector and the classifier of ``FERPipeline(backend="onnx")`` run on ONNX
Runtime, NumPy and OpenCV alone, in the full install and in the torch-free runtime install alike.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

from spayolo.errors import CheckpointError, MissingDependencyError, UsageError

__all__ = ("OnnxModel", "cuda_index", "ensemble_threads", "onnx_providers", "onnx_session", "usable_cores")


def cuda_index(device) -> int | None:
    """The GPU index of 'cuda' / 'cuda:N' (also a torch.device), None for 'cpu'; UsageError for anything else."""
    text = str(device).strip().lower()
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", text)
    if not match:
        raise UsageError(f"device {device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N' (--device)")
    return None if text == "cpu" else int(match[1] or 0)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as taskset sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ensemble_threads(members: int, threads: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(members run at once, intra-op threads of each) for an ensemble on a CPU. Given ``threads``, one member at a
    time on that many; else one member per core at once, the cores shared out among them: a face's few views are too
    small a batch for one model to keep two threads busy, two members side by side on one thread each are not."""
    if threads:
        return 1, threads
    cores = cores or usable_cores()
    together = max(1, min(members, cores))
    return together, max(1, cores // together)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError("the ONNX backend needs onnxruntime: pip install onnxruntime (or "
                                     "onnxruntime-gpu)") from error
    return onnxruntime


def onnx_providers(device="cpu", providers: list | None = None) -> list:
    """``providers`` if given; else CUDA (on the device's GPU) then CPU where onnxruntime-gpu has CUDA, else CPU.

    A CUDA device with a CPU-only onnxruntime runs on the CPU after one warning: the models still work, slower.
    """
    if providers:
        return list(providers)
    index = cuda_index(device)
    if index is None:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in _onnxruntime().get_available_providers():
        print(f"warning: device {device} asked for, but this onnxruntime has no CUDA provider: ONNX models run on "
              f"the CPU (pip install onnxruntime-gpu)", file=sys.stderr)
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def onnx_session(model: bytes | str | Path, device="cpu", providers: list | None = None, threads: int | None = None):
    """An InferenceSession for a file or serialized model; ``threads`` intra-op threads (None: one per core)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are not the user's
    # idle threads otherwise busy-wait after each run, starving the NumPy and OpenCV work between runs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=onnx_providers(device, providers))
    except Exception as error:  # onnxruntime reports unreadable models in its own exception types
        name = "the model" if isinstance(model, bytes) else str(model)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{name} is not a valid ONNX model: {first}") from error


class OnnxModel:
    """An ONNX Runtime session called with NumPy arrays, one per input, returning its outputs as a list.

    A model exported with a fixed batch size (``yolo export`` without ``dynamic=True``) takes any batch too: the
    inputs are run that many at a time, the last chunk filled up with zeros.
    """

    def __init__(self, model: bytes | str | Path, device="cpu", providers: list | None = None,
                 threads: int | None = None):
        self.session = onnx_session(model, device, providers, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        first = self.session.get_inputs()[0].shape[0]
        self.batch = first if isinstance(first, int) else None  # None: a dynamic batch

    @property
    def metadata(self) -> dict[str, str]:
        return self.session.get_modelmeta().custom_metadata_map

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        n = len(arrays[0])
        if self.batch is None or n == self.batch:
            return self._run(arrays)
        padded = [np.concatenate([a, np.zeros((-n % self.batch, *a.shape[1:]), np.float32)]) for a in arrays]
        parts = [self._run([a[i : i + self.batch] for a in padded]) for i in range(0, len(padded[0]), self.batch)]
        return [np.concatenate(outputs)[:n] for outputs in zip(*parts)]

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.inputs, arrays)))
