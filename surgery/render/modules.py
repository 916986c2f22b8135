"""The module-level diagram: nested clusters down to a depth, leaves labelled with
:func:`~surgery.diff.structure.brief`. Works for any ``nn.Module``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise
from typing import TYPE_CHECKING

from torch import nn

from surgery.anatomy import anatomy_for
from surgery.diff.structure import Status, brief, merge_order, module_changes
from surgery.findings import Finding
from surgery.overview import count_params, human
from surgery.render.graph import Cluster, Edge, Graph, Node
from surgery.render.labels import diff_title, flow_kind, legend_entries, shape_label, shapes_text, trainable_text

if TYPE_CHECKING:
    from surgery.trace import Trace

__all__ = ["module_graph"]


def module_graph(model: nn.Module, before: nn.Module | None, depth: int | None, observed: Trace | None, findings: Sequence[Finding]) -> Graph:
    """The module-level :class:`Graph` of ``model``: nested clusters down to ``depth``.

    Args:
        model: The model drawn (the "after" model of a before/after diagram).
        before: The model before an edit, or None for a plain diagram.
        depth: How many levels of nesting to open (None: all).
        observed: The trace whose edges and shapes connect the boxes, or None.
        findings: The findings to draw on edges.

    Returns:
        The diagram.
    """
    new = dict(model.named_modules())
    old = dict(before.named_modules()) if before is not None else {}
    status_of: dict[str, Status] = {}
    if before is not None:
        for change in module_changes(before, model, unchanged=True):
            status_of[change.path] = change.status
        for path in merge_order(list(new), list(old)):
            if path and path not in status_of:  # inside an added/removed subtree
                status_of[path] = "added" if path not in old else "removed"

    order = merge_order(list(new), list(old)) if before is not None else list(new)

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
            label: tuple[str, ...] = (name, type(module).__name__, f"{n_desc} modules, {trainable_text(total, trainable)}")
            kind = "collapsed"
        else:
            label = (name, brief(module)) + ((trainable_text(total, trainable),) if total and trainable != total else ())
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
            connect(src, dst, shape_label(shapes, "boxes"), shapes_text(shapes))
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
    title = type(model).__name__ if before is None else diff_title(before, model)
    legend = legend_entries(before is not None, edges, nodes)
    return Graph(title, "modules", nodes, edges, clusters, flow_kind(observed), legend, list(findings))


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
