"""MTCNN's three nets (Zhang et al., IEEE SPL 2016) in PyTorch, with the weights the `mtcnn` PyPI package ships.

PNet, RNet and ONet as modules, the source of the ONNX files that spayolo.face.mtcnn's cascade runs
(``python -m spayolo.face.mtcnn_torch`` writes weights/mtcnn/ again from the package's weights), and, for the torch
backend, the nets on a torch device behind the same call as those files.

The `mtcnn` package itself is never imported (its ``__init__`` imports TensorFlow); only its weight files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spayolo.errors import MissingDependencyError
from spayolo.face.mtcnn import MTCNN_FILES

__all__ = ("ONet", "PNet", "RNet", "TorchNet", "export_onnx", "load_nets", "main", "mtcnn_weights_dir", "torch_nets")

# example input of each net for ONNX export, which of its axes stay dynamic (PNet is fully convolutional), and the
# names of its outputs
ONNX_INPUTS = {"pnet": ((1, 3, 48, 64), {0: "batch", 2: "height", 3: "width"}, ["offsets", "prob"]),
               "rnet": ((2, 3, 24, 24), {0: "batch"}, ["offsets", "prob"]),
               "onet": ((2, 3, 48, 48), {0: "batch"}, ["offsets", "landmarks", "prob"])}


def mtcnn_weights_dir() -> Path:
    """Folder holding {pnet,rnet,onet}.lz4 of the installed `mtcnn` package, found without importing it."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("MTCNN's PyTorch nets read the `mtcnn` package's weights: pip install mtcnn lz4 "
                                     "joblib (TensorFlow not needed)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    if not (folder / "pnet.lz4").is_file():
        raise MissingDependencyError(f"MTCNN weight files not found in {folder}: reinstall the mtcnn package")
    return folder


class _TFNet(nn.Module):
    """Base that copies a TensorFlow weight list (kernels HWIO, PReLU slopes (1,1,C), dense (in,out)) in layer order."""

    def load_tf(self, arrays: list[np.ndarray]) -> _TFNet:
        params = [p for p in self.parameters()]
        if len(params) != len(arrays):
            raise ValueError(f"{type(self).__name__} expects {len(params)} arrays, got {len(arrays)}")
        with torch.no_grad():
            for p, a in zip(params, arrays):
                t = torch.from_numpy(np.asarray(a, dtype=np.float32))
                if t.ndim == 4:  # conv kernel HWIO -> OIHW
                    t = t.permute(3, 2, 0, 1)
                elif t.ndim == 2:  # dense (in, out) -> Linear (out, in)
                    t = t.t()
                p.copy_(t.reshape(p.shape))
        return self

    @staticmethod
    def flatten_tf(x: torch.Tensor) -> torch.Tensor:
        # The TF port permutes (H,W,C)->(W,H,C) before Flatten (a leftover of Caffe's transposed images), so the
        # dense weights expect W-major, then H, then C order.
        return x.permute(0, 3, 2, 1).flatten(1)


def _conv_prelu(c1: int, c2: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(c1, c2, k), nn.PReLU(c2)]


class PNet(_TFNet):
    """Proposal net: fully convolutional 12x12 window classifier, stride 2; returns (box offsets, face prob)."""

    def __init__(self):
        super().__init__()
        # TF "same" max-pooling pads only at the end, which is what ceil_mode does
        self.body = nn.Sequential(*_conv_prelu(3, 10, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  *_conv_prelu(10, 16, 3), *_conv_prelu(16, 32, 3))
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(x)
        return self.box(x), self.cls(x).softmax(1)[:, 1]


class _CropNet(_TFNet):
    """RNet/ONet layout: conv body, dense + PReLU, then box offsets, optionally 10 landmark values, face prob."""

    def __init__(self, body: nn.Sequential, flat: int, hidden: int, landmarks: bool):
        super().__init__()
        self.body = body
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.PReLU(hidden))
        self.box = nn.Linear(hidden, 4)
        self.lmk = nn.Linear(hidden, 10) if landmarks else None  # before cls: the TF weight list's order
        self.cls = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.fc(self.flatten_tf(self.body(x)))
        prob = self.cls(x).softmax(1)[:, 1]
        return (self.box(x), prob) if self.lmk is None else (self.box(x), self.lmk(x), prob)


