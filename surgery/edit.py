"""Change a model by dotted path without breaking it.

* :func:`replace` swaps the module in one slot, checks the contracts touching it, and puts
  the old module back when the swap broke something.
* :func:`adapt` (or ``replace(..., adapt=True)``) rebuilds the consumer of a slot to fit
  what the slot now produces, keeping every other hyperparameter and the weights that fit.
* :func:`edit` groups several changes into one transaction, checked once at the end.
* :func:`set_num_classes` rebuilds every class-dependent layer, keeping the trained rows of
  the classes that stay.
* :func:`freeze`, :func:`unfreeze`, :func:`freeze_backbone_layers` and
  :func:`trainable_summary` handle ``requires_grad`` by glob and by torchvision's rule.

All or nothing: a change that introduces an error-severity finding, or raises, is undone. The
model then has the same module objects, the same parameter objects with bit-identical values,
the same attributes and the same ``requires_grad`` flags as before.

Example:
    >>> import surgery
    >>> from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    >>> result = surgery.replace(model, "roi_heads.mask_head",
    ...                          MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1), adapt=True)
    >>> result.rebuilt
    {'roi_heads.mask_predictor': 'MaskRCNNPredictor(256, 256, 91) → MaskRCNNPredictor(1024, 256, 91)'}
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, overload

import torch
from torch import nn

from surgery import paths
from surgery._classes import ClassChange, KeepSpec, resize_classes
from surgery._errors import IncompatibleError, PathError
from surgery._util import require_module
from surgery.anatomy import Anatomy, anatomy_for
from surgery.anatomy._backbone import backbone_features
from surgery.anatomy._base import PROBE_BATCH, AdaptRule, Context, Features, is_stock
from surgery.anatomy._feed import pool_size
from surgery.check import check as _run_check
from surgery.findings import Finding, Report
from surgery.signature import meta_like, meta_probe, output_signature

__all__ = [
    "Adaptation",
    "ClassChange",
    "EditResult",
    "TrainableRow",
    "TrainableSummary",
    "Transaction",
    "adapt",
    "edit",
    "freeze",
    "freeze_backbone_layers",
    "replace",
    "set_num_classes",
    "trainable_summary",
    "unfreeze",
]

_log = logging.getLogger("surgery")


# --------------------------------------------------------------------------- snapshots


def _copy_content(value: dict[Any, Any] | list[Any] | set[Any]) -> Any:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        return list(value)
    return set(value)


def _refill(target: dict[Any, Any] | list[Any] | set[Any], content: Any) -> None:
    if isinstance(target, dict):
        target.clear()
        target.update(content)
    elif isinstance(target, list):
        target[:] = content
    else:
        target.clear()
        target.update(content)


class _TreeState:
    """Every module's attributes and every parameter's flags, restorable in place.

    For each module: its ``__dict__`` entries, and one level into every dict, list or set
    attribute (``_modules``, ``_parameters``, ``_buffers``, hook dicts, ...), so the same
    container objects get their old content back. For each parameter: ``requires_grad`` and
    ``.grad``. Tensor values are not copied (no memory is doubled); the ``_version`` counters
    show whether anything wrote into them in place.
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self._modules: dict[int, tuple[nn.Module, dict[str, Any], dict[str, Any]]] = {}
        self._params: dict[int, tuple[nn.Parameter, bool, torch.Tensor | None]] = {}
        self._versions: dict[int, tuple[torch.Tensor, int]] = {}
        for module in modules:
            if id(module) in self._modules:
                continue
            attrs = dict(module.__dict__)
            contents = {k: _copy_content(v) for k, v in attrs.items() if isinstance(v, (dict, list, set))}
            self._modules[id(module)] = (module, attrs, contents)
            for p in module._parameters.values():
                if p is not None and id(p) not in self._params:
                    self._params[id(p)] = (p, p.requires_grad, p.grad)
                    self._versions[id(p)] = (p, p._version)
            for b in module._buffers.values():
                if b is not None:
                    self._versions[id(b)] = (b, b._version)

    def modules(self) -> list[nn.Module]:
        return [m for m, _, _ in self._modules.values()]

    def restore(self) -> None:
        for module, attrs, contents in self._modules.values():
            current = module.__dict__
            for key in [k for k in current if k not in attrs]:
                del current[key]
            current.update(attrs)
            for key, content in contents.items():
                _refill(attrs[key], content)
        for p, flag, grad in self._params.values():
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad

    def written_in_place(self) -> int:
        """How many of the saved parameters and buffers were modified in place since."""
        return sum(1 for t, version in self._versions.values() if t._version != version)


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

    def __str__(self) -> str:
        old = type(self.old).__name__ if self.old is not None else "empty slot"
        return "\n".join([f"replace {self.path}: {old} → {type(self.new).__name__}", *self._lines()])


