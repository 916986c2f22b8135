"""What boxes and arrows say, shared by the component and module diagrams: parameter counts,
edge labels from traced shapes, where the flow came from, the title and the legend entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from surgery.overview import human

if TYPE_CHECKING:
    from surgery.render.graph import Edge, Node
    from surgery.trace import Trace

__all__ = ["diff_title", "flow_kind", "legend_entries", "shape_label", "shapes_text", "trainable_text"]


def trainable_text(params: int, trainable: int) -> str:
    """``"3.2M params, frozen"``: the parameter count and how much of it trains."""
    if params == 0:
        return "no parameters"
    if trainable == params:
        return f"{human(params)} params, trainable"
    if trainable == 0:
        return f"{human(params)} params, frozen"
    return f"{human(params)} params, {human(trainable)} trainable"


def shape_label(shapes: Sequence[tuple[int, ...]], fallback: str) -> str:
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


def shapes_text(shapes: Sequence[tuple[int, ...]]) -> str:
    """Traced shapes for a tooltip, the leading dimension written ``N``: it counts images or
    RoIs, and the number of RoIs depends on the weights, which would make the DOT text vary."""
    return ", ".join("×".join(["N", *map(str, s[1:])]) if s else "scalar" for s in shapes)


def flow_kind(observed: Trace | None) -> str:
    """Where edge labels came from: ``"trace"``, ``"partial trace"`` or ``"static"``."""
    if observed is None:
        return "static"
    return "trace" if observed.failure is None else "partial trace"


def diff_title(before: nn.Module, after: nn.Module) -> str:
    """The caption of a before/after diagram: ``"MaskRCNN: before → after"`` or ``"A → B"``."""
    a, b = type(before).__name__, type(after).__name__
    return f"{a}: before → after" if a == b else f"{a} → {b}"


def legend_entries(diff: bool, edges: Sequence[Edge], nodes: Sequence[Node]) -> tuple[str, ...]:
    """The legend keys a diagram needs: the statuses of a before/after diagram, then
    ``"error"`` / ``"warning"`` for findings drawn on flow edges and ``"orphan"`` for orphans."""
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
