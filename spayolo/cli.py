"""The ``spayolo`` command: ``spayolo [--debug] live|prepare|evaluate|kfold|cam|sweep|teach|benchmark [arguments]``.

    spayolo live --source clip.mp4 --no-show
    spayolo prepare fer2013 --csv fer2013.csv
    spayolo evaluate --model weights/spayolo-n-fer2013.pt --data fer2013.yaml
    spayolo kfold ckplus --model weights/spayolo-n-fer2013.pt --epochs 10
    spayolo cam --model best.pt --source faces/
    spayolo sweep zoo-fer2013 --project ~/runs/zoo --export weights/zoo
    spayolo teach --models weights/spayolo-n-fer2013.pt --data fer2013.yaml --out teacher.pt
    spayolo benchmark --pipeline

``spayolo <command> --help`` lists a command's arguments. A bad source, model, output or flag stops the command with
one line naming it and exit status 2 (``spayolo --debug <command> ...`` or ``SPAYOLO_DEBUG=1`` adds the traceback);
any other error is a bug and keeps its traceback. Ctrl-C gives 130.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from spayolo.errors import MissingDependencyError, SpayoloError

__all__ = ("COMMANDS", "main")

# command -> module whose main(argv) -> int runs it; imported only when its command is asked for
COMMANDS = {
    "live": "spayolo.apps.live",
    "prepare": "spayolo.apps.prepare",
    "evaluate": "spayolo.apps.evaluate",
    "export-ensemble": "spayolo.apps.export_ensemble",
    "quantize": "spayolo.apps.quantize",
    "kfold": "spayolo.apps.kfold",
    "cam": "spayolo.apps.cam",
    "sweep": "spayolo.apps.sweep",
    "teach": "spayolo.apps.teach",
    "benchmark": "spayolo.benchmark",
    "analyze": "spayolo.apps.analyze",
}


# what the full install adds to the runtime's NumPy, OpenCV and ONNX Runtime
FULL_INSTALL = frozenset({"joblib", "lz4", "mtcnn", "onnx", "onnxslim", "torch", "torchvision", "ultralytics", "yaml"})


def _usage() -> str:
    return f"usage: spayolo [--debug] {{{','.join(COMMANDS)}}} [arguments]   (spayolo <command> --help)"


def main(argv: list[str] | None = None) -> int:
    """Run a spayolo command and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("SPAYOLO_DEBUG", "").lower() not in ("", "0", "false", "no")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip() if argv else _usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"spayolo: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    try:
        try:
            return int(importlib.import_module(COMMANDS[command]).main(rest) or 0)
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
