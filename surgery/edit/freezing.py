"""``requires_grad`` by glob and by torchvision's ``trainable_backbone_layers`` rule, and a per-component count.

:func:`freeze` and :func:`unfreeze` match ``fnmatch`` globs over dotted module and parameter
paths; :func:`freeze_backbone_layers` applies torchvision's rule to an already built model;
:func:`trainable_summary` counts trainable and frozen parameters per slot of the family.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from surgery import _html, paths
from surgery._errors import PathError
from surgery._util import check_int, require_module
from surgery.anatomy import anatomy_for

__all__ = ["TrainableRow", "TrainableSummary", "freeze", "freeze_backbone_layers", "trainable_summary", "unfreeze"]

_GLOB = re.compile(r"[*?\[]")


def _no_match(model: nn.Module, pattern: str, candidates: list[str]) -> PathError:
    literal = _GLOB.split(pattern, maxsplit=1)[0].rstrip(".")
    suggestions: list[str] = []
    if literal and not _GLOB.search(pattern):
        try:
            paths.get(model, literal)
        except PathError as e:
            suggestions.extend(e.suggestions)
    for s in difflib.get_close_matches(literal or pattern, candidates, n=3, cutoff=0.6):
        if s not in suggestions:
            suggestions.append(s)
    suggestions = suggestions[:3]
    message = f"pattern {pattern!r} matches no module or parameter path of {type(model).__name__}."
    if suggestions:
        message += " Did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
    message += " Patterns are fnmatch globs over dotted paths, e.g. 'backbone.body.layer[12]*' or 'roi_heads.box_head'."
    return PathError(message, path=pattern, segment=literal, suggestions=tuple(suggestions))


def _select(model: nn.Module, patterns: tuple[str, ...], what: str) -> list[tuple[str, nn.Parameter]]:
    """The parameters matched by any pattern (directly or through a matched module), in model order."""
    if not patterns:
        raise ValueError(f"{what}() needs at least one pattern, e.g. {what}(model, 'backbone.body.layer[12]*'); '*' matches everything")
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{what}() patterns must be non-empty strings like 'backbone.body.layer[12]*', got {p!r}")
    named = list(model.named_parameters())
    module_paths = [p for p, _ in model.named_modules() if p]
    chosen: set[str] = set()
    missing: list[str] = []
    for pattern in patterns:
        modules = [m for m in module_paths if fnmatch.fnmatchcase(m, pattern)]
        prefixes = tuple(m + "." for m in modules)
        hits = {name for name, _ in named if fnmatch.fnmatchcase(name, pattern) or name.startswith(prefixes)}
        if not modules and not hits:
            missing.append(pattern)
        chosen |= hits
    if missing:
        raise _no_match(model, missing[0], module_paths + [n for n, _ in named])
    return [(name, p) for name, p in named if name in chosen]


def _set_flags(selected: Iterable[tuple[str, nn.Parameter]], flag: bool) -> list[str]:
    changed = []
    for name, p in selected:
        if p.requires_grad != flag:
            p.requires_grad_(flag)
            changed.append(name)
    return changed


def freeze(model: nn.Module, *patterns: str) -> list[str]:
    """Set ``requires_grad=False`` on every parameter matched by a pattern.

    A pattern is an ``fnmatch`` glob over dotted paths. It matches a parameter directly
    (``"roi_heads.box_predictor.*.bias"``) or through a module path (``"roi_heads.box_head"``
    freezes everything under it). ``*`` also crosses dots.

    Args:
        model: The model.
        *patterns: One or more globs, e.g. ``"backbone.body.layer[12]*"``.

    Returns:
        The paths of the parameters whose flag changed, in model order.

    Raises:
        PathError: A pattern matches nothing (with suggestions); nothing changed.
        ValueError: No pattern was given.
    """
    require_module(model, "freeze()")
    return _set_flags(_select(model, patterns, "freeze"), False)


def unfreeze(model: nn.Module, *patterns: str) -> list[str]:
    """Set ``requires_grad=True`` on every parameter matched by a pattern (see :func:`freeze`).

    Returns:
        The paths of the parameters whose flag changed, in model order.

    Raises:
        PathError: A pattern matches nothing (with suggestions); nothing changed.
        ValueError: No pattern was given.
    """
    require_module(model, "unfreeze()")
    return _set_flags(_select(model, patterns, "unfreeze"), True)


_RESNET_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def _trainable_names(body: nn.Module, body_path: str, trainable_layers: int) -> dict[str, bool]:
    """``{parameter name in body: trainable}`` by torchvision's rule for this backbone."""
    check_int("trainable_layers", trainable_layers)
    children = body._modules
    if all(name in children for name in (*_RESNET_LAYERS, "bn1")):
        # torchvision's _resnet_fpn_extractor
        check_int("trainable_layers for a ResNet backbone (5 trains every layer)", trainable_layers, 0, 5)
        train = list(_RESNET_LAYERS[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
        return {name: any(name.startswith(layer) for layer in train) for name, _ in body.named_parameters()}
    blocks = list(children.values())
    if blocks and any(getattr(b, "_is_cn", False) for b in blocks):
        # torchvision's _mobilenet_extractor: stages start at strided blocks; the first and last block are stages too
        stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        check_int(f"trainable_layers for this MobileNet backbone ({len(stages)} trains every stage)", trainable_layers, 0, len(stages))
        freeze_before = len(blocks) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
        out: dict[str, bool] = {}
        for i, (key, block) in enumerate(children.items()):
            if block is not None:
                for name, _ in block.named_parameters(prefix=key):
                    out[name] = i >= freeze_before
        return out
    raise ValueError(
        f"freeze_backbone_layers() knows torchvision's ResNet and MobileNet bodies; {body_path} is a "
        f"{type(body).__name__} with children {list(children)[:8]}. Use surgery.freeze() with globs instead"
    )


def freeze_backbone_layers(model: nn.Module, trainable_layers: int) -> list[str]:
    """Apply torchvision's ``trainable_backbone_layers`` rule to an already built model.

    ResNet bodies train ``["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]``,
    plus ``bn1`` at 5. MobileNet bodies train the last ``trainable_layers`` stages (stages
    start at strided blocks). Parameters of the body are set both ways, so the result does
    not depend on earlier flags; the FPN and the heads are left alone, as torchvision does.

    Args:
        model: A model with ``backbone.body`` (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS).
        trainable_layers: How many layers, counted from the last, stay trainable.

    Returns:
        The paths of the parameters whose flag changed, in model order.

    Raises:
        ValueError: ``trainable_layers`` is not an int or is out of range for the backbone, or
            the backbone body is neither ResNet nor MobileNet.
    """
    require_module(model, "freeze_backbone_layers()")
    body_path, body = anatomy_for(model).backbone_body(model)
    plan = _trainable_names(body, body_path, trainable_layers)
    changed = []
    for name, p in body.named_parameters():
        flag = plan.get(name, p.requires_grad)
        if p.requires_grad != flag:
            p.requires_grad_(flag)
            changed.append(f"{body_path}.{name}")
    return changed


@dataclass(frozen=True)
class TrainableRow:
    """Trainable and frozen parameters of one component.

    Attributes:
        path: The component's dotted path (a slot of the family, or a top-level child).
        type: Its class name.
        trainable: Trainable parameter elements.
        frozen: Frozen parameter elements.
        trainable_tensors: Trainable parameter tensors.
        frozen_tensors: Frozen parameter tensors.
    """

    path: str
    type: str
    trainable: int
    frozen: int
    trainable_tensors: int
    frozen_tensors: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "trainable": self.trainable, "frozen": self.frozen,
                "trainable_tensors": self.trainable_tensors, "frozen_tensors": self.frozen_tensors}


@dataclass
class TrainableSummary:
    """The result of :func:`trainable_summary`: one row per component that has parameters."""

    model: str
    rows: list[TrainableRow]

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r.frozen for r in self.rows)

    def row(self, path: str) -> TrainableRow:
        """The row of ``path``.

        Raises:
            KeyError: No component has that path.
        """
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(f"no component {path!r} in the summary; components: {[r.path for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "trainable": self.trainable, "frozen": self.frozen, "components": [r.to_dict() for r in self.rows]}

    def _repr_html_(self) -> str:
        return _html.fragment(_html.trainable(self))

    def __repr__(self) -> str:
        return _html.short_repr("TrainableSummary", f"{self.model}: {self.trainable:,} trainable, {self.frozen:,} frozen, {len(self.rows)} components")

    def __str__(self) -> str:
        width = max([len("component"), *(len(r.path) for r in self.rows)])
        lines = [f"{self.model}: {self.trainable:,} trainable, {self.frozen:,} frozen parameters",
                 f"{'component':<{width}}  {'trainable':>12}  {'frozen':>12}  tensors (trainable/frozen)"]
        for r in self.rows:
            lines.append(f"{r.path:<{width}}  {r.trainable:>12,}  {r.frozen:>12,}  {r.trainable_tensors}/{r.frozen_tensors}")
        return "\n".join(lines)


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Trainable and frozen parameter counts per component.

    Components are the family's slots (``backbone.body``, ``rpn.head``, ``roi_heads.box_head``,
    ...); a parameter outside every slot is counted under its top-level child.

    Args:
        model: The model.

    Returns:
        A printable :class:`TrainableSummary` with ``to_dict()``.
    """
    require_module(model, "trainable_summary()")
    slots = [s.path for s in anatomy_for(model).slots(model)]
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        owner = max((s for s in slots if name.startswith(s + ".")), key=len, default=None)
        if owner is None:
            owner = name.split(".", 1)[0] if "." in name else "(model)"
        row = counts.setdefault(owner, [0, 0, 0, 0])
        if p.requires_grad:
            row[0] += p.numel()
            row[2] += 1
        else:
            row[1] += p.numel()
            row[3] += 1
    order = {s: i for i, s in enumerate(slots)}
    rows = []
    for path in sorted(counts, key=lambda s: (order.get(s, len(order)), s)):
        module_type = type(paths.get(model, path)).__name__ if path != "(model)" else type(model).__name__
        rows.append(TrainableRow(path, module_type, *counts[path]))
    return TrainableSummary(type(model).__name__, rows)
