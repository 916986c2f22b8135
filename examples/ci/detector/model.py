"""Build the detector: torchvision's Mask R-CNN with :class:`WideMaskHead` in its mask branch."""

from __future__ import annotations

import surgery
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from detector.heads import WideMaskHead


def build_stock_model(num_classes: int = 3, backbone: str = "resnet18") -> MaskRCNN:
    """The Mask R-CNN the detector starts from (stock mask head, no pretrained weights): the
    "before" of the review page.

    Args:
        num_classes: Classes, background included.
        backbone: A torchvision ResNet name for the FPN backbone.

    Returns:
        The model, in train mode.
    """
    return MaskRCNN(resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=3), num_classes)


def build_model(num_classes: int = 3, backbone: str = "resnet18", attach_to_root: bool = False) -> MaskRCNN:
    """Mask R-CNN (no pretrained weights) with a wider mask head and a predictor that fits it.

    Args:
        num_classes: Classes, background included.
        backbone: A torchvision ResNet name for the FPN backbone.
        attach_to_root: Reproduce the classic mistake instead: the head is built but never
            attached, and the new predictor is set on the model root, where MaskRCNN.forward
            never calls it. Only there to show what CI reports.

    Returns:
        The model, in train mode.
    """
    model = build_stock_model(num_classes, backbone)
    head = WideMaskHead(model.backbone.out_channels, (256, 384, 512))
    if attach_to_root:
        model.mask_predictor = MaskRCNNPredictor(head.out_channels, 256, num_classes)
        return model
    # Checked swap: adapt=True rebuilds roi_heads.mask_predictor for the head's 512 channels.
    surgery.replace(model, "roi_heads.mask_head", head, adapt=True)
    return model
