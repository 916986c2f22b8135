"""surgery: look inside a built PyTorch model, check that its parts fit, change parts by
dotted path without breaking it.

Public names are imported here and nowhere else::

    import surgery
    surgery.components(model)
    report = surgery.check(model)
"""

from __future__ import annotations

from surgery import paths
from surgery._errors import IncompatibleError, LoadError, NotAModuleError, PathError, RenderError, SmokeTestError, SurgeryError
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
