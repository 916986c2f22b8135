"""The class-dependent layers of each detection family, and how to resize them.

:func:`surgery.set_num_classes` (in :mod:`surgery.edit`) wraps :func:`resize_classes` in a
checked, all-or-nothing transaction. This module only knows where the class-dependent
layers are, how torchvision lays their outputs out and initialises them, and how to copy the
rows of kept classes into a freshly built layer.

Output layout of a class-dependent layer: ``anchors × classes × per_class`` outputs, anchor
first. ``RetinaNetClassificationHead.forward`` views ``cls_logits`` as ``(N, -1, num_classes, H, W)``,
so channel ``a * num_classes + k`` is class ``k`` of anchor ``a``; ``FastRCNNPredictor.bbox_pred``
gives class ``k`` the four rows ``4k .. 4k + 3``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetClassificationHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

from surgery import paths
from surgery._errors import PathError
from surgery.findings import Report

__all__ = ["ClassChange", "KeepSpec", "resize_classes", "class_slots"]

#: ``{new_index: old_index}``, or a sequence whose item ``i`` is the old index new class ``i`` takes.
KeepSpec = Mapping[int, int] | Sequence[int]

#: torchvision's default ``prior_probability`` of RetinaNet and FCOS classification heads.
_PRIOR = 0.01


_Layer = nn.Linear | nn.Conv2d


def _linear_default(layer: _Layer) -> None:
    """``FastRCNNPredictor`` keeps ``nn.Linear``'s own initialisation: nothing to add."""


def _mask_logits_init(layer: _Layer) -> None:
    # MaskRCNNPredictor: kaiming_normal_(fan_out, relu) on weights; its bias line is commented
    # out in torchvision, so the bias keeps nn.Conv2d's default initialisation.
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")


def _focal_init(layer: _Layer) -> None:
    # RetinaNetClassificationHead / FCOSClassificationHead: N(0, 0.01) weights, bias -log((1 - p) / p).
    nn.init.normal_(layer.weight, std=0.01)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, -math.log((1 - _PRIOR) / _PRIOR))


def _xavier_init(layer: _Layer) -> None:
    # SSDClassificationHead (torchvision's ssd._xavier_init)
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, 0.0)


def _ssdlite_init(layer: _Layer) -> None:
    # SSDLiteClassificationHead (torchvision's ssdlite._normal_init)
    nn.init.normal_(layer.weight, mean=0.0, std=0.03)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, 0.0)


@dataclass(frozen=True)
class _ClassLayer:
    """One layer whose outputs are ``anchors × classes × per_class``.

    Attributes:
        path: Dotted path of the layer (an ``nn.Linear`` or ``nn.Conv2d``).
        slot: The slot it belongs to (what ``check`` is scoped to).
        anchors: Anchor groups in its output (1 for R-CNN predictors).
        per_class: Outputs per class and anchor (4 for ``bbox_pred``, else 1).
        old_classes: Classes it predicts now.
        init: Initialises a freshly built layer the way torchvision does.
        init_name: What ``init`` does, for messages.
    """

    path: str
    slot: str
    anchors: int
    per_class: int
    old_classes: int
    init: Callable[[_Layer], None]
    init_name: str


@dataclass(frozen=True)
class _AttrUpdate:
    """An attribute that stores the class count (``num_classes``, ``num_columns``)."""

    path: str
    name: str


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features}, {layer.out_features})"
    if isinstance(layer, nn.Conv2d):
        return f"Conv2d({layer.in_channels}, {layer.out_channels}, kernel_size={tuple(layer.kernel_size)})"
    return type(layer).__name__


