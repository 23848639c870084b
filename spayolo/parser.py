"""The model-YAML parser for spayolo rows: a wrapper around Ultralytics' ``parse_model`` that never copies its rules.

Ultralytics resolves a YAML module name with ``globals()[m]`` in ``ultralytics.nn.tasks`` and applies its scale rules
only to classes in function-local sets, so a plugin block would get no input width and no scaling. A YAML without
spayolo blocks therefore goes to the stock parser untouched. A YAML with them is built row by row: every stock row is
still built by the stock parser (a one-row model whose input channel is the row's input, followed by a probe that
reports its output width), and the rows that name spayolo blocks are built from their :class:`BlockSpec`.

Ultralytics is imported inside the functions: importing it runs spayolo's hook, which imports this module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UsageError
from .registry import BLOCKS, BlockSpec, scale_depth, scale_width

__all__ = ("ModelConfigError", "PROBE", "make_parse_model")


class ModelConfigError(UsageError):
    """A model YAML that cannot be built; the message names the file, the layer index and the module."""


class _ChannelProbe(nn.Module):
    """Appended to a one-row model so the stock parser reports that row's output width (``ch`` resolves to its list)."""

    def __init__(self, ch):
        super().__init__()
        self.channels = int(ch[-1])


PROBE = _ChannelProbe  # spayolo.integration puts it in ``ultralytics.nn.tasks``, where the stock parser looks names up


@dataclass
class _Scale:
    depth: float
    width: float
    max_channels: float
    scale: str | None
    divisor: int = 8  # YAML key channel_divisor: 1 keeps a paper's exact block widths (e.g. LANMSFF's 66/78)


def _source(d: dict) -> str:
    return str(d.get("yaml_file", "<model dict>"))


def _resolve_scale(d: dict) -> _Scale:
    scales, scale, divisor = d.get("scales"), d.get("scale"), d.get("channel_divisor", 8)
    if not isinstance(divisor, int) or divisor < 1:
        raise ModelConfigError(f"{_source(d)}: channel_divisor must be a positive integer, got {divisor!r}")
    if not scales:
        if scale:  # e.g. lanmsff-x.yaml: the name asks for a size this network does not come in
            raise ModelConfigError(
                f"{_source(d)}: scale '{scale}' was asked for, but the model YAML has no scales (it builds at one "
                "size): use its name without the scale letter"
            )
        return _Scale(d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf"), scale, divisor)
    if not scale:
        from ultralytics.utils import LOGGER

        scale = next(iter(scales))
        LOGGER.warning(f"no model scale passed. Assuming scale='{scale}'.")
    if scale not in scales:
        raise ModelConfigError(f"{_source(d)}: scale '{scale}' is not one of its scales {list(scales)}")
    return _Scale(*scales[scale], scale, divisor)


def _stock_name_exists(name: str) -> bool:
    import torchvision
    from ultralytics.nn import tasks

    if name.startswith("nn."):
        return hasattr(torch.nn, name[3:])
    if name.startswith("torchvision.ops."):
        return hasattr(torchvision.ops, name[16:])
    return name in vars(tasks) and name != PROBE.__name__


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
    shown = head + args

    def refused(error: Exception) -> ModelConfigError:
        return ModelConfigError(f"{_source(d)}: layer {i} ({name}): cannot build {name}{spec.signature} from {shown}: "
                                f"{error}")

    try:
        spec.signature.bind(*shown)
    except TypeError as error:  # arguments the block does not take
        raise refused(error) from error
    try:
        if spec.repeats or n == 1:
            return spec.cls(*shown), c2, shown
        return nn.Sequential(spec.cls(*shown), *(spec.cls(c2, c2, *args) for _ in range(n - 1))), c2, shown
    except UsageError as error:  # a value the block refuses; any other error in a constructor is a bug in the block
        raise refused(error) from error


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
    rows = {"backbone": [[-1, n, m, args], [-1, 1, PROBE.__name__, ["ch"]]], "head": []}
    one_row = {**{k: v for k, v in d.items() if k not in ("backbone", "head")}, **rows, "scale": scale.scale}
    try:
        layers, _ = stock_parse(one_row, c1, verbose=False)
    # how Ultralytics' own parser fails on a row's arguments; it validates none of them itself
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as error:
        raise ModelConfigError(f"{_source(d)}: layer {i} ({m}): cannot build it from args {args}: {error}") from error
    return layers[0], layers[1].channels, args


def _type_name(module: nn.Module, m: str) -> str:
    if isinstance(vars(module).get("type"), str):  # set by the stock parser; nn.Module.type is a method
        return module.type
    cls = BLOCKS[m].cls if m in BLOCKS else type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def make_parse_model(stock_parse):
    """Wrap Ultralytics' ``parse_model`` so model YAMLs may name spayolo blocks; ``.stock`` keeps the original."""

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
