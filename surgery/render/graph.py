"""The diagram types (:class:`Node`, :class:`Edge`, :class:`Cluster`, :class:`Graph`) and
Graphviz's ``dot`` binary, which turns the DOT text into SVG, PNG or PDF."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgery._errors import RenderError
from surgery.diff.structure import Status
from surgery.findings import Finding
from surgery.render.dot import to_dot

__all__ = ["FORMATS", "INSTALL_HINT", "Cluster", "Edge", "Graph", "Node", "dot_binary"]

#: Output formats by file extension (``.dot`` needs no Graphviz binary).
FORMATS: dict[str, str] = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot"}
#: How to get Graphviz's ``dot`` binary, quoted in :class:`~surgery.RenderError`.
INSTALL_HINT = (
    "install Graphviz, which provides the `dot` binary: `apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS) or `conda install graphviz`"
)


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
        self.source = to_dot(self)

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

    def __repr__(self) -> str:
        return f"<Graph {self.title!r} ({self.level}, {self.flow} flow): {len(self.nodes)} nodes, {len(self.edges)} edges>"

    def svg(self) -> str:
        """The diagram as SVG text, for embedding in a page (no XML prologue).

        Raises:
            RenderError: Graphviz's ``dot`` binary is missing or failed.
        """
        binary = dot_binary()
        if binary is None:
            raise RenderError(f"cannot draw the diagram as SVG: Graphviz's `dot` binary is not on PATH; {INSTALL_HINT}")
        text = _run_dot(binary, "svg", self.source).decode("utf-8")
        return text[text.find("<svg"):]

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """What Jupyter shows: the SVG when Graphviz's ``dot`` is installed (and works), else the DOT text."""
        try:
            return {"image/svg+xml": self.svg(), "text/plain": repr(self)}
        except RenderError:
            return {"text/plain": self.source}

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
