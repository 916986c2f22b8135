"""The train step, one for the smoke test's train phase and for every DDP rank.

:func:`train_step` runs one step: forward through :meth:`Anatomy.call`, the losses from
:meth:`Anatomy.train_losses` (or, for a family without losses of its own, the sum of the
means of the output's floating-point tensors), backward. :func:`train` runs the smoke
test's steps with it and adds what only the single-process phase checks: every loss key of
the family present and finite, no loss above :data:`LOSS_BOUND` (``exploding``, naming the
first module whose output passes :data:`ACTIVATION_BOUND`), every trainable parameter reached
by a gradient, gradients finite; it records which modules ran on data, for ``not-exercised``. The DDP workers (:mod:`surgery.smoke.ddp`) call :func:`train_step` through the
``DistributedDataParallel`` wrapper, so both phases extract losses and report a bad output
alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from surgery import paths as _paths
from surgery._util import ModuleStack, all_finite, first_lines, tensors_in
from surgery.anatomy import Anatomy
from surgery.findings import Finding, Report
from surgery.smoke.device import amp_note, autocast
from surgery.trace import unused_parameter_findings

__all__ = [
    "ACTIVATION_BOUND",
    "LOSS_BOUND",
    "Run",
    "StepOutcome",
    "describe_module",
    "raised_finding",
    "raised_finding_text",
    "step_losses",
    "train",
    "train_step",
]

#: Learning rate of the SGD step between train steps (undone afterwards).
LR = 1e-3
#: A finite loss above this is ``exploding``: a model that trains starts orders of magnitude lower.
LOSS_BOUND = 1e3
#: A module output with ``|x|`` above this is where activations explode (the diagnosis of ``exploding``).
ACTIVATION_BOUND = 1e4


# --------------------------------------------------------------------------- where did it fail


def describe_module(model: nn.Module, path: str | None) -> str:
    """``"roi_heads.mask_head (MaskRCNNHeads)"`` for a module path; words for the root or no module."""
    if path is None:
        return "outside any submodule"
    if path == "":
        return f"the model's own forward ({type(model).__name__})"
    try:
        return f"{path} ({type(_paths.get(model, path)).__name__})"
    except (AttributeError, TypeError):
        return path


def raised_finding(model: nn.Module, where: str | None, phase: str, error: BaseException) -> Finding:
    """A ``shape-error`` finding for ``phase`` (e.g. ``"the eval pass"``) that raised ``error`` in module ``where``."""
    return raised_finding_text(model, where, phase, type(error).__name__, str(error), isinstance(error, torch.OutOfMemoryError))


def raised_finding_text(model: nn.Module, where: str | None, phase: str, error_type: str, error: str, oom: bool) -> Finding:
    """:func:`raised_finding` from the error's type name and text (as a DDP worker reports them)."""
    located = describe_module(model, where)
    if oom:
        return Finding("error", "shape-error", (where,) if where else (),
                       f"{phase} ran out of memory in {located}: {first_lines(error)}", "lower batch_size or image_size, or use amp=True")
    return Finding("error", "shape-error", (where,) if where else (), f"{phase} raised {error_type} in {located}: {first_lines(error)}", None)


def _slot(model: nn.Module, path: str | None) -> tuple[str, ...]:
    return (path,) if path and _paths.exists(model, path) else ()


# --------------------------------------------------------------------------- one step


@dataclass
class StepOutcome:
    """What one :func:`train_step` did.

    Attributes:
        losses: The loss tensors of the forward pass; None when there are none to use (the
            forward raised, or its output holds no loss; :attr:`findings` says why).
        findings: Why the step could not backpropagate: an output with no usable loss, or
            losses that depend on no trainable parameter.
        error: What the forward or the backward raised, if either did.
        stage: ``"forward"`` or ``"backward"`` when :attr:`error` is set, else ``""``.
        where: Dotted path of the innermost module running when the forward raised.
        backward: True when backward ran to its end.
    """

    losses: dict[str, Tensor] | None = None
    findings: list[Finding] = field(default_factory=list)
    error: Exception | None = None
    stage: str = ""
    where: str | None = None
    backward: bool = False


def step_losses(anatomy: Anatomy, model: nn.Module, output: Any, targets: Any, label: str) -> dict[str, Tensor] | Finding:
    """The losses of a train-mode ``output``: the family's, else the sum of the means of its float tensors.

    Args:
        anatomy: The model's anatomy.
        model: The model (unwrapped).
        output: What the forward returned: a dict, a tuple such as ``(losses, detections)``
            or of tensors, a tensor, ...
        targets: The targets the forward was given.
        label: The step in messages, e.g. ``"train step 1"``.

    Returns:
        ``{name: loss}``, or a ``shape-error`` finding saying why ``output`` has no loss to
        backpropagate from.
    """
    losses = anatomy.train_losses(model, output, targets)
    if isinstance(losses, str):
        return Finding("error", "shape-error", (), f"{label} {losses}", None)
    if losses is not None:
        return losses
    tensors = [t for t in tensors_in(output) if t.is_floating_point()]
    if not tensors:
        message = f"{label} returned {type(output).__name__} with no floating-point tensor to backpropagate from"
        return Finding("error", "shape-error", (), message, None)
    return {"output": sum((t.float().mean() for t in tensors), torch.zeros((), device=tensors[0].device))}


