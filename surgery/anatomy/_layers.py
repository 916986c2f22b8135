"""Helpers the families share to describe their class-dependent layers for ``set_num_classes``."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from surgery import paths
from surgery._errors import PathError
from surgery.anatomy._base import RowLayer

__all__ = ["need_layer", "int_attr", "linear_default", "normal_init", "prior_init", "xavier_init"]


def int_attr(module: nn.Module, name: str) -> int:
    """``module.<name>`` when it is an int (not a bool).

    Raises:
        ValueError: It is missing or not an int.
    """
    value = getattr(module, name, None)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{type(module).__name__}.{name} should be an int, got {value!r}")
    return value


def need_layer(model: nn.Module, path: str, kinds: tuple[type[nn.Module], ...], what: str) -> nn.Module:
    """The module at ``path`` when it is one of ``kinds``.

    Raises:
        ValueError: It is absent or of another type; the message says what ``set_num_classes``
            expected there and what to do instead.
    """
    try:
        module: nn.Module | None = paths.get(model, path)
    except PathError:
        module = None
    if not isinstance(module, kinds):
        parent_path, name = paths.parent_of(path)
        if module is None:
            problem = f"{parent_path} ({type(paths.get(model, parent_path)).__name__}) has no {name!r} layer"
        else:
            problem = f"it is a {type(module).__name__}, not an {' or '.join(k.__name__ for k in kinds)}"
        raise ValueError(
            f"set_num_classes() rebuilds {path} as {what}, but {problem}; replace that slot yourself "
            "(surgery.replace) with a module built for the new class count"
        )
    return module


def linear_default(layer: RowLayer) -> None:
    """Keep the layer's own PyTorch initialisation: nothing to add."""


def normal_init(std: float) -> Callable[[RowLayer], None]:
    """``N(0, std)`` weights and a zero bias."""

    def init(layer: RowLayer) -> None:
        nn.init.normal_(layer.weight, mean=0.0, std=std)
        if layer.bias is not None:
            nn.init.constant_(layer.bias, 0.0)

    return init


def prior_init(layer: RowLayer, prior: float = 0.01) -> None:
    """``N(0, 0.01)`` weights and a bias of ``-log((1 - prior) / prior)`` (focal-loss heads)."""
    nn.init.normal_(layer.weight, std=0.01)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, -math.log((1 - prior) / prior))


def xavier_init(layer: RowLayer) -> None:
    """``xavier_uniform_`` weights and a zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, 0.0)
