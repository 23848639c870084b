"""The ``spayolo`` command: ``spayolo [--debug] <command> [arguments]``; ``spayolo --help`` lists the commands."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from spayolo.errors import MissingDependencyError, SpayoloError

__all__ = ("COMMANDS", "main")

# command -> (module whose main(argv) -> int runs it, imported only when its command is asked for; what it does)
COMMANDS = {
    "live": ("spayolo.apps.live", "faces and expressions on a camera, video, image, folder or stream"),
    "analyze": ("spayolo.apps.analyze", "per-frame and per-person tables, timelines and a report of videos"),
    "prepare": ("spayolo.apps.prepare", "a raw dataset release into the folders Ultralytics trains on"),
    "evaluate": ("spayolo.apps.evaluate", "top-1, per-class and mean per-class accuracy, with or without TTA"),
    "quantize": ("spayolo.apps.quantize", "an ONNX classifier to INT8, calibrated on a dataset's training faces"),
    "export-ensemble": ("spayolo.apps.export_ensemble", "several classifiers as one ONNX file that averages them"),
    "kfold": ("spayolo.apps.kfold", "subject-independent k-fold cross-validation, nested recipe selection"),
    "cam": ("spayolo.apps.cam", "Grad-CAM heatmaps of a classifier over faces"),
    "sweep": ("spayolo.apps.sweep", "trains a list of runs with one recipe and tabulates them"),
    "teach": ("spayolo.apps.teach", "a teacher file for knowledge distillation"),
    "benchmark": ("spayolo.benchmark", "side-by-side speed of classifiers, the pipeline or training paths"),
}


_EXIT_STATUSES = (
    "`spayolo <command> --help` lists a command's arguments. A bad source, model, output or flag stops the command\n"
    "with one line naming it and exit status 2 (`spayolo --debug <command> ...` or SPAYOLO_DEBUG=1 adds the\n"
    "traceback); any other error is a bug and keeps its traceback. Ctrl-C gives 130."
)

# what the full install adds to the runtime's NumPy, OpenCV and ONNX Runtime
FULL_INSTALL = frozenset({"joblib", "lz4", "mtcnn", "onnx", "onnxslim", "torch", "torchvision", "ultralytics", "yaml"})


def _usage() -> str:
    return f"usage: spayolo [--debug] {{{','.join(COMMANDS)}}} [arguments]   (spayolo <command> --help)"


def _help() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {command:<{width}}  {summary}" for command, (_, summary) in COMMANDS.items()]
    return "\n".join([_usage(), "", "commands:", *lines, "", _EXIT_STATUSES])


def main(argv: list[str] | None = None) -> int:
    """Run a spayolo command and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("SPAYOLO_DEBUG", "").lower() not in ("", "0", "false", "no")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help() if argv else _usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    # a pipe or a log file would otherwise hold a long command's lines ("source: ...") in a block buffer until it ends
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if command not in COMMANDS:
        print(f"spayolo: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    try:
        try:
            return int(importlib.import_module(COMMANDS[command][0]).main(rest) or 0)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in FULL_INSTALL:
                raise  # a module of spayolo's own or of the runtime's missing: a broken install, with its traceback
            raise MissingDependencyError(f"this needs {error.name}, part of the full install, which this one (the "
                                         f"runtime install) lacks: install spayolo itself (pip install -e '.[test]' "
                                         f"in a checkout)") from error
    except SpayoloError as error:  # something the user gave; anything else is a bug and keeps its traceback
        if debug:
            traceback.print_exc()
        message = str(error).strip() or type(error).__name__
        print(f"spayolo {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spayolo {command}: interrupted", file=sys.stderr)
        return 130