def train_step(
    model: nn.Module,
    anatomy: Anatomy,
    images: Any,
    targets: Any,
    *,
    label: str,
    amp: AbstractContextManager[Any] | None = None,
    runner: nn.Module | None = None,
    where: ModuleStack | None = None,
) -> StepOutcome:
    """One forward (train mode), the losses, one backward; never raises for the model's errors.

    Args:
        model: The model; its modules name where a forward raised.
        anatomy: The model's anatomy.
        images: The inputs, as :func:`surgery.synthetic.synthetic_batch` made them.
        targets: The targets, or None.
        label: The step in messages, e.g. ``"train step 1"`` or ``"DDP rank 0, step 1"``.
        amp: The autocast context for the forward, or None.
        runner: What to call instead of ``model`` (its ``DistributedDataParallel`` wrapper).
        where: The :class:`~surgery._util.ModuleStack` of ``model`` to run the forward under
            (one with ``record=True`` keeps which modules ran on data); a plain one when None.

    Returns:
        A :class:`StepOutcome`. Gradients are left in ``.grad``; the caller zeroes them.
    """
    where = where if where is not None else ModuleStack(model)
    try:
        with where, amp if amp is not None else nullcontext():
            output = anatomy.call(runner if runner is not None else model, images, targets, train=True)
    except Exception as e:  # noqa: BLE001 - a user model may raise anything; the caller reports it
        return StepOutcome(error=e, stage="forward", where=where.innermost())
    losses = step_losses(anatomy, model, output, targets, label)
    if isinstance(losses, Finding):
        return StepOutcome(findings=[losses])
    outcome = StepOutcome(losses=losses)
    values = list(losses.values())
    total = sum((v.float().sum() for v in values), torch.zeros((), device=values[0].device if values else None))
    if not total.requires_grad:
        trainable = sum(p.requires_grad for p in model.parameters())
        if trainable:
            message = (f"{label}: the losses do not depend on any trainable parameter ({trainable} trainable tensors), "
                       "so backward reaches none of them")
            outcome.findings.append(Finding("error", "unused-parameter", (), message, None))
        return outcome
    try:
        total.backward()
    except Exception as e:  # noqa: BLE001 - autograd errors of user code are reported by the caller
        outcome.error, outcome.stage = e, "backward"
        return outcome
    outcome.backward = True
    return outcome


# --------------------------------------------------------------------------- the smoke test's train phase


@dataclass
class Run:
    """State shared by the phases of one smoke test."""

    model: nn.Module
    anatomy: Anatomy
    device: torch.device
    amp: torch.dtype | None
    batch_size: int
    image_size: int
    steps: int
    report: Report
    losses: dict[str, float] = field(default_factory=dict)
    phase_errors: int = 0
    sgd_steps: int = 0
    #: Which modules ran on data in the train steps and in the eval pass (None: the pass raised).
    trained: ModuleStack | None = None
    evaluated: ModuleStack | None = None
    #: ``(path, max |x|)`` of the first module whose output exploded, when a loss was above the bound.
    exploded: tuple[str, float] | None = None
    #: What the eval output says about idle heads (:meth:`Anatomy.unexercised_reason`).
    eval_outcome: str | None = None

    def add(self, findings: Iterable[Finding]) -> None:
        """Add findings to the report, counting the current phase's errors (also those merged as duplicates)."""
        findings = list(findings)
        self.phase_errors += sum(f.severity == "error" for f in findings)
        self.report.extend(findings)

    def autocast(self) -> AbstractContextManager[Any]:
        """The autocast context of this run (a no-op one when AMP is off)."""
        return autocast(self.device, self.amp)

    @property
    def amp_note(self) -> str:
        return amp_note(self.amp)


