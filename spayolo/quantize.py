"""Static INT8 quantization of an ONNX classifier (ONNX Runtime's QDQ format), calibrated on training faces.

Weights are quantized per channel to int8 and activations to uint8 with ranges measured on a sample of training
images, seen as the classifier sees them (resized, centre crop, one view per input size); the result is a standard ONNX
graph of QuantizeLinear/DequantizeLinear pairs around the float operators, which ONNX Runtime runs with integer
kernels (VNNI, AMX-INT8 where the CPU has them). An exported ensemble is quantized whole, each input fed its size.

Weights keep 7 bits of range (``reduce_range``): on x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels add pairs of
uint8 x int8 products in 16 bits (VPMADDUBSW), which 255 * 127 * 2 overflows and 255 * 64 * 2 does not, so a file gives
the same answers on every CPU; what the lost bit costs in accuracy is measured in docs/deployment.md.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

__all__ = ("quantize",)


def _calibration_feeds(model_file: Path, folder: Path, images: int, seed: int = 0):
    """One {input: (1,3,S,S)} feed per calibration image: ``images`` drawn at random from ``folder`` (every class)."""
    from spayolo.classifier import OnnxClassifier
    from spayolo.engine.scoring import _Views, folder_samples

    classifier = OnnxClassifier(model_file)
    samples, _ = folder_samples(folder)
    picked = random.Random(seed).sample(samples, min(images, len(samples)))
    views = _Views(picked, classifier.sizes, (1.0,))
    inputs = classifier.model.inputs
    for i in range(len(views)):
        sized, _ = views[i]
        yield {name: sized[size].numpy() for name, size in zip(inputs, classifier.sizes)}


def quantize(model: str | Path, folder: str | Path, out: str | Path, images: int = 500) -> Path:
    """Write ``model`` quantized to INT8 (QDQ, per-channel 7-bit weights, MinMax ranges over ``images`` training
    images of ``folder``) to ``out``, whole or not at all."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = _calibration_feeds(Path(model), Path(folder), images)

        def get_next(self):
            return next(self.feeds, None)

    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / out.name
        # shape inference only: ORT's graph optimizations would write ORT-specific operators into a portable file
        quant_pre_process(str(model), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        # the probabilities stay float: a uint8 Softmax flattened them (top-1 kept, confidences and averages off)
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=softmax,
                        reduce_range=True)
        os.replace(quantized, out)
    return out
