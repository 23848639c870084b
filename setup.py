"""Build step setup.cfg cannot express: ship ``spayolo-autoload.pth`` at the site-packages root.

The .pth makes every interpreter (the ``yolo`` CLI, Ultralytics' DDP children, checkpoint reloads) register
spayolo with Ultralytics without a user-side ``import spayolo``. See spayolo/_autoload.py.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "spayolo-autoload.pth"
PTH_SOURCE = Path(__file__).resolve().parent / PTH


class BuildWithAutoload(build_py):
    """Regular wheels: copy the .pth next to the top-level packages."""

    def run(self):
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class _WithAutoload:
    """Wrap setuptools' editable strategy so the editable wheel also carries the .pth (its build_py output is dropped)."""

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


setup(cmdclass={"build_py": BuildWithAutoload, "editable_wheel": EditableWithAutoload})
