"""surgery: look inside a built PyTorch model, check that its parts fit, change parts by
dotted path without breaking it.

Public names are imported here and nowhere else::

    import surgery
    surgery.components(model)
    report = surgery.check(model)
"""

from __future__ import annotations

from surgery import paths
from surgery._errors import IncompatibleError, LoadError, NotAModuleError, PathError, SmokeTestError, SurgeryError
from surgery.check import check
from surgery.findings import CODES, Finding, Report
from surgery.loading import DEFAULT_SPEC, WeightsReport, load_model, load_weights
from surgery.overview import Component, Overview, components, inspect
from surgery.signature import Signature

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "DEFAULT_SPEC",
    "Component",
    "Finding",
    "IncompatibleError",
    "LoadError",
    "WeightsReport",
    "NotAModuleError",
    "Overview",
    "PathError",
    "Report",
    "Signature",
    "SmokeTestError",
    "SurgeryError",
    "__version__",
    "check",
    "components",
    "inspect",
    "load_model",
    "load_weights",
    "paths",
]
