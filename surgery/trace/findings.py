"""Findings of :func:`surgery.trace`: the ``shape-error`` of a pass that raised, the
``orphan-module``, ``unused-parameter`` and ``non-finite`` findings of one that ran, the
``not-exercised`` finding (shared with the smoke test and the diff), and the filter that keeps
:func:`trace_findings` from repeating what ``check`` already found."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

from torch import nn

from surgery._util import first_line
from surgery.anatomy import Anatomy
from surgery.findings import Finding, Severity
from surgery.trace.recorder import _Recorder
from surgery.trace.results import Trace

__all__ = ["idle_slots", "idle_reason", "not_exercised_finding", "unused_parameter_findings"]


# --------------------------------------------------------------------------- not-exercised


def idle_slots(model: nn.Module, slots: Sequence[str], worked: Collection[str], called: Collection[str]) -> list[str]:
    """The slots with parameters that were called but did no work, top-most first.

    Args:
        model: The model.
        slots: The family's slots present in the model, in data-flow order.
        worked: Paths of the modules that ran on data in the pass
            (:attr:`surgery._util.ModuleStack.worked`).
        called: Paths of the modules called in any pass: a slot never called at all is an
            orphan, which other findings report.

    Returns:
        The slots, in ``slots`` order, without those inside an idle slot listed before them.
    """
    out: list[str] = []
    for path in slots:
        if path in worked or path not in called or any(path.startswith(o + ".") for o in out):
            continue
        if next(model.get_submodule(path).parameters(), None) is None:
            continue
        out.append(path)
    return out


def _module_text(model: nn.Module, path: str) -> str:
    try:
        return f"{path or '<model>'} ({type(model.get_submodule(path)).__name__})"
    except AttributeError:
        return path


def idle_reason(model: nn.Module, emptied: str | None, exploded: tuple[str, float] | None) -> list[str]:
    """Clauses saying why slots did no work: where the data ran out, and where activations explode."""
    out = []
    if emptied is not None:
        out.append(f"the data ran out in {_module_text(model, emptied)}, which returned only empty tensors from non-empty inputs")
    if exploded is not None:
        out.append(f"activations explode: the output of {_module_text(model, exploded[0])} already reaches |x| = {exploded[1]:.3g}")
    return out


def not_exercised_finding(phase: str, slots: Sequence[str], outcome: str | None = None, causes: Sequence[str] = ()) -> Finding:
    """The ``not-exercised`` warning of one pass.

    Args:
        phase: The pass, e.g. ``"the eval pass"``.
        slots: The slots that did no work (:func:`idle_slots`); they become the paths.
        outcome: What the pass returned, following ``phase``, when the family can say
            (``"returned 0 detections for 2 images, even with every score threshold at 0"``).
        causes: Further clauses (:func:`idle_reason`).

    Returns:
        ``"<phase> <outcome>: <slots> never ran on any data, so <phase> proved nothing about
        them; <causes>"``.
    """
    listed = slots[0] if len(slots) == 1 else ", ".join(slots[:-1]) + f" and {slots[-1]}"
    them = "it" if len(slots) == 1 else "them"
    message = f"{phase} {outcome}" if outcome else phase
    message += f": {listed} never ran on any data, so {phase} proved nothing about {them}"
    if causes:
        message += "; " + "; ".join(causes)
    return Finding("warning", "not-exercised", tuple(slots), message, None)



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


def _findings(model: nn.Module, anatomy: Anatomy, result: Trace) -> list[Finding]:
    """The findings of a pass that ran to the end: orphans, unused parameters, non-finite values."""
    out: list[Finding] = []
    both = "eval" in result.modes and "train" in result.modes
    declared = [s.path for s in anatomy.declared_slots(model)]
    all_paths = [p for p, _ in model.named_modules(remove_duplicate=False) if p]
    params = dict(model.named_parameters())
    no_grad = set(result.no_grad_params)
    orphans: dict[str, str | None] = {}
    uncalled = list(result.uncalled)
    if result.modes == ("eval",) and result._eval_outcome is not None:
        # the pass returned nothing (0 detections): a head it skipped is idle, not an orphan
        idle = [s for s in _idle_in_eval(model, anatomy, result) if any(_within(p, s) for p in uncalled)]
        if idle:
            out.append(not_exercised_finding("the eval pass", idle, result._eval_outcome,
                                             ["trace with mode='both' to run them in a train step too"]))
        uncalled = [p for p in uncalled if not any(_within(p, s) for s in idle)]
    for path in uncalled:
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


def _within(path: str, slot: str) -> bool:
    return path == slot or path.startswith(slot + ".")


def _idle_in_eval(model: nn.Module, anatomy: Anatomy, result: Trace) -> list[str]:
    """Slots with parameters that did no work in the eval pass: never called, or called only
    on empty tensors (a call worked when it returned a non-empty tensor, or returned none and
    received one)."""
    worked: set[str] = set()
    for call in result.calls:
        sizes = [math.prod(i.shape) for i in call.outputs] or [math.prod(i.shape) for i in call.inputs]
        if any(sizes):
            worked.add(call.path)
    slots = [s.path for s in anatomy.slots(model)]
    everything = {p for p, _ in model.named_modules()}
    return idle_slots(model, slots, worked, everything)


def _new_findings(found: Iterable[Finding], known: Iterable[Finding]) -> list[Finding]:
    """``found`` without what ``known`` (the static findings of ``check``) already explains.

    An orphan already reported is left out, and so is a ``shape-error`` between two modules
    that a static error names: the forward failing there is the consequence it predicted.
    """
    known = list(known)
    static_orphans = {f.paths[0] for f in known if f.code == "orphan-module" and f.paths}
    explained = {f.paths for f in known if f.severity == "error" and len(f.paths) == 2}
    return [
        f
        for f in found
        if not (f.code == "orphan-module" and f.paths and f.paths[0] in static_orphans)
        and not (f.code == "shape-error" and f.paths in explained)
    ]
