"""One registry for spayolo's blocks: how each block's YAML arguments follow the model scale, and how Ultralytics finds it.

Ultralytics has no plugin hook: ``parse_model`` resolves names in ``ultralytics.nn.tasks`` and applies its scale rules
only to classes in function-local sets. spayolo therefore wraps ``parse_model``. A YAML without spayolo blocks goes to
the stock parser untouched. A YAML with them is built row by row: every stock row is still built by the stock parser
(a one-row model whose input channel is the row's input), so Ultralytics' own rules never get copied here, and the
rows that name spayolo blocks are built from their :class:`BlockSpec`, which owns their scale rule.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ("BLOCKS", "BlockSpec", "ModelConfigError", "install", "model_yaml", "register_block", "scale_depth",
           "scale_width")

_PACKAGE = Path(__file__).resolve().parent


def packaged(*parts: str) -> Path:
    """A data path: inside the installed package (wheel), else at the repo root (checkout or editable install)."""
    return next((p.joinpath(*parts) for p in (_PACKAGE, _PACKAGE.parent) if p.joinpath(*parts).exists()),
                _PACKAGE.joinpath(*parts))


MODELS_DIR = packaged("cfg", "models")
_SCALED_NAME = re.compile(r"^(?P<base>.+)-(?P<scale>[nslmx])$")


class ModelConfigError(ValueError):
    """A model YAML that cannot be built; the message names the file, the layer index and the module."""


@dataclass(frozen=True)
class BlockSpec:
    """How a registered block reads its YAML row.

    Attributes:
        cls: The ``nn.Module``; its constructor takes ``(c1, c2, [n,] *args)``, ``c1`` a list for several inputs.
        channels: ``"out"``: the first YAML argument is the output width, scaled like Ultralytics' ``Conv``;
            ``"same"``: the block keeps its input width and the YAML gives no width; ``"classes"``: a head whose first
            argument is the class count, never scaled; or a callable mapping the input width(s) to the output width.
        repeats: The block takes the depth-scaled repeat count ``n`` itself (like ``C2f``) instead of being
            repeated in an ``nn.Sequential``.
        scaled: Positions of further YAML arguments (0 is the first) that are channel widths, scaled like ``c2``.
    """

    cls: type
    channels: str | Callable = "out"
    repeats: bool = False
    scaled: tuple[int, ...] = ()
    signature: inspect.Signature = field(init=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "signature", inspect.signature(self.cls))

    @property
    def is_head(self) -> bool:
        return self.channels == "classes"


BLOCKS: dict[str, BlockSpec] = {}


def register_block(channels: str | Callable = "out", *, repeats: bool = False, scaled: tuple[int, ...] = ()):
    """Class decorator that records a block under its class name for use in model YAMLs."""

    def record(cls):
        if cls.__name__ in BLOCKS and BLOCKS[cls.__name__].cls is not cls:
            raise ValueError(f"spayolo block name '{cls.__name__}' is registered twice")
        BLOCKS[cls.__name__] = BlockSpec(cls, channels, repeats, scaled)
        return cls

    return record


def scale_width(c: int, width: float, max_channels: float, divisor: int = 8) -> int:
    """Ultralytics' width rule for base modules: cap, multiply, round up to a multiple of `divisor` (its 8)."""
    from ultralytics.utils.ops import make_divisible

    return int(make_divisible(min(c, max_channels) * width, divisor))


def scale_depth(n: int, depth: float) -> int:
    """Ultralytics' depth rule: repeats above one scale with depth and never drop below one."""
    return max(round(n * depth), 1) if n > 1 else n


class _ChannelProbe(nn.Module):
    """Appended to a one-row model so the stock parser reports that row's output width (``ch`` resolves to its list)."""

    def __init__(self, ch):
        super().__init__()
        self.channels = int(ch[-1])


