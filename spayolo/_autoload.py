"""Register spayolo with Ultralytics in every interpreter, without a user-side import.

Imported by ``spayolo-autoload.pth`` at interpreter start, so it stays stdlib-only and cheap: it installs an
import hook that registers spayolo's blocks right after ``ultralytics.nn.tasks`` executes. That covers the
stock ``yolo`` CLI, Ultralytics' DDP child scripts and checkpoint reloads in new processes alike. The same hook
teaches ``check_cls_dataset`` spayolo's dataset names in ``ultralytics.data.utils`` and in the trainer, validator and
exporter, which import it by name, once each has executed (possibly after the parser, so after registration).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "ultralytics.nn.tasks"
DATASET_USERS = ("ultralytics.data.utils", "ultralytics.engine.trainer", "ultralytics.engine.validator",
                 "ultralytics.engine.exporter")


def _register() -> None:
    from spayolo.registry import install

    install()


def _after_exec(module) -> None:
    if module.__name__ == _TARGET:
        _register()
    else:
        from spayolo.registry import use_dataset_names

        use_dataset_names(module)


class _RegisterAfterExec(importlib.abc.Loader):
    """Delegate to the real loader, then register spayolo once the module has executed."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            _after_exec(module)
        except ImportError as error:  # an unsupported Ultralytics must stay usable on its own
            import warnings

            warnings.warn(f"spayolo is not registered with Ultralytics: {error}", stacklevel=2)


class _TasksFinder(importlib.abc.MetaPathFinder):
    """Find ``ultralytics.nn.tasks`` (and the dataset users) through the normal path machinery; wrap their loaders."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET and fullname not in DATASET_USERS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def hook_imports() -> None:
    """Watch the imports of the modules above that are not loaded yet; idempotent."""
    if not any(isinstance(finder, _TasksFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TasksFinder())


def enable() -> None:
    """Register now if Ultralytics' parser is loaded, and hook the imports still to come; idempotent."""
    hook_imports()
    if _TARGET in sys.modules:
        _register()


if os.environ.get("SPAYOLO_AUTOLOAD", "1") != "0":
    enable()
