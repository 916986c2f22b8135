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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from surgery._util import require_module
from surgery.diff.structure import Change, brief, module_changes, slot_changes
from surgery.findings import Finding
from surgery.render.components import component_graph
from surgery.render.graph import FORMATS, INSTALL_HINT, Cluster, Edge, Graph, Node, dot_binary
from surgery.render.modules import module_graph

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

#: Diagram levels accepted by :func:`render`.
LEVELS: tuple[str, ...] = ("components", "modules")


def _observe(model: nn.Module, trace: Any, inputs: Any, depth: int | None) -> Trace | None:
    """The trace whose shapes label the edges: run one, take the one given, or none."""
    from surgery.trace import Trace
    from surgery.trace import trace as run_trace

    if isinstance(trace, Trace):
        return trace
    if trace is False or trace is None:
        return None
    if trace is True or trace == "auto":
        return run_trace(model, inputs, mode="eval", batch_size=1, depth=depth, strict=trace is True)
    raise ValueError(f"trace must be 'auto', True, False, None or a surgery.Trace, got {trace!r}")


def _findings_for(model: nn.Module, observed: Trace | None) -> list[Finding]:
    """What to draw: the static check's findings, then the traced forward's failure, if any.

    The failure counts wherever the forward failed (a head that returns a non-tensor fails
    later, in code outside any slot), and is dropped when a static finding already names the
    same fault, as ``check(trace=True)`` drops it, so a fault is listed once.
    """
    from surgery.check import check
    from surgery.findings import Report
    from surgery.trace.findings import _new_findings

    report = Report()
    report.extend(check(model).findings)
    if observed is not None and observed.failure is not None:
        report.extend(_new_findings([observed.failure], report.findings))
    return list(report.findings)


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
    ran = _observe(model, trace, input, depth if level == "modules" else None)
    findings = _findings_for(model, ran)
    observed = ran if ran is not None and any(c.finished for c in ran.calls) else None  # shapes label the edges only when some call finished
    if level == "components":
        graph = component_graph(model, before, observed, findings)
    else:
        graph = module_graph(model, before, depth, observed, findings)
    if path is not None:
        graph.save(path)
    return graph
