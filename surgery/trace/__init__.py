"""``surgery.trace``: watch one real forward pass (and optionally a backward) through hooks.

Forward pre- and post-hooks on every module record the calls in order, with the shapes and
dtypes of what each module received and returned (through tuples, lists, dicts, dataclasses
and image lists, i.e. a tensor ``.tensors`` with its ``.image_sizes``). A
``TorchFunctionMode`` carries a producer tag forward from each op's inputs to its outputs,
so a tensor that leaves module A, goes through ``torch.cat``, slicing or ``roi_align`` and
enters module B still names A: that is an edge A → B. Module outputs are tagged by the
module, unless every producer already recorded on them lies inside it, so edges name the
innermost module that made the data.

Nothing of the model changes: hooks, train/eval flags, ``requires_grad``, ``.grad``,
buffers, transform sizes and the global random state are restored, also when the model
raises mid-forward. Only shapes and dtypes are stored, never tensors, and the producer map
holds weak references, so tracing keeps no activation alive.

The package: :mod:`~surgery.trace.results` (the result types), :mod:`~surgery.trace.recorder`
(flattening and the hooks), :mod:`~surgery.trace.flow` (the function mode),
:mod:`~surgery.trace.findings` (what a trace reports); this module runs the passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from surgery._errors import IncompatibleError
from surgery._state import preserved
from surgery._util import check_int, device_of, require_module
from surgery.anatomy import Anatomy, anatomy_for
from surgery.findings import Finding
from surgery.synthetic import synthetic_batch
from surgery.trace.findings import _failure, _findings, _new_findings, unused_parameter_findings
from surgery.trace.flow import _FlowMode
from surgery.trace.recorder import _leaves, _Recorder
from surgery.trace.results import TensorInfo, Trace, TraceCall, TraceEdge

__all__ = ["TensorInfo", "Trace", "TraceCall", "TraceEdge", "trace", "trace_findings", "unused_parameter_findings", "MODES"]

#: Accepted values of ``trace(mode=...)``.
MODES = ("eval", "train", "both")


def _check_mode(train: bool, mode: str | None) -> tuple[str, ...]:
    if mode is None:
        return ("train",) if train else ("eval",)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} or None, got {mode!r}")
    if train and mode == "eval":
        raise ValueError("train=True contradicts mode='eval'; pass mode='train' or mode='both' (or drop train=True)")
    return ("eval", "train") if mode == "both" else (mode,)


def _losses(anatomy: Anatomy, model: nn.Module, output: Any, targets: Any) -> dict[str, Tensor]:
    """The loss tensors of a train-mode output: the family's losses when it has any, a dict of
    scalars as is, else the sum of the means of the floating outputs that require grad
    (``"mean(output)"``)."""
    family_losses = anatomy.train_losses(model, output, targets)
    if isinstance(family_losses, dict):
        return family_losses
    if isinstance(output, Mapping) and output and all(isinstance(v, Tensor) and v.numel() == 1 for v in output.values()):
        return {str(k): v for k, v in output.items()}
    leaves: list[tuple[str, Tensor]] = []
    _leaves(output, "", leaves)
    parts = [t.float().mean() for _, t in leaves if t.is_floating_point() and t.requires_grad and t.numel() > 0]
    if not parts:
        return {}
    return {"mean(output)": torch.stack(parts).sum()}


def _non_finite(output: Any, prefix: str) -> list[str]:
    leaves: list[tuple[str, Tensor]] = []
    _leaves(output, "", leaves)
    bad = []
    for key, t in leaves:
        if not (t.is_floating_point() or t.is_complex()) or not t.numel():
            continue
        # one reduction, no N-element mask; a non-finite sum is confirmed element-wise (overflow)
        total = t.sum()
        if not bool(torch.isfinite(total)) and not bool(torch.isfinite(t).all()):
            bad.append(f"{prefix} {key}" if key else prefix)
    return bad


def _rng_devices(model: nn.Module) -> list[int]:
    devices = {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
    return sorted(devices)


def _validate(model: Any, depth: Any, image_size: Any, batch_size: Any, seed: Any, backward: Any) -> None:
    require_module(model, "trace()")
    if depth is not None:
        check_int("depth", depth, 0)
    check_int("image_size", image_size, 32)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed)
    if backward is not None and not isinstance(backward, bool):
        raise ValueError(f"backward must be None, True or False, got {backward!r}")


def trace(
    model: nn.Module,
    inputs: Any = None,
    *,
    train: bool = False,
    backward: bool | None = None,
    depth: int | None = None,
    mode: str | None = None,
    image_size: int = 320,
    batch_size: int = 2,
    seed: int = 0,
    strict: bool = True,
) -> Trace:
    """Run the model once (per mode) and record what ran, with which shapes, fed by what.

    Args:
        model: The model to trace. It is left exactly as it was.
        inputs: What to feed it. None builds :func:`surgery.synthetic_batch` for the family.
            A detection model takes a list of ``3×H×W`` images, an ``N×3×H×W`` tensor or
            ``(images, targets)``; targets are synthesised when a train pass needs them.
            Any other model takes a tensor (``model(x)``), a tuple (``model(*x)``) or a dict
            (``model(**x)``).
        train: Run a train step instead of an eval pass (same as ``mode="train"``).
        backward: Run a backward from the train pass's losses (summed); None means yes
            whenever a train pass runs. A non-detection model's loss is the sum of the means
            of its floating outputs.
        depth: Trace modules at most this many levels below the model (None: all). The
            family's component slots are always traced.
        mode: ``"eval"``, ``"train"`` or ``"both"`` (eval, then a train step); None follows
            ``train``. With both, a module counts as called when either pass called it.
        image_size: Side of the synthetic images.
        batch_size: Number of synthetic images.
        seed: Seed of the synthetic batch and of the random choices inside the passes
            (proposal sampling, dropout); the global random state is restored afterwards.
        strict: Raise when the model raises. When False, the partial trace is returned with
            :attr:`Trace.failure` set.

    Returns:
        A :class:`Trace`.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
        ValueError: An argument is out of range, or ``inputs`` has a form the model cannot take.
        IncompatibleError: (``strict``) the forward or backward raised; its single
            ``shape-error`` finding names the module, what it received and what ran before.
    """
    result = _run(model, inputs, train=train, backward=backward, depth=depth, mode=mode, image_size=image_size,
                  batch_size=batch_size, seed=seed)
    error, result._exception = result._exception, None  # its traceback holds the activations
    if strict and result.failure is not None:
        raise IncompatibleError(str(result.failure), [result.failure]) from error
    return result


def _run(
    model: nn.Module,
    inputs: Any,
    *,
    train: bool,
    backward: bool | None,
    depth: int | None,
    mode: str | None,
    image_size: int,
    batch_size: int,
    seed: int,
) -> Trace:
    _validate(model, depth, image_size, batch_size, seed, backward)
    modes = _check_mode(train, mode)
    if backward and "train" not in modes:
        raise ValueError("backward=True needs a train pass: pass train=True or mode='train' or mode='both'")
    do_backward = "train" in modes if backward is None else backward
    anatomy = anatomy_for(model)
    family = anatomy.name
    components = [s.path for s in anatomy.slots(model)]
    synthetic = inputs is None
    if synthetic:
        inputs = synthetic_batch(model, batch_size=batch_size, image_size=image_size, seed=seed, anatomy=anatomy)
    images, targets = anatomy.split_inputs(inputs)
    if targets is None and "train" in modes:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        targets = anatomy.train_targets(model, images, gen, device_of(model))

    named = list(model.named_modules())
    slot_set = set(components)
    traced = [(p, m) for p, m in named if depth is None or p == "" or p.count(".") + 1 <= depth or p in slot_set]
    recorder = _Recorder(components)
    result = Trace(type(model).__name__, family, modes, components=components)
    raw_losses: dict[str, Tensor] = {}
    with preserved(model), torch.random.fork_rng(devices=_rng_devices(model)):
        torch.manual_seed(seed)
        for p in model.parameters():
            p.grad = None  # fresh gradients; preserved() puts the caller's back untouched
        if anatomy.takes_targets:
            anatomy.fit_inputs(model, [(int(i.shape[-2]), int(i.shape[-1])) for i in images])
        handles = []
        try:
            for path, module in traced:
                pre, post = recorder.make_hooks(path, type(module).__name__)
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(module.register_forward_hook(post, with_kwargs=True))
            phase = "forward"
            try:
                for m in modes:
                    recorder.mode = m
                    recorder.stack.clear()
                    recorder.done.clear()
                    phase = f"{m} forward"
                    if m == "eval":
                        model.eval()
                        with torch.no_grad(), _FlowMode(recorder):
                            output = anatomy.call(model, images, None, train=False)
                        result.non_finite.extend(_non_finite(output, "eval output"))
                        result._eval_outcome = anatomy.unexercised_reason(model, output, exercised=False)
                        del output
                    else:
                        model.train()
                        with torch.enable_grad():
                            with _FlowMode(recorder):
                                output = anatomy.call(model, images, targets, train=True)
                            raw_losses = _losses(anatomy, model, output, targets)
                            del output
                            result.losses = {k: float(v.detach().float().sum()) for k, v in raw_losses.items()}
                            result.non_finite.extend(f"loss {k}" for k, v in result.losses.items() if not _finite(v))
                            if do_backward and raw_losses:
                                total = sum(raw_losses.values(), torch.zeros((), device=next(iter(raw_losses.values())).device))
                                if isinstance(total, Tensor) and total.requires_grad:
                                    phase = "backward"
                                    total.backward()
                                    result.backward = True
                                    result.no_grad_params = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
                            raw_losses = {}
            except Exception as e:  # noqa: BLE001 - any error of the user's model becomes a shape-error finding
                result.failure = _failure(model, recorder, result, e, phase, synthetic and not anatomy.takes_targets)
                result._exception = e
            result.calls = recorder.calls
            result.edges = [TraceEdge(s, d, shapes, tuple(m for m in modes if m in ms)) for (s, d), (shapes, ms) in recorder.edges.items()]
            result._component_shapes = dict(recorder.comp_shapes)
            if result.failure is None:
                result.uncalled = _uncalled([p for p, _ in traced], recorder.called)
                result.findings = _findings(model, anatomy, result)
            else:
                result.findings = [result.failure]
        finally:
            for h in handles:
                h.remove()
            recorder.tags.clear()
            recorder.stack.clear()
    return result


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _uncalled(traced: list[str], called: set[str]) -> list[str]:
    active = set()
    for p in called:
        active.add(p)
        while p:
            p = p.rsplit(".", 1)[0] if "." in p else ""
            if p in active:
                break
            active.add(p)
    idle = [p for p in traced if p not in active]
    idle_set = set(idle)
    out = []
    for p in idle:
        parent = p
        top = True
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if parent in idle_set:
                top = False
                break
        if top and p:
            out.append(p)
    return out


def trace_findings(
    model: nn.Module,
    *,
    image_size: int = 320,
    known: Iterable[Finding] = (),
    seed: int = 0,
) -> list[Finding]:
    """The trace-based findings of ``surgery.check(model, trace=True)``.

    Runs an eval pass and a train step with backward on a synthetic batch, and returns the
    ``orphan-module``, ``unused-parameter``, ``non-finite`` and ``shape-error`` findings.
    An orphan already reported in ``known`` (static detection) is not reported again, and
    neither is a ``shape-error`` between two modules that a static error already names: the
    forward failing there is the consequence the static finding predicted.

    Args:
        model: The model to trace (left as it was).
        image_size: Side of the synthetic images.
        known: Findings already in the report.
        seed: Seed of the synthetic batch and of the random choices of the passes.

    Returns:
        The findings, errors first.
    """
    result = _run(model, None, train=False, backward=None, depth=None, mode="both", image_size=image_size, batch_size=2, seed=seed)
    result._exception = None
    return _new_findings(result.findings, known)