@dataclass
class _Scale:
    depth: float
    width: float
    max_channels: float
    scale: str | None
    divisor: int = 8  # YAML key channel_divisor: 1 keeps a paper's exact block widths (e.g. LANMSFF's 66/78)


def _resolve_scale(d: dict) -> _Scale:
    scales, scale, divisor = d.get("scales"), d.get("scale"), d.get("channel_divisor", 8)
    if not isinstance(divisor, int) or divisor < 1:
        raise ModelConfigError(f"{_source(d)}: channel_divisor must be a positive integer, got {divisor!r}")
    if scales:
        if not scale:
            from ultralytics.utils import LOGGER

            scale = next(iter(scales))
            LOGGER.warning(f"no model scale passed. Assuming scale='{scale}'.")
        if scale not in scales:
            raise ModelConfigError(f"{_source(d)}: scale '{scale}' is not one of its scales {list(scales)}")
        return _Scale(*scales[scale], scale, divisor)
    return _Scale(d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf"), scale, divisor)


def _source(d: dict) -> str:
    return str(d.get("yaml_file", "<model dict>"))


def _stock_name_exists(name: str) -> bool:
    import torchvision
    from ultralytics.nn import tasks

    if name.startswith("nn."):
        return hasattr(torch.nn, name[3:])
    if name.startswith("torchvision.ops."):
        return hasattr(torchvision.ops, name[16:])
    return name in vars(tasks) and name != _ChannelProbe.__name__


def _check_rows(d: dict) -> list:
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    if not rows:
        raise ModelConfigError(f"{_source(d)}: the model has no 'backbone' or 'head' rows")
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise ModelConfigError(f"{_source(d)}: layer {i}: a row must be [from, repeats, module, args], got {row!r}")
        f, n, m, args = row
        if not isinstance(m, str) or not (m in BLOCKS or _stock_name_exists(m)):
            known = ", ".join(sorted(BLOCKS))
            raise ModelConfigError(
                f"{_source(d)}: layer {i}: unknown module '{m}'. spayolo blocks are: {known}; "
                "other names must be Ultralytics modules, nn.* or torchvision.ops.*"
            )
        if not isinstance(args, list):
            raise ModelConfigError(f"{_source(d)}: layer {i} ({m}): args must be a list, got {args!r}")
        if not (isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(x, int) for x in f))):
            raise ModelConfigError(f"{_source(d)}: layer {i} ({m}): 'from' must be an index or a list of indices")
        if not isinstance(n, int) or n < 1:
            raise ModelConfigError(f"{_source(d)}: layer {i} ({m}): repeats must be a positive integer, got {n!r}")
    return rows


def _input_channels(d: dict, i: int, m: str, f, ch: list[int]):
    try:
        return [ch[x] for x in f] if isinstance(f, list) else ch[f]
    except IndexError:
        raise ModelConfigError(f"{_source(d)}: layer {i} ({m}): 'from' {f} points at no earlier layer") from None


def _literal(a, nc):
    if not isinstance(a, str):
        return a
    if a == "nc":
        return nc
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a


def _build_block(d: dict, i: int, spec: BlockSpec, c1, n: int, args: list, scale: _Scale):
    """Build a spayolo row: apply the block's scale rule, then call ``cls(c1, c2, [n,] *args)``."""
    name = spec.cls.__name__
    args = [_literal(a, d.get("nc")) for a in args]
    n = scale_depth(n, scale.depth)
    if spec.channels == "out":
        if not args or not isinstance(args[0], int):
            raise ModelConfigError(f"{_source(d)}: layer {i} ({name}): the first argument must be the output width")
        c2, args = scale_width(args[0], scale.width, scale.max_channels, scale.divisor), args[1:]
    elif spec.channels == "classes":
        if not args or not isinstance(args[0], int):
            raise ModelConfigError(f"{_source(d)}: layer {i} ({name}): the first argument must be the class count (nc)")
        c2, args = args[0], args[1:]
    elif spec.channels == "same":
        c2 = c1[0] if isinstance(c1, list) else c1
    else:
        c2 = spec.channels(c1)
    args = [scale_width(a, scale.width, scale.max_channels, scale.divisor) if j in spec.scaled else a
            for j, a in enumerate(args)]
    head = [c1, c2, n] if spec.repeats else [c1, c2]
    try:
        spec.signature.bind(*head, *args)
        if spec.repeats or n == 1:
            return spec.cls(*head, *args), c2, head + args
        return nn.Sequential(spec.cls(*head, *args), *(spec.cls(c2, c2, *args) for _ in range(n - 1))), c2, head + args
    except (TypeError, ValueError) as error:
        raise ModelConfigError(
            f"{_source(d)}: layer {i} ({name}): cannot build {name}{spec.signature} from {head + args}: {error}"
        ) from error


