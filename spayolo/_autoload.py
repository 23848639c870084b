"""Register spayolo with Ultralytics in every interpreter, without a user-side import.

Imported by ``spayolo-autoload.pth`` at interpreter start, so it stays stdlib-only and cheap: it installs an import
hook that hands each watched Ultralytics module to :func:`spayolo.integration.patch` right after the module executes.
``ultralytics.nn.tasks`` gets the parser and model-name patches; ``check_cls_dataset`` learns spayolo's dataset names
in ``ultralytics.data.utils`` and in the trainer, validator and exporter, which import it by name. That covers the
stock ``yolo`` CLI, Ultralytics' DDP child scripts and checkpoint reloads in new processes alike.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

__all__ = ("WATCHED", "enable", "hook_imports")

WATCHED = ("ultralytics.nn.tasks", "ultralytics.data.utils", "ultralytics.engine.trainer",
           "ultralytics.engine.validator", "ultralytics.engine.exporter", "ultralytics.models.yolo.model",
           "ultralytics.cfg")


def _patch(module) -> None:
    from spayolo.integration import patch  # here, not at the top: the .pth must not import torch at every start

    patch(module)


class _PatchAfterExec(importlib.abc.Loader):
    """Delegate to the real loader, then patch the module once it has executed; errors reach the importer."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _patch(module)


class _WatchedFinder(importlib.abc.MetaPathFinder):
    """Find the watched modules through the normal path machinery and wrap their loaders."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfterExec(spec.loader)
        return spec


def hook_imports() -> None:
    """Watch the imports still to come; idempotent."""
    if not any(isinstance(finder, _WatchedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WatchedFinder())


def enable() -> None:
    """Hook the imports still to come and patch the watched modules already imported, the parser first; idempotent."""
    hook_imports()
    for name in WATCHED:
        if name in sys.modules:
            _patch(sys.modules[name])


if os.environ.get("SPAYOLO_AUTOLOAD", "1") != "0":
    enable()
