"""Per-family knowledge: slots (what can be swapped) and contracts (what must agree).

One file per family. :func:`anatomy_for` picks the first registered anatomy that matches a
model, falling back to :class:`~surgery.anatomy.generic.GenericAnatomy`.
"""

from __future__ import annotations

from torch import nn

from surgery.anatomy._base import Anatomy, Context, Contract, Features, Slot
from surgery.anatomy.classification import ClassificationAnatomy
from surgery.anatomy.fcos import FCOSAnatomy
from surgery.anatomy.generic import GenericAnatomy
from surgery.anatomy.optical_flow import OpticalFlowAnatomy
from surgery.anatomy.rcnn import RCNNAnatomy
from surgery.anatomy.retinanet import RetinaNetAnatomy
from surgery.anatomy.segmentation import SegmentationAnatomy
from surgery.anatomy.ssd import SSDAnatomy
from surgery.anatomy.video import VideoAnatomy

__all__ = ["Anatomy", "Context", "Contract", "Features", "Slot", "anatomy_for", "register", "REGISTRY"]

#: Anatomies tried in order; the generic one always matches last.
REGISTRY: list[type[Anatomy]] = [
    RCNNAnatomy,
    RetinaNetAnatomy,
    FCOSAnatomy,
    SSDAnatomy,
    SegmentationAnatomy,
    OpticalFlowAnatomy,
    ClassificationAnatomy,
    VideoAnatomy,
]


def register(anatomy: type[Anatomy], *, first: bool = True) -> type[Anatomy]:
    """Add a family (usable as a class decorator). ``first`` puts it ahead of the built-in ones."""
    if not (isinstance(anatomy, type) and issubclass(anatomy, Anatomy)):
        raise TypeError(f"register() takes an Anatomy subclass, got {anatomy!r}")
    if anatomy in REGISTRY:
        REGISTRY.remove(anatomy)
    if first:
        REGISTRY.insert(0, anatomy)
    else:
        REGISTRY.append(anatomy)
    return anatomy


def anatomy_for(model: nn.Module) -> Anatomy:
    """The anatomy describing ``model`` (the generic one when no family matches)."""
    for anatomy in REGISTRY:
        if anatomy.matches(model):
            return anatomy()
    return GenericAnatomy()