# --------------------------------------------------------------------------- helpers


def _slot_content(model: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path``; None for an existing empty slot; PathError otherwise."""
    try:
        return paths.get(model, path)
    except PathError:
        parent_path, name = paths.parent_of(path)
        if parent_path == "" or paths.exists(model, parent_path):
            if paths._is_empty_slot(paths.get(model, parent_path), name):
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
    place = _place(predictor)
    if place is not None:
        new.to(device=place[0], dtype=place[1])
    new.train(predictor.training)
    old_tensors: dict[str, torch.Tensor] = dict(itertools.chain(predictor.named_parameters(), predictor.named_buffers()))
    with torch.no_grad():
        for name, tensor in itertools.chain(new.named_parameters(), new.named_buffers()):
            full = f"{rule.consumer}.{name}"
            old = old_tensors.get(name)
            if old is not None and old.shape == tensor.shape:
                tensor.copy_(old)
                result.copied.append(full)
            else:
                result.initialised.append(full)
            if isinstance(tensor, nn.Parameter) and isinstance(old, nn.Parameter):
                tensor.requires_grad_(old.requires_grad)
    paths.set(model, rule.consumer, new)
    result.rebuilt[rule.consumer] = f"{old_text} → {new_text}"
    return result


# --------------------------------------------------------------------------- transaction


def _plural(n: int) -> str:
    return f"{n} incompatibilit{'y' if n == 1 else 'ies'}"


class Transaction:
    """Several changes to one model, checked once when the ``with`` block ends.

    Made by :func:`edit`. Inside the block, use its methods (``replace``, ``set``, ``delete``,
    ``adapt``, ``set_num_classes``, ``freeze``, ...) or change the model directly. At the end
    the whole model is checked. If the changes introduced an error-severity finding, or an
    exception escapes the block, every module's attributes, submodules, parameters, buffers
    and ``requires_grad`` flags are put back as they were at entry, and
    :class:`~surgery.IncompatibleError` (or the exception) propagates. Findings that were
    already there before the block are reported but do not undo it.

    Attributes:
        model: The model being changed.
        report: The final :class:`~surgery.Report` (None until the block ends, or with ``check=False``).
        notes: Notes from the steps (device moves, what adapt did, ...).
    """

    def __init__(self, model: nn.Module, *, check: bool = True, label: str = "surgery.edit()", scoped: bool = False) -> None:
        require_module(model, "edit()")
        self.model = model
        self.anatomy = anatomy_for(model)
        self.report: Report | None = None
        self.notes: list[str] = []
        self._check = check
        self._label = label
        self._scope: list[str] | None = [] if scoped else None
        self._before: _TreeState | None = None
        self._open = False

    # -- context manager

    def __enter__(self) -> Transaction:
        if self._before is not None:
            raise RuntimeError("a surgery.edit() transaction can be used for one with-block only; call surgery.edit(model) again")
        self._before = _TreeState(self.model.modules())
        self._open = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> Literal[False]:
        self._open = False
        if exc_type is not None:
            self._rollback()
            return False
        if self._check:
            self._verify()
        return False

    def _rollback(self) -> None:
        assert self._before is not None  # __enter__ ran
        self._before.restore()
        written = self._before.written_in_place()
        if written:
            warnings.warn(
                f"{self._label} was rolled back, but {written} parameter/buffer tensor(s) of the model were written in "
                "place inside it; rollback restores modules, attributes and flags, not in-place writes to tensor values",
                RuntimeWarning,
                stacklevel=4,
            )

    def _verify(self) -> None:
        assert self._before is not None
        try:
            report = _run_check(self.model, paths=self._scope)
        except BaseException:
            self._rollback()
            raise
        self.report = report
        if report.ok:
            return
        after = _TreeState(itertools.chain(self._before.modules(), self.model.modules()))
        self._before.restore()
        try:
            known = {f.key for f in _run_check(self.model, paths=self._scope).errors}
        except Exception:  # noqa: BLE001 - a check that cannot run on the old model knows no earlier error
            known = set()
        introduced = [f for f in report.errors if f.key not in known]
        if not introduced:
            after.restore()
            self.notes.append(f"{len(report.errors)} error(s) were already there before {self._label} and remain")
            return
        self._rollback()
        raise IncompatibleError(self._failure_message(introduced), introduced)

    def _failure_message(self, introduced: list[Finding]) -> str:
        lines = [f"{self._label} was rolled back and the model is unchanged: it introduced {_plural(len(introduced))}:"]
        lines.extend(str(f) for f in introduced)
        if self.notes:
            lines.append("notes from the undone steps:")
            lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)

    def _require_open(self, what: str) -> None:
        if not self._open:
            raise RuntimeError(f"{what}() is only available inside `with surgery.edit(model) as e:`")

    def _touch(self, *touched: str) -> None:
        if self._scope is not None:
            self._scope.extend(p for p in touched if p not in self._scope)

    def _note(self, notes: Iterable[str]) -> None:
        for note in notes:
            self.notes.append(note)
            _log.info(note)

    # -- steps

    @overload
    def replace(self, path: str, new: nn.Module, *, adapt: Literal[False] = False) -> nn.Module | None: ...

    @overload
    def replace(self, path: str, new: nn.Module, *, adapt: Literal[True]) -> EditResult: ...

    def replace(self, path: str, new: nn.Module, *, adapt: bool = False) -> nn.Module | None | EditResult:
        """Like :func:`surgery.replace`, checked with the rest of the block. Returns the old module,
        or an :class:`EditResult` when ``adapt`` is True."""
        self._require_open("replace")
        result = self._replace(path, new, adapt)
        return result if adapt else result.old

    def _replace(self, path: str, new: nn.Module, adapt: bool) -> EditResult:
        require_module(new, "replace()", f"the replacement for {path!r}")
        old = _slot_content(self.model, path)
        rule = self.anatomy.adapt_rule(self.model, path) if adapt else None
        result = EditResult(path=path, old=old, new=new)
        moved = _move(new, _slot_place(self.model, path, old), path)
        if moved:
            result.notes.append(moved)
        paths.set(self.model, path, new)
        self._touch(path, *self.anatomy.consumers(self.model, path))
        if rule is not None:
            adaptation = _apply_rule(self.model, self.anatomy, rule)
            self._merge(result, adaptation)
            self._touch(rule.producer, *adaptation.rebuilt)
        self._note(result.notes)
        return result

    @staticmethod
    def _merge(into: Adaptation, other: Adaptation) -> None:
        into.rebuilt.update(other.rebuilt)
        into.copied.extend(other.copied)
        into.initialised.extend(other.initialised)
        into.notes.extend(other.notes)

    def set(self, path: str, module: nn.Module) -> nn.Module | None:  # noqa: A003 - mirrors paths.set
        """Put ``module`` at ``path`` as it is (no device move); return what was there."""
        self._require_open("set")
        old = paths.set(self.model, path, module)
        self._touch(path)
        return old

    def delete(self, path: str) -> nn.Module:
        """Remove the submodule at ``path`` (see :func:`surgery.paths.delete`); return it."""
        self._require_open("delete")
        old = paths.delete(self.model, path)
        self._touch(path)
        return old

    def adapt(self, path: str) -> Adaptation:
        """Rebuild the consumer of ``path`` to fit it; see :func:`surgery.adapt`."""
        self._require_open("adapt")
        rule = self.anatomy.adapt_rule(self.model, path)
        paths.get(self.model, path)  # PathError for an empty or missing slot
        result = _apply_rule(self.model, self.anatomy, rule)
        self._touch(rule.producer, rule.consumer)
        self._note(result.notes)
        return result

    def set_num_classes(self, num_classes: int, *, keep: KeepSpec | None = None) -> ClassChange:
        """Rebuild every class-dependent layer; see :func:`surgery.set_num_classes`."""
        self._require_open("set_num_classes")
        change, slots = resize_classes(self.model, self.anatomy, num_classes, keep)
        self._touch(*slots)
        self._note(change.notes)
        return change

    def freeze(self, *patterns: str) -> list[str]:
        """Freeze parameters by glob; see :func:`surgery.freeze`."""
        self._require_open("freeze")
        return freeze(self.model, *patterns)

    def unfreeze(self, *patterns: str) -> list[str]:
        """Unfreeze parameters by glob; see :func:`surgery.unfreeze`."""
        self._require_open("unfreeze")
        return unfreeze(self.model, *patterns)

    def freeze_backbone_layers(self, trainable_layers: int) -> list[str]:
        """torchvision's ``trainable_backbone_layers``; see :func:`surgery.freeze_backbone_layers`."""
        self._require_open("freeze_backbone_layers")
        return freeze_backbone_layers(self.model, trainable_layers)


def edit(model: nn.Module, *, check: bool = True) -> Transaction:
    """Group several changes into one all-or-nothing transaction, checked once at the end.

    Example:
        >>> with surgery.edit(model) as e:
        ...     e.replace("roi_heads.mask_head", MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1))
        ...     e.replace("roi_heads.mask_predictor", MaskRCNNPredictor(1024, 256, 91))
        >>> e.report.ok
        True

    Args:
        model: The model to change.
        check: Check the whole model when the block ends, and roll back when the block
            introduced an error. With False, only an exception rolls back.

    Returns:
        A :class:`Transaction` to use as a context manager.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
    """
    return Transaction(model, check=check)


@overload
def replace(model: nn.Module, path: str, new: nn.Module, *, check: bool = True, adapt: Literal[False] = False) -> nn.Module | None: ...


@overload
def replace(model: nn.Module, path: str, new: nn.Module, *, check: bool = True, adapt: Literal[True]) -> EditResult: ...


def replace(model: nn.Module, path: str, new: nn.Module, *, check: bool = True, adapt: bool = False) -> nn.Module | None | EditResult:
    """Put ``new`` at ``path``, check the contracts touching it, and undo the swap if it broke them.

    ``new`` is moved to the device and dtype of the module it replaces (a note logged on the
    ``"surgery"`` logger, and listed in :attr:`EditResult.notes`, says so). The check runs the
    contracts touching ``path`` (and the consumers ``adapt`` rebuilt) plus orphan detection.

    Args:
        model: The model to change.
        path: Dotted path of an existing submodule or empty (None) slot.
        new: The replacement.
        check: Check after the swap and roll back on a new error. False swaps without checking.
        adapt: Also rebuild the consumer of the slot to fit what ``new`` produces (see :func:`adapt`).

    Returns:
        The old module (None for an empty slot), or an :class:`EditResult` when ``adapt`` is True.

    Raises:
        PathError: ``path`` does not name a submodule or empty slot; nothing changed.
        NotAModuleError: ``new`` is not an ``nn.Module``; nothing changed.
        ValueError: ``adapt`` is True but the slot has no adapt rule; nothing changed.
        IncompatibleError: The swap introduced an error-severity finding; the model is back as it was.
    """
    require_module(model, "replace()")
    tx = Transaction(model, check=check, label=f"replace({path!r}, {type(new).__name__})", scoped=True)
    with tx:
        result = tx._replace(path, new, adapt)
    result.report = tx.report
    result.notes = list(tx.notes)
    return result if adapt else result.old


def adapt(model: nn.Module, path: str, *, check: bool = True) -> Adaptation:
    """Rebuild the consumer of an R-CNN head so that it takes what the head now produces.

    ``path`` names a head (``roi_heads.box_head``, ``roi_heads.mask_head``,
    ``roi_heads.keypoint_head``) or its predictor. The predictor is rebuilt with the head's
    output width and every other hyperparameter kept: ``MaskRCNNPredictor(width, <old
    dim_reduced>, <old num_classes>)``, ``FastRCNNPredictor(width, <old num_classes>)``,
    ``KeypointRCNNPredictor(width, <old num_keypoints>)``. Tensors whose shapes still fit are
    copied; the others keep torchvision's initialisation. The width is read statically for
    torch/torchvision heads and with a meta-device probe for your own.

    Args:
        model: A Faster/Mask/Keypoint R-CNN.
        path: The head or predictor of one branch.
        check: Check afterwards and roll back on a new error.

    Returns:
        An :class:`Adaptation` listing what was rebuilt, copied and freshly initialised.

    Raises:
        ValueError: The model is not an R-CNN, or ``path`` is not a head or predictor.
        PathError: ``path`` does not exist or is empty.
        IncompatibleError: The result still has a new error; the model is back as it was.
    """
    require_module(model, "adapt()")
    tx = Transaction(model, check=check, label=f"adapt({path!r})", scoped=True)
    with tx:
        result = tx.adapt(path)
    result.report = tx.report
    return result


def set_num_classes(model: nn.Module, num_classes: int, *, keep: KeepSpec | None = None, check: bool = True) -> ClassChange:
    """Rebuild every class-dependent layer for ``num_classes`` classes, keeping trained classes.

    Layers by family: R-CNN ``box_predictor.cls_score`` and ``bbox_pred`` (4 rows per class)
    and ``mask_predictor.mask_fcn_logits`` (keypoint predictors are not class-dependent);
    RetinaNet/FCOS ``head.classification_head.cls_logits`` (``anchor * num_classes + class``)
    and its ``num_classes``; SSD/SSDlite ``head.classification_head.module_list`` convs and
    ``num_columns``. Kept classes get their trained rows copied into their new positions;
    every other class is initialised as torchvision initialises that layer. Layers keep their
    device, dtype, train/eval mode and ``requires_grad``.

    Args:
        model: The model to change.
        num_classes: The new class count (background included for R-CNN), an int >= 1.
        keep: ``{new_index: old_index}``, or a list whose item ``i`` is the old index new class
            ``i`` takes (background included: ``[0, 1, 3]`` keeps background, class 1 and
            class 3 as 0, 1, 2). None keeps every class at its own index where both counts
            have it; ``[]`` keeps nothing.
        check: Check afterwards and roll back on a new error.

    Returns:
        A :class:`ClassChange` with the rows copied and initialised per parameter path.

    Raises:
        TypeError: ``num_classes`` or ``keep`` has the wrong type; nothing changed.
        ValueError: A value is out of range, or a class-dependent slot holds a module whose
            layout is unknown; nothing changed.
        IncompatibleError: The result has a new error; the model is back as it was.
    """
    require_module(model, "set_num_classes()")
    tx = Transaction(model, check=check, label=f"set_num_classes({num_classes!r})", scoped=True)
    with tx:
        change = tx.set_num_classes(num_classes, keep=keep)
    change.report = tx.report
    return change


# --------------------------------------------------------------------------- freezing

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
    if not isinstance(trainable_layers, int) or isinstance(trainable_layers, bool):
        raise TypeError(f"trainable_layers must be an int, got {type(trainable_layers).__name__} {trainable_layers!r}")
    children = body._modules
    if all(name in children for name in (*_RESNET_LAYERS, "bn1")):
        # torchvision's _resnet_fpn_extractor
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers for a ResNet backbone must be in 0..5 (5 trains every layer), got {trainable_layers}")
        train = list(_RESNET_LAYERS[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
        return {name: any(name.startswith(layer) for layer in train) for name, _ in body.named_parameters()}
    blocks = list(children.values())
    if blocks and any(getattr(b, "_is_cn", False) for b in blocks):
        # torchvision's _mobilenet_extractor: stages start at strided blocks; the first and last block are stages too
        stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        if not 0 <= trainable_layers <= len(stages):
            raise ValueError(f"trainable_layers for this MobileNet backbone must be in 0..{len(stages)}, got {trainable_layers}")
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
        TypeError: ``trainable_layers`` is not an int.
        ValueError: It is out of range, or the backbone body is neither ResNet nor MobileNet.
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
