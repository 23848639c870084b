"""Build steps setup.cfg cannot express: the autoload .pth, and the deployment distribution spayolo-runtime.

``spayolo-autoload.pth`` at the site-packages root makes every interpreter (the ``yolo`` CLI, Ultralytics' DDP
children, checkpoint reloads) register spayolo with Ultralytics without a user-side ``import spayolo``
(spayolo/_autoload.py).

``SPAYOLO_DIST=runtime pip install .`` builds ``spayolo-runtime`` from the same sources, as opencv-python builds its
headless twin: the ``spayolo`` package with only what ``FERPipeline(backend="onnx")`` and ``spayolo live`` need
(NumPy, OpenCV without GUI libraries, ONNX Runtime), no torch, torchvision or Ultralytics, and of the weights only
the .onnx files of the default ensemble, the fast model and MTCNN;
``spayolo analyze`` there needs its ``analyze`` extra (polars, matplotlib and what they pull in: 262 MB that a
deployment need not carry).
The two are alternatives: install one or the other into an environment.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "spayolo-autoload.pth"
PTH_SOURCE = Path(__file__).resolve().parent / PTH


class BuildWithAutoload(build_py):
    """Regular wheels: copy the .pth next to the top-level packages."""

    def run(self):
        # the build folder outlives a build: a file the package data no longer names would otherwise ship from it
        shutil.rmtree(Path(self.build_lib) / "spayolo", ignore_errors=True)
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class _WithAutoload:
    """Wrap setuptools' editable strategy so the editable wheel also carries the .pth (its build_py output is
    dropped)."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH, PTH_SOURCE.read_bytes())

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)


class EditableWithAutoload(editable_wheel):
    """Editable installs (``pip install -e .``): add the .pth to whichever strategy setuptools picks."""

    def _select_strategy(self, name, tag, build_lib):
        return _WithAutoload(super()._select_strategy(name, tag, build_lib))


RUNTIME = {
    "name": "spayolo-runtime",
    "description": "Facial expression recognition on ONNX Runtime, NumPy and OpenCV: spayolo's deployment install",
    "install_requires": ["numpy>=1.23", "opencv-python-headless>=4.8", "onnxruntime>=1.18"],
    "extras_require": {"gpu": ["onnxruntime-gpu>=1.18"], "test": ["pytest>=8"], "av": ["av>=14"],
                       "analyze": ["polars>=1", "matplotlib>=3.7"], "ray": ["ray>=2.9"]},
    "package_data": {"spayolo.assets": ["*.jpg"], "spayolo.weights": ["*.onnx"], "spayolo.weights.mtcnn": ["*.onnx"]},
    # setup.cfg's package data is merged in, not replaced; a deployment carries the classifiers it runs (the default's
    # and the fast one), not the full install's others: spayolo-s in fp32 (23 MB) and the earlier defaults' members
    "exclude_package_data": {"spayolo.weights": ["*.pt", "spayolo-s-fer2013.onnx", "msff-yolo-n-fer2013-int8.onnx",
                                                 "yolov8s-cls-fer2013-int8.onnx",
                                                 "yolov8s-cls-seed1-fer2013-int8.onnx"]},
}
flavour = os.environ.get("SPAYOLO_DIST", "full")
if flavour not in ("full", "runtime"):
    raise SystemExit(f"SPAYOLO_DIST={flavour!r}: build 'full' (spayolo, the default) or 'runtime' (spayolo-runtime)")
# each flavour builds in a folder of its own: an in-tree build would otherwise pack the other's leftovers (the .pt)
setup(cmdclass={"build_py": BuildWithAutoload, "editable_wheel": EditableWithAutoload},
      options={"build": {"build_base": f"build/{flavour}"}}, **(RUNTIME if flavour == "runtime" else {}))
