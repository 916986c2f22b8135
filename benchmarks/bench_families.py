"""How long ``surgery.check`` takes next to one real forward pass, for one model per family.

Run it with ``python benchmarks/bench_families.py``. On the CPU, with models built offline
(``weights=None``), in eval mode:

* forward: one real forward under ``torch.no_grad()`` of one input the family takes (an image
  of ``--size``, a 16-frame clip for video, two frames for optical flow, 320×320 for
  detection with the transform's sizes set to 320), median of ``--repeats`` runs after one
  warm-up;
* check: the median of ``--repeats`` warm ``surgery.check`` runs (``probe_image_size`` = the
  same side);
* ratio: check / forward; the last line gives the mean ratio over the families (goal ≤ 0.05).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import warnings

import torch
import torchvision
from _timing import median  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import nn

import surgery
from surgery.anatomy import anatomy_for

#: (family, builder): one model per family
MODELS = (
    ("classification", "resnet50"),
    ("video classification", "r3d_18"),
    ("segmentation", "fcn_resnet50"),
    ("optical flow", "raft_small"),
    ("R-CNN", "maskrcnn_resnet50_fpn"),
    ("RetinaNet", "retinanet_resnet50_fpn"),
    ("FCOS", "fcos_resnet50_fpn"),
    ("SSD", "ssd300_vgg16"),
)
DETECTION_SIZE = 320


def build(name: str) -> nn.Module:
    """The model with no weights, in eval mode (detection transforms sized to 320)."""
    fn = torchvision.models.get_model_builder(name)
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(fn).parameters:
        kwargs["weights_backbone"] = None  # nothing is downloaded
    model = fn(**kwargs)
    transform = getattr(model, "transform", None)
    if transform is not None and getattr(transform, "fixed_size", None) is None and hasattr(transform, "min_size"):
        transform.min_size = (DETECTION_SIZE,)
        transform.max_size = DETECTION_SIZE
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per median (default: 3)")
    parser.add_argument("--size", type=int, default=224, help="image side for classification and video (default: 224)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'family':<22} {'model':<24} {'forward':>9} {'check':>9} {'ratio':>7}")
    ratios = []
    for family, name in MODELS:
        model = build(name)
        anatomy = anatomy_for(model)
        if anatomy.name != family:
            print(f"{name} resolved to the {anatomy.name} anatomy, not {family}", file=sys.stderr)
            return 1
        side = DETECTION_SIZE if anatomy.takes_targets else args.size
        images, _ = surgery.synthetic_batch(model, batch_size=1, image_size=side, anatomy=anatomy)
        with torch.no_grad():
            forward = median(lambda: anatomy.call(model, images, None, train=False), args.repeats, warm_up=True)  # noqa: B023
        check = median(lambda: surgery.check(model, probe_image_size=side), args.repeats, warm_up=True)  # noqa: B023
        ratios.append(check / forward)
        print(f"{family:<22} {name:<24} {forward:>8.3f}s {check:>8.3f}s {check / forward:>7.3f}")
    mean = statistics.mean(ratios)
    print(f"mean ratio check / forward: {mean:.3f} (goal <= 0.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
