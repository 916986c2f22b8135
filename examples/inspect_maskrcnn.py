"""Walk a Mask R-CNN: list its swappable components, address one by dotted path, and see
what a typo gets you.

Run: python examples/inspect_maskrcnn.py
"""

from __future__ import annotations

from torchvision.models.detection import maskrcnn_resnet50_fpn

import surgery
from surgery import paths


def main() -> None:
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)

    print("Swappable components:")
    for c in surgery.components(model):
        print(f"  {c.path:<26} {c.type:<26} {c.in_sig or '-'} → {c.out_sig or '-'}")

    head = paths.get(model, "roi_heads.mask_head")
    print(f"\nroi_heads.mask_head is a {type(head).__name__} with {len(head)} conv blocks")
    print("last conv of the body:", paths.get(model, "backbone.body.layer4.-1.conv3"))

    try:
        paths.get(model, "roi_heads.mask_hed")
    except surgery.PathError as e:
        print(f"\nA typo is an error, never a new attribute:\n  {e}")

    print()
    print(surgery.inspect(model, depth=1))


if __name__ == "__main__":
    main()