def _int_attr(module: nn.Module, name: str) -> int:
    value = getattr(module, name, None)
    if not _is_index(value):
        raise ValueError(f"{type(module).__name__}.{name} should be an int, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def _need(model: nn.Module, path: str, kinds: tuple[type[nn.Module], ...], what: str) -> nn.Module:
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


def _rcnn_layers(model: nn.Module) -> tuple[list[_ClassLayer], list[_AttrUpdate]]:
    box = "roi_heads.box_predictor"
    predictor = paths.get(model, box)
    for name in ("cls_score", "bbox_pred"):
        if not isinstance(predictor._modules.get(name), nn.Linear):
            raise ValueError(
                f"set_num_classes() rebuilds {box}.cls_score and {box}.bbox_pred (FastRCNNPredictor's layers), but "
                f"{box} is a {type(predictor).__name__} without an nn.Linear {name!r}; replace it yourself with "
                f"surgery.replace(model, {box!r}, FastRCNNPredictor(in_features, num_classes))"
            )
    cls_score = predictor._modules["cls_score"]
    bbox_pred = predictor._modules["bbox_pred"]
    assert isinstance(cls_score, nn.Linear) and isinstance(bbox_pred, nn.Linear)  # checked just above
    classes = int(cls_score.out_features)
    if bbox_pred.out_features != 4 * classes:
        raise ValueError(
            f"{box}.cls_score scores {classes} classes but {box}.bbox_pred predicts {bbox_pred.out_features} box deltas, "
            f"not 4 × {classes}; the predictor is inconsistent, so the rows of a class cannot be located. "
            f"Replace it with FastRCNNPredictor({cls_score.in_features}, {classes}) first"
        )
    layers = [
        _ClassLayer(f"{box}.cls_score", box, 1, 1, classes, _linear_default, "nn.Linear default"),
        _ClassLayer(f"{box}.bbox_pred", box, 1, 4, classes, _linear_default, "nn.Linear default"),
    ]
    mask = "roi_heads.mask_predictor"
    if paths.exists(model, mask):
        logits = _need(model, f"{mask}.mask_fcn_logits", (nn.Conv2d,), "MaskRCNNPredictor's 1×1 class conv")
        layers.append(
            _ClassLayer(f"{mask}.mask_fcn_logits", mask, 1, 1, _int_attr(logits, "out_channels"), _mask_logits_init,
                        "kaiming_normal_(fan_out, relu) weights, nn.Conv2d default bias")
        )
    # keypoint predictors predict keypoints, not classes: nothing to do
    return layers, []


def _dense_layers(model: nn.Module) -> tuple[list[_ClassLayer], list[_AttrUpdate]]:
    slot = "head.classification_head"
    head = _need(model, slot, (RetinaNetClassificationHead, FCOSClassificationHead), "a classification head")
    logits = _need(model, f"{slot}.cls_logits", (nn.Conv2d,), "the class-logits conv")
    anchors, classes = _int_attr(head, "num_anchors"), _int_attr(head, "num_classes")
    out = _int_attr(logits, "out_channels")
    if out != anchors * classes:
        raise ValueError(
            f"{slot}.cls_logits has {out} output channels but {slot} says {anchors} anchors × {classes} classes = "
            f"{anchors * classes}; fix that mismatch (surgery.check reports it) before changing the class count"
        )
    return (
        [_ClassLayer(f"{slot}.cls_logits", slot, anchors, 1, classes, _focal_init,
                     f"normal_(std=0.01) weights, bias -log((1 - {_PRIOR}) / {_PRIOR})")],
        [_AttrUpdate(slot, "num_classes")],
    )


def _ssd_layers(model: nn.Module) -> tuple[list[_ClassLayer], list[_AttrUpdate]]:
    slot = "head.classification_head"
    head = paths.get(model, slot)
    columns = getattr(head, "num_columns", None)
    module_list = head._modules.get("module_list")
    if not isinstance(columns, int) or not isinstance(module_list, nn.ModuleList):
        raise ValueError(
            f"set_num_classes() rebuilds the convs of {slot}.module_list, but {slot} is a {type(head).__name__} "
            "without module_list / num_columns (SSDClassificationHead's layout)"
        )
    lite = isinstance(head, SSDLiteClassificationHead)
    layers = []
    for i in range(len(module_list)):
        path = f"{slot}.module_list.{i}.1" if lite else f"{slot}.module_list.{i}"
        conv = _need(model, path, (nn.Conv2d,), "a class-logits conv")
        out = _int_attr(conv, "out_channels")
        if out % columns:
            raise ValueError(
                f"{path} outputs {out} channels, not a multiple of {slot}.num_columns = {columns}; "
                "fix that mismatch (surgery.check reports it) before changing the class count"
            )
        init, name = (_ssdlite_init, "normal_(std=0.03) weights, zero bias") if lite else (_xavier_init, "xavier_uniform_ weights, zero bias")
        layers.append(_ClassLayer(path, slot, out // columns, 1, columns, init, name))
    return layers, [_AttrUpdate(slot, "num_columns")]


def class_slots(model: nn.Module) -> tuple[list[_ClassLayer], list[_AttrUpdate]]:
    """The class-dependent layers of ``model``'s family and the attributes that store the count.

    Raises:
        ValueError: The family is unknown, or a class-dependent slot holds a module whose layout
            is not torchvision's.
    """
    if isinstance(model, GeneralizedRCNN):
        return _rcnn_layers(model)
    if isinstance(model, (RetinaNet, FCOS)):
        return _dense_layers(model)
    if isinstance(model, SSD):
        return _ssd_layers(model)
    raise ValueError(
        f"set_num_classes() knows the class-dependent layers of Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS and SSD; "
        f"{type(model).__name__} is none of these. Replace its classifier yourself with surgery.replace()"
    )


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalise_keep(keep: KeepSpec | None, num_classes: int, old_classes: int) -> dict[int, int]:
    """Turn ``keep`` into ``{new_index: old_index}`` and validate it.

    ``None`` keeps every class that exists on both sides at its own index
    (``{i: i for i < min(old, new)}``); an empty list or dict keeps nothing.

    Raises:
        TypeError: ``keep`` is not a mapping or sequence of ints.
        ValueError: An index is out of range, or a new index is given twice.
    """
    if keep is None:
        return {i: i for i in range(min(num_classes, old_classes))}
    pairs: list[tuple[Any, Any]]
    if isinstance(keep, Mapping):
        pairs = list(keep.items())
        form = "keep={new_index: old_index}"
    elif isinstance(keep, Sequence) and not isinstance(keep, (str, bytes)):
        if len(keep) > num_classes:
            raise ValueError(
                f"keep lists {len(keep)} old classes but the model will have only num_classes={num_classes}; "
                f"new class i takes old class keep[i], so keep may have at most {num_classes} items"
            )
        pairs = list(enumerate(keep))
        form = "keep=[old_index_of_new_0, old_index_of_new_1, ...]"
    else:
        raise TypeError(
            f"keep must be a dict {{new_index: old_index}} or a list of old indices (new class i takes old class "
            f"keep[i]), got {type(keep).__name__} {keep!r}"
        )
    mapping: dict[int, int] = {}
    for new, old in pairs:
        if not _is_index(new) or not _is_index(old):
            raise TypeError(f"keep indices must be ints, got {new!r}: {old!r} in {form}")
        if not 0 <= new < num_classes:
            raise ValueError(f"keep: new class index {new} is out of range; with num_classes={num_classes} it must be in 0..{num_classes - 1}")
        if not 0 <= old < old_classes:
            raise ValueError(f"keep: old class index {old} (for new class {new}) is out of range; the model has "
                             f"{old_classes} classes, so it must be in 0..{old_classes - 1}")
        if new in mapping:
            raise ValueError(f"keep names new class {new} twice (from old classes {mapping[new]} and {old}); each new index may be filled once")
        mapping[new] = old
    return dict(sorted(mapping.items()))


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
        return {
            "old_num_classes": self.old_num_classes,
            "num_classes": self.num_classes,
            "kept": {str(k): v for k, v in self.kept.items()},
            "rebuilt": dict(self.rebuilt),
            "copied": {k: [list(p) for p in v] for k, v in self.copied.items()},
            "initialised": {k: list(v) for k, v in self.initialised.items()},
            "notes": list(self.notes),
            "report": self.report.to_dict() if self.report is not None else None,
        }

    def __str__(self) -> str:
        kept = ", ".join(f"{n}←{o}" for n, o in self.kept.items()) or "none"
        lines = [f"set_num_classes: {self.old_num_classes} → {self.num_classes} classes (kept new←old: {kept})"]
        for path, change in self.rebuilt.items():
            weight = f"{path}.weight"
            n_copied = len(self.copied.get(weight, []))
            n_total = n_copied + len(self.initialised.get(weight, []))
            lines.append(f"  {path}: {change}; {n_copied} of {n_total} output rows copied")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.report is not None:
            lines.append(f"  check: {'ok' if self.report.ok else f'{len(self.report.errors)} error(s)'}")
        return "\n".join(lines)


def _fresh(old: _Layer, out: int, init: Callable[[_Layer], None]) -> _Layer:
    """A layer like ``old`` with ``out`` outputs, on its device and dtype, initialised like torchvision."""
    factory: dict[str, Any] = {"device": old.weight.device, "dtype": old.weight.dtype}
    new: _Layer
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, out, bias=old.bias is not None, **factory)
    else:
        geometry: dict[str, Any] = {"kernel_size": old.kernel_size, "stride": old.stride, "padding": old.padding,
                                    "dilation": old.dilation, "groups": old.groups, "padding_mode": old.padding_mode}
        new = nn.Conv2d(old.in_channels, out, bias=old.bias is not None, **geometry, **factory)
    with torch.no_grad():
        init(new)
    new.train(old.training)
    for name, param in new.named_parameters():
        old_param = old._parameters.get(name)
        if old_param is not None:
            param.requires_grad_(old_param.requires_grad)
    return new


def resize_classes(model: nn.Module, num_classes: int, keep: KeepSpec | None = None) -> tuple[ClassChange, list[str]]:
    """Rebuild every class-dependent layer of ``model`` for ``num_classes`` classes (unchecked).

    Everything is validated before the first change. The caller makes the change atomic.

    Args:
        model: A Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS or SSD model.
        num_classes: The new class count (background included where the family has one).
        keep: Which trained classes to carry over; see :func:`normalise_keep`.

    Returns:
        The record of the change, and the slot paths that changed (to scope the check).

    Raises:
        TypeError: ``num_classes`` or ``keep`` has the wrong type.
        ValueError: A value is out of range, or the model's class layers cannot be rebuilt.
    """
    if not _is_index(num_classes):
        raise TypeError(f"num_classes must be an int >= 1, got {type(num_classes).__name__} {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (background counts as a class in R-CNN models), got {num_classes}")
    layers, attrs = class_slots(model)
    smallest = min(layer.old_classes for layer in layers)
    mapping = normalise_keep(keep, num_classes, smallest)
    change = ClassChange(old_num_classes=layers[0].old_classes, num_classes=num_classes, kept=mapping)
    counts = {layer.path: layer.old_classes for layer in layers}
    if len(set(counts.values())) > 1:
        change.notes.append("the class layers disagreed before the change (" + ", ".join(f"{p}: {c}" for p, c in counts.items())
                            + f"); all now have {num_classes}")
    old_layers: dict[str, _Layer] = {}
    fresh_by_layer: dict[str, _Layer] = {}
    for layer in layers:  # build everything first: nothing in the model changes until all layers exist
        found = paths.get(model, layer.path)
        assert isinstance(found, (nn.Linear, nn.Conv2d))  # class_slots only returns such layers
        old_layers[layer.path] = found
        fresh_by_layer[layer.path] = _fresh(found, layer.anchors * num_classes * layer.per_class, layer.init)
    for layer in layers:
        old = old_layers[layer.path]
        new = fresh_by_layer[layer.path]
        new_rows: list[int] = []
        old_rows: list[int] = []
        for a in range(layer.anchors):
            for new_k, old_k in mapping.items():
                for j in range(layer.per_class):
                    new_rows.append((a * num_classes + new_k) * layer.per_class + j)
                    old_rows.append((a * layer.old_classes + old_k) * layer.per_class + j)
        index_new = torch.tensor(new_rows, dtype=torch.long, device=old.weight.device)
        index_old = torch.tensor(old_rows, dtype=torch.long, device=old.weight.device)
        copied_set = set(new_rows)
        fresh_rows = [r for r in range(layer.anchors * num_classes * layer.per_class) if r not in copied_set]
        for name, param in new.named_parameters():
            old_param = old._parameters[name]
            assert old_param is not None  # same layer type, same parameters
            if new_rows:
                with torch.no_grad():
                    param[index_new] = old_param.detach()[index_old].to(param.dtype)
            full = f"{layer.path}.{name}"
            change.copied[full] = list(zip(new_rows, old_rows, strict=True))
            change.initialised[full] = fresh_rows
        change.rebuilt[layer.path] = f"{_describe(old)} → {_describe(new)}"
        paths.set(model, layer.path, new)
    inits = {layer.init_name for layer in layers}
    change.notes.append("new classes initialised as torchvision does: " + "; ".join(sorted(inits)))
    for attr in attrs:
        owner = paths.get(model, attr.path)
        setattr(owner, attr.name, num_classes)
        change.notes.append(f"{attr.path}.{attr.name} set to {num_classes}")
    return change, sorted({layer.slot for layer in layers})
