"""``surgery.components`` and ``surgery.inspect``: what a model is made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from surgery import _html, paths
from surgery._util import require_module
from surgery.anatomy import Anatomy, anatomy_for
from surgery.signature import SlotSignature

__all__ = ["Component", "Overview", "components", "inspect", "count_params", "human", "uninitialized"]

#: How a module with lazy, not yet materialized parameters (``nn.LazyConv2d``...) is described.
UNINITIALIZED = "uninitialized"


def human(n: int) -> str:
    """``23508032`` → ``"23.5M"``; small counts stay exact."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def uninitialized(module: nn.Module) -> int:
    """How many parameters of ``module`` are lazy ones not materialized yet (their size is unknown)."""
    return sum(1 for p in module.parameters() if isinstance(p, nn.parameter.UninitializedParameter))


def count_params(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts, each shared parameter counted once.

    Lazy parameters that are not materialized yet have no size and count 0; :func:`uninitialized`
    says whether there are any.
    """
    total = trainable = 0
    for p in module.parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            continue
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


@dataclass(frozen=True)
class Component:
    """One swappable slot of a model.

    Attributes:
        path: Dotted path, e.g. ``"roi_heads.mask_head"``.
        role: What it does, e.g. ``"mask head: RoI features → mask features"``.
        type: The module's class name.
        params: Number of parameters.
        trainable: Number of parameters with ``requires_grad``.
        in_sig: Input channels/features read from its first layer, one per map for a multi-scale
            module (None when unknown).
        out_sig: Output channels/features read from its last layer (None when unknown).
        accepts: What may replace it.
        config: What the module is configured with beyond its signature (anchor sizes and
            ratios per level, a pooler's maps and output size), None when nothing.
        lazy: True when some of its parameters are lazy and not materialized yet (their counts are then 0).
    """

    path: str
    role: str
    type: str
    params: int
    trainable: int
    in_sig: SlotSignature | None
    out_sig: SlotSignature | None
    accepts: str = ""
    config: str | None = None
    lazy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "role": self.role,
            "type": self.type,
            "params": self.params,
            "trainable": self.trainable,
            "in": self.in_sig.to_dict() if self.in_sig else None,
            "out": self.out_sig.to_dict() if self.out_sig else None,
            "accepts": self.accepts,
            "config": self.config,
            "lazy": self.lazy,
        }

    def __str__(self) -> str:
        counts = f"{UNINITIALIZED}, {self.params:,} params materialized" if self.lazy else f"{self.params:,} params, {self.trainable:,} trainable"
        return (
            f"{self.path}: {self.type} ({counts}) "
            f"{self.in_sig or '?'} → {self.out_sig or '?'}{f' [{self.config}]' if self.config else ''} — {self.role}"
        )

    def flow_text(self) -> str:
        """``in → out``, or the configuration for a slot without a signature (an anchor generator, a pooler)."""
        if self.in_sig is None and self.out_sig is None and self.config:
            return self.config
        text = f"{self.in_sig or '-'} → {self.out_sig or '-'}"
        return f"{text}; {self.config}" if self.config else text


def components(model: nn.Module) -> list[Component]:
    """List the swappable components of ``model``.

    Torchvision's detection families list their slots (``backbone.body``, ``rpn.head``,
    ``roi_heads.mask_head``, ...); any other module lists its top-level children.

    Args:
        model: A built model.

    Returns:
        One :class:`Component` per present slot, in data-flow order.
    """
    require_module(model, "components()")
    anatomy = anatomy_for(model)
    out = []
    for slot in anatomy.slots(model):
        module = paths.get(model, slot.path)
        total, trainable = count_params(module)
        in_sig, out_sig = anatomy.signatures(model, slot.path)
        out.append(Component(slot.path, slot.role, type(module).__name__, total, trainable, in_sig, out_sig, slot.accepts,
                             anatomy.slot_config(module), uninitialized(module) > 0))
    return out


@dataclass
class Overview:
    """The printable result of :func:`inspect`.

    Attributes:
        model: The model's class name.
        family: The anatomy that matched (``"R-CNN"``, ``"generic"``, ...).
        components: The component list.
        tree: The module tree down to the requested depth, one line per module.
        params: Total parameters.
        trainable: Trainable parameters.
        layer_table: torchinfo's per-layer table when an input size was given.
    """

    model: str
    family: str
    components: list[Component]
    tree: list[str]
    params: int
    trainable: int
    layer_table: str | None = None
    depth: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "family": self.family,
            "params": self.params,
            "trainable": self.trainable,
            "components": [c.to_dict() for c in self.components],
            "tree": self.tree,
            "depth": self.depth,
            "layer_table": self.layer_table,
        }

    def components_table(self) -> str:
        header = ("path", "type", "params", "trainable", "in → out", "role")
        rows = [
            (c.path, c.type, human(c.params) + ("+?" if c.lazy else ""), UNINITIALIZED if c.lazy else human(c.trainable),
             c.flow_text(), c.role)
            for c in self.components
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
        lines = []
        for r in [header, *rows]:
            cells = [str(r[i]).rjust(widths[i]) if i in (2, 3) else str(r[i]).ljust(widths[i]) for i in range(len(header) - 1)]
            lines.append("  ".join(cells) + "  " + r[-1])
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return _html.fragment(_html.overview(self))

    def __repr__(self) -> str:
        return _html.short_repr("Overview", f"{self.model} ({self.family}): {self.params:,} parameters, {len(self.components)} components")

    def __str__(self) -> str:
        parts = [
            f"{self.model} ({self.family}): {self.params:,} parameters, {self.trainable:,} trainable",
            "",
            "Components",
            self.components_table(),
            "",
            f"Module tree (depth {self.depth})",
            *self.tree,
        ]
        if self.layer_table:
            parts += ["", "Layers (torchinfo)", self.layer_table]
        return "\n".join(parts)


def _tree(model: nn.Module, depth: int) -> list[str]:
    lines = [type(model).__name__]

    def walk(module: nn.Module, prefix: str, level: int) -> None:
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        for i, (name, child) in enumerate(children):
            last = i == len(children) - 1
            total, _ = count_params(child)
            size = f"{human(total)}, {UNINITIALIZED}" if uninitialized(child) else human(total)
            more = f" … {len(child._modules)} children" if level + 1 >= depth and child._modules else ""
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{name}: {type(child).__name__} ({size}){more}")
            if level + 1 < depth:
                walk(child, prefix + ("   " if last else "│  "), level + 1)

    if depth > 0:
        walk(model, "", 0)
    return lines


def inspect(model: nn.Module, input_size: tuple[int, ...] | None = None, depth: int = 2) -> Overview:
    """A printable overview: the components table, the module tree and, given an input
    size, torchinfo's per-layer table.

    The model's train/eval mode, device and hooks are left exactly as they were.

    Args:
        model: A built model.
        input_size: Shape of one input, e.g. ``(3, 320, 320)`` for a detection model (one
            image) or ``(1, 3, 224, 224)`` for a classifier; None skips the layer table.
        depth: How deep the module tree (and the layer table) goes.

    Returns:
        An :class:`Overview`; ``print()`` it or call ``to_dict()``.

    Raises:
        ValueError: ``depth`` is negative or ``input_size`` is not a tuple of positive ints.
    """
    require_module(model, "inspect()")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an int >= 0, got {depth!r}")
    anatomy = anatomy_for(model)
    total, trainable = count_params(model)
    table = None
    if input_size is not None:
        if not (isinstance(input_size, (tuple, list)) and input_size and all(isinstance(s, int) and s > 0 for s in input_size)):
            raise ValueError(f"input_size must be a tuple of positive ints such as (3, 320, 320), got {input_size!r}")
        table = _layer_table(model, tuple(input_size), depth, anatomy)
    return Overview(type(model).__name__, anatomy.name, components(model), _tree(model, depth), total, trainable, table, depth)


def _layer_table(model: nn.Module, input_size: tuple[int, ...], depth: int, anatomy: Anatomy) -> str:
    import torchinfo

    from surgery._state import preserved

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    with preserved(model):
        if anatomy.takes_targets:  # a list of images, through a resizing transform
            side = input_size[-2:]
            model.eval()
            transform: Any = model._modules.get("transform")
            if transform is not None and hasattr(transform, "min_size"):
                transform.min_size = (min(side),)
                transform.max_size = max(side)
            images = [torch.rand(*input_size[-3:], device=device)]
            stats = torchinfo.summary(model, input_data=[images], depth=depth, device=device, verbose=0, mode="eval")
        else:
            stats = torchinfo.summary(model, input_size=input_size, depth=depth, device=device, verbose=0)
    return str(stats)
