"""Helpers shared by the tests: building models offline and fingerprinting model state."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

#: The component paths each torchvision detection family lists, in data-flow order.
RCNN_BASE = [
    "transform",
    "backbone.body",
    "backbone.fpn",
    "rpn.anchor_generator",
    "rpn.head",
    "roi_heads.box_roi_pool",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
]
MASK_TRIPLE = ["roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"]
KEYPOINT_TRIPLE = ["roi_heads.keypoint_roi_pool", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor"]
MASKRCNN_SLOTS = RCNN_BASE + MASK_TRIPLE
DENSE_SLOTS = ["transform", "backbone.body", "backbone.fpn", "anchor_generator", "head.classification_head", "head.regression_head"]
SSD_SLOTS = ["transform", "backbone", "anchor_generator", "head.classification_head", "head.regression_head"]


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a torchvision model by name with no weights at all (nothing is downloaded)."""
    fn = torchvision.models.get_model_builder(name)
    import inspect

    params = inspect.signature(fn).parameters
    kw: dict[str, Any] = {"weights": None}
    if "weights_backbone" in params:
        kw["weights_backbone"] = None
    kw.update(kwargs)
    return fn(**kw)


def state_bytes(model: nn.Module) -> str:
    """A digest of the exact bytes of the state dict."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything the "leave no trace" invariant protects, in comparable form."""
    return {
        "modules": [(name, id(m)) for name, m in model.named_modules(remove_duplicate=False)],
        "state": state_bytes(model),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else id(p.grad) for p in model.parameters()],
        "hooks": [
            sum(len(getattr(m, d, {}) or {}) for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
            for m in model.modules()
        ],
        "devices": sorted({str(p.device) for p in model.parameters()}),
        "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "sizes": [
            (getattr(m, "min_size", None), getattr(m, "max_size", None))
            for m in model.modules()
            if hasattr(m, "min_size")
        ],
    }


@contextmanager
def small_images(model: nn.Module, size: int = 256) -> Iterator[nn.Module]:
    """Temporarily shrink a detection model's transform to ``size`` and restore it."""
    transform = getattr(model, "transform", None)
    if transform is None or not hasattr(transform, "min_size"):
        yield model
        return
    old = (transform.min_size, transform.max_size)
    transform.min_size, transform.max_size = (size,), size
    try:
        yield model
    finally:
        transform.min_size, transform.max_size = old


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``surgery ARGV`` run in this process (argparse's refusals
    exit through SystemExit, whose code is returned)."""
    from surgery.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else -1
    out, err = capsys.readouterr()
    return code, out, err
