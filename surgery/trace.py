"""``surgery.trace``: watch one real forward pass (and optionally a backward) through hooks.

Forward pre- and post-hooks on every module record the calls in order, with the shapes and
dtypes of what each module received and returned (through tuples, lists, dicts, dataclasses
and torchvision's ``ImageList``). A ``TorchFunctionMode`` carries a producer tag forward
from each op's inputs to its outputs, so a tensor that leaves module A, goes through
``torch.cat``, slicing or ``roi_align`` and enters module B still names A: that is an edge
A → B. Module outputs are tagged by the module, unless every producer already recorded on
them lies inside it, so edges name the innermost module that made the data.

Nothing of the model changes: hooks, train/eval flags, ``requires_grad``, ``.grad``,
buffers, transform sizes and the global random state are restored, also when the model
raises mid-forward. Only shapes and dtypes are stored, never tensors, and the producer map
holds weak references, so tracing keeps no activation alive.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torchvision.models.detection.image_list import ImageList

from surgery._errors import IncompatibleError
from surgery._state import preserved
from surgery._util import device_of, first_line, require_module
from surgery.anatomy import Anatomy, anatomy_for
from surgery.findings import Finding, Severity
from surgery.synthetic import synthetic_batch

__all__ = ["TensorInfo", "Trace", "TraceCall", "TraceEdge", "trace", "trace_findings", "unused_parameter_findings", "MODES"]

#: Accepted values of ``trace(mode=...)``.
MODES = ("eval", "train", "both")
_MAX_NESTING = 8
_SCALARS = (int, float, bool, str, bytes, complex, type(None))
_DTYPE_NAMES: dict[torch.dtype, str] = {}
_SETITEM = Tensor.__setitem__


# --------------------------------------------------------------------------- result types


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one tensor a module received or returned.

    Attributes:
        key: Where it sat: ``"0"`` for the first positional argument, ``"0.pool"`` for key
            ``"pool"`` of a dict in it, ``"features"`` for a keyword argument,
            ``"0.tensors"`` for an ``ImageList``'s batch.
        shape: The tensor's shape.
        dtype: The dtype without the ``torch.`` prefix, e.g. ``"float32"``.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype}

    def __str__(self) -> str:
        text = _shape_text(self.shape)
        return text if self.dtype == "float32" else f"{text} {self.dtype}"


def _infos_text(infos: tuple[TensorInfo, ...], limit: int = 3) -> str:
    if not infos:
        return "-"
    text = ", ".join(str(i) for i in infos[:limit])
    return text + (f", … (+{len(infos) - limit})" if len(infos) > limit else "")


@dataclass
class TraceCall:
    """One call of one module, in the order the calls started.

    Attributes:
        index: Position in :attr:`Trace.calls`.
        path: Dotted path of the module (``""`` for the model itself).
        type: The module's class name.
        mode: ``"eval"`` or ``"train"``: the pass it belongs to.
        level: How many traced calls were active around it (0 for the model's own call).
        inputs: Tensors it received, flattened through containers.
        outputs: Tensors it returned (empty when it raised).
        producers: Modules whose outputs it received, sorted.
        finished: False when the call raised.
    """

    index: int
    path: str
    type: str
    mode: str
    level: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...] = ()
    producers: tuple[str, ...] = ()
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "level": self.level,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "producers": list(self.producers),
            "finished": self.finished,
        }

    def __str__(self) -> str:
        return f"{self.path or '<model>'} ({self.type}): {_infos_text(self.inputs)} → {_infos_text(self.outputs)}"


@dataclass(frozen=True)
class TraceEdge:
    """Data flow: ``dst`` received a tensor computed from an output of ``src``.

    Attributes:
        src: The producing module (or component).
        dst: The consuming module (or component).
        shapes: Shapes of what ``dst`` received from ``src``, on the first such call.
        modes: The passes in which the edge was seen.
    """

    src: str
    dst: str
    shapes: tuple[tuple[int, ...], ...]
    modes: tuple[str, ...]

    @property
    def pair(self) -> tuple[str, str]:
        """``(src, dst)``."""
        return (self.src, self.dst)

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "shapes": [list(s) for s in self.shapes], "modes": list(self.modes)}

    def __str__(self) -> str:
        shapes = ", ".join(_shape_text(s) for s in self.shapes[:4]) + (", …" if len(self.shapes) > 4 else "")
        return f"{self.src or '<model>'} → {self.dst or '<model>'}" + (f"  [{shapes}]" if shapes else "")


@dataclass
class Trace:
    """The result of :func:`trace`.

    Attributes:
        model: The model's class name.
        family: The anatomy that matched (``"R-CNN"``, ``"generic"``, ...).
        modes: The passes that ran, in order (``("eval",)``, ``("train",)`` or both).
        calls: Every traced module call, in the order the calls started.
        edges: Module-level data flow, in the order first seen.
        uncalled: Traced modules that never ran in any pass, top-most only (a module none of
            whose descendants ran either; containers whose children ran count as used).
        no_grad_params: Names of trainable parameters whose ``.grad`` stayed None after the
            backward (empty when no backward ran).
        losses: Loss values of the train pass, by name.
        components: The family's component slots present in the model, in data-flow order.
        backward: True when a backward ran.
        non_finite: Losses and outputs holding NaN or Inf, by name.
        failure: The ``shape-error`` finding when the forward or backward raised.
        findings: What the trace found: ``orphan-module``, ``unused-parameter``,
            ``non-finite`` and ``shape-error``.
    """

    model: str
    family: str
    modes: tuple[str, ...]
    calls: list[TraceCall] = field(default_factory=list)
    edges: list[TraceEdge] = field(default_factory=list)
    uncalled: list[str] = field(default_factory=list)
    no_grad_params: list[str] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    components: list[str] = field(default_factory=list)
    backward: bool = False
    non_finite: list[str] = field(default_factory=list)
    failure: Finding | None = None
    findings: list[Finding] = field(default_factory=list)
    _component_shapes: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = field(default_factory=dict, repr=False)
    _exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when no finding is at error severity."""
        return not any(f.severity == "error" for f in self.findings)

    def component_of(self, path: str) -> str | None:
        """The component slot that contains the module at ``path`` (None when none does)."""
        best: str | None = None
        for c in self.components:
            if (path == c or path.startswith(c + ".")) and (best is None or len(c) > len(best)):
                best = c
        return best

    def component_edges(self) -> list[TraceEdge]:
        """Data flow between the family's components (``backbone.body → backbone.fpn``, ...).

        A module-level edge counts for the components that contain its two ends; edges
        inside one component and ends outside every component are left out.

        Returns:
            One edge per component pair, in the order first seen; ``shapes`` are those the
            consuming component itself received from the producing one.
        """
        comp_cache: dict[str, str | None] = {}

        def comp(path: str) -> str | None:
            if path not in comp_cache:
                comp_cache[path] = self.component_of(path)
            return comp_cache[path]

        modes: dict[tuple[str, str], list[str]] = {}
        for e in self.edges:
            a, b = comp(e.src), comp(e.dst)
            if a is None or b is None or a == b:
                continue
            seen = modes.setdefault((a, b), [])
            seen.extend(m for m in e.modes if m not in seen)
        return [
            TraceEdge(a, b, self._component_shapes.get((a, b), ()), tuple(m for m in self.modes if m in ms))
            for (a, b), ms in modes.items()
        ]

    def flow(self) -> str:
        """The component-level flow as text, one producer per line."""
        edges = self.component_edges()
        if not edges:
            return "(no data flow between components was seen)"
        width = max(len(e.src) for e in edges)
        lines = []
        for e in edges:
            shapes = ", ".join(_shape_text(s) for s in e.shapes[:5]) + (f", … (+{len(e.shapes) - 5})" if len(e.shapes) > 5 else "")
            only = f"  ({e.modes[0]} only)" if len(self.modes) > 1 and len(e.modes) == 1 else ""
            lines.append(f"{e.src.ljust(width)} → {e.dst}" + (f"  [{shapes}]" if shapes else "") + only)
        return "\n".join(lines)

    def table(self) -> str:
        """The call table: one line per call, indented by nesting."""
        header = ("#", "mode", "module", "type", "inputs", "outputs")
        rows = [
            (str(c.index), c.mode, "  " * c.level + (c.path or "<model>"), c.type, _infos_text(c.inputs),
             _infos_text(c.outputs) if c.finished else "RAISED")
            for c in self.calls
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(len(header) - 1)) + "  " + r[-1] for r in [header, *rows]]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "family": self.family,
            "modes": list(self.modes),
            "calls": [c.to_dict() for c in self.calls],
            "edges": [e.to_dict() for e in self.edges],
            "components": list(self.components),
            "component_edges": [e.to_dict() for e in self.component_edges()],
            "uncalled": list(self.uncalled),
            "no_grad_params": list(self.no_grad_params),
            "losses": dict(self.losses),
            "backward": self.backward,
            "non_finite": list(self.non_finite),
            "failure": self.failure.to_dict() if self.failure else None,
            "findings": [f.to_dict() for f in self.findings],
        }

    def __str__(self) -> str:
        head = (
            f"surgery trace: {self.model} ({self.family}), {' + '.join(self.modes)}: {len(self.calls)} module calls, "
            f"{len(self.edges)} data-flow edges"
        )
        parts = [head, "", "Calls", self.table(), "", "Component flow", self.flow()]
        if self.losses:
            parts += ["", "Losses: " + ", ".join(f"{k}={v:.4g}" for k, v in self.losses.items())]
        if self.failure is None:
            parts += ["", "Never called: " + (", ".join(self.uncalled) if self.uncalled else "none")]
        if self.backward and self.failure is None:
            shown = ", ".join(self.no_grad_params[:12]) + (f", … (+{len(self.no_grad_params) - 12})" if len(self.no_grad_params) > 12 else "")
            parts.append("Trainable parameters without a gradient: " + (shown if self.no_grad_params else "none"))
        if self.findings:
            parts += ["", "Findings"] + [f"  {str(f).replace(chr(10), chr(10) + '  ')}" for f in self.findings]
        return "\n".join(parts)


