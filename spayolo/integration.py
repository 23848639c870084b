"""Every patch spayolo applies to Ultralytics, in one place, so that the stock CLI and API understand spayolo.

Ultralytics has no plugin hook for layers, model names or datasets, so spayolo relies on these internals of
``ultralytics>=8.4.190,<8.5`` (:mod:`spayolo.compat` refuses other releases; ``tests/test_registry.py`` pins each):

- ``ultralytics.nn.tasks.parse_model(d, ch, verbose)``: resolves YAML names with ``globals()[m]`` in ``tasks`` and
  ``"ch"`` arguments through its ``locals()``. Replaced by :func:`spayolo.parser.make_parse_model` around the stock
  function, which still builds every stock row; ``_ChannelProbe`` is added to the ``tasks`` namespace for it.
- ``tasks.yaml_model_load`` looks ``check_yaml`` and ``guess_model_scale`` up in ``tasks`` at call time: wrapped so that
  ``spayolo-s.yaml`` finds the packaged ``spayolo.yaml`` from any directory with scale ``s``.
- ``tasks.guess_model_task``, and the copy ``ultralytics.engine.model`` imported by name: a YAML whose last row is a
  spayolo head is ``classify``.
- ``tasks._SafeLoad.activation`` resolves a YAML's ``activation`` without ``eval``. Restricted loading
  (``ULTRALYTICS_SAFE_LOAD=1``) admits ``torch.serialization.add_safe_globals`` entries, which
  :mod:`spayolo.registry` adds as each class registers.
- ``check_cls_dataset`` in ``ultralytics.data.utils`` and in the trainer, validator and exporter modules, which
  import it by name (:data:`spayolo._autoload.WATCHED`): wrapped so that ``data=fer2013.yaml`` resolves to the
  prepared folder.
- ``BaseTrainer.build_optimizer(self, model, name, lr, momentum, decay, iterations)``: extended with ``optimizer=Adan``
  by :func:`spayolo.engine.optimizers.install_optimizers` once ``ultralytics.engine.trainer`` has executed.
- ``ultralytics.utils.ops.make_divisible``: the width rule of :func:`spayolo.registry.scale_width`.

Ultralytics is imported inside the functions: importing it runs the hook in :mod:`spayolo._autoload`, which calls
:func:`patch` here.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .compat import UnsupportedUltralyticsError, check_ultralytics
from .data import resolve_dataset
from .parser import PROBE, make_parse_model
from .paths import MODELS_DIR
from .registry import BLOCKS

__all__ = ("install", "model_yaml", "patch", "use_dataset_names")

TASKS, TRAINER = "ultralytics.nn.tasks", "ultralytics.engine.trainer"


def model_yaml(name: str | Path) -> tuple[Path, str] | None:
    """Map a spayolo model name (``spayolo.yaml``, ``spayolo-s.yaml``) to its packaged YAML and scale letter."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or path.parent != Path("."):
        return None
    if (MODELS_DIR / path.name).is_file():
        return MODELS_DIR / path.name, ""
    base, dash, scale = path.stem.rpartition("-")
    if dash and scale in tuple("nslmx") and (MODELS_DIR / f"{base}{path.suffix}").is_file():
        return MODELS_DIR / f"{base}{path.suffix}", scale
    return None


def _wrap(owner, name: str, make) -> None:
    """Replace ``owner.name`` by ``make(stock)`` once; the wrapper keeps the original as ``.stock``."""
    stock = getattr(owner, name)
    if not hasattr(stock, "stock"):
        wrapper = make(stock)
        wrapper.stock = stock
        setattr(owner, name, wrapper)


def _check_yaml(stock):
    def check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
        found = model_yaml(file) if not Path(str(file)).exists() else None
        return str(found[0]) if found else stock(file, suffix=suffix, hard=hard)

    return check_yaml


def _guess_model_scale(stock):
    def guess_model_scale(model_path):
        found = model_yaml(Path(model_path).name)
        return found[1] if found and found[1] else stock(model_path)

    return guess_model_scale


def _guess_model_task(stock):
    def guess_model_task(model):
        if isinstance(model, dict) and model.get("head") and model["head"][-1][-2] in BLOCKS:
            if BLOCKS[model["head"][-1][-2]].is_head:
                return "classify"
        return stock(model)

    return guess_model_task


def _check_cls_dataset(stock):
    def check_cls_dataset(dataset, split=""):
        return stock(resolve_dataset(dataset) or dataset, split=split)  # fer2013.yaml -> its prepared folder

    return check_cls_dataset


def use_dataset_names(module) -> None:
    """Make a module's ``check_cls_dataset`` accept spayolo's dataset names; a no-op until it has one, or twice."""
    if getattr(module, "check_cls_dataset", None) is not None:
        _wrap(module, "check_cls_dataset", _check_cls_dataset)


def install() -> None:
    """Make Ultralytics build, train, save and safely reload spayolo models; idempotent.

    Raises:
        UnsupportedUltralyticsError: The installed Ultralytics is outside the supported range.
    """
    check_ultralytics()
    from ultralytics.nn import tasks

    # Every block registers as its module executes; when spayolo.nn is the import that loaded Ultralytics, the rest
    # of its blocks register before any YAML can be parsed.
    import spayolo.nn  # noqa: F401

    vars(tasks)[PROBE.__name__] = PROBE
    _wrap(tasks, "parse_model", make_parse_model)
    _wrap(tasks, "check_yaml", _check_yaml)
    _wrap(tasks, "guess_model_scale", _guess_model_scale)
    _wrap(tasks, "guess_model_task", _guess_model_task)
    # Imported later, the engine takes the wrapper by name itself; importing it here could meet a half-imported module.
    if (engine_model := sys.modules.get("ultralytics.engine.model")) is not None:
        engine_model.guess_model_task = tasks.guess_model_task


_WARNED = []


def patch(module) -> None:
    """Called by the import hook once a watched Ultralytics module has executed: apply the patches it needs.

    Each module is patched when it has executed, never imported from here: the hook may fire while another
    Ultralytics module is half-imported (``import ultralytics.data.utils`` first imports the parser from within).

    Only an unsupported Ultralytics release is turned into a warning, so that Ultralytics stays usable on its own;
    any other error (a bug in spayolo.nn included) propagates to the import that triggered it.
    """
    try:
        check_ultralytics()
    except UnsupportedUltralyticsError as error:
        if not _WARNED:
            _WARNED.append(error)
            warnings.warn(
                f"spayolo is not registered with Ultralytics: {error}. Until then spayolo's model YAMLs "
                "(spayolo-n.yaml ...), dataset names (data=fer2013.yaml), optimizer=Adan and checkpoints holding "
                "spayolo blocks do not work; stock Ultralytics models are unaffected.",
                stacklevel=2,
            )
        return
    if module.__name__ == TASKS:
        install()
    else:
        use_dataset_names(module)
    if module.__name__ == TRAINER:
        from spayolo.engine.optimizers import install_optimizers  # the engine package may import Ultralytics itself

        install_optimizers()

