"""From 91 COCO classes to background + person, car and dog, keeping what was learned.

``surgery.set_num_classes`` rebuilds every class-dependent layer of Mask R-CNN (box scores,
box deltas with 4 rows per class, mask logits) and copies the trained rows of the kept classes
into their new positions. This script shows that the kept rows are identical, that the model
still checks clean, and that an eval pass now reports labels 0..3.

With real weights, build the model with ``weights="DEFAULT"``; here it is built without any
download, so the "trained" rows are torchvision's initial ones, which is enough to show the copy.

Run: python examples/change_classes.py
"""

from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

import surgery

COCO = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # static metadata, nothing downloaded
KEEP = ["__background__", "person", "car", "dog"]


def main() -> None:
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    keep = [COCO.index(name) for name in KEEP]  # [0, 1, 3, 18]
    box, mask = model.roi_heads.box_predictor, model.roi_heads.mask_predictor
    before = {
        "cls_score": box.cls_score.weight.detach().clone(),
        "bbox_pred": box.bbox_pred.weight.detach().clone(),
        "mask_fcn_logits": mask.mask_fcn_logits.weight.detach().clone(),
    }

    change = surgery.set_num_classes(model, len(keep), keep=keep)
    print(change)

    after = {
        "cls_score": model.roi_heads.box_predictor.cls_score.weight,
        "bbox_pred": model.roi_heads.box_predictor.bbox_pred.weight,
        "mask_fcn_logits": model.roi_heads.mask_predictor.mask_fcn_logits.weight,
    }
    print("\nkept rows, new ← old:")
    for new, (name, old) in enumerate(zip(KEEP, keep, strict=True)):
        same = (
            torch.equal(after["cls_score"][new], before["cls_score"][old])
            and torch.equal(after["bbox_pred"][4 * new : 4 * new + 4], before["bbox_pred"][4 * old : 4 * old + 4])
            and torch.equal(after["mask_fcn_logits"][new], before["mask_fcn_logits"][old])
        )
        print(f"  {new}  {name:<15} ← COCO {old:>2}: score row, 4 box rows, mask channel identical: {same}")

    print()
    print(surgery.check(model))

    model.eval()
    model.transform.min_size, model.transform.max_size = (256,), 256
    with torch.no_grad():
        (out,) = model([torch.rand(3, 256, 256)])
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    print(f"\neval pass on one 256×256 image: {shapes}")
    print(f"labels are class indices of the new model: all in 0..{len(keep) - 1}: {bool((out['labels'] < len(keep)).all())}")


if __name__ == "__main__":
    main()