# --------------------------------------------------------------------------- flattening


def _leaves(obj: Any, key: str, out: list[tuple[str, Tensor]], depth: int = 0) -> None:
    """Append ``(key, tensor)`` for every tensor inside ``obj``."""
    if isinstance(obj, Tensor):
        out.append((key, obj))
        return
    if depth >= _MAX_NESTING or isinstance(obj, _SCALARS):
        return
    if isinstance(obj, (list, tuple)):
        if isinstance(obj, torch.Size):
            return
        names = getattr(obj, "_fields", None)
        for i, v in enumerate(obj):
            if isinstance(v, _SCALARS):
                continue
            name = names[i] if names is not None and i < len(names) else str(i)
            _leaves(v, f"{key}.{name}" if key else name, out, depth + 1)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(v, _SCALARS):
                _leaves(v, f"{key}.{k}" if key else str(k), out, depth + 1)
    elif isinstance(obj, ImageList):
        _leaves(obj.tensors, f"{key}.tensors" if key else "tensors", out, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _leaves(getattr(obj, f.name, None), f"{key}.{f.name}" if key else f.name, out, depth + 1)


def _info(key: str, t: Tensor) -> TensorInfo:
    return TensorInfo(key, tuple(t.shape), _dtype_name(t.dtype))


# --------------------------------------------------------------------------- recording


class _Recorder:
    """State shared by the hooks and the function mode during one trace."""

    def __init__(self, components: list[str]) -> None:
        self.tags: dict[int, tuple[weakref.ref[Tensor], frozenset[str]]] = {}
        self.calls: list[TraceCall] = []
        self.stack: list[TraceCall] = []
        self.edges: dict[tuple[str, str], tuple[tuple[tuple[int, ...], ...], list[str]]] = {}
        self.comp_shapes: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {}
        self.called: set[str] = set()
        self.done: list[str] = []
        self.mode = "eval"
        self.components = set(components)
        self.comp_of: dict[str, str | None] = {}
        self._singletons: dict[str, frozenset[str]] = {}
        self._unions: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
        self._sorted_components = sorted(components, key=len, reverse=True)

    def component(self, path: str) -> str | None:
        found = self.comp_of.get(path, "")
        if found == "":
            found = next((c for c in self._sorted_components if path == c or path.startswith(c + ".")), None)
            self.comp_of[path] = found
        return found

    def tag_of(self, t: Tensor) -> frozenset[str] | None:
        entry = self.tags.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return None

    def union(self, a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
        key = (a, b)
        found = self._unions.get(key)
        if found is None:
            found = self._unions[key] = a | b
        return found

    def own(self, path: str) -> frozenset[str]:
        tag = self._singletons.get(path)
        if tag is None:
            tag = self._singletons[path] = frozenset((path,))
        return tag

    # hooks -----------------------------------------------------------------

    def make_hooks(self, path: str, type_name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        prefix = path + "." if path else ""
        is_component = path in self.components

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            with torch._C.DisableTorchFunction():
                leaves: list[tuple[str, Tensor]] = []
                _leaves(args, "", leaves)
                if kwargs:
                    _leaves(kwargs, "", leaves)
                infos = []
                found: dict[str, list[tuple[int, ...]]] = {}
                comp_found: dict[str, list[tuple[int, ...]]] = {}
                for key, t in leaves:
                    info = _info(key, t)
                    infos.append(info)
                    tag = self.tag_of(t)
                    if tag is None:
                        continue
                    comps: set[str] = set()
                    for producer in tag:
                        found.setdefault(producer, []).append(info.shape)
                        if is_component:
                            comp = self.component(producer)
                            if comp is not None and comp != path and comp not in comps:
                                comps.add(comp)
                                comp_found.setdefault(comp, []).append(info.shape)
                order = sorted(found)
                for producer in order:
                    edge = self.edges.get((producer, path))
                    if edge is None:
                        self.edges[(producer, path)] = (tuple(found[producer]), [self.mode])
                    elif self.mode not in edge[1]:
                        edge[1].append(self.mode)
                for comp, shapes in comp_found.items():
                    self.comp_shapes.setdefault((comp, path), tuple(shapes))
                call = TraceCall(len(self.calls), path, type_name, self.mode, len(self.stack), tuple(infos), producers=tuple(order))
                self.calls.append(call)
                self.stack.append(call)
                self.called.add(path)

        def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            with torch._C.DisableTorchFunction():
                stack = self.stack
                call = None
                while stack:
                    top = stack.pop()
                    if top.path == path:
                        call = top
                        break
                leaves: list[tuple[str, Tensor]] = []
                _leaves(output, "", leaves)
                own = self.own(path)
                tags = self.tags
                for _, t in leaves:
                    tag = self.tag_of(t)
                    if tag is not None and (not prefix or all(p.startswith(prefix) for p in tag)):
                        continue  # made inside this module: keep the more precise producer
                    tags[id(t)] = (weakref.ref(t), own)
                if call is not None:
                    call.outputs = tuple(_info(k, t) for k, t in leaves)
                    call.finished = True
                self.done.append(path)

        return pre, post


class _FlowMode(TorchFunctionMode):
    """Carries producer tags from each op's tensor inputs to its tensor outputs."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.tags = recorder.tags
        self.union = recorder.union

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        out = func(*args, **kwargs)
        tags = self.tags
        if not tags:
            return out
        if isinstance(out, Tensor):
            outs: Iterable[Any] = (out,)
        elif isinstance(out, (tuple, list)) and not isinstance(out, torch.Size):
            outs = out
        elif func is _SETITEM and args and isinstance(args[0], Tensor):
            outs = (args[0],)
        else:
            return out
        # tensors among the positional args (one level into lists/tuples) and the keyword args
        candidates = [b for a in args for b in (a if isinstance(a, (list, tuple)) else (a,))]
        if kwargs:
            candidates.extend(kwargs.values())
        tag: frozenset[str] | None = None
        for a in candidates:
            if isinstance(a, Tensor):
                entry = tags.get(id(a))
                if entry is not None and entry[0]() is a:
                    t = entry[1]
                    tag = t if tag is None or tag is t else self.union(tag, t)
        if tag is None:
            return out
        for o in outs:
            if isinstance(o, Tensor):
                tags[id(o)] = (weakref.ref(o), tag)
        return out


# --------------------------------------------------------------------------- running


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
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"depth must be None or an int >= 0, got {depth!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
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


# --------------------------------------------------------------------------- findings


def _failure(model: nn.Module, recorder: _Recorder, result: Trace, e: BaseException, phase: str, guessed_input: bool) -> Finding:
    """A ``shape-error`` naming where the pass raised; a warning when the input was only a guess
    (a synthetic batch for a model whose family does not say what it takes)."""
    severity: Severity = "warning" if guessed_input else "error"
    completed = recorder.done
    if phase == "backward":
        return Finding(
            severity, "shape-error", (),
            f"the backward of the train step raised {type(e).__name__}: {first_line(e)} "
            f"(losses: {', '.join(result.losses) or 'none'})",
            None,
        )
    call = recorder.stack[-1] if recorder.stack else None
    comp_paths: tuple[str, ...] = ()
    if call is None:
        where, type_name, received = "", type(model).__name__, ""
    else:
        where, type_name = call.path, call.type
        received = "; it received " + (", ".join(f"{i.key}: {i}" for i in call.inputs[:6]) or "no tensors")
        if len(call.inputs) > 6:
            received += f", … (+{len(call.inputs) - 6})"
        producers = []
        for p in call.producers:
            c = recorder.component(p) or p
            if c not in producers and c != (recorder.component(where) or where):
                producers.append(c)
        if producers:
            received += " from " + ", ".join(p or "<model>" for p in producers)
        comp_paths = tuple(producers)
    owner = recorder.component(where) if where else None
    paths = tuple(p for p in (*comp_paths, owner or where) if p)
    last = [p or "<model>" for p in completed[-4:]]
    ran = f"{len(completed)} module call{'s' if len(completed) != 1 else ''} had completed before"
    if last:
        ran += f" (the last: {', '.join(last)})"
    message = (
        f"{where or '<model>'} ({type_name}) raised {type(e).__name__} during the {phase}: {first_line(e)}{received}. {ran}"
    )
    if severity == "warning":
        message += (
            "; the synthetic input may not be what this model takes: pass inputs to surgery.trace() to check it"
        )
    fix = None
    if call is not None and comp_paths:
        fix = (f"rebuild {owner or where or 'the model'} so that it takes what {', '.join(comp_paths)} "
               f"produce{'s' if len(comp_paths) == 1 else ''} (the shapes above)")
    return Finding(severity, "shape-error", paths, message, fix)


def _orphan_target(path: str, slot_paths: list[str], all_paths: list[str]) -> str | None:
    """Where an orphan was probably meant to go: a slot, else a module, with the same name."""
    name = path.rsplit(".", 1)[-1]
    target = next((s for s in slot_paths if s.rsplit(".", 1)[-1] == name and s != path), None)
    if target is None:
        target = next((p for p in all_paths if p.rsplit(".", 1)[-1] == name and p != path and not p.startswith(path + ".")), None)
    return target


def unused_parameter_findings(
    model: nn.Module,
    names: Iterable[str],
    *,
    context: str = "the train step",
    detail: str = "DistributedDataParallel(find_unused_parameters=False) fails on this model.",
    orphans: Mapping[str, str | None] | None = None,
) -> list[Finding]:
    """Group trainable parameters that got no gradient by the top-most module they fill.

    A module all of whose trainable parameters are unused is reported once (its children are
    not repeated); leftover parameters of partly-used modules are grouped by their owner.

    Args:
        model: The model the parameter names refer to.
        names: Dotted parameter names (``named_parameters()`` form) that got no gradient.
        context: What found them, for the message (e.g. ``"the train step"``).
        detail: A sentence appended to each message.
        orphans: Modules found never to run, each with the slot it was probably meant for;
            a group inside one is told so, and its fix attaches the orphan there.

    Returns:
        One ``unused-parameter`` error per group, in module order.
    """
    unused = set(names)
    if not unused:
        return []
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    order = {n: i for i, n in enumerate(params)}
    groups: list[tuple[str, list[str], bool]] = []  # (module path, parameter names, whole module unused)
    covered: set[str] = set()
    for path, module in model.named_modules():
        mine = [f"{path}.{n}" if path else n for n, p in module.named_parameters() if p.requires_grad]
        if mine and set(mine) <= unused and not covered.intersection(mine):
            groups.append((path, mine, True))
            covered.update(mine)
    by_owner: dict[str, list[str]] = {}
    for name in sorted(unused - covered, key=lambda n: (order.get(n, len(order)), n)):
        by_owner.setdefault(name.rpartition(".")[0], []).append(name)
    groups.extend((owner, names_, False) for owner, names_ in by_owner.items())
    out = []
    for path, names_, whole in groups:
        count = sum(params[n].numel() for n in names_ if n in params)
        shown = ", ".join(n[len(path) + 1 :] if path else n for n in names_[:4]) + (", …" if len(names_) > 4 else "")
        where = f"{path} ({type(modules[path]).__name__})" if path in modules and path else path
        message = (f"{len(names_)} trainable parameter tensor(s) ({count:,} values) of {where or 'the model'} got no "
                   f"gradient from {context}: {shown}. {detail}")
        orphan = next((o for o in (orphans or {}) if path == o or path.startswith(o + ".")), None)
        if orphan is not None:
            target = (orphans or {})[orphan]
            message += f" {orphan} never runs."
            fix = f"model.{target} = model.{orphan}; del model.{orphan}" if target else f"del model.{orphan}"
        elif whole and path:
            fix = (f"call {path} in the forward pass (attach it to the slot that uses it), delete it, or freeze it: "
                   f"model.get_submodule({path!r}).requires_grad_(False)")
        else:
            fix = f"freeze them: model.get_parameter({names_[0]!r}).requires_grad_(False)"
        out.append(Finding("error", "unused-parameter", (path,) if path else (), message, fix))
    return out


def _findings(model: nn.Module, anatomy: Any, result: Trace) -> list[Finding]:
    out: list[Finding] = []
    both = "eval" in result.modes and "train" in result.modes
    declared = [s.path for s in anatomy.declared_slots(model)]
    all_paths = [p for p, _ in model.named_modules(remove_duplicate=False) if p]
    params = dict(model.named_parameters())
    no_grad = set(result.no_grad_params)
    orphans: dict[str, str | None] = {}
    for path in result.uncalled:
        module = model.get_submodule(path)
        own = [f"{path}.{n}" for n, p in module.named_parameters() if p.requires_grad]
        if result.backward and own and not all(n in no_grad for n in own if n in params):
            continue  # its parameters are used directly (e.g. module.weight), so it is not dead
        target = _orphan_target(path, declared, all_paths)
        orphans[path] = target
        n_params = sum(p.numel() for p in module.parameters())
        pass_text = "eval or train" if both else result.modes[0]
        message = f"{path} ({type(module).__name__}, {n_params:,} parameters) never ran in the traced {pass_text} pass"
        if not both:
            message += " (trace with mode='both' to rule out a module used only in the other mode)"
        message += ", so its parameters never train"
        if target:
            message += f"; it was probably meant for {target}"
            fix = f"model.{target} = model.{path}; del model.{path}"
        else:
            fix = f"del model.{path}  # or call it from its parent's forward"
        out.append(Finding("error" if both else "warning", "orphan-module", (path,) + ((target,) if target else ()), message, fix))
    if result.backward and result.no_grad_params:
        out.extend(unused_parameter_findings(model, result.no_grad_params, orphans=orphans))
    if result.non_finite:
        out.append(Finding("error", "non-finite", (), "NaN or Inf in " + ", ".join(result.non_finite), None))
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
    known = list(known)
    static_orphans = {f.paths[0] for f in known if f.code == "orphan-module" and f.paths}
    explained = {f.paths for f in known if f.severity == "error" and len(f.paths) == 2}
    return [
        f
        for f in result.findings
        if not (f.code == "orphan-module" and f.paths and f.paths[0] in static_orphans)
        and not (f.code == "shape-error" and f.paths in explained)
    ]
