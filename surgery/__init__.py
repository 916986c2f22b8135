"""surgery: look inside a built PyTorch model, check that its parts fit, change parts by
dotted path without breaking it.

Public names are imported here and nowhere else::

    import surgery
    surgery.components(model)
    report = surgery.check(model)

The names load on first use (``surgery.check`` imports :mod:`surgery.check`, and torch with
it), so ``surgery --version`` and ``surgery --help`` start without importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surgery import paths
    from surgery._errors import (
        IncompatibleError,
        LoadError,
        NotAModuleError,
        PathError,
        RenderError,
        SmokeTestError,
        SurgeryError,
    )
    from surgery.backbones import DetectionBackbone, detection_backbone
    from surgery.check import check
    from surgery.diff import Diff, diff
    from surgery.edit import (
        Adaptation,
        ClassChange,
        EditResult,
        KeypointChange,
        TrainableRow,
        TrainableSummary,
        Transaction,
        adapt,
        edit,
        freeze,
        freeze_backbone_layers,
        replace,
        set_num_classes,
        set_num_keypoints,
        trainable_summary,
        unfreeze,
    )
    from surgery.findings import CODES, Finding, Report
    from surgery.loading import DEFAULT_SPEC, WeightsReport, load_model, load_weights
    from surgery.overview import Component, Overview, components, inspect
    from surgery.recipe import Recipe, RecipeError, RecipeResult, rebuild
    from surgery.render import Graph, render
    from surgery.review import ReviewResult, review
    from surgery.signature import MultiSignature, Signature
    from surgery.smoke import SmokeResult, smoke_test
    from surgery.synthetic import SyntheticBatch, synthetic_batch
    from surgery.trace import TensorInfo, Trace, TraceCall, TraceEdge, trace

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "DEFAULT_SPEC",
    "Adaptation",
    "ClassChange",
    "Component",
    "DetectionBackbone",
    "Diff",
    "EditResult",
    "Finding",
    "Graph",
    "IncompatibleError",
    "KeypointChange",
    "LoadError",
    "WeightsReport",
    "NotAModuleError",
    "Overview",
    "PathError",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "RenderError",
    "Report",
    "ReviewResult",
    "MultiSignature",
    "Signature",
    "SmokeResult",
    "SmokeTestError",
    "SurgeryError",
    "SyntheticBatch",
    "TensorInfo",
    "Trace",
    "TraceCall",
    "TraceEdge",
    "TrainableRow",
    "TrainableSummary",
    "Transaction",
    "__version__",
    "adapt",
    "detection_backbone",
    "check",
    "components",
    "diff",
    "edit",
    "freeze",
    "freeze_backbone_layers",
    "inspect",
    "load_model",
    "load_weights",
    "paths",
    "rebuild",
    "render",
    "replace",
    "review",
    "set_num_classes",
    "set_num_keypoints",
    "smoke_test",
    "synthetic_batch",
    "trace",
    "trainable_summary",
    "unfreeze",
]


#: Where each public name lives: ``(module, attribute)``, the attribute None for a module itself.
#: ``tests/test_cli_startup.py`` checks that it matches the imports above.
_HOMES: dict[str, tuple[str, str | None]] = {"paths": ("surgery.paths", None)}
for _module, _names in {
    "surgery._errors": "IncompatibleError LoadError NotAModuleError PathError RenderError SmokeTestError SurgeryError",
    "surgery.backbones": "DetectionBackbone detection_backbone",
    "surgery.check": "check",
    "surgery.diff": "Diff diff",
    "surgery.edit": "Adaptation ClassChange EditResult KeypointChange TrainableRow TrainableSummary Transaction adapt edit freeze "
                    "freeze_backbone_layers replace set_num_classes set_num_keypoints trainable_summary unfreeze",
    "surgery.findings": "CODES Finding Report",
    "surgery.loading": "DEFAULT_SPEC WeightsReport load_model load_weights",
    "surgery.overview": "Component Overview components inspect",
    "surgery.recipe": "Recipe RecipeError RecipeResult rebuild",
    "surgery.render": "Graph render",
    "surgery.review": "ReviewResult review",
    "surgery.signature": "MultiSignature Signature",
    "surgery.smoke": "SmokeResult smoke_test",
    "surgery.synthetic": "SyntheticBatch synthetic_batch",
    "surgery.trace": "TensorInfo Trace TraceCall TraceEdge trace",
}.items():
    _HOMES.update((_name, (_module, _name)) for _name in _names.split())
del _module, _names


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    module = importlib.import_module(home[0])
    value = module if home[1] is None else getattr(module, home[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package's module type: importing ``surgery.check`` (the module) must not hide
    ``surgery.check`` (the function) the way the import system's binding of a submodule would."""

    def __setattr__(self, name: str, value: Any) -> None:
        home = _HOMES.get(name)
        if isinstance(value, types.ModuleType) and home is not None and home[1] is not None:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
