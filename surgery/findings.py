"""Findings and reports: what ``check`` (and later ``trace`` and ``smoke``) tell the user."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from surgery import _html
from surgery._errors import IncompatibleError

__all__ = ["CODES", "Coverage", "Finding", "Report", "Severity"]

Severity = Literal["error", "warning", "info"]

#: Stable finding codes (DESIGN.md) and what each means.
CODES: dict[str, str] = {
    "channel-mismatch": "a producer's output channels/features differ from its consumer's input",
    "num-classes-mismatch": "class-dependent predictors disagree on the number of classes",
    "anchor-mismatch": "anchors per location or anchor-size tuples disagree with the head or the feature maps",
    "featmap-missing": "an RoI pooler names feature maps that the backbone does not produce",
    "orphan-module": "a registered module that the forward pass never calls",
    "unused-parameter": "a trainable parameter that gets no gradient from a train step",
    "shape-error": "a probe or forward pass raised",
    "non-finite": "a loss or output is NaN/Inf",
    "not-exercised": "a slot with parameters never ran in a phase, so that phase proved nothing about it",
    "exploding": "a loss or activation is finite but far too large (random weights with no normalisation, a bad init or input scale)",
}
_SEVERITIES: tuple[str, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem found in a model.

    Attributes:
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        code: One of :data:`CODES`.
        paths: The modules involved, producer first then consumer.
        message: What disagrees, with both numbers.
        fix: A line of code that would make it fit, when one is known.
    """

    severity: Severity
    code: str
    paths: tuple[str, ...]
    message: str
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in _SEVERITIES:
            raise ValueError(f"severity must be one of {_SEVERITIES}, got {self.severity!r}")
        if self.code not in CODES:
            raise ValueError(f"code must be one of {sorted(CODES)}, got {self.code!r}")

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Identity used to merge findings from different passes without duplicates."""
        return (self.code, self.paths)

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "paths": list(self.paths),
            "message": self.message,
            "fix": self.fix,
        }

    def __str__(self) -> str:
        where = " -> ".join(self.paths) if self.paths else "<model>"
        text = f"{self.severity} [{self.code}] {where}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


@dataclass
class Coverage:
    """What a check could and could not look at.

    Attributes:
        family: The anatomy that matched (``"generic"`` when no family knows the model).
        slots: Every slot of the model, each with how its fit was checked: ``"contracts"``
            (the family's static contracts), ``"probe"`` (the whole-model meta probe ran it);
            an empty tuple when nothing checked it.
        probe: The whole-model probe's status: ``"ran"``, ``"raised"``, ``"stopped"``,
            ``"skipped"`` or ``"not run"``.
        probe_note: Why the probe stopped or was skipped, what it was fed.
        specific: False when nothing specific to this model could be checked.
    """

    family: str
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    probe: str = "not run"
    probe_note: str = ""
    specific: bool = True

    def by(self, how: str) -> list[str]:
        """The slots checked by ``how`` (``"contracts"`` or ``"probe"``)."""
        return [s for s, ways in self.slots.items() if how in ways]

    @property
    def unchecked(self) -> list[str]:
        """The slots nothing checked."""
        return [s for s, ways in self.slots.items() if not ways]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "slots": {s: list(ways) for s, ways in self.slots.items()},
            "probe": self.probe,
            "probe_note": self.probe_note,
            "specific": self.specific,
            "unchecked": self.unchecked,
        }

    def __str__(self) -> str:
        probe = {
            "ran": "ran end to end",
            "raised": "raised, see the findings",
            "stopped": f"stopped: {self.probe_note}",
            "skipped": f"skipped: {self.probe_note}",
        }.get(self.probe, self.probe)
        if not self.specific:
            return (f"coverage: nothing specific to this model could be checked: no family knows it ({self.family} "
                    f"anatomy) and the whole-model probe {probe}")
        n = len(self.slots)
        unchecked = self.unchecked
        rest = f"unchecked: {', '.join(unchecked)}" if unchecked else "every slot checked"
        return (f"coverage: {n} slot{'s' if n != 1 else ''} ({self.family} anatomy): {len(self.by('contracts'))} by contracts, "
                f"{len(self.by('probe'))} by the whole-model probe; {rest}; probe {probe}")


@dataclass
class Report:
    """The result of :func:`surgery.check`.

    Attributes:
        findings: Every finding, errors first.
        model: A name for the model checked (its class, or the CLI spec).
        checked: Names of the contracts and passes that ran.
        coverage: What could and could not be checked (set by :func:`surgery.check`).
    """

    findings: list[Finding] = field(default_factory=list)
    model: str = ""
    checked: list[str] = field(default_factory=list)
    coverage: Coverage | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no finding at error severity."""
        return not self.errors

    def codes(self) -> list[str]:
        """The codes of all findings, in order (handy in tests)."""
        return [f.code for f in self.findings]

    def extend(self, findings: Iterable[Finding]) -> None:
        """Add findings, dropping any whose (code, paths) is already present."""
        seen = {f.key for f in self.findings}
        for f in findings:
            if f.key not in seen:
                seen.add(f.key)
                self.findings.append(f)
        order = {s: i for i, s in enumerate(_SEVERITIES)}
        self.findings.sort(key=lambda f: order[f.severity])

    def raise_for_errors(self) -> None:
        """Raise :class:`~surgery.IncompatibleError` listing every error, if there is any."""
        if self.errors:
            lines = "\n".join(str(f) for f in self.errors)
            n = len(self.errors)
            raise IncompatibleError(f"{n} incompatibilit{'y' if n == 1 else 'ies'} in {self.model or 'the model'}:\n{lines}", self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "checked": list(self.checked),
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
        }

    def format(self, style: str = "text") -> str:
        """Render the report as ``"text"`` (grouped by severity), ``"github"`` workflow commands or
        ``"markdown"`` (a compact table of the findings and the coverage line, e.g. for a job summary).

        Raises:
            ValueError: ``style`` is none of those.
        """
        if style == "markdown":
            return self._markdown()
        if style == "github":
            out = []
            for f in self.findings:
                level = {"error": "error", "warning": "warning", "info": "notice"}[f.severity]
                msg = f.message + (f" Fix: {f.fix}" if f.fix else "")
                out.append(f"::{level} title={f.code}::{_gh_escape(msg)}")
            return "\n".join(out)
        if style != "text":
            raise ValueError(f"style must be 'text', 'github' or 'markdown', got {style!r}")
        return str(self)

    def _markdown(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.errors)} error(s)"
        lines = [f"**surgery check: {_md_cell(self.model or 'model')}**: {verdict}, {len(self.warnings)} warning(s), "
                 f"{len(self.checked)} checks ran", ""]
        if self.findings:
            lines += ["| severity | code | modules | message | fix |", "| --- | --- | --- | --- | --- |"]
            for f in self.findings:
                where = " → ".join(_md_code(p) for p in f.paths) or "model"
                lines.append(f"| {f.severity} | {_md_code(f.code)} | {where} | {_md_cell(f.message)} | {_md_code(f.fix) if f.fix else '-'} |")
            lines.append("")
        if self.coverage is not None:
            lines.append(_md_cell(str(self.coverage)))
        return "\n".join(lines).rstrip() + "\n"

    def _repr_html_(self) -> str:
        return _html.fragment(_html.report(self))

    def __repr__(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.errors)} error(s)"
        return _html.short_repr("Report", f"{self.model or 'model'}: {verdict}, {len(self.warnings)} warning(s), {len(self.checked)} checks")

    def __str__(self) -> str:
        head = f"surgery check: {self.model or 'model'}: "
        coverage = [str(self.coverage)] if self.coverage is not None else []
        if not self.findings:
            if self.coverage is not None and not self.coverage.specific:
                return "\n".join([head + f"no findings, but nothing specific was checked ({len(self.checked)} generic checks ran)",
                                  *coverage])
            return "\n".join([head + f"ok, no findings ({len(self.checked)} checks ran)", *coverage])
        lines = [head + f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        for sev in _SEVERITIES:
            group = [f for f in self.findings if f.severity == sev]
            if group:
                lines.append(f"\n{sev.upper()}S" if sev != "info" else "\nINFO")
                lines.extend(f"  {str(f).replace(chr(10), chr(10) + '  ')}" for f in group)
        if coverage:
            lines.append("")
            lines.extend(coverage)
        return "\n".join(lines)


def _md_cell(text: str) -> str:
    """Text safe inside a markdown table cell: pipes escaped, line breaks as ``<br>``, tags escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", "<br>")


def _md_code(text: str) -> str:
    """``text`` as inline code inside a table cell (GitHub reads ``\\|`` as a pipe in code spans too)."""
    body = text.replace("|", "\\|").replace("\n", " ")
    return f"`` {body} ``" if "`" in body else f"`{body}`"


def _gh_escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
