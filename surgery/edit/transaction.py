"""The all-or-nothing transaction every edit runs in, and the one-step edits built on it.

:class:`Transaction` saves the model's structure (:class:`surgery._state.Snapshot` with
``structure=True``) on entry, checks the model when the block ends, and puts the structure
back when the block raised or introduced an error-severity finding. :func:`replace`,
:func:`adapt`, :func:`set_num_classes` and :func:`set_num_keypoints` are one-step transactions.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from types import TracebackType
from typing import Literal, overload

from torch import nn

from surgery import paths
from surgery._errors import IncompatibleError
from surgery._state import Snapshot
from surgery._util import require_module
from surgery.anatomy import anatomy_for
from surgery.anatomy._backbone import ProbedMaps
from surgery.anatomy._base import AdaptRule
from surgery.check import checked as _run_check
from surgery.edit.adapting import Adaptation, EditResult, _apply_backbone, _apply_rule, _move, _slot_content, _slot_place
from surgery.edit.freezing import freeze, freeze_backbone_layers, unfreeze
from surgery.edit.num_classes import ClassChange, KeepSpec, KeypointChange, resize_classes, resize_keypoints
from surgery.findings import Finding, Report

__all__ = ["Transaction", "adapt", "edit", "replace", "set_num_classes", "set_num_keypoints"]

_log = logging.getLogger("surgery")



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
        self._before: Snapshot | None = None
        self._open = False
        self._seen: ProbedMaps = {}  # backbones an adapt probed: the final check reads their maps while unchanged

    # -- context manager

    def __enter__(self) -> Transaction:
        if self._before is not None:
            raise RuntimeError("a surgery.edit() transaction can be used for one with-block only; call surgery.edit(model) again")
        self._before = Snapshot(self.model, structure=True)
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
            report = _run_check(self.model, paths=self._scope, seen=self._seen)
        except BaseException:
            self._rollback()
            raise
        self.report = report
        if report.ok:
            return
        after = Snapshot(self.model, structure=True, extra=self._before.modules)
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
            adaptation = self._apply(rule)
            self._merge(result, adaptation)
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
        result = self._apply(rule)
        self._touch(rule.consumer)
        self._note(result.notes)
        return result

    def _apply(self, rule: AdaptRule) -> Adaptation:
        """Follow one adapt rule: a backbone rule rebuilds everything after the backbone, any other
        the one consumer; the producer, its consumers and every rebuilt slot join the check."""
        if rule.kind == "backbone":
            result = _apply_backbone(self.model, self.anatomy, rule, self._seen)
        else:
            result = _apply_rule(self.model, self.anatomy, rule)
        rebuilt = [p for p in result.rebuilt if paths.exists(self.model, p)]
        self._touch(rule.producer, *self.anatomy.consumers(self.model, rule.producer), *rebuilt)
        return result

    def set_num_classes(self, num_classes: int, *, keep: KeepSpec | None = None) -> ClassChange:
        """Rebuild every class-dependent layer; see :func:`surgery.set_num_classes`."""
        self._require_open("set_num_classes")
        change, slots = resize_classes(self.model, self.anatomy, num_classes, keep)
        self._touch(*slots)
        self._note(change.notes)
        return change

    def set_num_keypoints(self, num_keypoints: int, *, keep: KeepSpec | None = None) -> KeypointChange:
        """Rebuild every keypoint-dependent layer; see :func:`surgery.set_num_keypoints`."""
        self._require_open("set_num_keypoints")
        change, slots = resize_keypoints(self.model, self.anatomy, num_keypoints, keep)
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
        TypeError: ``keep`` is neither a mapping nor a sequence; nothing changed.
        ValueError: ``num_classes`` or an index in ``keep`` is not an int or is out of range,
            or a class-dependent slot holds a module whose layout is unknown; nothing changed.
        IncompatibleError: The result has a new error; the model is back as it was.
    """
    require_module(model, "set_num_classes()")
    tx = Transaction(model, check=check, label=f"set_num_classes({num_classes!r})", scoped=True)
    with tx:
        change = tx.set_num_classes(num_classes, keep=keep)
    change.report = tx.report
    return change



def set_num_keypoints(model: nn.Module, num_keypoints: int, *, keep: KeepSpec | None = None, check: bool = True) -> KeypointChange:
    """Rebuild every keypoint-dependent layer for ``num_keypoints`` keypoints, keeping trained keypoints.

    Keypoint R-CNN's ``roi_heads.keypoint_predictor.kps_score_lowres`` (a transposed conv with
    one heatmap channel per keypoint) is rebuilt and the predictor's ``out_channels`` set. Kept
    keypoints get their trained channels copied into their new positions; the others are
    initialised as torchvision does (``kaiming_normal_(fan_out, relu)`` weights, zero bias).
    The layer keeps its device, dtype, train/eval mode and ``requires_grad``. Like
    :func:`set_num_classes`, it runs as a checked, all-or-nothing transaction.

    Args:
        model: A Keypoint R-CNN.
        num_keypoints: The new keypoint count, an int >= 1.
        keep: ``{new_index: old_index}``, or a list whose item ``i`` is the old index new
            keypoint ``i`` takes (``[0, 5, 6]`` keeps the nose and the shoulders of COCO's 17
            as 0, 1, 2). None keeps every keypoint at its own index where both counts have it;
            ``[]`` keeps nothing.
        check: Check afterwards and roll back on a new error.

    Returns:
        A :class:`KeypointChange` with the channels copied and initialised per parameter path.

    Raises:
        TypeError: ``keep`` is neither a mapping nor a sequence; nothing changed.
        ValueError: ``num_keypoints`` or an index in ``keep`` is not an int or is out of range,
            the model predicts no keypoints, or its keypoint predictor's layout is unknown;
            nothing changed.
        IncompatibleError: The result has a new error; the model is back as it was.
    """
    require_module(model, "set_num_keypoints()")
    tx = Transaction(model, check=check, label=f"set_num_keypoints({num_keypoints!r})", scoped=True)
    with tx:
        change = tx.set_num_keypoints(num_keypoints, keep=keep)
    change.report = tx.report
    return change
