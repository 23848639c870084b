"""The block registry: which ``nn.Module`` classes model YAMLs may name, and how each one's arguments follow the scale.

Blocks register on import (``@register_block``), as timm's models do with ``@register_model``. Every class registered
here, blocks and the layers inside them (``@register_layer``), is also admitted by restricted checkpoint loading
(``ULTRALYTICS_SAFE_LOAD=1``) at that moment, so the allow-list never depends on import order. This module imports
nothing from spayolo; :mod:`spayolo.parser` builds YAML rows from it and :mod:`spayolo.integration` plugs that parser
into Ultralytics.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ("BLOCKS", "CHECKPOINT_CLASSES", "BlockSpec", "register_block", "register_layer", "scale_depth",
           "scale_width")


@dataclass(frozen=True)
class BlockSpec:
    """How a registered block reads its YAML row.

    Attributes:
        cls: The ``nn.Module``; its constructor takes ``(c1, c2, [n,] *args)``, ``c1`` a list for several inputs.
        channels: ``"out"``: the first YAML argument is the output width, scaled like Ultralytics' ``Conv``;
            ``"same"``: the block keeps its (first) input's width and the YAML gives no width; ``"classes"``: a head
            whose first argument is the class count, never scaled; or a callable mapping the input width(s) to the
            output width.
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
        if not (callable(self.channels) or self.channels in ("out", "same", "classes")):
            raise ValueError(f"{self.cls.__name__}: channels must be 'out', 'same', 'classes' or a callable, "
                             f"got {self.channels!r}")
        object.__setattr__(self, "signature", inspect.signature(self.cls))

    @property
    def is_head(self) -> bool:
        return self.channels == "classes"


BLOCKS: dict[str, BlockSpec] = {}
CHECKPOINT_CLASSES: set[type] = set()


def register_layer(cls: type) -> type:
    """Class decorator for a spayolo ``nn.Module`` that checkpoints hold but YAMLs do not name (a part of a block)."""
    CHECKPOINT_CLASSES.add(cls)
    # Ultralytics' restricted loading admits torch's and its own classes; spayolo's are added one by one, and only them.
    torch.serialization.add_safe_globals([cls])
    return cls


def register_block(channels: str | Callable = "out", *, repeats: bool = False, scaled: tuple[int, ...] = ()):
    """Class decorator that records a block under its class name for use in model YAMLs (and in checkpoints)."""

    def record(cls):
        if cls.__name__ in BLOCKS and BLOCKS[cls.__name__].cls is not cls:
            raise ValueError(f"spayolo block name '{cls.__name__}' is registered twice")
        BLOCKS[cls.__name__] = BlockSpec(cls, channels, repeats, scaled)
        return register_layer(cls)

    return record


def scale_width(c: int, width: float, max_channels: float, divisor: int = 8) -> int:
    """Ultralytics' width rule for base modules: cap, multiply, round up to a multiple of `divisor` (its 8)."""
    from ultralytics.utils.ops import make_divisible  # importing Ultralytics runs spayolo's hook: only when building

    return int(make_divisible(min(c, max_channels) * width, divisor))


def scale_depth(n: int, depth: float) -> int:
    """Ultralytics' depth rule: repeats above one scale with depth and never drop below one."""
    return max(round(n * depth), 1) if n > 1 else n