def train(run: Run, images: Any, targets: Any) -> None:
    """Run the smoke test's train steps with :func:`train_step`, adding findings to ``run``."""
    model = run.model
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for _, p in trainable], lr=LR) if trainable else None
    anatomy = run.anatomy
    expected = anatomy.loss_keys(model)
    unused: set[str] = set()
    bad_grads: dict[str, str] = {}
    nonfinite_loss = False
    loud_reported = False
    stack = ModuleStack(model, record=True)
    model.train()
    for step in range(run.steps):
        for p in model.parameters():
            p.grad = None
        label = f"train step {step + 1}{run.amp_note}"
        outcome = train_step(model, anatomy, images, targets, label=label, amp=run.autocast(), where=stack)
        if outcome.stage == "forward" and outcome.error is not None:
            run.add([raised_finding(model, outcome.where, f"the forward pass of {label}", outcome.error)])
            return
        losses = outcome.losses
        if losses is None:
            run.add(outcome.findings)
            return
        if step == 0:
            run.losses = {k: float(v.detach().float()) for k, v in losses.items()}
        missing = [k for k in expected if k not in losses]
        if missing:
            message = f"{label} returned the losses {sorted(losses)}; the {anatomy.name} family also needs {missing}"
            run.add([Finding("error", "shape-error", (), message, "make the head's forward return every loss of the family in training mode")])
        bad = {k: float(v.detach().float()) for k, v in losses.items() if not all_finite(v.detach())}
        if bad:
            nonfinite_loss = True
            run.add(_nonfinite_loss_findings(run, images, targets, bad, label))
        loud = {k: float(v.detach().float().abs().max()) for k, v in losses.items() if k not in bad and v.numel()}
        loud = {k: v for k, v in loud.items() if v > LOSS_BOUND}
        if loud and not loud_reported:
            loud_reported = True
            run.add([_exploding_finding(run, images, targets, loud, label)])
        run.add(outcome.findings)
        if outcome.error is not None:
            message = f"backward of {label} raised {type(outcome.error).__name__}: {first_lines(str(outcome.error))}"
            run.add([Finding("error", "shape-error", (), message, None)])
            return
        if not outcome.backward:  # the losses reach no trainable parameter: more steps would say the same
            break
        unused.update(name for name, p in trainable if p.grad is None)
        reached = [(name, p.grad) for name, p in trainable if p.grad is not None]
        if reached and not bool(torch.stack([torch.isfinite(g).all() for _, g in reached]).all()):  # one device sync
            for name, grad in reached:
                if name not in bad_grads and not bool(torch.isfinite(grad).all()):
                    bad_grads[name] = "nan" if bool(torch.isnan(grad).any()) else "inf"
        if optimizer is not None and step + 1 < run.steps:  # update between steps; the last step needs none
            optimizer.step()
            run.sgd_steps += 1
    run.trained = stack
    run.add(unused_parameter_findings(model, unused, context=f"the train step{run.amp_note}"))
    if bad_grads and not nonfinite_loss:
        owners: dict[str, list[str]] = {}
        for name in bad_grads:
            owners.setdefault(name.rpartition(".")[0], []).append(name)
        for owner, names in owners.items():
            message = (f"the gradient of {', '.join(names[:4])} is {bad_grads[names[0]]} after backward of the train step"
                       f"{run.amp_note} although every loss was finite")
            run.add([Finding("error", "non-finite", _slot(model, owner), message,
                             "look for log, sqrt or division of values that can be 0 in this module")])


def _nonfinite_loss_findings(run: Run, images: Any, targets: Any, bad: dict[str, float], label: str) -> list[Finding]:
    """Name the losses, and the first module whose output was not finite (one more forward, no grad)."""
    first: str | None = None
    where = ModuleStack(run.model, watch_finite=True)
    try:
        with torch.no_grad(), where, run.autocast():
            run.anatomy.call(run.model, images, targets, train=True)
        first = where.nonfinite
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; the loss finding stands anyway
        first = where.nonfinite
    slots = run.anatomy.loss_slots(run.model)
    out = []
    for name, value in bad.items():
        paths = tuple(dict.fromkeys(p for p in (first, slots.get(name)) if p and _paths.exists(run.model, p)))
        origin = f"; the first module whose output is not finite is {describe_module(run.model, first)}" if first else ""
        hint = " (try amp=False: float16/bfloat16 overflow is a common cause)" if run.amp is not None else ""
        out.append(Finding("error", "non-finite", paths, f"loss {name!r} is {value} in {label}{origin}{hint}",
                           "make the module's output finite for random weights and inputs (check divisions, logs, exp, and initialisation)"))
    return out


def _exploding_finding(run: Run, images: Any, targets: Any, loud: dict[str, float], label: str) -> Finding:
    """An ``exploding`` warning naming the losses above :data:`LOSS_BOUND` and the first module
    whose output passes :data:`ACTIVATION_BOUND` (one more forward, no grad, with hooks)."""
    where = ModuleStack(run.model, watch_bound=ACTIVATION_BOUND)
    with contextlib.suppress(Exception), torch.no_grad(), where, run.autocast():  # best effort: the warning stands anyway
        run.anatomy.call(run.model, images, targets, train=True)
    listed = ", ".join(f"{name!r} = {value:.4g}" for name, value in loud.items())
    message = f"{'loss' if len(loud) == 1 else 'losses'} {listed} in {label} {'is' if len(loud) == 1 else 'are'} above {LOSS_BOUND:g}"
    if where.exploded is not None and where.exploded_max is not None:
        run.exploded = (where.exploded, where.exploded_max)
        message += (f"; the first module whose output explodes (|x| > {ACTIVATION_BOUND:g}) is "
                    f"{describe_module(run.model, where.exploded)}, with |x| up to {where.exploded_max:.3g}")
        paths = _slot(run.model, where.exploded)
    else:
        message += f"; no module's output passes |x| = {ACTIVATION_BOUND:g}, so the loss itself is large"
        paths = ()
    return Finding("warning", "exploding", paths, message,
                   "keep activations near 1 for random inputs: normalise after the layers named (a frozen or "
                   "untrained norm layer passes values through unscaled), fix their initialisation, or load trained weights")
