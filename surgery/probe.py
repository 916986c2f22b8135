"""The whole-model probe: run the entire forward on ``torch.device("meta")``.

Parameters and buffers are swapped for meta stand-ins for the call only, so no weights are
allocated and nothing of the model changes. Hooks record, for every module that runs, the
shapes it received and which module produced them. When the forward raises, the probe
names the module that raised, what it received, the module that produced it, and a fix.
When it cannot run on meta at all (an op whose output size depends on the data, such as
``nonzero`` in detection post-processing), it says how far it got.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from surgery import paths
from surgery._util import ModuleStack, first_line, tensors_in
from surgery.anatomy import Anatomy
from surgery.findings import Finding
from surgery.signature import (
    MetaState,
    Signature,
    _guard_transposed,
    _is_probe_limitation,
    input_signature,
    rebuild_text,
    run_on_meta,
    torch_class_name,
)

__all__ = ["ModelProbe", "probe_model"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class ModelProbe:
    """What the whole-model probe saw.

    Attributes:
        status: ``"ran"`` (the forward completed on meta), ``"raised"`` (the model raised: see
            ``finding``), ``"stopped"`` (an op could not run on meta; the modules that
            completed before it are still covered) or ``"skipped"`` (no input could be made).
        reason: Why it stopped or was skipped, in a few words.
        input: What it was fed, e.g. ``"2×3×320×320"``.
        completed: Paths of the modules whose forward completed, in order.
        finding: The ``channel-mismatch`` or ``shape-error`` finding when the model raised.
        raised_in: Path of the module that raised (``""`` for the model's own forward).
        output: The meta output when the forward completed.
    """

    status: str
    reason: str = ""
    input: str = ""
    completed: list[str] = field(default_factory=list)
    finding: Finding | None = None
    raised_in: str | None = None
    output: Any = None
    train: bool = False
    slot_io: dict[str, tuple[tuple[Any, ...], Any] | None] = field(default_factory=dict)

    def slot_output(self, model: nn.Module, path: str, shapes: Sequence[tuple[int, ...]]) -> Any:
        """What the slot at ``path`` returned in this probe when it was fed exactly one float32
        meta tensor of each of ``shapes`` (positionally, in one call) and every module in it is
        in the mode the probe ran in; None otherwise. A probe of the slot alone with those
        inputs would compute the same thing again."""
        seen = self.slot_io.get(path)
        if seen is None:
            return None
        args, output = seen
        if len(args) != len(shapes) or not all(
            isinstance(a, Tensor) and a.dtype == torch.float32 and tuple(a.shape) == tuple(s) for a, s in zip(args, shapes, strict=True)
        ):
            return None
        if any(m.training != self.train for m in model.get_submodule(path).modules()):
            return None
        return output

    def covers(self, path: str) -> bool:
        """True when the probe checked ``path``: it (or a module inside it) ran to completion,
        or it is where the probe found the model raising."""
        if not path:
            return self.status == "ran"
        prefix = path + "."
        ran = (*self.completed, self.raised_in) if self.raised_in else self.completed
        return any(c == path or c.startswith(prefix) for c in ran)


def _describe(value: Any) -> str:
    shapes = ["×".join(map(str, t.shape)) or "scalar" for t in tensors_in(value)]
    if not shapes:
        return type(value).__name__
    if len(shapes) > 3:
        return ", ".join(shapes[:3]) + f", … ({len(shapes)} tensors)"
    return ", ".join(shapes)


class _Watch(ModuleStack):
    """The module stack, plus which module produced each tensor and what each module received."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []  # the running modules with their inputs
        self.producer: dict[int, str] = {}
        self.alive: list[Tensor] = []  # keeps tagged tensors alive so their ids stay unique
        self.completed: list[str] = []
        self.with_params = {id(m) for m in model.modules() if next(m.parameters(), None) is not None}
        self.finished_with_params: list[str] = []

    def _push(self, module: nn.Module, args: Any) -> None:
        super()._push(module, args)
        self.calls.append((self.path(module), args))

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        super()._pop(module, args, output)
        path = self.path(module)
        while self.calls:
            if self.calls.pop()[0] == path:
                break
        for t in tensors_in(output):
            self.producer[id(t)] = path  # an outer module returning the same tensor takes it over
            self.alive.append(t)
        self.completed.append(path)
        if id(module) in self.with_params:
            self.finished_with_params.append(path)

    def producer_of(self, args: tuple[Any, ...], consumer: str) -> str | None:
        """The module that made what ``consumer`` received: the module whose output it is, or,
        when that module has no parameters (a pool, an activation) or a plain function made
        the tensor, the last module with parameters to finish. Modules inside ``consumer`` (the
        parametrization computing its weight) made none of its input."""
        inside = consumer + "."
        for t in tensors_in(args):
            found = self.producer.get(id(t))
            if found is not None and found != consumer and not found.startswith(inside):
                module = self.model.get_submodule(found) if found else self.model
                if id(module) in self.with_params:
                    return found
                break
        return next((p for p in reversed(self.finished_with_params) if not p.startswith(inside)), None)


def _width(layer: nn.Module, received: Tensor) -> int | None:
    """The width ``layer`` reads from ``received``: channels (dim 1, or 0 unbatched) for convs
    and norms, the last dimension for a linear layer."""
    if received.dim() == 0:
        return None
    if isinstance(layer, nn.Linear):
        return int(received.shape[-1])
    weight = getattr(layer, "weight", None)
    batched = not isinstance(layer, _CONV) or not isinstance(weight, Tensor) or received.dim() == weight.dim()
    if received.dim() < 2 and batched:
        return None
    return int(received.shape[1] if batched else received.shape[0])


def _rebuilt(layer: nn.Module, width: int) -> str | None:
    """A constructor call for a layer like ``layer`` that takes ``width``, or None when unknown."""
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return f"{torch_class_name(layer)}({width})"
    out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
    if isinstance(layer, (nn.Linear, *_CONV)) and isinstance(out, int) and getattr(layer, "groups", 1) == 1:
        return rebuild_text(layer, (width, out))
    return None


def _slot_of(path: str | None, consumer: str, slots: Sequence[str]) -> str | None:
    """The slot holding ``path`` (``path`` itself when it shares a slot with ``consumer``)."""
    if path is None:
        return None
    for slot in sorted(slots, key=len):
        inside = path == slot or path.startswith(slot + ".")
        if inside and not (consumer == slot or consumer.startswith(slot + ".")):
            return slot
    return path


def _finding(
    model: nn.Module, watch: _Watch, where: str, args: tuple[Any, ...], error: BaseException, slots: Sequence[str]
) -> Finding:
    """The finding for a probe that raised in ``where`` after receiving ``args``."""
    module = model.get_submodule(where) if where else model
    producer = _slot_of(watch.producer_of(args, where), where, slots)
    received = _describe(args)
    source = f" from {producer or '<model>'} ({type(model.get_submodule(producer)).__name__})" if producer is not None else ""
    name = where or "<model>"
    sig: Signature | None = input_signature(module) if where else None
    first = next(tensors_in(args), None)
    got = _width(module, first) if first is not None and sig is not None and sig.source == "" else None
    expected = sig.size if sig is not None and isinstance(sig.size, int) else None
    involved = tuple(p for p in (producer, where) if p is not None and p != "")
    if got is not None and expected is not None and got != expected:
        unit = "features" if sig is not None and sig.kind == "features" else "channels"
        weight = getattr(module, "weight", None)
        shape = f" (weight {tuple(weight.shape)})" if isinstance(weight, Tensor) else ""
        rebuilt = _rebuilt(module, got)
        fix = (f"{paths.expression(where, model)} = {rebuilt}" if rebuilt
               else f"rebuild {where} to take {got} {unit}")
        if producer:
            fix += f"  # or make {producer} produce {expected} {unit}"
        made = f"{producer} ({type(model.get_submodule(producer)).__name__}) produces" if producer else "the model's input has"
        return Finding("error", "channel-mismatch", involved,
                       f"{made} {got} {unit} but {name} ({type(module).__name__}) expects {expected}{shape}; it received {received}",
                       fix)
    if not where:
        after = f", after {producer} ({type(model.get_submodule(producer)).__name__}) completed" if producer else ""
        return Finding("error", "shape-error", (producer,) if producer else (),
                       f"{type(model).__name__}'s own forward raised {type(error).__name__}{after}: {first_line(error)}",
                       f"look at {type(model).__name__}.forward where it uses the output of {producer}" if producer else None)
    return Finding("error", "shape-error", involved or (where,),
                   f"{name} ({type(module).__name__}) raised {type(error).__name__} when fed {received}{source}: {first_line(error)}",
                   f"make {where} accept what {producer} produces ({received}), or change {producer}" if producer else None)


def probe_model(model: nn.Module, anatomy: Anatomy, image_size: int = 320, *, train: bool = False) -> ModelProbe:
    """Run the whole forward of ``model`` on meta tensors and say what happened.

    A producer inside another slot than the module that raised is named by that slot
    (``layer4`` rather than ``layer4.1.bn2``).

    Args:
        model: The model (left exactly as it was).
        anatomy: Its anatomy, which gives the input (:meth:`Anatomy.probe_inputs`) and the slots.
        image_size: Side of square image inputs.
        train: Run in train mode (for branches that run only there, such as auxiliary heads);
            eval mode otherwise.

    Returns:
        A :class:`ModelProbe`.
    """
    inputs = anatomy.probe_inputs(model, image_size)
    if inputs is None:
        return ModelProbe("skipped", "no input could be inferred: the model has no Conv, Linear or Embedding layer to read one from")
    state = MetaState(model)
    if state.lazy:
        return ModelProbe("skipped", "the model has lazy modules that are still uninitialized (their shapes come with the first forward)")
    described = _describe(inputs)
    slots = [slot.path for slot in anatomy.slots(model)]
    # the weights are swapped back by the state itself: only the modes move, and only when one differs
    flags = [(m, m.training) for m in model.modules()]
    moved = any(flag != train for _, flag in flags)
    try:
        if moved:
            model.train(train)
        # First with hooks on the slots alone (which of them ran is the coverage); a healthy
        # model needs no more. A failure is run again under the full watch, which names who
        # produced what the failing module received.
        ran = _SlotsRan(model, slots)
        try:
            with ran:
                output = _run(model, state, inputs)
            return ModelProbe("ran", "", described, ran.completed, output=output, train=train, slot_io=ran.io)
        except Exception as e:  # noqa: BLE001 - any failure inside user code becomes a finding or a stop
            if _is_probe_limitation(e):
                where = ran.innermost() or ""
                return ModelProbe("stopped", f"{where or '<model>'} ran {_op_of(e)}, which cannot run on meta",
                                  described, ran.completed, train=train, slot_io=ran.io)
        watch = _Watch(model)
        try:
            with watch:
                _run(model, state, inputs)
        except Exception as e:  # noqa: BLE001 - the same failure, now watched
            where, args = watch.calls[-1] if watch.calls else ("", inputs)
            return ModelProbe("raised", f"{where or '<model>'} raised {type(e).__name__}", described, list(watch.completed),
                              _finding(model, watch, where, args, e, slots), raised_in=where)
        return ModelProbe("ran", "", described, list(watch.completed))  # raised once, not twice: report what ran
    finally:
        if moved:
            for m, flag in flags:
                m.training = flag


def _op_of(error: BaseException) -> str:
    """The op a meta run could not run, as torch names it (``torch.nonzero``), else the error's first words."""
    text = first_line(error)
    found = re.search(r"\b(torch\.[\w.]+|aten::\w+|aten\.\w+)", text)
    return found.group(1).removesuffix("()") if found else f"an op ({text[:80]})"


def _run(model: nn.Module, state: MetaState, inputs: tuple[Any, ...]) -> Any:
    """One meta forward with the transposed-conv input checks the meta kernel lacks."""
    guards = _guard_transposed(model)
    try:
        return run_on_meta(model, state, inputs, {})
    finally:
        for h in guards:
            h.remove()


class _SlotsRan(ModuleStack):
    """The module stack over the slots only: which slots completed, and which was running; for
    each slot called once, with positional tensors only, what it received and returned."""

    def __init__(self, model: nn.Module, slots: Sequence[str]) -> None:
        names: dict[int, str] = {}
        for p in slots:
            if p:
                names.setdefault(id(model.get_submodule(p)), p)  # a module in two slots is named by the first
        super().__init__(model, names=names)
        self.slots = [model.get_submodule(p) for p in names.values()]
        self.completed: list[str] = []
        self.io: dict[str, tuple[tuple[Any, ...], Any] | None] = {}  # None: called twice, or with keywords
        self._keywords: set[int] = set()

    def __enter__(self) -> _SlotsRan:
        self.stack.clear()
        for m in self.slots:
            self.handles.append(m.register_forward_pre_hook(self._enter, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._pop))
        return self

    def _enter(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self._push(module, args)
        if kwargs:
            self._keywords.add(id(module))

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        super()._pop(module, args, output)
        path = self.path(module)
        self.completed.append(path)
        once = path not in self.io and id(module) not in self._keywords
        self.io[path] = (tuple(args), output) if once else None
