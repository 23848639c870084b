"""Checkpoint loading for spayolo's entry points: restricted (weights-only) unpickling unless the file is trusted.

A ``.pt`` file is a pickle, and a plain ``torch.load`` runs whatever code the pickle names. Stock Ultralytics loads
that way unless ``ULTRALYTICS_SAFE_LOAD=1`` is set before it is imported; spayolo's pipeline and commands instead ask
Ultralytics' restricted loader for every checkpoint, so only torch, Ultralytics and spayolo model classes can be
rebuilt. ``trusted=True`` (``--trust-checkpoint``) restores the stock behaviour for files you made yourself.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import yaml
from torch import nn

from spayolo.errors import CheckpointError, MissingFileError

__all__ = ("CheckpointError", "load_checkpoint", "load_yolo", "restricted_loading", "training_state")

# How Ultralytics' loader reports a file it cannot use: TypeError for a damaged, empty or truncated file, a refused
# class, TorchScript or a YOLOv5 model (the torch error as its cause), ModuleNotFoundError for a trusted pickle that
# names a module this install lacks, OSError when torch's zip reader seeks past the end of an archive cut short.
# Anything else is a failure of the code, and keeps its traceback.
_UNUSABLE = (TypeError, ModuleNotFoundError, OSError)


def _reason(error: Exception) -> str:
    """What is wrong with a file Ultralytics' loader could not read, without its advice to fetch a hub model (spayolo
    works offline): the torch error's first line where it says more than that the file did not unpickle."""
    cause = error.__cause__
    if (isinstance(cause, (RuntimeError, EOFError)) or isinstance(error, OSError)
            or "references types outside" in str(error)):
        detail = str(cause).strip().split(". ")[0] if isinstance(cause, RuntimeError) else ""
        return "the file is empty, cut short, damaged or not a PyTorch checkpoint at all" + (f" ({detail})"
                                                                                             if detail else "")
    text = str(error).replace("ERROR ❌️ ", "").splitlines()
    return (text[0] if text else type(error).__name__).strip()


def _refusal(path: Path, error: Exception) -> CheckpointError:
    """A refused class (the allow-list at work), named, told apart from a damaged file, which fails to unpickle too."""
    cause = str(error.__cause__ or error)
    # torch names the first class it refuses: "Unsupported global: GLOBAL m.C" or "unsupported GLOBAL m.f whose module
    # m is blocked"
    refused = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", cause, re.IGNORECASE)
    if refused:
        return CheckpointError(f"{path} was refused by restricted loading: it references {refused[1]}, which is not "
                               f"a torch, Ultralytics or spayolo model class (pass trusted=True / --trust-checkpoint "
                               f"only if you trust the file: loading it runs the code it contains)")
    return CheckpointError(f"{path} is not a loadable checkpoint: {_reason(error)}")


def _checked(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file not found: {path}")
    if path.suffix.lower() != ".pt":
        yaml = path.suffix in (".yaml", ".yml")
        hint = " (a model YAML is untrained: train it first, then pass its best.pt)" if yaml else ""
        raise CheckpointError(f"{path} is not a .pt checkpoint{hint}")
    return path


@contextlib.contextmanager
def restricted_loading(trusted: bool = False):
    """Inside the block, checkpoints Ultralytics loads itself (``YOLO(path)``) use the allow-list unless trusted.

    Ultralytics reads ``ULTRALYTICS_SAFE_LOAD`` once, at import; its loader consults the resulting module flag on
    every call, which is what this sets for the duration of the block.
    """
    from ultralytics.nn import tasks

    previous = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = not trusted
    try:
        yield
    finally:
        tasks.SAFE_LOAD = previous


def load_checkpoint(path: str | Path, trusted: bool = False) -> tuple[nn.Module, dict]:
    """Load an Ultralytics ``.pt`` checkpoint as an FP32 eval-mode model, with its checkpoint dictionary.

    Args:
        path: the checkpoint file.
        trusted: unpickle without the allow-list; this runs any code the file contains.

    Returns:
        (model, ckpt): the EMA weights if saved (else the model), with ``task`` and ``args`` attached as Ultralytics
        attaches them, and the raw checkpoint dictionary.

    Raises:
        MissingFileError: no such file (a FileNotFoundError).
        CheckpointError: not a .pt file, unreadable, refused by restricted loading, or holding no model.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import ClassificationModel, guess_model_task, torch_safe_load

    path = _checked(path)
    try:
        ckpt, _ = torch_safe_load(path, safe_only=not trusted)
    except _UNUSABLE as error:
        raise _refusal(path, error) from error
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path} holds no model (keys: {', '.join(map(str, ckpt))})")
    model = model.float().eval()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    # a ClassificationModel is a classifier whatever its head rows look like to Ultralytics' guess
    classifier = isinstance(model, ClassificationModel)
    model.task = "classify" if classifier else getattr(model, "task", None) or guess_model_task(model)
    return model, ckpt


def load_yolo(model: str | Path, trusted: bool = False, task: str | None = None):
    """An ``ultralytics.YOLO`` for a YAML, ``.pt`` or ``.onnx`` file, its checkpoint loaded restricted unless trusted.

    ``task`` as for ``YOLO``: needed for an ``.onnx`` file whose metadata Ultralytics cannot guess the task from.

    Raises:
        MissingFileError: a model file or YAML that does not exist (a FileNotFoundError).
        CheckpointError: a checkpoint that cannot be loaded (one line naming the file).
        ModelConfigError: a model YAML that cannot be built.
    """
    from ultralytics import YOLO

    suffix = Path(str(model)).suffix.lower()
    if suffix in (".pt", ".onnx") and not Path(model).is_file():
        raise MissingFileError(f"model file not found: {model}")
    try:
        with restricted_loading(trusted):
            return YOLO(str(model), task=task)
    except _UNUSABLE as error:
        raise _refusal(Path(model), error) from error
    except FileNotFoundError as error:  # a YAML name that is neither a file nor one Ultralytics or spayolo ships
        raise MissingFileError(f"model not found: {model} ({error})") from error


def training_state(run: str | Path, args: dict | None = None) -> str:
    """A training run folder's state: 'new', 'interrupted' (resume it) or 'finished'.

    Ultralytics marks the final checkpoint of a completed run with epoch -1. A run whose args.yaml differs from `args`
    in any of its keys is 'new': it was trained for something else, and reusing it would report the wrong run.
    """
    run = Path(run)
    last = run / "weights" / "last.pt"
    if not last.is_file():
        return "new"
    model, ckpt = load_checkpoint(last)
    if args:
        trained = yaml.safe_load((run / "args.yaml").read_text())
        if trained.get("resume") and trained.get("model") == trained.get("resume"):
            trained["model"] = _resumed_from(model, args.get("model"))
        if any(trained.get(key) != value for key, value in args.items()):
            return "new"
    return "finished" if ckpt.get("epoch", -1) == -1 else "interrupted"


def _resumed_from(model: nn.Module, wanted):
    """What a resumed run was started from, as far as it can be known: on resume Ultralytics writes the run's own
    last.pt into args.yaml's ``model``, so a run interrupted twice would otherwise look 'new' and restart from scratch.
    The YAML the network was built from stays in the checkpoint; which .pt a fine-tuning started from does not."""
    built_from = Path(str(getattr(model, "yaml", {}).get("yaml_file", ""))).name
    if str(wanted).endswith((".yaml", ".yml")) and Path(str(wanted)).name != built_from:
        return built_from
    return wanted
