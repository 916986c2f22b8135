"""``surgery.check``: run a family's contracts, the probes and orphan detection."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from surgery import paths as _paths
from surgery._errors import PathError
from surgery._orphans import find_orphans
from surgery._state import Snapshot
from surgery._util import require_module
from surgery.anatomy import Anatomy, Contract, anatomy_for
from surgery.anatomy._backbone import ProbedMaps, seed_features
from surgery.anatomy._base import Context
from surgery.findings import Coverage, Finding, Report
from surgery.probe import ModelProbe
from surgery.signature import input_signature

__all__ = ["check"]


def _touches(contract: Contract, wanted: list[str]) -> bool:
    for c in contract.paths:
        for w in wanted:
            if c == w or w.startswith(c + ".") or c.startswith(w + "."):
                return True
    return False


def _applicable(ctx: Context, contract: Contract) -> bool:
    return all(p == "" or ctx.has(p) for p in contract.paths)


def check(model: nn.Module, *, paths: Iterable[str] | None = None, probe_image_size: int = 320, trace: bool = False) -> Report:
    """Check that the components of ``model`` fit each other.

    Runs every contract of the model's family (channels, features, anchors, classes, feature
    map names), meta-device probes of custom modules, the whole-model meta probe (the entire
    forward on ``torch.device("meta")``, for every model that can run there), and static
    orphan detection. ``report.coverage`` says which slots each of these covered and which
    none did. Nothing about the model changes: no weights are allocated, no hooks are left,
    no flag moves.

    Args:
        model: The model to check.
        paths: Only run the contracts touching these slots (orphan detection always runs).
        probe_image_size: Side of the square image used by meta probes of the backbone (and
            by the traced passes).
        trace: Also run an eval pass and a train step with backward on a synthetic batch
            (:func:`surgery.trace`) and add its findings: ``orphan-module`` (never called in
            either mode), ``unused-parameter`` (trainable, no gradient; one finding per
            module), ``non-finite`` and ``shape-error`` (the forward raised). This runs the
            model for real; the model is left exactly as it was.

    Returns:
        A :class:`~surgery.Report`; ``report.ok`` is False when any error was found.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
        PathError: A name in ``paths`` is not a submodule of the model.
    """
    return checked(model, paths=paths, probe_image_size=probe_image_size, trace=trace)


def checked(model: nn.Module, *, paths: Iterable[str] | None = None, probe_image_size: int = 320, trace: bool = False,
            seen: ProbedMaps | None = None) -> Report:
    """:func:`check`, given what an edit already probed: the feature maps of each backbone in
    ``seen`` that is still the same module, unchanged since (see :func:`seed_features`)."""
    require_module(model, "check()")
    if not isinstance(probe_image_size, int) or probe_image_size < 32:
        raise ValueError(f"probe_image_size must be an int >= 32, got {probe_image_size!r}")
    wanted = list(paths) if paths is not None else None
    if wanted is not None:
        for p in wanted:
            if not (_paths.exists(model, p) or _paths.is_empty_slot(model, p)):
                _paths.get(model, p)  # raises PathError with suggestions
    anatomy = anatomy_for(model)
    ctx = Context(model, probe_image_size=probe_image_size)
    if seen:
        seed_features(ctx, seen)
    report = Report(model=type(model).__name__)
    ran: list[Contract] = []
    if anatomy.no_whole_probe is None:
        ctx.model_probe(anatomy)  # first: contracts that probe a slot on what it receives in the model reuse it
    for contract in anatomy.contracts(model):
        if wanted is not None and not _touches(contract, wanted):
            continue
        if not _applicable(ctx, contract):
            continue
        report.checked.append(contract.name)
        report.extend(_run(contract, ctx))
        ran.append(contract)
    probe = _whole_probe(ctx, anatomy, report, wanted)
    slot_paths = [s.path for s in anatomy.declared_slots(model)]
    report.checked.append("static orphan detection")
    report.extend(_whole_fixes(model, anatomy, find_orphans(model, slot_paths)))
    report.coverage = _coverage(model, anatomy, ran, probe)
    if trace:
        from surgery.trace import trace_findings

        report.checked.append("trace (eval pass + train step with backward)")
        report.extend(trace_findings(model, image_size=probe_image_size, known=report.findings))
    return report


def _whole_probe(ctx: Context, anatomy: Anatomy, report: Report, wanted: list[str] | None) -> ModelProbe:
    """Run the whole-model meta probe (where the family allows it) and add its finding.

    A probe failure already explained by a contract's error on the same modules (or modules
    inside them) is not repeated; with ``wanted``, only a failure touching those slots is reported.
    """
    if anatomy.no_whole_probe is not None:
        return ModelProbe("skipped", anatomy.no_whole_probe)
    probe: ModelProbe = ctx.model_probe(anatomy)
    if probe.status != "skipped":
        report.checked.append(f"whole-model meta probe ({probe.input})")
    found = probe.finding
    if found is not None:
        explained = any(f.severity == "error" and any(_near(a, b) for a in f.paths for b in found.paths) for f in report.findings)
        relevant = wanted is None or any(_near(p, w) for p in found.paths for w in wanted)
        if relevant and not explained:
            report.extend([found])
    return probe


def _near(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _coverage(model: nn.Module, anatomy: Anatomy, ran: list[Contract], probe: ModelProbe) -> Coverage:
    slots: dict[str, tuple[str, ...]] = {}
    for slot in anatomy.slots(model):
        ways = []
        if any(c.checks(slot.path) for c in ran):
            ways.append("contracts")
        if probe.covers(slot.path):
            ways.append("probe")
        slots[slot.path] = tuple(ways)
    note = probe.reason if probe.status in ("stopped", "skipped") else f"fed {probe.input}" if probe.input else ""
    if probe.status == "stopped" and anatomy.probe_stops:
        note = f"{note} ({anatomy.probe_stops})"
    specific = anatomy.knows_model or probe.status in ("ran", "raised") or any(slots.values())
    return Coverage(anatomy.name, slots, probe.status, note, specific)


def _whole_fixes(model: nn.Module, anatomy: Anatomy, orphans: list[Finding]) -> list[Finding]:
    """Orphan findings whose fix (move the orphan into its slot) is tried first: when the moved
    module would not fit the slot's neighbours (the predictor built for a new head that was never
    attached), the fix proposes the whole change, both lines, instead of one that makes a new error."""
    out = []
    for finding in orphans:
        if len(finding.paths) != 2 or finding.fix is None:
            out.append(finding)
            continue
        source, target = finding.paths
        broken = _trial_move(model, anatomy, source, target)
        if not broken:
            out.append(finding)
            continue
        other = next((p for p in broken[0].paths if p != target), None)
        said = broken[0].message.split("; fix", 1)[0]
        # still one line of valid Python; the comment names the other line the whole change needs
        if other is not None:
            sig = input_signature(_paths.get(model, source))
            wanted = f"a module producing {sig}" if sig is not None else "a module producing what it takes"
            fix = f"{finding.fix}  # and first: {_paths.expression(other, model)} = <{wanted}, such as the head built for it>"
        else:
            fix = f"{finding.fix}  # and fit its neighbours too"
        message = finding.message + f"; moving it there alone would not fit: {said}"
        out.append(Finding(finding.severity, finding.code, finding.paths, message, fix))
    return out


def _trial_move(model: nn.Module, anatomy: Anatomy, source: str, target: str) -> list[Finding]:
    """The contract errors about ``target`` once the module at ``source`` sits there (the model is put back)."""
    snap = Snapshot(model, structure=True)
    try:
        _paths.set(model, target, _paths.get(model, source))
    except PathError:
        snap.restore()
        return []
    try:
        ctx = Context(model)
        errors = []
        for contract in anatomy.contracts(model):
            if target in contract.paths and _applicable(ctx, contract):
                errors += [f for f in _run(contract, ctx) if f.severity == "error" and target in f.paths]
        return errors
    finally:
        snap.restore()


def _run(contract: Contract, ctx: Context) -> list[Finding]:
    try:
        return list(contract.run(ctx))
    except Exception as e:  # noqa: BLE001 - a contract that cannot read an unusual module must not crash check
        return [
            Finding(
                "warning",
                "shape-error",
                contract.paths,
                f"could not evaluate contract {contract.name!r}: {type(e).__name__}: {e}",
                None,
            )
        ]
