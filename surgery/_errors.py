"""Exception classes. Each subclasses both :class:`SurgeryError` and the built-in
error a caller would naturally catch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surgery.findings import Finding


class SurgeryError(Exception):
    """Base class of every error raised by ``surgery``."""


class PathError(SurgeryError, AttributeError):
    """A dotted path does not name a submodule of the model.

    Attributes:
        path: The full dotted path that was asked for.
        segment: The first segment that could not be resolved.
        parent: The dotted path of the module the segment was looked up in (``""`` for the root).
        suggestions: Up to three existing paths that were probably meant.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        segment: str = "",
        parent: str = "",
        suggestions: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.path = path
        self.segment = segment
        self.parent = parent
        self.suggestions = suggestions


class NotAModuleError(SurgeryError, TypeError):
    """A value that must be an ``nn.Module`` is something else."""


class IncompatibleError(SurgeryError, ValueError):
    """Components of a model do not fit each other.

    Attributes:
        findings: Every error-severity finding, in report order.
    """

    def __init__(self, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.findings: list[Finding] = list(findings or [])


class SmokeTestError(SurgeryError, RuntimeError):
    """A smoke test could not run or failed."""


class RenderError(SurgeryError, RuntimeError):
    """A diagram could not be written (e.g. Graphviz's ``dot`` binary is missing)."""


class LoadError(SurgeryError):
    """A model spec or a weights file could not be loaded.

    Attributes:
        details: Extra machine-readable context (what was tried).
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details
