"""Anatomy of torchvision's FCOS: RetinaNet's layout with a centerness output."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.fcos import FCOS

from surgery.anatomy.retinanet import CLS, REG, DenseAnatomy

__all__ = ["FCOSAnatomy"]


class FCOSAnatomy(DenseAnatomy):
    """FCOS (``fcos_resnet50_fpn``): one anchor per location, box + centerness regression."""

    name = "FCOS"
    regression_outputs = (("bbox_reg", 4), ("bbox_ctrness", 1))
    head_class = "FCOSHead"
    losses = {"classification": CLS, "bbox_regression": REG, "bbox_ctrness": REG}

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, FCOS)
