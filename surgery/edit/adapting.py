"""Fit a new module into its slot: the results of ``replace``/``adapt``, device placement, adapt rules.

:func:`surgery.replace` and :func:`surgery.adapt` (in :mod:`surgery.edit.transaction`) run
these steps inside a checked transaction. Which slot consumes which, and how a consumer is
rebuilt for a new width, comes from the anatomy (:meth:`Anatomy.adapt_rule`,
:meth:`Anatomy.rebuild_consumer`); this module reads the width a producer emits, moves new
modules to their slot's device and dtype, and copies the weights that still fit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgery import _html, paths
from surgery._errors import PathError
from surgery._state import structure_key
from surgery.anatomy import Anatomy
from surgery.anatomy._backbone import ProbedMaps, backbone_features, map_strides, probe_maps
from surgery.anatomy._base import PROBE_BATCH, AdaptRule, Context, Features, is_stock
from surgery.anatomy._feed import pool_size
from surgery.findings import Report
from surgery.signature import meta_like, meta_probe, output_signature

__all__ = ["Adaptation", "EditResult"]

# --------------------------------------------------------------------------- results


@dataclass(kw_only=True)
class Adaptation:
    """What :func:`adapt` rebuilt so that a consumer fits its producer.

    Attributes:
        rebuilt: ``{consumer path: "old → new"}``, e.g.
            ``{"roi_heads.mask_predictor": "MaskRCNNPredictor(256, 256, 91) → MaskRCNNPredictor(1024, 256, 91)"}``.
        copied: Parameter paths whose values were copied from the old consumer (their shapes fit).
        initialised: Parameter paths freshly initialised (their shapes changed).
        notes: Anything worth knowing (device moves, nothing to rebuild, ...).
        report: The check that ran at the end (None with ``check=False`` or inside ``edit()``).
    """

    rebuilt: dict[str, str] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: Report | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rebuilt": dict(self.rebuilt),
            "copied": list(self.copied),
            "initialised": list(self.initialised),
            "notes": list(self.notes),
            "report": self.report.to_dict() if self.report is not None else None,
        }

    def _lines(self) -> list[str]:
        lines = [f"  rebuilt {path}: {change}" for path, change in self.rebuilt.items()]
        if self.copied:
            lines.append(f"  copied ({len(self.copied)}): " + ", ".join(self.copied))
        if self.initialised:
            lines.append(f"  initialised ({len(self.initialised)}): " + ", ".join(self.initialised))
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.report is not None:
            lines.append(f"  check: {'ok' if self.report.ok else f'{len(self.report.errors)} error(s)'}")
        return lines

    def _summary(self) -> str:
        rebuilt = ", ".join(self.rebuilt) or "nothing"
        check = "" if self.report is None else f"; check {'ok' if self.report.ok else f'{len(self.report.errors)} error(s)'}"
        return f"rebuilt {rebuilt}; {len(self.copied)} copied, {len(self.initialised)} initialised{check}"

    def _repr_html_(self) -> str:
        return _html.fragment(_html.adaptation(self, "adapt"))

    def __repr__(self) -> str:
        return _html.short_repr("Adaptation", self._summary())

    def __str__(self) -> str:
        return "\n".join(["adapt:", *self._lines()])


@dataclass(kw_only=True)
class EditResult(Adaptation):
    """What ``replace(..., adapt=True)`` did (``replace`` without ``adapt`` returns ``old`` alone).

    Attributes:
        path: The slot replaced.
        old: The module that was there (None for an empty slot).
        new: The module put there (moved to the old module's device and dtype).
    """

    path: str
    old: nn.Module | None
    new: nn.Module

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "old": type(self.old).__name__ if self.old is not None else None,
                "new": type(self.new).__name__, **super().to_dict()}

    def _head(self) -> str:
        old = type(self.old).__name__ if self.old is not None else "empty slot"
        return f"replace {self.path}: {old} → {type(self.new).__name__}"

    def _repr_html_(self) -> str:
        return _html.fragment(_html.adaptation(self, self._head()))

    def __repr__(self) -> str:
        return _html.short_repr("EditResult", f"{self._head()}; {self._summary()}")

    def __str__(self) -> str:
        return "\n".join([self._head(), *self._lines()])


# --------------------------------------------------------------------------- helpers


def _slot_content(model: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path``; None for an existing empty slot; PathError otherwise."""
    try:
        return paths.get(model, path)
    except PathError:
        if paths.is_empty_slot(model, path):
            return None
        raise


def _place(module: nn.Module | None) -> tuple[torch.device, torch.dtype | None] | None:
    """Device and floating dtype of a module's tensors, or None when it has none."""
    if module is None:
        return None
    first: torch.Tensor | None = None
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
        first = first if first is not None else t
    return (first.device, None) if first is not None else None


def _slot_place(model: nn.Module, path: str, old: nn.Module | None) -> tuple[torch.device, torch.dtype | None] | None:
    place = _place(old)
    if place is None:
        parent_path, _ = paths.parent_of(path)
        place = _place(paths.get(model, parent_path)) or _place(model)
    return place


def _tensor_places(module: nn.Module) -> list[str]:
    return sorted({f"{t.device}/{str(t.dtype).removeprefix('torch.')}" for t in itertools.chain(module.parameters(), module.buffers())})


def _move(new: nn.Module, place: tuple[torch.device, torch.dtype | None] | None, path: str) -> str | None:
    """Move ``new`` to ``place``; return a note when anything moved."""
    if place is None:
        return None
    device, dtype = place
    tensors = list(itertools.chain(new.parameters(), new.buffers()))
    wrong_device = any(t.device != device for t in tensors)
    wrong_dtype = dtype is not None and any(t.is_floating_point() and t.dtype != dtype for t in tensors)
    if not (wrong_device or wrong_dtype):
        return None
    before = ", ".join(_tensor_places(new))
    new.to(device=device, dtype=dtype if wrong_dtype else None)
    after = ", ".join(_tensor_places(new))
    return f"moved the new {type(new).__name__} from {before} to {after} to match {path}"


# --------------------------------------------------------------------------- adapt rules


def _produced_width(model: nn.Module, rule: AdaptRule) -> int | None:
    """Channels/features the head emits: read statically for torch/torchvision modules, probed otherwise."""
    head = paths.get(model, rule.producer)
    static = output_signature(head)
    static_width = static.size if static is not None else None
    if is_stock(head) and static_width is not None:
        return static_width
    feats = backbone_features(Context(model), "backbone")
    width = feats.common_channels() if isinstance(feats, Features) else None
    size = pool_size(getattr(_slot_content(model, rule.pool), "output_size", None)) if rule.pool else None
    if width is not None and size is not None:
        probe = meta_probe(head, meta_like((PROBE_BATCH, width, *size)))
        if probe.ok and isinstance(probe.output, torch.Tensor) and probe.output.dim() >= 2:
            return int(probe.output.shape[1])
    return static_width


def _apply_rule(model: nn.Module, anatomy: Anatomy, rule: AdaptRule) -> Adaptation:
    result = Adaptation()
    absent = [p for p in (rule.producer, rule.consumer) if not paths.exists(model, p)]
    if absent:
        result.notes.append(f"{' and '.join(absent)} {'is' if len(absent) == 1 else 'are'} empty; nothing to adapt")
        return result
    predictor = paths.get(model, rule.consumer)
    width = _produced_width(model, rule)
    if width is None:
        result.notes.append(f"could not read what {rule.producer} ({type(paths.get(model, rule.producer)).__name__}) produces; "
                            f"{rule.consumer} left as it is")
        return result
    if anatomy.consumed_width(predictor) == width:
        result.notes.append(f"{rule.consumer} already takes {width} from {rule.producer}; nothing rebuilt")
        return result
    built = anatomy.rebuild_consumer(predictor, width)
    if built is None:
        result.notes.append(anatomy.rebuild_note(rule.consumer, predictor, width))
        return result
    new, old_text, new_text = built
    _install(model, rule.consumer, predictor, new, result)
    result.rebuilt[rule.consumer] = f"{old_text} → {new_text}"
    return result


def _install(model: nn.Module, path: str, old_module: nn.Module, new: nn.Module, result: Adaptation) -> None:
    """Put ``new`` at ``path`` in place of ``old_module``: same device, dtype and train mode;
    tensors whose name and shape fit copied (and listed in ``result.copied``), the others kept
    as built (``result.initialised``); ``requires_grad`` kept per parameter name."""
    place = _place(old_module)
    if place is not None:
        new.to(device=place[0], dtype=place[1])
    new.train(old_module.training)
    old_tensors: dict[str, torch.Tensor] = dict(itertools.chain(old_module.named_parameters(), old_module.named_buffers()))
    with torch.no_grad():
        for name, tensor in itertools.chain(new.named_parameters(), new.named_buffers()):
            full = f"{path}.{name}"
            old = old_tensors.get(name)
            if old is not None and old.shape == tensor.shape:
                tensor.copy_(old)
                result.copied.append(full)
            else:
                result.initialised.append(full)
            if isinstance(tensor, nn.Parameter) and isinstance(old, nn.Parameter):
                tensor.requires_grad_(old.requires_grad)
    paths.set(model, path, new)


def _apply_backbone(model: nn.Module, anatomy: Anatomy, rule: AdaptRule, seen: ProbedMaps | None = None) -> Adaptation:
    """Rebuild what follows the backbone at ``rule.producer`` so that it fits the maps the backbone
    produces (read with a meta probe); the family decides what (:meth:`Anatomy.backbone_plan`).
    ``seen`` gets the maps, with the backbone and its :func:`structure_key`, for the check that
    ends the edit."""
    result = Adaptation()
    backbone = paths.get(model, rule.producer)
    feats = probe_maps(backbone, f"the backbone at {rule.producer!r}", anatomy.backbone_probe_size(model))
    if seen is not None:
        seen[rule.producer] = (backbone, structure_key(backbone), feats)
    strides = map_strides(feats, anatomy.backbone_probe_size(model))
    maps = ", ".join(f"{n} ({feats.channels[n]} ch, stride {strides.get(n, '?')})" for n in feats.names)
    result.notes.append(f"{rule.producer} produces {len(feats.names)} feature map(s): {maps}")
    plan = anatomy.backbone_plan(model, rule.producer, feats)
    for path, name, value in plan.attributes:
        module = paths.get(model, path)
        before = getattr(module, name, None)
        setattr(module, name, value)
        result.rebuilt[paths.join(path, name)] = f"{before if before is not None else 'unset'} → {value}"
    for rebuild in plan.rebuilds:
        _install(model, rebuild.path, paths.get(model, rebuild.path), rebuild.module, result)
        result.rebuilt[rebuild.path] = f"{rebuild.old} → {rebuild.new}"
    result.notes.extend(plan.notes)
    if not plan.attributes and not plan.rebuilds:
        result.notes.append(f"everything after {rule.producer} already fits its feature maps; nothing rebuilt")
    return result
