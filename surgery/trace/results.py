"""The results of :func:`surgery.trace`: :class:`TensorInfo`, :class:`TraceCall`,
:class:`TraceEdge` and :class:`Trace`, with their text and dict forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from surgery import _html
from surgery.findings import Finding

__all__ = ["TensorInfo", "Trace", "TraceCall", "TraceEdge", "dtype_name"]

_DTYPE_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """``dtype`` without the ``torch.`` prefix (``"float32"``), computed once per dtype."""
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
    _eval_outcome: str | None = field(default=None, repr=False, compare=False)

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

    def _repr_html_(self) -> str:
        return _html.fragment(_html.trace(self))

    def __repr__(self) -> str:
        return _html.short_repr("Trace", f"{self.model} ({self.family}) {'+'.join(self.modes)}: {len(self.calls)} calls, "
                                         f"{len(self.edges)} edges, {len(self.findings)} finding(s)")

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