class RNet(_CropNet):
    """Refinement net on 24x24 crops; returns (box offsets, face prob)."""

    def __init__(self):
        super().__init__(nn.Sequential(*_conv_prelu(3, 28, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       *_conv_prelu(28, 48, 3), nn.MaxPool2d(3, 2), *_conv_prelu(48, 64, 2)),
                         flat=576, hidden=128, landmarks=False)


class ONet(_CropNet):
    """Output net on 48x48 crops; returns (box offsets, landmarks x1..x5,y1..y5 in box units, face prob)."""

    def __init__(self):
        super().__init__(nn.Sequential(*_conv_prelu(3, 32, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                       *_conv_prelu(32, 64, 3), nn.MaxPool2d(3, 2),
                                       *_conv_prelu(64, 64, 3), nn.MaxPool2d(2, 2, ceil_mode=True),
                                       *_conv_prelu(64, 128, 2)),
                         flat=1152, hidden=256, landmarks=True)


class TorchNet:
    """One of the nets called like its ONNX file in spayolo.face.mtcnn: float32 NumPy in, NumPy outputs on the host.

    The cascade around it stays in NumPy and OpenCV; the net runs on ``device``, so a GPU batches the frames' pyramid
    and crops.
    """

    def __init__(self, net: nn.Module, device: torch.device):
        self.net, self.device = net.to(device).eval(), device

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return [y.float().cpu().numpy() for y in self.net(torch.from_numpy(x).to(self.device))]


def torch_nets(device: torch.device | str = "cpu", weights: str | Path | None = None) -> dict[str, TorchNet]:
    """PNet, RNet and ONet with the `mtcnn` package's weights on ``device``, by the names the cascade uses."""
    return {name: TorchNet(net, torch.device(device)) for name, net in zip(ONNX_INPUTS, load_nets(weights))}


def load_nets(weights: str | Path | None = None) -> tuple[PNet, RNet, ONet]:
    """The three nets with the `mtcnn` package's weights (or those in the folder ``weights``), in eval mode."""
    import joblib  # ships with the mtcnn package's dependencies; reads its .lz4 weight lists

    folder = Path(weights) if weights else mtcnn_weights_dir()
    return tuple(net().load_tf(joblib.load(folder / f"{name}.lz4")).eval()
                 for name, net in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)))


def export_onnx(folder: str | Path, weights: str | Path | None = None, opset: int = 17) -> list[Path]:
    """Write pnet.onnx, rnet.onnx and onet.onnx into ``folder`` (dynamic batch; PNet also dynamic height and width).

    Each file is written whole under a temporary name first, so an interrupted export leaves the old files.
    """
    from spayolo.export import onnx_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for net, (name, (shape, dynamic, outputs)) in zip(load_nets(weights), ONNX_INPUTS.items()):
        path = folder / MTCNN_FILES[name]
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_bytes(onnx_bytes(net, torch.zeros(shape), dynamic, opset, outputs))
        tmp.replace(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m spayolo.face.mtcnn_torch [--out weights/mtcnn]``: the shipped MTCNN ONNX files, made again."""
    import argparse

    from spayolo.paths import packaged

    parser = argparse.ArgumentParser(prog="python -m spayolo.face.mtcnn_torch", description=main.__doc__)
    parser.add_argument("--out", default=str(packaged("weights") / "mtcnn"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="folder of {pnet,rnet,onet}.lz4 (default: the mtcnn package's)")
    args = parser.parse_args(argv)
    for path in export_onnx(args.out, args.weights):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
