"""Change a model by dotted path without breaking it.

* :func:`replace` swaps the module in one slot, checks the contracts touching it, and puts
  the old module back when the swap broke something.
* :func:`adapt` (or ``replace(..., adapt=True)``) rebuilds the consumer of a slot to fit
  what the slot now produces, keeping every other hyperparameter and the weights that fit.
* :func:`edit` groups several changes into one transaction, checked once at the end.
* :func:`set_num_classes` rebuilds every class-dependent layer, keeping the trained rows of
  the classes that stay.
* :func:`freeze`, :func:`unfreeze`, :func:`freeze_backbone_layers` and
  :func:`trainable_summary` handle ``requires_grad`` by glob and by torchvision's rule.

All or nothing: a change that introduces an error-severity finding, or raises, is undone. The
model then has the same module objects, the same parameter objects with bit-identical values,
the same attributes and the same ``requires_grad`` flags as before.

Example:
    >>> import surgery
    >>> from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    >>> result = surgery.replace(model, "roi_heads.mask_head",
    ...                          MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1), adapt=True)
    >>> result.rebuilt
    {'roi_heads.mask_predictor': 'MaskRCNNPredictor(256, 256, 91) → MaskRCNNPredictor(1024, 256, 91)'}

Modules: :mod:`~surgery.edit.transaction` (the transaction, ``edit``, ``replace``, ``adapt``,
``set_num_classes``, ``set_num_keypoints``), :mod:`~surgery.edit.adapting` (results, placement, adapt rules),
:mod:`~surgery.edit.num_classes` (resizing class- and keypoint-dependent layers) and
:mod:`~surgery.edit.freezing` (``requires_grad`` by glob and by torchvision's rule).
"""

from __future__ import annotations

from surgery.edit.adapting import Adaptation, EditResult
from surgery.edit.freezing import TrainableRow, TrainableSummary, freeze, freeze_backbone_layers, trainable_summary, unfreeze
from surgery.edit.num_classes import ClassChange, KeepSpec, KeypointChange
from surgery.edit.transaction import Transaction, adapt, edit, replace, set_num_classes, set_num_keypoints

__all__ = [
    "Adaptation",
    "ClassChange",
    "EditResult",
    "KeepSpec",
    "KeypointChange",
    "TrainableRow",
    "TrainableSummary",
    "Transaction",
    "adapt",
    "edit",
    "freeze",
    "freeze_backbone_layers",
    "replace",
    "set_num_classes",
    "set_num_keypoints",
    "trainable_summary",
    "unfreeze",
]
