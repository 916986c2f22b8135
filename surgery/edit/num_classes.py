"""Resizing class-dependent layers: keep the rows of kept classes, initialise the rest.

:func:`surgery.set_num_classes` (in :mod:`surgery.edit.transaction`) wraps :func:`resize_classes` in a
checked, all-or-nothing transaction. Where the class-dependent layers are and how their
family initialises them comes from the anatomy (:meth:`Anatomy.class_layers`); this module
only copies the rows of kept classes into freshly built layers.

Output layout of a class-dependent layer: ``anchors × classes × per_class`` outputs, anchor
first. ``RetinaNetClassificationHead.forward`` views ``cls_logits`` as ``(N, -1, num_classes, H, W)``,
so channel ``a * num_classes + k`` is class ``k`` of anchor ``a``; ``FastRCNNPredictor.bbox_pred``
gives class ``k`` the four rows ``4k .. 4k + 3``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgery import _html, paths
from surgery._util import check_int
from surgery.anatomy import Anatomy
from surgery.anatomy._base import AttrUpdate, ClassLayer, RowLayer
from surgery.findings import Report

__all__ = ["ClassChange", "KeepSpec", "KeypointChange", "normalise_keep", "resize_classes", "resize_keypoints"]

#: ``{new_index: old_index}``, or a sequence whose item ``i`` is the old index new class ``i`` takes.
KeepSpec = Mapping[int, int] | Sequence[int]

_Layer = RowLayer


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features}, {layer.out_features})"
    if isinstance(layer, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
        return f"{type(layer).__name__}({layer.in_channels}, {layer.out_channels}, kernel_size={tuple(layer.kernel_size)})"
    return type(layer).__name__


def normalise_keep(keep: KeepSpec | None, num_classes: int, old_classes: int, *, noun: str = "class") -> dict[int, int]:
    """Turn ``keep`` into ``{new_index: old_index}`` and validate it.

    ``None`` keeps every class that exists on both sides at its own index
    (``{i: i for i < min(old, new)}``); an empty list or dict keeps nothing.

    Args:
        keep: What the caller passed.
        num_classes: The new count.
        old_classes: The count the model has now.
        noun: What is counted in messages: ``"class"`` (``num_classes``) or ``"keypoint"``
            (``num_keypoints``).

    Raises:
        TypeError: ``keep`` is not a mapping or a sequence.
        ValueError: An index is not an int or is out of range, or a new index is given twice.
    """
    if keep is None:
        return {i: i for i in range(min(num_classes, old_classes))}
    plural = "classes" if noun == "class" else f"{noun}s"
    count = f"num_{plural}"
    pairs: list[tuple[Any, Any]]
    if isinstance(keep, Mapping):
        pairs = list(keep.items())
    elif isinstance(keep, Sequence) and not isinstance(keep, (str, bytes)):
        if len(keep) > num_classes:
            raise ValueError(
                f"keep lists {len(keep)} old {plural} but the model will have only {count}={num_classes}; "
                f"new {noun} i takes old {noun} keep[i], so keep may have at most {num_classes} items"
            )
        pairs = list(enumerate(keep))
    else:
        raise TypeError(
            f"keep must be a dict {{new_index: old_index}} or a list of old indices (new {noun} i takes old {noun} "
            f"keep[i]), got {type(keep).__name__} {keep!r}"
        )
    mapping: dict[int, int] = {}
    for new, old in pairs:
        new = check_int(f"keep: new {noun} index ({count}={num_classes})", new, 0, num_classes - 1)
        old = check_int(f"keep: old {noun} index for new {noun} {new} (the model has {old_classes} {plural})", old, 0, old_classes - 1)
        if new in mapping:
            raise ValueError(f"keep names new {noun} {new} twice (from old {plural} {mapping[new]} and {old}); each new index may be filled once")
        mapping[new] = old
    return dict(sorted(mapping.items()))


def _detail_lines(header: str, change: ClassChange | KeypointChange) -> str:
    """The text of a change record: its header, one line per rebuilt layer, notes and the check."""
    lines = [header]
    for path, rebuilt in change.rebuilt.items():
        weight = f"{path}.weight"
        n_copied = len(change.copied.get(weight, []))
        n_total = n_copied + len(change.initialised.get(weight, []))
        lines.append(f"  {path}: {rebuilt}; {n_copied} of {n_total} output rows copied")
    lines.extend(f"  note: {n}" for n in change.notes)
    if change.report is not None:
        lines.append(f"  check: {'ok' if change.report.ok else f'{len(change.report.errors)} error(s)'}")
    return "\n".join(lines)


def _record(change: ClassChange | KeypointChange) -> dict[str, Any]:
    return {
        "kept": {str(k): v for k, v in change.kept.items()},
        "rebuilt": dict(change.rebuilt),
        "copied": {k: [list(p) for p in v] for k, v in change.copied.items()},
        "initialised": {k: list(v) for k, v in change.initialised.items()},
        "notes": list(change.notes),
        "report": change.report.to_dict() if change.report is not None else None,
    }


def _kept_text(kept: dict[int, int]) -> str:
    return ", ".join(f"{n}←{o}" for n, o in kept.items()) or "none"


@dataclass
class ClassChange:
    """What :func:`surgery.set_num_classes` did.

    Attributes:
        old_num_classes: Classes before (read from the first class-dependent layer).
        num_classes: Classes after.
        kept: ``{new_index: old_index}`` of the classes whose trained weights were copied.
        rebuilt: ``{layer path: "old → new"}`` for every layer rebuilt.
        copied: ``{parameter path: [(new_row, old_row), ...]}``: the output rows/channels copied.
        initialised: ``{parameter path: [new_row, ...]}``: the rows/channels freshly initialised.
        notes: Anything worth knowing (how new rows were initialised, attributes updated).
        report: The check that ran after the change (None with ``check=False``).
    """

    old_num_classes: int
    num_classes: int
    kept: dict[int, int]
    rebuilt: dict[str, str] = field(default_factory=dict)
    copied: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    initialised: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: Report | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"old_num_classes": self.old_num_classes, "num_classes": self.num_classes, **_record(self)}

    def _repr_html_(self) -> str:
        return _html.fragment(_html.class_change(self))

    def __repr__(self) -> str:
        check = "" if self.report is None else f", check {'ok' if self.report.ok else f'{len(self.report.errors)} error(s)'}"
        return _html.short_repr("ClassChange", f"{self.old_num_classes} → {self.num_classes} classes, {len(self.kept)} kept, "
                                               f"{len(self.rebuilt)} layer(s) rebuilt{check}")

    def __str__(self) -> str:
        return _detail_lines(f"set_num_classes: {self.old_num_classes} → {self.num_classes} classes "
                             f"(kept new←old: {_kept_text(self.kept)})", self)


@dataclass
class KeypointChange:
    """What :func:`surgery.set_num_keypoints` did.

    Attributes:
        old_num_keypoints: Keypoints before (read from the keypoint predictor).
        num_keypoints: Keypoints after.
        kept: ``{new_index: old_index}`` of the keypoints whose trained weights were copied.
        rebuilt: ``{layer path: "old → new"}`` for every layer rebuilt.
        copied: ``{parameter path: [(new_channel, old_channel), ...]}``: the output channels copied.
        initialised: ``{parameter path: [new_channel, ...]}``: the channels freshly initialised.
        notes: Anything worth knowing (how new channels were initialised, attributes updated).
        report: The check that ran after the change (None with ``check=False``).
    """

    old_num_keypoints: int
    num_keypoints: int
    kept: dict[int, int]
    rebuilt: dict[str, str] = field(default_factory=dict)
    copied: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    initialised: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: Report | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"old_num_keypoints": self.old_num_keypoints, "num_keypoints": self.num_keypoints, **_record(self)}

    def __str__(self) -> str:
        return _detail_lines(f"set_num_keypoints: {self.old_num_keypoints} → {self.num_keypoints} keypoints "
                             f"(kept new←old: {_kept_text(self.kept)})", self)


def _fresh(old: _Layer, out: int, init: Callable[[_Layer], None]) -> _Layer:
    """A layer like ``old`` with ``out`` outputs, on its device and dtype, initialised like torchvision."""
    factory: dict[str, Any] = {"device": old.weight.device, "dtype": old.weight.dtype}
    new: _Layer
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, out, bias=old.bias is not None, **factory)
    else:
        geometry: dict[str, Any] = {"kernel_size": old.kernel_size, "stride": old.stride, "padding": old.padding,
                                    "dilation": old.dilation, "groups": old.groups, "padding_mode": old.padding_mode}
        if isinstance(old, nn.ConvTranspose2d):
            geometry["output_padding"] = old.output_padding
        new = type(old)(old.in_channels, out, bias=old.bias is not None, **geometry, **factory)
    with torch.no_grad():
        init(new)
    new.train(old.training)
    for name, param in new.named_parameters():
        old_param = old._parameters.get(name)
        if old_param is not None:
            param.requires_grad_(old_param.requires_grad)
    return new


def _out_dim(layer: nn.Module, name: str) -> int:
    """The dimension of parameter ``name`` that indexes output channels: 1 for a transposed
    conv's weight (``in × out × kh × kw``), else 0."""
    return 1 if isinstance(layer, nn.ConvTranspose2d) and name == "weight" else 0


