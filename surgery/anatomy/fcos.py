"""Anatomy of torchvision's FCOS: RetinaNet's layout with a centerness output."""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSHead

from surgery.anatomy._backbone import PROBE_SIDE, anchors_text, map_strides
from surgery.anatomy._base import Features
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

    def anchor_rebuild(self, gen: nn.Module, feats: Features) -> tuple[nn.Module, str, str] | None:
        """FCOS's anchors are points: one per location, sized by the map's stride (8 … 128 for
        the stock P3–P7), which its loss uses to bound each level's box sizes. The sizes are the
        new maps' strides; the ratio stays ``(1.0,)``."""
        if not isinstance(gen, AnchorGenerator):
            return None
        strides = map_strides(feats, PROBE_SIDE)
        sizes = tuple((strides[n],) for n in feats.names if n in strides)
        ratios = ((1.0,),) * len(sizes)
        if len(sizes) != len(feats.names) or tuple(tuple(s) for s in gen.sizes) == sizes:
            return None
        return AnchorGenerator(sizes, ratios), anchors_text(gen.sizes, gen.aspect_ratios), anchors_text(sizes, ratios)

    def build_head(self, head: nn.Module, width: int, anchors: int, classes: int) -> tuple[nn.Module, str] | None:
        if type(head) is not FCOSHead:
            return None
        tower = head.get_submodule("classification_head.conv")
        convs = len([m for m in tower.modules() if isinstance(m, nn.Conv2d)])
        return FCOSHead(width, anchors, classes, num_convs=convs), f"FCOSHead({width}, {anchors}, {classes}, num_convs={convs})"
