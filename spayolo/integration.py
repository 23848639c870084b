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
  prepared folder, and so that scoring a folder without ``train/`` scores its val/test split instead of splitting it.
- ``BaseTrainer.build_optimizer(self, model, name, lr, momentum, decay, iterations)``: extended with ``optimizer=Adan``
  by :func:`spayolo.engine.optimizers.install_optimizers` once ``ultralytics.engine.trainer`` has executed.
- ``ultralytics.cfg``: ``DEFAULT_CFG_DICT``/``DEFAULT_CFG`` (the argument defaults), the ``CFG_*_KEYS`` type sets and
  ``_handle_deprecation`` (looked up per call; it deletes ``label_smoothing``): :func:`add_train_args`.
- ``ultralytics.models.yolo.model.YOLO.task_map`` (a property, read at each train call): its classify trainer becomes
  :class:`spayolo.engine.trainer.FERTrainer`, a ``ClassificationTrainer`` subclass that overrides ``__init__`` (it
  refuses ``distill_model``, which distils Detect-head features), ``get_dataloader``, ``preprocess_batch``,
  ``set_model_attributes``, ``_setup_train``, ``save_model``, ``resume_training`` and ``final_eval`` and relies on
  ``BaseTrainer`` fields (``args``, ``amp``, ``model``, ``ema``, ``optimizer``, ``wdir``, ``epoch``, ``train_loader``).
  Its validator and predictor become :class:`spayolo.engine.classify.FERValidator` and ``FERPredictor``.
- ``check_imgsz`` as ``ultralytics.engine.trainer``, ``.validator`` and ``.predictor`` import it by name: replaced
  only while FERTrainer sets up, FERValidator runs and FERPredictor sets up its source
  (:func:`spayolo.engine.classify.classifier_imgsz_rule`), so that a classifier's ``imgsz=48`` is not made 64.
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
from .errors import MissingFileError
from .parser import PROBE, make_parse_model
from .paths import MODELS_DIR
from .registry import BLOCKS

__all__ = ("install", "model_yaml", "patch", "use_dataset_names")

TASKS, TRAINER = "ultralytics.nn.tasks", "ultralytics.engine.trainer"
YOLO_MODEL = "ultralytics.models.yolo.model"
CFG = "ultralytics.cfg"


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
        dataset = resolve_dataset(dataset) or dataset  # fer2013.yaml -> its prepared folder
        folder = Path(dataset)
        if split in ("val", "test") and (folder / split).is_dir() and not (folder / "train").is_dir():
            return _scoring_only(folder, split)
        return stock(dataset, split=split)

    return check_cls_dataset


def _scoring_only(folder: Path, split: str) -> dict:
    """The dataset dict of a folder that holds only the split being scored. Stock Ultralytics would split such a
    folder 80/20 into a new ``<folder>_split`` on disk and score a fifth of it, mixed across its splits."""
    names = dict(enumerate(sorted(p.name for p in (folder / split).iterdir() if p.is_dir())))
    if not names:
        raise MissingFileError(f"{folder / split}: no class folders (expected one sub-folder of images per class)")
    splits = {s: folder / s if (folder / s).is_dir() else None for s in ("val", "test")}
    return {"train": None, **splits, "nc": len(names), "names": names, "channels": 3}


def use_dataset_names(module) -> None:
    """Make a module's ``check_cls_dataset`` accept spayolo's dataset names; a no-op until it has one, or twice."""
    if getattr(module, "check_cls_dataset", None) is not None:
        _wrap(module, "check_cls_dataset", _check_cls_dataset)


# Trainer arguments spayolo adds; Ultralytics dropped label_smoothing in 8.1 and now deletes it with a warning, and
# always keeps an EMA of the weights (``ema=False`` lets a run measure what that EMA buys); distill* is knowledge
# distillation (spayolo.engine.distill).
EXTRA_TRAIN_ARGS = {"label_smoothing": 0.0, "ema": True, "distill": None, "distill_weight": 0.5,
                    "distill_temp": 1.0}
# the ultralytics.cfg key sets that type-check them (a fraction is a float in [0, 1]); distill is a free path
EXTRA_ARG_CHECKS = {"CFG_FRACTION_KEYS": {"label_smoothing", "distill_weight"}, "CFG_FLOAT_KEYS": {"distill_temp"},
                    "CFG_BOOL_KEYS": {"ema"}}


def _handle_deprecation(stock):
    def handle_deprecation(custom):
        kept = {k: custom.pop(k) for k in EXTRA_TRAIN_ARGS if k in custom}
        custom = stock(custom)
        custom.update(kept)
        return custom

    return handle_deprecation


def add_train_args(cfg) -> None:
    """Make ``ultralytics.cfg`` accept :data:`EXTRA_TRAIN_ARGS` (CLI and ``YOLO.train``), checked by their type."""
    from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT  # loaded before ultralytics.cfg executes

    for key, value in EXTRA_TRAIN_ARGS.items():
        DEFAULT_CFG_DICT.setdefault(key, value)
        if not hasattr(DEFAULT_CFG, key):
            setattr(DEFAULT_CFG, key, value)
    for key_set, keys in EXTRA_ARG_CHECKS.items():
        setattr(cfg, key_set, getattr(cfg, key_set) | keys)
    _wrap(cfg, "_handle_deprecation", _handle_deprecation)


def use_fer_trainer(yolo) -> None:
    """Make spayolo's trainer (fast CPU path, exact resume), validator and predictor (a classifier's imgsz rule) the
    ones ``YOLO.task_map`` gives every classify model."""
    stock = yolo.task_map
    if hasattr(stock.fget, "stock"):
        return

    def task_map(self):
        from spayolo.engine.classify import FERPredictor, FERValidator  # at call time: they subclass classes
        from spayolo.engine.trainer import FERTrainer  # that Ultralytics may still be importing

        tasks = stock.fget(self)
        tasks["classify"].update(trainer=FERTrainer, validator=FERValidator, predictor=FERPredictor)
        return tasks

    task_map.stock = stock
    yolo.task_map = property(task_map)


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
    elif module.__name__ == YOLO_MODEL:
        use_fer_trainer(module.YOLO)
    elif module.__name__ == CFG:
        add_train_args(module)
    else:
        use_dataset_names(module)
    if module.__name__ == TRAINER:
        from spayolo.engine.optimizers import install_optimizers  # the engine package may import Ultralytics itself

        install_optimizers()