def _resize_rows(
    model: nn.Module, layers: list[ClassLayer], attrs: list[AttrUpdate], count: int, mapping: dict[int, int],
    change: ClassChange | KeypointChange, noun: str,
) -> None:
    """Rebuild ``layers`` for ``count`` classes (or keypoints), copying the rows ``mapping`` keeps.

    Every new layer is built before the first one is put into the model; ``change`` gets the
    rows copied and initialised, the layers rebuilt and the notes.
    """
    plural = "classes" if noun == "class" else f"{noun}s"
    counts = {layer.path: layer.old_classes for layer in layers}
    if len(set(counts.values())) > 1:
        change.notes.append(f"the {noun} layers disagreed before the change (" + ", ".join(f"{p}: {c}" for p, c in counts.items())
                            + f"); all now have {count}")
    old_layers: dict[str, _Layer] = {}
    fresh_by_layer: dict[str, _Layer] = {}
    for layer in layers:  # build everything first: nothing in the model changes until all layers exist
        found = paths.get(model, layer.path)
        assert isinstance(found, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d))  # the anatomy only returns such layers
        old_layers[layer.path] = found
        fresh_by_layer[layer.path] = _fresh(found, layer.anchors * count * layer.per_class, layer.init)
    for layer in layers:
        old = old_layers[layer.path]
        new = fresh_by_layer[layer.path]
        new_rows: list[int] = []
        old_rows: list[int] = []
        for a in range(layer.anchors):
            for new_k, old_k in mapping.items():
                for j in range(layer.per_class):
                    new_rows.append((a * count + new_k) * layer.per_class + j)
                    old_rows.append((a * layer.old_classes + old_k) * layer.per_class + j)
        index_new = torch.tensor(new_rows, dtype=torch.long, device=old.weight.device)
        index_old = torch.tensor(old_rows, dtype=torch.long, device=old.weight.device)
        copied_set = set(new_rows)
        fresh_rows = [r for r in range(layer.anchors * count * layer.per_class) if r not in copied_set]
        for name, param in new.named_parameters():
            old_param = old._parameters[name]
            assert old_param is not None  # same layer type, same parameters
            if new_rows:
                dim = _out_dim(new, name)
                with torch.no_grad():
                    param.index_copy_(dim, index_new, old_param.detach().index_select(dim, index_old).to(param.dtype))
            full = f"{layer.path}.{name}"
            change.copied[full] = list(zip(new_rows, old_rows, strict=True))
            change.initialised[full] = fresh_rows
        change.rebuilt[layer.path] = f"{_describe(old)} → {_describe(new)}"
        paths.set(model, layer.path, new)
    inits = {layer.init_name for layer in layers}
    change.notes.append(f"new {plural} initialised as torchvision does: " + "; ".join(sorted(inits)))
    for attr in attrs:
        owner = paths.get(model, attr.path)
        setattr(owner, attr.name, count)
        change.notes.append(f"{attr.path}.{attr.name} set to {count}")


