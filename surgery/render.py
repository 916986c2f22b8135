"""``surgery.render``: architecture diagrams, and before/after diagrams of an edit.

Two levels:

* **components** (the default): one node per slot of the model's anatomy (transform,
  backbone body, FPN, anchor generator, RPN head, RoI poolers, heads, predictors), each with
  its type, parameter count and trainable state. Edges follow the data flow, labelled with
  the shapes a traced forward pass saw (``256×14×14``) or, when no trace can run, with the
  producer's channels (``1024 ch``). An edge whose contract is broken is drawn red, with the
  finding's message as its tooltip.
* **modules**: nested clusters down to a depth, leaves labelled with their type and key
  hyperparameters (``Conv2d 256→512 3×3``). Works for any ``nn.Module``.

With ``before=`` the diagram is coloured: added slots green, removed slots red (dashed),
changed slots orange, unchanged ones grey, with a legend.

The DOT text is deterministic: node ids are the dotted paths, nodes and edges come in
registration / data-flow order, and nothing depends on memory addresses or timing, so
golden files and git diffs of diagrams are meaningful.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from surgery import paths as _paths
from surgery._errors import RenderError
from surgery._util import require_module
from surgery.anatomy import Anatomy, anatomy_for
from surgery.findings import Finding
from surgery.overview import Component, components, count_params, human
from surgery.signature import Signature

if TYPE_CHECKING:
    from surgery.trace import Trace

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "LEVELS",
    "Change",
    "Cluster",
    "Edge",
    "Graph",
    "Node",
    "brief",
    "dot_binary",
    "module_changes",
    "render",
    "slot_changes",
]

Status = Literal["added", "removed", "changed", "unchanged"]

#: Diagram levels accepted by :func:`render`.
LEVELS: tuple[str, ...] = ("components", "modules")
#: Output formats by file extension (``.dot`` needs no Graphviz binary).
FORMATS: dict[str, str] = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot"}
#: How to get Graphviz's ``dot`` binary, quoted in :class:`~surgery.RenderError`.
INSTALL_HINT = (
    "install Graphviz, which provides the `dot` binary: `apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS) or `conda install graphviz`"
)

# --------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class Node:
    """One box of a diagram.

    Attributes:
        id: The DOT node id: the module's dotted path.
        path: Dotted path of the module (in the model after the edit, or before it when removed).
        type: Class name (``"Old → New"`` when an edit changed it).
        label: The lines shown in the box.
        params: Parameter count (after the edit; before it for removed modules).
        trainable: Trainable parameter count.
        cluster: Id of the enclosing cluster, None at top level.
        status: ``"added"``, ``"removed"``, ``"changed"`` or ``"unchanged"`` in a before/after
            diagram; None otherwise.
        kind: ``"slot"``, ``"module"``, ``"collapsed"`` (a subtree cut at ``depth``) or
            ``"orphan"`` (a registered module the forward pass never calls).
        problem: Message of a finding attached to the node itself, if any.
        tooltip: Hover text in SVG output.
    """

    id: str
    path: str
    type: str
    label: tuple[str, ...]
    params: int
    trainable: int
    cluster: str | None = None
    status: Status | None = None
    kind: str = "slot"
    problem: str | None = None
    tooltip: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "type": self.type,
            "label": list(self.label),
            "params": self.params,
            "trainable": self.trainable,
            "cluster": self.cluster,
            "status": self.status,
            "kind": self.kind,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Edge:
    """One arrow: data flowing from ``src`` to ``dst``.

    Attributes:
        src: Producer node id.
        dst: Consumer node id.
        label: Shape (``"256×14×14"``), channels (``"1024 ch"``) or what flows (``"boxes"``).
        severity: ``"error"`` or ``"warning"`` when a finding about this pair is drawn on it.
        message: The finding's message (the edge's tooltip).
        status: ``"added"`` / ``"removed"`` in a before/after diagram, else None.
        tail: Cluster the edge leaves (module level, when ``src`` stands for a whole cluster).
        head: Cluster the edge enters (module level).
        detail: Every traced shape, the leading batch / RoI dimension written ``N`` (the tooltip).
        kind: ``"flow"`` (data flow), ``"orphan"`` (from a never-called module to the slot it
            was probably meant for) or ``"layout"`` (invisible; keeps siblings in
            registration order when no data flow is known).
    """

    src: str
    dst: str
    label: str = ""
    severity: str | None = None
    message: str = ""
    status: Status | None = None
    tail: str | None = None
    head: str | None = None
    detail: str = ""
    kind: str = "flow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "label": self.label,
            "severity": self.severity,
            "message": self.message,
            "status": self.status,
            "detail": self.detail,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Cluster:
    """A group of nodes: a parent module (``roi_heads``) or, at module level, any container.

    Attributes:
        id: DOT subgraph id (``"cluster_" + path``).
        path: Dotted path of the module it stands for.
        label: Caption.
        parent: Id of the enclosing cluster, None at top level.
        status: Before/after status, as for nodes.
    """

    id: str
    path: str
    label: str
    parent: str | None = None
    status: Status | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "label": self.label, "parent": self.parent, "status": self.status}


@dataclass
class Graph:
    """A diagram: nodes, edges and clusters, and its DOT text.

    Attributes:
        title: Caption (the model's class, or ``"Before → After"``).
        level: ``"components"`` or ``"modules"``.
        nodes: Boxes, in drawing order.
        edges: Arrows, in data-flow order.
        clusters: Groups, in drawing order.
        flow: Where the edge labels came from: ``"trace"``, ``"partial trace"`` (the traced
            forward raised part way) or ``"static"`` (the anatomy's flow and signatures).
        legend: Legend entries shown (empty when there is no legend).
        findings: The check (and trace) findings the diagram was drawn with.
        source: The DOT text (derived from the fields above).
    """

    title: str
    level: str
    nodes: list[Node]
    edges: list[Edge]
    clusters: list[Cluster] = field(default_factory=list)
    flow: str = "static"
    legend: tuple[str, ...] = ()
    findings: list[Finding] = field(default_factory=list)
    source: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.source = _to_dot(self)

    def node(self, path: str) -> Node:
        """The node of ``path``.

        Raises:
            KeyError: No node has that path.
        """
        for n in self.nodes:
            if n.path == path:
                return n
        raise KeyError(f"no node for {path!r}; nodes: {[n.path for n in self.nodes]}")

    def edge(self, src: str, dst: str) -> Edge:
        """The edge from ``src`` to ``dst``.

        Raises:
            KeyError: No such edge.
        """
        for e in self.edges:
            if e.src == src and e.dst == dst:
                return e
        raise KeyError(f"no edge {src} -> {dst}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "level": self.level,
            "flow": self.flow,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "clusters": [c.to_dict() for c in self.clusters],
            "legend": list(self.legend),
            "findings": [f.to_dict() for f in self.findings],
            "dot": self.source,
        }

    def __str__(self) -> str:
        return self.source

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the diagram; the format follows the extension (.svg, .png, .pdf or .dot).

        Args:
            path: Output file.

        Returns:
            The path written.

        Raises:
            ValueError: The extension is not one of :data:`FORMATS`.
            RenderError: Graphviz's ``dot`` binary is missing or failed. The DOT text is then
                written beside the requested file (same stem, ``.dot``).
        """
        out = Path(path)
        fmt = FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the format of {str(path)!r}: the extension must be one of {sorted(FORMATS)}")
        if fmt == "dot":
            out.write_text(self.source, encoding="utf-8")
            return out
        binary = dot_binary()
        if binary is None:
            fallback = out.with_suffix(".dot")
            fallback.write_text(self.source, encoding="utf-8")
            raise RenderError(
                f"cannot write {out}: Graphviz's `dot` binary is not on PATH; {INSTALL_HINT}. "
                f"The DOT text was written to {fallback} instead (render it later with `dot -T{fmt} {fallback} -o {out}`)."
            )
        data = _run_dot(binary, fmt, self.source)
        out.write_bytes(data)
        return out


def dot_binary() -> str | None:
    """Path of Graphviz's ``dot`` on the current ``PATH``, or None when it is not installed."""
    return shutil.which("dot", path=os.environ.get("PATH", ""))


def _run_dot(binary: str, fmt: str, source: str) -> bytes:
    import subprocess

    try:
        done = subprocess.run([binary, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RenderError(f"running {binary} -T{fmt} failed: {e}") from e
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"{binary} -T{fmt} exited with status {done.returncode}: {err}")
    return done.stdout


# --------------------------------------------------------------------------- describing modules


def _size(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        if len(set(value)) == 1:
            return str(value[0])
        return "×".join(map(str, value))
    return str(value)


def _kernel(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "×".join(map(str, value))
    return f"{value}×{value}"


def brief(module: nn.Module) -> str:
    """A one-line description: the type and its key hyperparameters.

    ``Conv2d 256→512 3×3``, ``Linear 12544→1024``, ``BatchNorm2d 64``,
    ``MaxPool2d 3×3 s2``; other modules give their class name.

    Args:
        module: Any module.

    Returns:
        The description.
    """
    t = type(module).__name__
    if isinstance(module, nn.modules.conv._ConvNd):
        text = f"{t} {module.in_channels}→{module.out_channels} {_kernel(module.kernel_size)}"
        if _size(module.stride) != "1":
            text += f" s{_size(module.stride)}"
        if _size(module.dilation) != "1":
            text += f" d{_size(module.dilation)}"
        if module.groups != 1:
            text += f" g{module.groups}"
        return text
    if isinstance(module, nn.Linear):
        return f"{t} {module.in_features}→{module.out_features}"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{t} {module.num_features}"
    if isinstance(module, nn.GroupNorm):
        return f"{t} {module.num_groups}/{module.num_channels}"
    if isinstance(module, nn.LayerNorm):
        return f"{t} {_size(tuple(module.normalized_shape))}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        text = f"{t} {_kernel(module.kernel_size)}"
        if module.stride is not None and _size(module.stride) != _size(module.kernel_size):
            text += f" s{_size(module.stride)}"
        return text
    if isinstance(module, nn.Dropout):
        return f"{t} p={module.p}"
    weight = module._buffers.get("weight") if "weight" not in module._parameters else None
    if weight is not None and weight.dim() == 1 and "running_mean" in module._buffers:  # FrozenBatchNorm2d and kin
        return f"{t} {int(weight.shape[0])}"
    output_size = getattr(module, "output_size", None)
    names = getattr(module, "featmap_names", None)
    if isinstance(names, (list, tuple)) and output_size is not None:
        return f"{t} {','.join(map(str, names))} → {_kernel(output_size)}"
    return t


def _trainable_text(params: int, trainable: int) -> str:
    if params == 0:
        return "no parameters"
    if trainable == params:
        return f"{human(params)} params, trainable"
    if trainable == 0:
        return f"{human(params)} params, frozen"
    return f"{human(params)} params, {human(trainable)} trainable"


# --------------------------------------------------------------------------- structural comparison


@dataclass(frozen=True)
class Change:
    """How one slot or module differs between two models.

    Attributes:
        path: Dotted path.
        status: ``"added"``, ``"removed"``, ``"changed"`` or ``"unchanged"``.
        before: Description before the edit (type and signature or hyperparameters), None when added.
        after: Description after the edit, None when removed.
        params_before: Parameters before (None when added).
        params_after: Parameters after (None when removed).
        what: What changed: any of ``"type"``, ``"signature"``, ``"hyperparameters"``,
            ``"params"``, ``"trainable"``.
        modules: Modules in the subtree (for an added or removed module, whose descendants are
            not listed separately).
    """

    path: str
    status: Status
    before: str | None
    after: str | None
    params_before: int | None
    params_after: int | None
    what: tuple[str, ...] = ()
    modules: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "before": self.before,
            "after": self.after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "what": list(self.what),
            "modules": self.modules,
        }

    def __str__(self) -> str:
        if self.status == "added":
            extra = f" ({self.modules} modules)" if self.modules > 1 else ""
            return f"+ {self.path}: {self.after}, {self.params_after:,} params{extra}"
        if self.status == "removed":
            extra = f" ({self.modules} modules)" if self.modules > 1 else ""
            return f"- {self.path}: {self.before}, {self.params_before:,} params{extra}"
        if self.status == "unchanged":
            return f"  {self.path}: {self.after}"
        text = f"~ {self.path}: {self.before} → {self.after}"
        if self.params_before != self.params_after:
            text += f", params {self.params_before:,} → {self.params_after:,}"
        return text + f" [{', '.join(self.what)}]"


def _merge(after: Sequence[str], before: Sequence[str]) -> list[str]:
    """``after``'s order, with items only in ``before`` inserted after their predecessor there."""
    out = list(after)
    seen = set(out)
    previous: str | None = None
    for item in before:
        if item not in seen:
            out.insert(out.index(previous) + 1 if previous is not None else 0, item)
            seen.add(item)
        previous = item
    return out


def _component_text(c: Component) -> str:
    if c.in_sig is None and c.out_sig is None:
        return c.type
    return f"{c.type} (in {c.in_sig or '?'}, out {c.out_sig or '?'})"


def slot_changes(before: nn.Module, after: nn.Module) -> list[Change]:
    """Compare two models slot by slot (their anatomy's components).

    A slot is changed when its type, its input/output signature, its parameter count or its
    trainable parameter count differ.

    Args:
        before: The model before the edit.
        after: The model after the edit.

    Returns:
        One :class:`Change` per slot of either model, unchanged ones included, in data-flow order.
    """
    old = {c.path: c for c in components(before)}
    new = {c.path: c for c in components(after)}
    out: list[Change] = []
    for path in _merge(list(new), list(old)):
        a, b = old.get(path), new.get(path)
        if a is None:
            assert b is not None
            out.append(Change(path, "added", None, _component_text(b), None, b.params))
            continue
        if b is None:
            out.append(Change(path, "removed", _component_text(a), None, a.params, None))
            continue
        what = []
        if a.type != b.type:
            what.append("type")
        if str(a.in_sig) != str(b.in_sig) or str(a.out_sig) != str(b.out_sig):
            what.append("signature")
        if a.params != b.params:
            what.append("params")
        if a.params - a.trainable != b.params - b.trainable:
            what.append("trainable")
        status: Status = "changed" if what else "unchanged"
        out.append(Change(path, status, _component_text(a), _component_text(b), a.params, b.params, tuple(what)))
    return out


def _own_key(module: nn.Module) -> tuple[Any, ...]:
    return (
        type(module).__qualname__,
        module.extra_repr(),
        tuple((n, tuple(p.shape)) for n, p in module._parameters.items() if p is not None),
        tuple((n, tuple(b.shape)) for n, b in module._buffers.items() if b is not None),
        tuple(p.requires_grad for p in module._parameters.values() if p is not None),
    )


def _module_what(a: nn.Module, b: nn.Module) -> tuple[str, ...]:
    ka, kb = _own_key(a), _own_key(b)
    what = []
    if ka[0] != kb[0]:
        what.append("type")
    if ka[1] != kb[1]:
        what.append("hyperparameters")
    if ka[2] != kb[2] or ka[3] != kb[3]:
        what.append("params")
    if ka[4] != kb[4]:
        what.append("trainable")
    return tuple(what)


def module_changes(before: nn.Module, after: nn.Module, *, unchanged: bool = False) -> list[Change]:
    """Compare two models module by module (dotted paths of ``named_modules``).

    A module is changed when its own type, hyperparameters (``extra_repr``), own parameter or
    buffer shapes, or own ``requires_grad`` flags differ; a container whose children changed
    is not itself changed. The descendants of an added or removed module are not listed
    separately (:attr:`Change.modules` counts them).

    Args:
        before: The model before the edit.
        after: The model after the edit.
        unchanged: Also list unchanged modules.

    Returns:
        The changes, in registration order (removed modules where they used to be). The
        root module itself is never listed.
    """
    old = dict(before.named_modules())
    new = dict(after.named_modules())
    out: list[Change] = []
    gone: list[str] = []  # roots of added/removed subtrees
    for path in _merge(list(new), list(old)):
        if path == "" or any(path.startswith(g + ".") for g in gone):
            continue
        a, b = old.get(path), new.get(path)
        if a is None or b is None:
            gone.append(path)
            module = b if b is not None else a
            assert module is not None
            size = sum(1 for _ in module.modules())
            params = count_params(module)[0]
            if a is None:
                out.append(Change(path, "added", None, brief(module), None, params, (), size))
            else:
                out.append(Change(path, "removed", brief(module), None, params, None, (), size))
            continue
        what = _module_what(a, b)
        if what or unchanged:
            out.append(Change(path, "changed" if what else "unchanged", brief(a), brief(b), count_params(a)[0], count_params(b)[0], what))
    return out


# --------------------------------------------------------------------------- observed flow (trace)


def _observe(model: nn.Module, trace: Any, inputs: Any, depth: int | None) -> Trace | None:
    """The trace whose shapes label the edges: run one, take the one given, or none."""
    from surgery.trace import Trace
    from surgery.trace import trace as run_trace

    if isinstance(trace, Trace):
        return trace
    if trace is False or trace is None:
        return None
    if trace is True or trace == "auto":
        result = run_trace(model, inputs, mode="eval", batch_size=1, depth=depth, strict=trace is True)
        return result if any(c.finished for c in result.calls) else None
    raise ValueError(f"trace must be 'auto', True, False, None or a surgery.Trace, got {trace!r}")


def _shape_label(shapes: Sequence[tuple[int, ...]], fallback: str) -> str:
    """An edge label from traced shapes, the leading batch / RoI dimension left out.

    One tensor gives ``256×14×14`` or ``1024 feat``; several feature maps give ``5 maps × 256 ch``
    or ``4 maps: 256,512,1024,2048 ch``; box tensors (``N×4``) keep ``fallback``
    (``proposals``, ``detections``, ``anchors``).
    """
    per = [tuple(s[1:]) for s in shapes if len(s) >= 2]
    if not per or all(len(s) == 1 and s[0] == 4 for s in per):
        return fallback
    if len(per) == 1:
        (only,) = per
        return f"{only[0]} feat" if len(only) == 1 else "×".join(map(str, only))
    if all(len(s) == 3 for s in per):
        channels = list(dict.fromkeys(s[0] for s in per))
        if len(channels) == 1:
            return f"{len(per)} maps × {channels[0]} ch"
        return f"{len(per)} maps: {','.join(map(str, (s[0] for s in per)))} ch"
    return ", ".join("×".join(map(str, s)) for s in per[:3]) + (", …" if len(per) > 3 else "")


def _shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    """Traced shapes for a tooltip, the leading dimension written ``N``: it counts images or
    RoIs, and the number of RoIs depends on the weights, which would make the DOT text vary."""
    return ", ".join("×".join(["N", *map(str, s[1:])]) if s else "scalar" for s in shapes)


def _reachable(edges: Sequence[tuple[str, str]], src: str, dst: str) -> bool:
    """True when ``dst`` can be reached from ``src`` along ``edges``."""
    frontier, seen = [src], {src}
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            if a == node and b not in seen:
                if b == dst:
                    return True
                seen.add(b)
                frontier.append(b)
    return False


# --------------------------------------------------------------------------- component level


def _is_pooler(module: nn.Module | None) -> bool:
    return module is not None and hasattr(module, "featmap_names") and hasattr(module, "output_size")


def _static_label(
    model: nn.Module, anatomy: Anatomy, comps: dict[str, Component], src: str, dst: str, flow: Sequence[tuple[str, str]]
) -> str:
    """What flows along a static edge: channels from the producer's output signature, or
    what kind of thing flows when it is not a feature map (the anatomy says)."""
    producer = _get(model, src)
    kind = anatomy.flow_label(model, src, dst)
    if kind is not None:
        return kind
    if _is_pooler(producer):
        assert producer is not None
        # the feature maps it pools, not the proposals/detections or anchors that also flow in
        feeding = [
            comps[a].out_sig
            for a, b in flow
            if b == src and a in comps and comps[a].out_sig is not None
            and anatomy.carries_features(model, a)
        ]
        channels = [sig.size for sig in feeding if isinstance(sig, Signature) and sig.kind == "channels"]
        size = producer.output_size if isinstance(producer.output_size, (tuple, list)) else (producer.output_size,) * 2
        if channels:
            return f"{channels[0]}×" + "×".join(map(str, size))
    c = comps.get(src)
    if c is not None and c.out_sig is not None:
        return str(c.out_sig)
    d = comps.get(dst)
    if d is not None and d.in_sig is not None:
        return str(d.in_sig)
    return ""


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return _paths.get(model, path)
    except AttributeError:
        return None


def _owner(path: str, node_paths: Sequence[str], consumer: str | None = None, flow: Sequence[tuple[str, str]] = ()) -> str | None:
    """The node standing for ``path``: itself, the node containing it, or (for a parent of
    several nodes such as ``backbone``) the one that feeds ``consumer``."""
    if path in node_paths:
        return path
    inside = [n for n in node_paths if n.startswith(path + ".") or path == ""]
    if inside:
        if consumer is not None:
            feeding = [n for n in inside if (n, consumer) in flow]
            if feeding:
                return feeding[-1]
        return inside[-1]
    holders = [n for n in node_paths if path.startswith(n + ".")]
    return max(holders, key=len) if holders else None


def _slot_node(path: str, comp: Component, *, status: Status | None, old: Component | None, cluster: str | None) -> Node:
    type_text = comp.type
    label = [path]
    if status == "changed" and old is not None:
        if old.type != comp.type:
            type_text = f"{old.type} → {comp.type}"
        label.append(type_text)
        if old.params != comp.params:
            label.append(f"{human(old.params)} → {human(comp.params)} params")
        else:
            label.append(_trainable_text(comp.params, comp.trainable))
        if str(old.in_sig) != str(comp.in_sig):
            label.append(f"in {old.in_sig or '?'} → {comp.in_sig or '?'}")
        if str(old.out_sig) != str(comp.out_sig):
            label.append(f"out {old.out_sig or '?'} → {comp.out_sig or '?'}")
    else:
        label.append(comp.type)
        label.append(_trainable_text(comp.params, comp.trainable))
    sig = f"in {comp.in_sig or '?'}, out {comp.out_sig or '?'}"
    return Node(
        id=path,
        path=path,
        type=type_text,
        label=tuple(label),
        params=comp.params,
        trainable=comp.trainable,
        cluster=cluster,
        status=status,
        kind="slot",
        tooltip=f"{path}\n{comp.role}\n{sig}",
    )


def _component_graph(model: nn.Module, before: nn.Module | None, observed: Trace | None, findings: Sequence[Finding]) -> Graph:
    anatomy = anatomy_for(model)
    comps = {c.path: c for c in components(model)}
    old_comps = {c.path: c for c in components(before)} if before is not None else {}
    changes = {c.path: c for c in slot_changes(before, model)} if before is not None else {}
    order = _merge(list(comps), list(old_comps)) if before is not None else list(comps)

    # Clusters: the first segment of dotted slot paths (backbone, rpn, roi_heads, head).
    cluster_ids: dict[str, Cluster] = {}
    for path in order:
        parent = anatomy.cluster_of(path)
        if parent is not None and parent not in cluster_ids:
            module = _get(model, parent) or (_get(before, parent) if before is not None else None)
            type_name = type(module).__name__ if module is not None else "?"
            status: Status | None = None
            if before is not None:
                in_new, in_old = _get(model, parent) is not None, _get(before, parent) is not None
                status = "added" if not in_old else "removed" if not in_new else None
            cluster_ids[parent] = Cluster(f"cluster_{parent}", parent, f"{parent} · {type_name}", None, status)

    nodes: list[Node] = []
    for path in order:
        parent = anatomy.cluster_of(path)
        cid = cluster_ids[parent].id if parent is not None else None
        if before is None:
            nodes.append(_slot_node(path, comps[path], status=None, old=None, cluster=cid))
            continue
        change = changes[path]
        comp = comps.get(path) or old_comps[path]
        nodes.append(_slot_node(path, comp, status=change.status, old=old_comps.get(path), cluster=cid))

    # Edges: the anatomy's flow, plus traced edges it does not imply; labelled with traced shapes.
    flow = list(anatomy.flow(model))
    traced: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {}
    if observed is not None:
        for e in observed.component_edges():
            if e.src in comps and e.dst in comps and e.src != e.dst:
                traced[(e.src, e.dst)] = e.shapes
        declared = list(flow)
        for pair in traced:
            if pair not in flow and not (declared and _reachable(declared, *pair)):
                flow.append(pair)
    if not flow and isinstance(model, nn.Sequential):
        flow = list(pairwise(comps))
    edges: list[Edge] = []
    for src, dst in flow:
        label = _static_label(model, anatomy, comps, src, dst, flow)
        shapes = traced.get((src, dst))
        detail = ""
        if shapes:
            label = _shape_label(shapes, label)
            detail = _shapes_text(shapes)
        status_e: Status | None = None
        if before is not None and ("added" in (changes[src].status, changes[dst].status)):
            status_e = "added"
        edges.append(Edge(src, dst, label, status=status_e, detail=detail))
    if before is not None:
        old_anatomy = anatomy_for(before)
        old_flow = old_anatomy.flow(before)
        for src, dst in old_flow:
            if (src, dst) not in flow:
                edges.append(Edge(src, dst, _static_label(before, old_anatomy, old_comps, src, dst, old_flow), status="removed"))

    nodes, edges = _apply_findings(nodes, edges, findings, model, flow)
    legend = _legend(before is not None, edges, nodes)
    title = type(model).__name__ if before is None else _diff_title(before, model)
    return Graph(title, "components", nodes, edges, list(cluster_ids.values()), _flow_kind(observed), legend, list(findings))


def _flow_kind(observed: Trace | None) -> str:
    if observed is None:
        return "static"
    return "trace" if observed.failure is None else "partial trace"


def _diff_title(before: nn.Module, after: nn.Module) -> str:
    a, b = type(before).__name__, type(after).__name__
    return f"{a}: before → after" if a == b else f"{a} → {b}"


def _apply_findings(
    nodes: list[Node], edges: list[Edge], findings: Sequence[Finding], model: nn.Module, flow: Sequence[tuple[str, str]]
) -> tuple[list[Node], list[Edge]]:
    """Draw findings: a finding about a (producer, consumer) pair marks that edge (adding a
    dashed one when the flow has none); an orphan gets its own node; any other finding marks
    the node it names."""
    node_paths = [n.path for n in nodes]
    nodes = list(nodes)
    edges = list(edges)
    for f in findings:
        if f.severity not in ("error", "warning") or not f.paths:
            continue
        if f.code == "orphan-module":
            orphan = f.paths[0]
            if orphan not in node_paths and _get(model, orphan) is not None:
                module = _paths.get(model, orphan)
                total, trainable = count_params(module)
                nodes.append(
                    Node(orphan, orphan, type(module).__name__, (orphan, type(module).__name__, "never called by forward"),
                         total, trainable, None, None, "orphan", f.message, f"{orphan}: {f.message}")
                )
                node_paths.append(orphan)
            target = _owner(f.paths[1], node_paths) if len(f.paths) > 1 else None
            if target is not None and target != orphan:
                edges.append(Edge(orphan, target, "meant for?", f.severity, f.message, kind="orphan"))
            continue
        if len(f.paths) >= 2:
            consumer = _owner(f.paths[1], node_paths)
            producer = _owner(f.paths[0], node_paths, consumer, flow)
            if producer is not None and consumer is not None and producer != consumer:
                for i, e in enumerate(edges):
                    if e.src == producer and e.dst == consumer and e.status != "removed":
                        if e.severity != "error":
                            edges[i] = replace(e, severity=f.severity, message=f.message, label=_broken_label(e.label, f, model))
                        break
                else:
                    edges.append(Edge(producer, consumer, f.code, f.severity, f.message))
                continue
        target = _owner(f.paths[0], node_paths)
        if target is not None:
            i = node_paths.index(target)
            n = nodes[i]
            if n.problem is None:
                nodes[i] = replace(n, problem=f.message, tooltip=f"{n.tooltip}\n{f.severity}: {f.message}")
    return nodes, edges


def _broken_label(label: str, finding: Finding, model: nn.Module) -> str:
    """The label of an edge a finding is drawn on: what flows, then what the consumer expects."""
    consumer = _get(model, finding.paths[1]) if len(finding.paths) > 1 else None
    if finding.code == "channel-mismatch" and consumer is not None:
        from surgery.signature import input_signature

        expected = input_signature(consumer)
        if expected is not None:
            return f"{label}\nexpects {expected}" if label else f"expects {expected}"
    return f"{label}\n{finding.code}" if label else finding.code


_LEGEND_TEXT = {
    "added": "added",
    "removed": "removed",
    "changed": "changed",
    "unchanged": "unchanged",
    "error": "broken contract",
    "warning": "warning",
    "orphan": "never called",
}


def _legend(diff: bool, edges: Sequence[Edge], nodes: Sequence[Node]) -> tuple[str, ...]:
    entries: list[str] = []
    if diff:
        entries += ["added", "removed", "changed", "unchanged"]
    if any(e.severity == "error" and e.kind == "flow" for e in edges):
        entries.append("error")
    if any(e.severity == "warning" and e.kind == "flow" for e in edges):
        entries.append("warning")
    if any(n.kind == "orphan" for n in nodes):
        entries.append("orphan")
    return tuple(entries)


# --------------------------------------------------------------------------- module level


def _module_graph(model: nn.Module, before: nn.Module | None, depth: int | None, observed: Trace | None, findings: Sequence[Finding]) -> Graph:
    new = dict(model.named_modules())
    old = dict(before.named_modules()) if before is not None else {}
    status_of: dict[str, Status] = {}
    if before is not None:
        for change in module_changes(before, model, unchanged=True):
            status_of[change.path] = change.status
        for path in _merge(list(new), list(old)):
            if path and path not in status_of:  # inside an added/removed subtree
                status_of[path] = "added" if path not in old else "removed"

    order = _merge(list(new), list(old)) if before is not None else list(new)

    child_map: dict[str, list[str]] = {p: [] for p in order}
    for p in order:
        if p:
            parent = p.rpartition(".")[0]
            child_map.setdefault(parent, []).append(p)

    def module_at(path: str) -> nn.Module:
        m = new.get(path)
        return m if m is not None else old[path]

    nodes: list[Node] = []
    clusters: list[Cluster] = []
    first_leaf: dict[str, str] = {}
    last_leaf: dict[str, str] = {}

    def walk(path: str, level: int, cluster: str | None) -> None:
        kids = child_map.get(path, [])
        module = module_at(path)
        total, trainable = count_params(module)
        name = path.rpartition(".")[2]
        status = status_of.get(path) if before is not None else None
        if kids and (depth is None or level < depth):
            cid = f"cluster_{path}"
            clusters.append(Cluster(cid, path, f"{name} · {type(module).__name__} · {human(total)}", cluster, status))
            for k in kids:
                walk(k, level + 1, cid)
            first_leaf[path] = first_leaf[kids[0]]
            last_leaf[path] = last_leaf[kids[-1]]
            return
        if kids:
            n_desc = sum(1 for _ in module.modules()) - 1
            label: tuple[str, ...] = (name, type(module).__name__, f"{n_desc} modules, {_trainable_text(total, trainable)}")
            kind = "collapsed"
        else:
            label = (name, brief(module)) + ((_trainable_text(total, trainable),) if total and trainable != total else ())
            kind = "module"
        if status == "changed" and path in old and path in new:
            was, now = brief(old[path]), brief(new[path])
            if was != now:
                label = (name, f"{was} →", now)
        nodes.append(Node(path, path, type(module).__name__, label, total, trainable, cluster, status, kind, None, path))
        first_leaf[path] = last_leaf[path] = path

    for top in child_map.get("", []):
        walk(top, 1, None)
    if not nodes:  # a model with no children is a single node
        total, trainable = count_params(model)
        nodes.append(Node("(root)", "", type(model).__name__, (type(model).__name__, brief(model)), total, trainable))
        first_leaf[""] = last_leaf[""] = "(root)"

    cluster_ids = {c.path for c in clusters}
    node_ids = {n.id for n in nodes}
    edges: list[Edge] = []
    seen: set[tuple[str, str]] = set()

    def connect(a: str, b: str, label: str = "", detail: str = "", kind: str = "flow") -> None:
        src, dst = last_leaf.get(a), first_leaf.get(b)
        if src is None or dst is None or src == dst or (src, dst) in seen:
            return
        seen.add((src, dst))
        edges.append(Edge(src, dst, label, tail=f"cluster_{a}" if a in cluster_ids else None,
                          head=f"cluster_{b}" if b in cluster_ids else None, detail=detail, kind=kind))

    if observed is not None:
        shown = set(first_leaf)
        gathered: dict[tuple[str, str], list[tuple[int, ...]]] = {}
        for e in observed.edges:
            src, dst = _shown(e.src, shown), _shown(e.dst, shown)
            # A container drawn as a cluster receives what its first child receives: draw that edge only.
            if src is None or dst is None or dst not in node_ids or src == dst or dst.startswith(src + ".") or src.startswith(dst + "."):
                continue
            shapes = gathered.setdefault((src, dst), [])
            shapes.extend(s for s in e.shapes if s not in shapes)
        for (src, dst), shapes in gathered.items():
            connect(src, dst, _shape_label(shapes, "boxes"), _shapes_text(shapes))
    else:
        for path in [""] + [c.path for c in clusters]:
            module = module_at(path) if path else model
            kids = child_map.get(path, [])
            if isinstance(module, nn.Sequential):
                for a, b in pairwise(kids):
                    connect(a, b)
        anatomy = anatomy_for(model)
        if anatomy.knows_model:
            for a, b in anatomy.flow(model):
                connect(a, b)
        # Without data flow, siblings would spread sideways: stack them in registration order.
        for path in [""] + [c.path for c in clusters]:
            kids = child_map.get(path, [])
            for a, b in pairwise(kids):
                connect(a, b, kind="layout")
    nodes, edges = _apply_module_findings(nodes, edges, findings, first_leaf, last_leaf)
    title = type(model).__name__ if before is None else _diff_title(before, model)
    legend = _legend(before is not None, edges, nodes)
    return Graph(title, "modules", nodes, edges, clusters, _flow_kind(observed), legend, list(findings))


def _shown(path: str, shown: set[str]) -> str | None:
    """The deepest displayed module containing ``path``."""
    p = path
    while True:
        if p in shown:
            return p
        if not p:
            return None
        p = p.rpartition(".")[0]


def _apply_module_findings(
    nodes: list[Node], edges: list[Edge], findings: Sequence[Finding], first_leaf: dict[str, str], last_leaf: dict[str, str]
) -> tuple[list[Node], list[Edge]]:
    shown = set(first_leaf)
    for f in findings:
        if f.severity not in ("error", "warning") or len(f.paths) < 2 or f.code == "orphan-module":
            continue
        a, b = _shown(f.paths[0], shown), _shown(f.paths[1], shown)
        if a is None or b is None or a == b:
            continue
        src, dst = last_leaf[a], first_leaf[b]
        for i, e in enumerate(edges):
            if e.src == src and e.dst == dst:
                if e.severity != "error":
                    edges[i] = replace(e, severity=f.severity, message=f.message)
                break
        else:
            edges.append(Edge(src, dst, f.code, f.severity, f.message))
    return nodes, edges


# --------------------------------------------------------------------------- DOT text


_FONT = "Helvetica"
_NODE_STYLE: dict[str | None, dict[str, str]] = {
    None: {"fillcolor": "#eaf1fb", "color": "#3d5a80", "fontcolor": "#1b263b"},
    "unchanged": {"fillcolor": "#f2f2f2", "color": "#9e9e9e", "fontcolor": "#555555"},
    "added": {"fillcolor": "#e3f4e1", "color": "#2e7d32", "fontcolor": "#1b3d1e", "penwidth": "2"},
    "removed": {"fillcolor": "#fde7e7", "color": "#c62828", "fontcolor": "#5c1010", "penwidth": "2", "style": "rounded,filled,dashed"},
    "changed": {"fillcolor": "#fff0dc", "color": "#ef6c00", "fontcolor": "#4a2500", "penwidth": "2"},
    "orphan": {"fillcolor": "#fde7e7", "color": "#c62828", "fontcolor": "#5c1010", "penwidth": "2", "style": "rounded,filled,dashed"},
}
_EDGE_COLOR = "#5c6b7a"
_ERROR_COLOR = "#d32f2f"
_WARNING_COLOR = "#e65100"
_STATUS_EDGE = {"added": "#2e7d32", "removed": "#c62828"}


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _h(text: str) -> str:
    """Text escaped for a DOT HTML-like label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _attrs(items: dict[str, str]) -> str:
    parts = []
    for k, v in items.items():
        parts.append(f"{k}={v}" if v.startswith("<") and v.endswith(">") else f"{k}={_q(v)}")
    return "[" + ", ".join(parts) + "]"


def _node_label(node: Node) -> str:
    lines = list(node.label)
    html = [f"<b>{_h(lines[0])}</b>"] if lines else []
    for i, line in enumerate(lines[1:], start=1):
        small = i == len(lines) - 1 and len(lines) > 2
        html.append(f'<font point-size="9">{_h(line)}</font>' if small else _h(line))
    return "<" + "<br/>".join(html) + ">"


def _node_dot(node: Node) -> str:
    style = dict(_NODE_STYLE["orphan" if node.kind == "orphan" else node.status])
    attrs = {"id": node.id, "label": _node_label(node), "tooltip": node.tooltip or node.path}
    if node.kind == "collapsed":
        style.setdefault("style", "rounded,filled")
        style["style"] = style["style"].replace("rounded", "rounded,bold") if "bold" not in style["style"] else style["style"]
    if node.problem is not None:
        style["color"] = _ERROR_COLOR
        style["penwidth"] = "2.5"
    attrs.update(style)
    return f"{_q(node.id)} {_attrs(attrs)}"


def _edge_dot(edge: Edge) -> str:
    attrs: dict[str, str] = {"id": f"{edge.src}->{edge.dst}"}
    if edge.kind == "layout":
        attrs["style"] = "invis"
        return f"{_q(edge.src)} -> {_q(edge.dst)} {_attrs(attrs)}"
    if edge.label:
        mark = {"error": "✗ ", "warning": "⚠ "}.get(edge.severity or "", "") if edge.kind == "flow" else ""
        attrs["label"] = f" {mark}{edge.label} "
    color = _EDGE_COLOR
    if edge.status in _STATUS_EDGE:
        color = _STATUS_EDGE[edge.status]
        if edge.status == "removed":
            attrs["style"] = "dashed"
    if edge.severity == "error":
        color = _ERROR_COLOR
        attrs["penwidth"] = "2.5"
    elif edge.severity == "warning":
        color = _WARNING_COLOR
        attrs["penwidth"] = "2"
        attrs["style"] = "dashed"
    if edge.kind == "orphan":
        attrs["style"] = "dashed"
    attrs["color"] = color
    if color != _EDGE_COLOR:
        attrs["fontcolor"] = color
    if edge.message:
        tooltip = edge.message
    else:
        tooltip = f"{edge.src} → {edge.dst}" + (f": {edge.detail or edge.label}" if edge.detail or edge.label else "")
    attrs["tooltip"] = tooltip
    attrs["labeltooltip"] = tooltip
    if edge.tail:
        attrs["ltail"] = edge.tail
    if edge.head:
        attrs["lhead"] = edge.head
    return f"{_q(edge.src)} -> {_q(edge.dst)} {_attrs(attrs)}"


def _cluster_attrs(cluster: Cluster) -> list[str]:
    color = {"added": "#2e7d32", "removed": "#c62828", "changed": "#ef6c00"}.get(cluster.status or "", "#9aa5b1")
    style = "rounded,dashed" if cluster.status == "removed" else "rounded"
    return [
        f"id={_q(cluster.id)}",
        f"label={_q(cluster.label)}",
        f"style={_q(style)}",
        f"color={_q(color)}",
        f"fontcolor={_q('#334155')}",
        'fontsize="11"',
        'labeljust="l"',
    ]


def _legend_dot(entries: Sequence[str]) -> list[str]:
    rows = ['<tr><td colspan="2" align="left"><b>legend</b></td></tr>']
    for key in entries:
        if key in _NODE_STYLE:
            s = _NODE_STYLE[key]
            dashed = ' style="dashed"' if "dashed" in s.get("style", "") else ""
            swatch = f'<td bgcolor="{s["fillcolor"]}" color="{s["color"]}" border="2"{dashed} width="30" height="16"></td>'
        else:
            color = _ERROR_COLOR if key == "error" else _WARNING_COLOR
            swatch = f'<td width="30"><font color="{color}"><b>{"━━━" if key == "error" else "╍╍╍"}</b></font></td>'
        rows.append(f'<tr>{swatch}<td align="left">{_h(_LEGEND_TEXT[key])}</td></tr>')
    table = '<<table border="1" color="#9aa5b1" cellborder="0" cellspacing="3" cellpadding="2">' + "".join(rows) + "</table>>"
    return [f'"legend" [id="legend", shape="plaintext", style="", margin="0", label={table}, tooltip="legend"];']


def _to_dot(graph: Graph) -> str:
    module_level = graph.level == "modules"
    lines = [
        f"digraph {_q(graph.title)} {{",
        "  graph ["
        + ", ".join(
            [
                f"label={_q(graph.title)}",
                'labelloc="t"',
                f"fontname={_q(_FONT)}",
                'fontsize="16"',
                f"rankdir={_q('TB')}",
                f"nodesep={_q('0.25' if module_level else '0.4')}",
                f"ranksep={_q('0.3' if module_level else '0.45')}",
                f"compound={_q('true')}",
                f"bgcolor={_q('white')}",
                f"tooltip={_q(graph.title)}",
            ]
        )
        + "];",
        f'  node [shape="box", style="rounded,filled", fontname={_q(_FONT)}, fontsize="{"10" if module_level else "11"}", margin="0.12,0.06"];',
        f'  edge [fontname={_q(_FONT)}, fontsize="9", color={_q(_EDGE_COLOR)}, arrowsize="0.7"];',
    ]
    # Items per cluster, in order of first appearance.
    by_id = {c.id: c for c in graph.clusters}
    items: dict[str | None, list[tuple[str, str]]] = {}
    placed: set[str] = set()

    def place(cluster: str | None) -> None:
        while cluster is not None and cluster not in placed:
            placed.add(cluster)
            parent = by_id[cluster].parent
            items.setdefault(parent, []).append(("cluster", cluster))
            cluster = parent

    for c in graph.clusters:
        items.setdefault(c.id, [])
    for n in graph.nodes:
        place(n.cluster)
        items.setdefault(n.cluster, []).append(("node", n.id))
    nodes = {n.id: n for n in graph.nodes}

    def emit(cluster: str | None, indent: str) -> None:
        for kind, ident in items.get(cluster, []):
            if kind == "node":
                lines.append(f"{indent}{_node_dot(nodes[ident])};")
            else:
                lines.append(f"{indent}subgraph {_q(ident)} {{")
                lines.extend(f"{indent}  {a};" for a in _cluster_attrs(by_id[ident]))
                emit(ident, indent + "  ")
                lines.append(f"{indent}}}")

    emit(None, "  ")
    for e in graph.edges:
        lines.append(f"  {_edge_dot(e)};")
    if graph.legend:
        lines.extend("  " + line for line in _legend_dot(graph.legend))
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def _findings_for(model: nn.Module, observed: Trace | None) -> list[Finding]:
    """What to draw: the static check's findings, then the traced forward's failure, if any."""
    from surgery.check import check

    findings = list(check(model).findings)
    if observed is not None and observed.failure is not None and len(observed.failure.paths) >= 2:
        findings.append(observed.failure)
    return findings


def render(
    model: nn.Module,
    path: str | os.PathLike[str] | None = None,
    *,
    before: nn.Module | None = None,
    level: str = "components",
    depth: int | None = None,
    input: Any = None,  # noqa: A002 - the public keyword the docs use
    trace: Any = "auto",
) -> Graph:
    """Draw ``model``: its components (default) or its module tree, optionally as a
    before/after diagram.

    Nothing about either model changes (modes, hooks, parameters, transform sizes).

    Args:
        model: The model to draw (the "after" model when ``before`` is given).
        path: Where to write the diagram; the extension picks the format (.svg, .png, .pdf,
            .dot). None only builds the :class:`Graph`.
        before: The model before an edit: nodes are then coloured added / removed / changed /
            unchanged and a legend is drawn.
        level: ``"components"`` (one node per slot) or ``"modules"`` (nested clusters).
        depth: Module level only: how many levels of nesting to open (None: all).
        input: Input for the traced forward pass that labels the edges with shapes (default:
            a synthetic batch fitting the model's family).
        trace: ``"auto"`` traces when it can and falls back to the static flow; True demands
            a trace; False draws the static flow only; a ``Trace`` object is used as is.

    Returns:
        The :class:`Graph` (its ``source`` is the DOT text).

    Raises:
        NotAModuleError: ``model`` or ``before`` is not an ``nn.Module``.
        ValueError: ``level``, ``depth`` or the file extension is not allowed.
        RenderError: An image was asked for and Graphviz's ``dot`` is missing (the DOT text is
            then written beside it) or failed.
    """
    require_module(model, "render()")
    if before is not None:
        require_module(before, "render()", "before")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if depth is not None:
        if level != "modules":
            raise ValueError(f"depth applies to level='modules' only, got depth={depth!r} with level={level!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1 or None, got {depth!r}")
    if path is not None and Path(path).suffix.lower() not in FORMATS:
        raise ValueError(f"cannot tell the format of {str(path)!r}: the extension must be one of {sorted(FORMATS)}")
    observed = _observe(model, trace, input, depth if level == "modules" else None)
    findings = _findings_for(model, observed)
    if level == "components":
        graph = _component_graph(model, before, observed, findings)
    else:
        graph = _module_graph(model, before, depth, observed, findings)
    if path is not None:
        graph.save(path)
    return graph