def _build_stock(d: dict, i: int, f, n: int, m: str, args: list, c1, scale: _Scale, stock_parse):
    """Build a stock row with the stock parser, as a one-row model fed ``c1`` channels, and read its output width."""
    if isinstance(f, list):
        from ultralytics.nn.modules import Concat

        if m != "Concat":
            raise ModelConfigError(
                f"{_source(d)}: layer {i} ({m}): a stock module with several inputs must be Concat in a spayolo model"
            )
        return Concat(*args), sum(c1), args
    args = list(args)  # the stock parser resolves names in place: show what it built with
    rows = {"backbone": [[-1, n, m, args], [-1, 1, _ChannelProbe.__name__, ["ch"]]], "head": []}
    one_row = {**{k: v for k, v in d.items() if k not in ("backbone", "head")}, **rows, "scale": scale.scale}
    try:
        layers, _ = stock_parse(one_row, c1, verbose=False)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
        raise ModelConfigError(f"{_source(d)}: layer {i} ({m}): cannot build it from args {args}: {error}") from error
    return layers[0], layers[1].channels, args


def _type_name(module: nn.Module, m: str) -> str:
    if isinstance(vars(module).get("type"), str):  # set by the stock parser; nn.Module.type is a method
        return module.type
    cls = BLOCKS[m].cls if m in BLOCKS else type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def make_parse_model(stock_parse):
    """Wrap Ultralytics' ``parse_model`` so model YAMLs may name spayolo blocks."""

    def parse_model(d, ch, verbose=True):
        rows = _check_rows(d)
        if not any(m in BLOCKS for _, _, m, _ in rows):
            return stock_parse(d, ch, verbose)
        from ultralytics.nn.modules import Conv
        from ultralytics.nn.tasks import _SafeLoad
        from ultralytics.utils import LOGGER

        scale = _resolve_scale(d)
        default_act = Conv.default_act  # process-wide: restored below, as the stock parser does
        if d.get("activation"):
            Conv.default_act = _SafeLoad.activation(d["activation"])
        if verbose:
            LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")
        try:
            channels, layers, save = [ch], [], []
            for i, (f, n, m, args) in enumerate(rows):
                c1 = _input_channels(d, i, m, f, channels)
                if m in BLOCKS:
                    module, c2, shown = _build_block(d, i, BLOCKS[m], c1, n, list(args), scale)
                else:
                    module, c2, shown = _build_stock(d, i, f, n, m, list(args), c1, scale, stock_parse)
                module.np = sum(p.numel() for p in module.parameters())
                module.i, module.f, module.type = i, f, _type_name(module, m)
                if verbose:
                    LOGGER.info(f"{i:>3}{f!s:>20}{n:>3}{module.np:10.0f}  {module.type:<45}{shown!s:<30}")
                save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
                layers.append(module)
                if i == 0:
                    channels = []
                channels.append(c2)
        finally:
            Conv.default_act = default_act
        return nn.Sequential(*layers), sorted(save)

    parse_model.stock = stock_parse
    return parse_model