def resize_classes(model: nn.Module, anatomy: Anatomy, num_classes: int, keep: KeepSpec | None = None) -> tuple[ClassChange, list[str]]:
    """Rebuild every class-dependent layer of ``model`` for ``num_classes`` classes (unchecked).

    Everything is validated before the first change. The caller makes the change atomic.

    Args:
        model: A model whose family knows its class-dependent layers.
        anatomy: The model's anatomy.
        num_classes: The new class count (background included where the family has one).
        keep: Which trained classes to carry over; see :func:`normalise_keep`.

    Returns:
        The record of the change, and the slot paths that changed (to scope the check).

    Raises:
        TypeError: ``keep`` is not a mapping or a sequence.
        ValueError: ``num_classes`` or an index in ``keep`` is not an int or is out of range,
            or the model's class layers cannot be rebuilt.
    """
    check_int("num_classes", num_classes, 1)
    layers, attrs = anatomy.class_layers(model)
    smallest = min(layer.old_classes for layer in layers)
    mapping = normalise_keep(keep, num_classes, smallest)
    change = ClassChange(old_num_classes=layers[0].old_classes, num_classes=num_classes, kept=mapping)
    _resize_rows(model, layers, attrs, num_classes, mapping, change, "class")
    return change, sorted({layer.slot for layer in layers})


def resize_keypoints(model: nn.Module, anatomy: Anatomy, num_keypoints: int, keep: KeepSpec | None = None) -> tuple[KeypointChange, list[str]]:
    """Rebuild every keypoint-dependent layer of ``model`` for ``num_keypoints`` keypoints (unchecked).

    Like :func:`resize_classes`, with the layers from :meth:`Anatomy.keypoint_layers`.

    Args:
        model: A model that predicts keypoints.
        anatomy: The model's anatomy.
        num_keypoints: The new keypoint count.
        keep: Which trained keypoints to carry over; see :func:`normalise_keep`.

    Returns:
        The record of the change, and the slot paths that changed (to scope the check).

    Raises:
        TypeError: ``keep`` is not a mapping or a sequence.
        ValueError: ``num_keypoints`` or an index in ``keep`` is not an int or is out of range,
            the model predicts no keypoints, or its keypoint layers cannot be rebuilt.
    """
    check_int("num_keypoints", num_keypoints, 1)
    layers, attrs = anatomy.keypoint_layers(model)
    smallest = min(layer.old_classes for layer in layers)
    mapping = normalise_keep(keep, num_keypoints, smallest, noun="keypoint")
    change = KeypointChange(old_num_keypoints=layers[0].old_classes, num_keypoints=num_keypoints, kept=mapping)
    _resize_rows(model, layers, attrs, num_keypoints, mapping, change, "keypoint")
    return change, sorted({layer.slot for layer in layers})
