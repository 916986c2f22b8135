"""The DOT text of a diagram: deterministic, styled by before/after status and by findings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surgery.render.graph import Cluster, Edge, Graph, Node

__all__ = ["to_dot"]


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
_LEGEND_TEXT = {
    "added": "added",
    "removed": "removed",
    "changed": "changed",
    "unchanged": "unchanged",
    "error": "broken contract",
    "warning": "warning",
    "orphan": "never called",
}


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


def to_dot(graph: Graph) -> str:
    """The DOT text of ``graph``: clusters nested, nodes and edges in the graph's order.

    Args:
        graph: The diagram.

    Returns:
        The text, ending in a newline.
    """
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