def model_yaml(name: str | Path) -> tuple[Path, str] | None:
    """Map a spayolo model name (``spayolo.yaml``, ``spayolo-s.yaml``) to its packaged YAML and scale letter."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or path.parent != Path("."):
        return None
    if (MODELS_DIR / path.name).is_file():
        return MODELS_DIR / path.name, ""
    match = _SCALED_NAME.match(path.stem)
    if match and (MODELS_DIR / f"{match['base']}{path.suffix}").is_file():
        return MODELS_DIR / f"{match['base']}{path.suffix}", match["scale"]
    return None


def _wrap_check_yaml(stock_check_yaml):
    def check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
        found = model_yaml(file) if not Path(str(file)).exists() else None
        return str(found[0]) if found else stock_check_yaml(file, suffix=suffix, hard=hard)

    check_yaml.stock = stock_check_yaml
    return check_yaml


def _wrap_check_cls_dataset(stock_check):
    def check_cls_dataset(dataset, split=""):
        from spayolo.data import resolve_dataset  # fer2013.yaml, ckplus-fold3.yaml -> their prepared folders

        return stock_check(resolve_dataset(dataset) or dataset, split=split)

    check_cls_dataset.stock = stock_check
    return check_cls_dataset


def use_dataset_names(module) -> None:
    """Make a module's ``check_cls_dataset`` accept spayolo's dataset names; a no-op until it has one, or twice."""
    stock = getattr(module, "check_cls_dataset", None)
    if stock is not None and not hasattr(stock, "stock"):
        module.check_cls_dataset = _wrap_check_cls_dataset(stock)


def _wrap_guess_model_scale(stock_guess):
    def guess_model_scale(model_path):
        found = model_yaml(Path(model_path).name)
        return found[1] if found and found[1] else stock_guess(model_path)

    guess_model_scale.stock = stock_guess
    return guess_model_scale


def _wrap_guess_model_task(stock_guess):
    def guess_model_task(model):
        if isinstance(model, dict) and model.get("head") and model["head"][-1][-2] in BLOCKS:
            if BLOCKS[model["head"][-1][-2]].is_head:
                return "classify"
        return stock_guess(model)

    guess_model_task.stock = stock_guess
    return guess_model_task


_INSTALLED = False


def install() -> None:
    """Make Ultralytics build, train, save and safely reload spayolo models; idempotent."""
    global _INSTALLED
    if _INSTALLED:
        return
    from spayolo.compat import check_ultralytics

    check_ultralytics()
    import ultralytics.engine.model as engine_model
    from ultralytics.nn import tasks

    import spayolo.nn  # noqa: F401  registers every block
    from spayolo.engine import install_optimizers

    from spayolo import _autoload

    # where Ultralytics checks classification datasets; a module still executing is done by the hook when it ends
    for name in _autoload.DATASET_USERS:
        if name in sys.modules:
            use_dataset_names(sys.modules[name])
    _autoload.hook_imports()
    tasks.parse_model = make_parse_model(tasks.parse_model)
    tasks.check_yaml = _wrap_check_yaml(tasks.check_yaml)
    tasks.guess_model_scale = _wrap_guess_model_scale(tasks.guess_model_scale)
    tasks.guess_model_task = _wrap_guess_model_task(tasks.guess_model_task)
    engine_model.guess_model_task = tasks.guess_model_task
    vars(tasks)[_ChannelProbe.__name__] = _ChannelProbe
    # Restricted loading (ULTRALYTICS_SAFE_LOAD=1) admits torch and Ultralytics classes; add spayolo's, and only them.
    torch.serialization.add_safe_globals(safe_globals())
    install_optimizers()
    _INSTALLED = True


def safe_globals() -> list[type]:
    """Every class a spayolo checkpoint may reference: the ``nn.Module`` classes defined in ``spayolo.nn``."""
    classes = {
        obj
        for name, module in list(sys.modules.items())
        if name == "spayolo.nn" or name.startswith("spayolo.nn.")
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == name
    }
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")
