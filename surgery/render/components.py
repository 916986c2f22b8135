"""The component-level diagram: one node per slot of the model's anatomy, edges along its data
flow (labelled with traced shapes when a trace ran), findings drawn on the edges they concern."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise
from typing import TYPE_CHECKING

from torch import nn

from surgery import paths as _paths
from surgery.anatomy import Anatomy, anatomy_for
from surgery.diff.structure import Status, merge_order, slot_changes
from surgery.findings import Finding
from surgery.overview import Component, components, count_params, human
from surgery.render.graph import Cluster, Edge, Graph, Node
from surgery.render.labels import diff_title, flow_kind, legend_entries, shape_label, shapes_text, trainable_text
from surgery.signature import Signature

if TYPE_CHECKING:
    from surgery.trace import Trace

__all__ = ["component_graph"]


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


def _is_pooler(module: nn.Module | None) -> bool:
    return module is not None and hasattr(module, "featmap_names") and hasattr(module, "output_size")


def _static_label(
    model: nn.Module, anatomy: Anatomy, comps: dict[str, Component], src: str, dst: str, flow: Sequence[tuple[str, str]]
) -> str:
    """What flows along a static edge: channels from the producer's output signature, or
    what kind of thing flows when it is not a feature map (the anatomy says)."""
    producer = _paths.find(model, src)
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
            label.append(trainable_text(comp.params, comp.trainable))
        if str(old.in_sig) != str(comp.in_sig):
            label.append(f"in {old.in_sig or '?'} → {comp.in_sig or '?'}")
        if str(old.out_sig) != str(comp.out_sig):
            label.append(f"out {old.out_sig or '?'} → {comp.out_sig or '?'}")
        if old.config != comp.config:
            label.append(f"{old.config or '-'} →")
            label.append(comp.config or "-")
        elif comp.config:
            label.append(comp.config)
    else:
        label.append(comp.type)
        label.append(trainable_text(comp.params, comp.trainable))
        if comp.config:
            label.append(comp.config)
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


def component_graph(model: nn.Module, before: nn.Module | None, observed: Trace | None, findings: Sequence[Finding]) -> Graph:
    """The component-level :class:`Graph` of ``model``.

    Args:
        model: The model drawn (the "after" model of a before/after diagram).
        before: The model before an edit, or None for a plain diagram.
        observed: The trace whose shapes label the edges, or None for the static flow.
        findings: The findings to draw on nodes and edges.

    Returns:
        The diagram.
    """
    anatomy = anatomy_for(model)
    comps = {c.path: c for c in components(model)}
    old_comps = {c.path: c for c in components(before)} if before is not None else {}
    changes = {c.path: c for c in slot_changes(before, model)} if before is not None else {}
    order = merge_order(list(comps), list(old_comps)) if before is not None else list(comps)

    # Clusters: the first segment of dotted slot paths (backbone, rpn, roi_heads, head).
    cluster_ids: dict[str, Cluster] = {}
    for path in order:
        parent = anatomy.cluster_of(path)
        if parent is not None and parent not in cluster_ids:
            module = _paths.find(model, parent) or (_paths.find(before, parent) if before is not None else None)
            type_name = type(module).__name__ if module is not None else "?"
            status: Status | None = None
            if before is not None:
                in_new, in_old = _paths.find(model, parent) is not None, _paths.find(before, parent) is not None
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
            label = shape_label(shapes, label)
            detail = shapes_text(shapes)
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
    legend = legend_entries(before is not None, edges, nodes)
    title = type(model).__name__ if before is None else diff_title(before, model)
    return Graph(title, "components", nodes, edges, list(cluster_ids.values()), flow_kind(observed), legend, list(findings))


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
            if orphan not in node_paths and _paths.find(model, orphan) is not None:
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
    consumer = _paths.find(model, finding.paths[1]) if len(finding.paths) > 1 else None
    if finding.code == "channel-mismatch" and consumer is not None:
        from surgery.signature import input_signature

        expected = input_signature(consumer)
        if expected is not None:
            return f"{label}\nexpects {expected}" if label else f"expects {expected}"
    return f"{label}\n{finding.code}" if label else finding.code
