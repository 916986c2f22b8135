"""HTML for notebooks and the review page: the shared pieces (escaping, tables, badges,
collapsible sections, the style sheet) and one renderer per result class.

Every result class's ``_repr_html_`` calls its renderer here, so the pieces exist once.
Everything that comes from a model (paths, class names, messages, fixes) goes through
:func:`esc`; only :class:`Raw` strings, which this module builds, are inserted as they are.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from surgery._util import fmt_bytes

if TYPE_CHECKING:
    from surgery.diff import Diff
    from surgery.edit.adapting import Adaptation
    from surgery.edit.freezing import TrainableSummary
    from surgery.edit.num_classes import ClassChange
    from surgery.findings import Finding, Report
    from surgery.overview import Overview
    from surgery.smoke.result import SmokeResult
    from surgery.trace.results import Trace

__all__ = ["CSS", "Raw", "badge", "code", "details", "esc", "findings_table", "fragment", "join", "page", "pre", "short_repr", "table", "tag"]

#: The one style sheet: inlined once per notebook output (scoped to ``.sg``) and once per page.
CSS = """
.sg{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  font-size:14px;line-height:1.45;color:#1f2328}
.sg h1{font-size:24px;margin:0 0 4px}
.sg h2{font-size:18px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #d0d7de}
.sg h3{font-size:15px;margin:12px 0 6px}
.sg p{margin:6px 0}
.sg .sg-muted{color:#59636e}
.sg table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
.sg th,.sg td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
.sg th{background:#f6f8fa;font-weight:600}
.sg tr:nth-child(even) td{background:#fbfcfd}
.sg td.sg-num,.sg th.sg-num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sg code,.sg pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.sg code{background:#f2f4f7;border-radius:4px;padding:1px 4px}
.sg .sg-findings td:nth-child(2) code{white-space:nowrap}
.sg pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:10px;overflow:auto;margin:6px 0}
.sg .sg-badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;
  line-height:20px;white-space:nowrap;color:#fff}
.sg .sg-error,.sg .sg-failed,.sg .sg-removed{background:#d32f2f}
.sg .sg-warning,.sg .sg-changed{background:#ed6c02}
.sg .sg-info,.sg .sg-skipped{background:#0277bd}
.sg .sg-ok,.sg .sg-added{background:#2e7d32}
.sg .sg-unchanged,.sg .sg-none{background:#8c959f}
.sg details{margin:6px 0}
.sg summary{cursor:pointer;color:#0969da}
.sg .sg-verdict{border-radius:8px;padding:12px 16px;margin:12px 0;font-size:16px;font-weight:600;color:#fff}
.sg .sg-cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.sg .sg-card{border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:120px;background:#fff}
.sg .sg-card b{display:block;font-size:20px}
.sg .sg-bar{display:inline-block;height:8px;border-radius:4px;background:#2e7d32;vertical-align:middle}
.sg .sg-diagram{border:1px solid #d0d7de;border-radius:8px;padding:8px;overflow:auto;background:#fff}
.sg .sg-diagram svg{max-width:100%;height:auto}
"""


class Raw(str):
    """HTML built by this module: inserted as it is, never escaped again."""

    __slots__ = ()


def esc(value: object) -> Raw:
    """``value`` as text, with ``& < > " '`` escaped (a :class:`Raw` value passes unchanged)."""
    if isinstance(value, Raw):
        return value
    return Raw(html.escape(str(value), quote=True))


def join(*parts: object) -> Raw:
    """The parts one after the other, each escaped unless it is :class:`Raw`."""
    return Raw("".join(esc(p) for p in parts))


def tag(name: str, body: object = "", cls: str = "", **attrs: str) -> Raw:
    """``<name class=cls ...>body</name>``, ``body`` escaped unless :class:`Raw`."""
    attrs = {"class": cls, **{k.rstrip("_"): v for k, v in attrs.items()}}
    extra = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items() if v)
    return Raw(f"<{name}{extra}>{esc(body)}</{name}>")


def badge(text: str, kind: str) -> Raw:
    """A coloured pill; ``kind`` is a severity, a status (ok, failed, added, ...) or ``"none"``."""
    return tag("span", text, f"sg-badge sg-{kind}")


def code(text: object) -> Raw:
    return tag("code", text)


def pre(text: object) -> Raw:
    return tag("pre", text)


def muted(text: object) -> Raw:
    return tag("span", text, "sg-muted")


def details(summary: object, body: object, *, open_: bool = False) -> Raw:
    """A collapsible section (``<details>``), closed unless ``open_``."""
    return Raw(f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{esc(body)}</details>")


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Iterable[int] = (), id_: str = "", cls: str = "") -> Raw:
    """A table; cells are escaped unless :class:`Raw`, columns in ``numeric`` align right."""
    right = set(numeric)

    def cell(name: str, i: int, value: object) -> str:
        return tag(name, value, "sg-num" if i in right else "")

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return tag("table", Raw(f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"), cls, id=id_)


def fragment(*parts: object) -> Raw:
    """A notebook output: the parts in a ``.sg`` box, with the style sheet."""
    return Raw(f'<div class="sg"><style>{CSS}</style>{join(*parts)}</div>')


def page(title: str, *parts: object) -> str:
    """A whole self-contained HTML page (inline style, no remote asset)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}body{{margin:0;background:#f6f8fa}}"
        ".sg-page{max-width:1180px;margin:0 auto;padding:24px 32px 48px;background:#fff;min-height:100vh}</style></head>"
        f'<body><main class="sg sg-page">{join(*parts)}</main></body></html>\n'
    )


def short_repr(kind: str, text: str, limit: int = 300) -> str:
    """``<kind text>``, ``text`` cut to ``limit`` characters: a ``__repr__`` that stays short."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"<{kind} {text}>"


def plural(n: int, word: str) -> str:
    """``"1 error"``, ``"2 errors"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- shared result pieces


def findings_table(findings: Sequence[Finding], *, id_: str = "findings") -> Raw:
    """Severity, code, modules, message and fix of each finding (a muted line when there is none)."""
    if not findings:
        return tag("p", "No findings.", "sg-muted", id=id_)
    rows = [
        (badge(f.severity, f.severity), code(f.code), join(*_arrowed(f.paths)) if f.paths else muted("model"),
         f.message, code(f.fix) if f.fix else muted("-"))
        for f in findings
    ]
    return table(("severity", "code", "modules", "message", "fix"), rows, id_=id_, cls="sg-findings")


def _arrowed(paths: Sequence[str]) -> list[object]:
    out: list[object] = []
    for i, p in enumerate(paths):
        out += ([" → "] if i else []) + [code(p)]
    return out


def check_line(report: Report | None) -> Raw:
    """``check: ok`` / ``check: 2 errors`` after an edit (empty when no check ran)."""
    if report is None:
        return Raw("")
    if report.ok:
        return tag("p", join("check: ", badge("ok", "ok")))
    return Raw(tag("p", join("check: ", badge(plural(len(report.errors), "error"), "error"))) + findings_table(report.findings, id_=""))


def title(text: object, *badges: Raw) -> Raw:
    return tag("h3", join(text, *[join(" ", b) for b in badges]))


# --------------------------------------------------------------------------- one renderer per result


def report(r: Report, *, heading: bool = True) -> Raw:
    """:class:`~surgery.Report`: verdict, the findings with their fixes, the coverage line."""
    verdict = badge("ok", "ok") if r.ok else badge(plural(len(r.errors), "error"), "error")
    extra = [badge(plural(len(r.warnings), "warning"), "warning")] if r.warnings else []
    parts: list[object] = [title(f"surgery check: {r.model or 'model'}", verdict, *extra)] if heading else []
    parts.append(findings_table(r.findings))
    parts.append(tag("p", f"{plural(len(r.checked), 'check')} ran" + (f"; {r.coverage}" if r.coverage is not None else ""), "sg-muted"))
    return join(*parts)


def overview(o: Overview) -> Raw:
    """:class:`~surgery.Overview`: the components table, then the tree and layer table folded."""
    from surgery.overview import human

    rows = [(code(c.path), c.type, human(c.params), human(c.trainable), f"{c.in_sig or '-'} → {c.out_sig or '-'}", c.role)
            for c in o.components]
    parts: list[object] = [
        title(f"{o.model} ({o.family})"),
        tag("p", f"{o.params:,} parameters, {o.trainable:,} trainable", "sg-muted"),
        table(("path", "type", "params", "trainable", "in → out", "role"), rows, numeric=(2, 3)),
        details(f"Module tree (depth {o.depth})", pre("\n".join(o.tree))),
    ]
    if o.layer_table:
        parts.append(details("Layers (torchinfo)", pre(o.layer_table)))
    return join(*parts)


def _list(label: str, items: Sequence[str]) -> Raw:
    if not items:
        return Raw("")
    return details(f"{label} ({len(items)})", tag("ul", Raw("".join(tag("li", code(i)) for i in items))))


def adaptation(a: Adaptation, head: str) -> Raw:
    """:class:`~surgery.Adaptation` and :class:`~surgery.EditResult`: what was rebuilt and copied."""
    rows = [(code(p), change) for p, change in a.rebuilt.items()]
    return join(
        title(head),
        table(("rebuilt", "old → new"), rows) if rows else tag("p", "Nothing rebuilt.", "sg-muted"),
        _list("copied", a.copied), _list("initialised", a.initialised),
        *[tag("p", f"note: {n}", "sg-muted") for n in a.notes],
        check_line(a.report),
    )


def class_change(c: ClassChange) -> Raw:
    """:class:`~surgery.ClassChange`: classes kept, layers rebuilt, rows copied."""
    kept = ", ".join(f"{n}←{o}" for n, o in c.kept.items()) or "none"
    rows = []
    for path, change in c.rebuilt.items():
        copied = len(c.copied.get(f"{path}.weight", []))
        total = copied + len(c.initialised.get(f"{path}.weight", []))
        rows.append((code(path), change, f"{copied} of {total}"))
    return join(
        title(f"set_num_classes: {c.old_num_classes} → {c.num_classes} classes"),
        tag("p", join("kept (new←old): ", code(kept))),
        table(("layer", "old → new", "output rows copied"), rows, numeric=(2,)),
        *[tag("p", f"note: {n}", "sg-muted") for n in c.notes],
        check_line(c.report),
    )


def trainable(t: TrainableSummary) -> Raw:
    """:class:`~surgery.TrainableSummary`: trainable and frozen parameters per component, with bars."""
    rows = []
    for r in t.rows:
        total = r.trainable + r.frozen
        width = round(80 * r.trainable / total) if total else 0
        bar = Raw(f'<span class="sg-bar" style="width:{width}px"></span>')
        rows.append((code(r.path), r.type, f"{r.trainable:,}", f"{r.frozen:,}", f"{r.trainable_tensors}/{r.frozen_tensors}", bar))
    return join(
        title(f"{t.model}: {t.trainable:,} trainable, {t.frozen:,} frozen parameters"),
        table(("component", "type", "trainable", "frozen", "tensors (trainable/frozen)", "trainable share"), rows, numeric=(2, 3, 4)),
    )


def trace(t: Trace) -> Raw:
    """:class:`~surgery.Trace`: a summary, the component flow and the findings; the call table folded."""
    from surgery.trace.results import _infos_text

    verdict = badge("ok", "ok") if t.ok else badge("failed", "failed")
    flow = [(code(e.src), code(e.dst), ", ".join("×".join(map(str, s)) for s in e.shapes[:5]) or "-", ", ".join(e.modes))
            for e in t.component_edges()]
    calls = [(str(c.index), c.mode, Raw(f'<code style="margin-left:{12 * c.level}px">{esc(c.path or "<model>")}</code>'), c.type,
              _infos_text(c.inputs), _infos_text(c.outputs) if c.finished else badge("raised", "error")) for c in t.calls]
    parts: list[object] = [
        title(f"surgery trace: {t.model} ({t.family}), {' + '.join(t.modes)}", verdict),
        tag("p", f"{len(t.calls):,} module calls, {len(t.edges):,} data-flow edges, {len(t.components)} components", "sg-muted"),
        tag("h3", "Component flow"),
        table(("from", "to", "shapes", "passes"), flow) if flow else tag("p", "No data flow between components was seen.", "sg-muted"),
    ]
    if t.losses:
        parts.append(tag("p", "losses: " + ", ".join(f"{k}={v:.4g}" for k, v in t.losses.items())))
    if t.failure is None:
        parts.append(tag("p", join("never called: ", *([code(", ".join(t.uncalled))] if t.uncalled else [muted("none")]))))
    if t.backward and t.failure is None:
        parts.append(_list("trainable parameters without a gradient", t.no_grad_params) or tag("p", "Every trainable parameter got a gradient."))
    parts.append(findings_table(t.findings, id_=""))
    parts.append(details(f"Calls ({len(t.calls):,})", table(("#", "mode", "module", "type", "inputs", "outputs"), calls, numeric=(0,))))
    return join(*parts)


def diff(d: Diff, *, heading: bool = True) -> Raw:
    """:class:`~surgery.Diff`: the slots and modules changed, then the cost table."""
    from surgery.diff import _counts

    def change_rows(changes: Iterable[Any]) -> list[tuple[object, ...]]:
        return [(badge(c.status, c.status), code(c.path), c.before or "-", c.after or "-",
                 "-" if c.params_before is None else f"{c.params_before:,}", "-" if c.params_after is None else f"{c.params_after:,}",
                 ", ".join(c.what)) for c in changes]

    header = ("status", "path", "before", "after", "params before", "params after", "what changed")
    changed = d.changed_slots
    parts: list[object] = [title(f"surgery diff: {d.before} → {d.after}")] if heading else []
    parts += [
        tag("h3", f"Slots: {_counts(changed)}" if changed else "Slots: none changed"),
        table(header, change_rows(changed), numeric=(4, 5), id_="slot-changes") if changed else Raw(""),
        details(f"Modules: {_counts(d.modules)}" if d.modules else "Modules: none changed",
                table(header, change_rows(d.modules), numeric=(4, 5)) if d.modules else Raw("")),
        tag("h3", "Cost" + (f" ({d._cost_caption()})" if d.flops or d.latency or d.memory else " (parameters only)")),
        table(("", "before", "after", "Δ", "ratio"), [m.row() for m in d.measures], numeric=(1, 2, 3, 4), id_="cost"),
        *[tag("p", join(badge("not measured", "warning"), " ", p)) for p in d.problems],
    ]
    return join(*parts)


def smoke(s: SmokeResult, *, heading: bool = True) -> Raw:
    """:class:`~surgery.SmokeResult`: verdict, one row per phase, the losses and the findings."""
    verdict = badge("ok", "ok") if s.ok else badge(f"failed, {plural(len(s.errors), 'error')}", "failed")
    rows = [(p.name, badge(p.status, p.status), f"{p.seconds:.2f} s", fmt_bytes(p.peak_memory) if p.peak_memory is not None else "-",
             f"{p.images_per_s:.2f} img/s" if p.images_per_s is not None else "-", p.note) for p in s.phases]
    parts: list[object] = [title(f"surgery smoke: {s.model or 'model'} ({s.family}) on {s.device}", verdict)] if heading else []
    parts += [
        tag("p", f"{s.device_note}; batch {s.batch_size} × {s.image_size}×{s.image_size}, {s.steps} train step(s), "
                 f"amp {s.amp or 'off'}", "sg-muted"),
        table(("phase", "status", "time", "peak memory", "throughput", "note"), rows, numeric=(2, 3, 4), id_="smoke-phases"),
    ]
    if s.losses:
        parts.append(tag("p", join("losses: ", *[join(code(f"{k}={v:.4g}"), " ") for k, v in s.losses.items()])))
    parts.append(findings_table(s.findings, id_=""))
    return join(*parts)
