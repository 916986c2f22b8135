"""What :func:`surgery.smoke_test` returns: one :class:`Phase` per phase, in a :class:`SmokeResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from surgery import _html
from surgery._errors import SmokeTestError
from surgery._util import fmt_bytes
from surgery.findings import Finding, Report

__all__ = ["Phase", "SmokeResult"]


@dataclass
class Phase:
    """One phase of a smoke test.

    Attributes:
        name: ``"check"``, ``"train"``, ``"eval"`` or ``"ddp"``.
        status: ``"ok"``, ``"failed"`` (an error finding came from it) or ``"skipped"``.
        seconds: Wall time (CUDA-synchronized on a GPU).
        peak_memory: Bytes, see :data:`surgery.smoke.device.MEMORY_SOURCES`; None when not measured.
        images_per_s: Throughput of the train/eval phases; None for the others.
        note: A short description of what ran.
    """

    name: str
    status: str
    seconds: float
    peak_memory: int | None = None
    images_per_s: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "peak_memory": self.peak_memory,
            "images_per_s": self.images_per_s,
            "note": self.note,
        }

    def __str__(self) -> str:
        mem = fmt_bytes(self.peak_memory) if self.peak_memory is not None else "-"
        ips = f"{self.images_per_s:.2f} img/s" if self.images_per_s is not None else "-"
        return f"{self.name:<6} {self.status:<7} {self.seconds:8.2f} s  {mem:>10}  {ips:>12}  {self.note}".rstrip()


@dataclass
class SmokeResult:
    """What :func:`smoke_test` found.

    Attributes:
        ok: True when no finding has error severity.
        findings: Every finding (check's, then the smoke phases'), errors first.
        phases: The phases in the order they ran.
        device: Where the train and eval phases ran, e.g. ``"cpu"`` or ``"cuda:0"``.
        device_note: Why that device (e.g. ``"auto: no CUDA GPU, using cpu"``).
        model: A name for the model (its class, or the CLI spec).
        family: The anatomy that matched (``"R-CNN"``, ``"RetinaNet"``, ..., ``"generic"``).
        batch_size: Images per step.
        image_size: Side of the square synthetic images.
        steps: Train steps run.
        amp: The autocast dtype (``"bfloat16"``, ``"float16"``) or None.
        losses: The loss values of the first train step.
        memory_source: What ``peak_memory`` measures on this device.
        ddp: World size, backend and device of the DDP phase, or None when it did not run.
    """

    ok: bool
    findings: list[Finding]
    phases: list[Phase]
    device: str
    device_note: str
    model: str = ""
    family: str = ""
    batch_size: int = 2
    image_size: int = 320
    steps: int = 1
    amp: str | None = None
    losses: dict[str, float] = field(default_factory=dict)
    memory_source: str = ""
    ddp: dict[str, Any] | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per phase, e.g. ``{"check": 0.05, "train": 3.1, "eval": 0.9}``."""
        return {p.name: p.seconds for p in self.phases}

    @property
    def memory(self) -> dict[str, int | None]:
        """Peak memory in bytes per phase (see :attr:`memory_source`)."""
        return {p.name: p.peak_memory for p in self.phases if p.name in ("train", "eval")}

    @property
    def throughput(self) -> dict[str, float]:
        """Images per second of the train and eval phases."""
        return {p.name: p.images_per_s for p in self.phases if p.images_per_s is not None}

    def codes(self) -> list[str]:
        """The codes of all findings, in order."""
        return [f.code for f in self.findings]

    def phase(self, name: str) -> Phase:
        """The phase called ``name``.

        Raises:
            KeyError: No phase of that name ran.
        """
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r}; phases run: {[p.name for p in self.phases]}")

    def report(self) -> Report:
        """The findings as a :class:`~surgery.Report` (for ``format("github")`` and friends)."""
        return Report(findings=list(self.findings), model=self.model, checked=[p.name for p in self.phases])

    def raise_for_errors(self) -> None:
        """Raise :class:`~surgery.SmokeTestError` listing every error, if there is any."""
        if self.errors:
            raise SmokeTestError(str(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "family": self.family,
            "device": self.device,
            "device_note": self.device_note,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "steps": self.steps,
            "amp": self.amp,
            "phases": [p.to_dict() for p in self.phases],
            "timings": self.timings,
            "memory": self.memory,
            "memory_source": self.memory_source,
            "throughput": self.throughput,
            "losses": dict(self.losses),
            "ddp": dict(self.ddp) if self.ddp is not None else None,
        }

    def _repr_html_(self) -> str:
        return _html.fragment(_html.smoke(self))

    def __repr__(self) -> str:
        verdict = "ok" if self.ok else f"failed, {len(self.errors)} error(s)"
        phases = ", ".join(f"{p.name} {p.status}" for p in self.phases)
        return _html.short_repr("SmokeResult", f"{self.model or 'model'} on {self.device}: {verdict} ({phases})")

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAILED, {len(self.errors)} error(s)"
        warnings = sum(f.severity == "warning" for f in self.findings)
        if warnings:
            verdict += f", {warnings} warning(s)"
        lines = [f"surgery smoke: {self.model or 'model'} ({self.family}) on {self.device}: {verdict}",
                 f"  {self.device_note}; batch {self.batch_size} × {self.image_size}×{self.image_size}, "
                 f"{self.steps} train step(s), amp {self.amp or 'off'}",
                 f"  {'phase':<6} {'status':<7} {'time':>10}  {'peak mem':>10}  {'throughput':>12}"]
        lines.extend(f"  {p}" for p in self.phases)
        if self.losses:
            lines.append("  losses: " + ", ".join(f"{k}={_fmt_loss(v)}" for k, v in self.losses.items()))
        if self.findings:
            lines.append("")
            lines.extend(str(f) for f in self.findings)
        return "\n".join(lines)


def _fmt_loss(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
