"""A deeper, wider Mask R-CNN mask head: the recipe written wrong, what surgery says, and the recipe written right.

The widely copied recipe builds a new mask head and a new predictor, then attaches them in
the wrong places. Each builder below returns one version of the model (built offline,
``weights=None``), so the command line can check any of them::

    surgery check examples/deeper_mask_head.py:broken_orphan     # predictor hung on the model root
    surgery check examples/deeper_mask_head.py:broken_unfixed    # head attached, predictor not rebuilt
    surgery check examples/deeper_mask_head.py:broken --json     # both mistakes at once
    surgery check examples/deeper_mask_head.py:fixed             # exit 0, no findings
    surgery check examples/deeper_mask_head.py:adapted           # the same fix by surgery.replace(..., adapt=True)

Run as a script, it checks every version and prints the findings::

    python examples/deeper_mask_head.py

Findings it prints for ``broken`` (from a real run)::

    error [channel-mismatch] roi_heads.mask_head -> roi_heads.mask_predictor: roi_heads.mask_head produces
        1024 channels but roi_heads.mask_predictor (MaskRCNNPredictor) expects 256 (in roi_heads.mask_predictor.conv5_mask)
        fix: model.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 20)
    error [orphan-module] mask_predictor -> roi_heads.mask_predictor: mask_predictor (MaskRCNNPredictor,
        1,053,972 parameters) is registered on MaskRCNN, but MaskRCNN.forward never uses it, so it never runs and
        its parameters never train; it was probably meant for roi_heads.mask_predictor
        fix: model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor

Note that a spec naming a ``.py`` file runs that file: only check files you trust.
"""

from __future__ import annotations

import sys

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

import surgery

NUM_CLASSES = 20
#: Channels of the deeper, wider mask head's conv layers; the last one (1024) feeds the predictor.
HEAD_LAYERS = (256, 256, 512, 512, 1024)


def _stock(backbone_name: str = "resnet50") -> MaskRCNN:
    """A Mask R-CNN with an FPN backbone and no weights (nothing is downloaded)."""
    backbone = resnet_fpn_backbone(backbone_name=backbone_name, weights=None, trainable_layers=4)
    return MaskRCNN(backbone, NUM_CLASSES)


def _deeper_head(model: MaskRCNN) -> MaskRCNNHeads:
    return MaskRCNNHeads(model.backbone.out_channels, HEAD_LAYERS, 1)


def broken_orphan(backbone_name: str = "resnet50") -> MaskRCNN:
    """The recipe as it is usually copied: the head is never attached, the predictor hangs off the root.

    The model runs and trains, but it is the stock model: ``GeneralizedRCNN.forward`` never calls
    ``model.mask_predictor``.

    Args:
        backbone_name: The ResNet of the FPN backbone.

    Returns:
        The broken model (one ``orphan-module`` error).
    """
    model = _stock(backbone_name)
    head = _deeper_head(model)  # built, then never attached anywhere  # noqa: F841
    model.mask_predictor = MaskRCNNPredictor(HEAD_LAYERS[-1], 256, NUM_CLASSES)  # on the wrong object
    return model


def broken_unfixed(backbone_name: str = "resnet50") -> MaskRCNN:
    """The head is attached at ``roi_heads.mask_head``, but the predictor still expects 256 channels.

    Args:
        backbone_name: The ResNet of the FPN backbone.

    Returns:
        The broken model (one ``channel-mismatch`` error); its forward pass fails inside the predictor.
    """
    model = _stock(backbone_name)
    model.roi_heads.mask_head = _deeper_head(model)
    return model


def broken(backbone_name: str = "resnet50") -> MaskRCNN:
    """Both mistakes at once: the head is attached, the new predictor hangs off the root.

    Args:
        backbone_name: The ResNet of the FPN backbone.

    Returns:
        The broken model (a ``channel-mismatch`` and an ``orphan-module`` error).
    """
    model = broken_unfixed(backbone_name)
    model.mask_predictor = MaskRCNNPredictor(HEAD_LAYERS[-1], 256, NUM_CLASSES)
    return model


def fixed(backbone_name: str = "resnet50") -> MaskRCNN:
    """The recipe written right: the head at ``roi_heads.mask_head``, a predictor rebuilt for 1024 channels.

    Args:
        backbone_name: The ResNet of the FPN backbone.

    Returns:
        The working model (no findings).
    """
    model = _stock(backbone_name)
    model.roi_heads.mask_head = _deeper_head(model)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(HEAD_LAYERS[-1], 256, NUM_CLASSES)
    return model


def adapted(backbone_name: str = "resnet50") -> MaskRCNN:
    """The same fix in one checked call: ``surgery.replace(..., adapt=True)`` rebuilds the predictor.

    The predictor becomes ``MaskRCNNPredictor(1024, 256, 20)``: the head's width, with the old
    ``dim_reduced`` and class count kept; the old weights whose shapes still fit are copied.

    Args:
        backbone_name: The ResNet of the FPN backbone.

    Returns:
        The working model (no findings).
    """
    model = _stock(backbone_name)
    surgery.replace(model, "roi_heads.mask_head", _deeper_head(model), adapt=True)
    return model


def main() -> int:
    """Check every version and print what surgery finds. Returns 0 when the fixed version is clean."""
    for build in (broken_orphan, broken_unfixed, broken, fixed, adapted):
        report = surgery.check(build())
        report.model = f"examples/deeper_mask_head.py:{build.__name__}"
        print(report)
        print()
    clean = surgery.check(fixed())
    return 0 if not clean.findings else 1


if __name__ == "__main__":
    sys.exit(main())
