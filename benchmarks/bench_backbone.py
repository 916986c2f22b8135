"""How long a backbone swap with adapt takes next to one forward pass.

Run it with ``python benchmarks/bench_backbone.py``. On the CPU, models built offline
(``weights=None``), all figures measured in this one run:

* adapt: ``surgery.replace(model, "backbone", new, adapt=True)`` on a fresh copy of the model,
  the verifying check included, median of ``--repeats`` runs (the backbone is built beforehand
  and not timed);
* build: of that, the family's plan alone (:meth:`Anatomy.backbone_plan`), which constructs the
  modules that must change, with fresh weights: the part no probe or check can save;
* forward @320: one 320×320 image in eval mode under ``torch.no_grad()`` with the transform's
  sizes set to 320, median of ``--repeats`` runs after one warm-up;
* forward @800: the same image through the model's own transform as built (``min_size`` 800,
  ``max_size`` 1333: what a torchvision detection model resizes every image to);
* the ratios adapt / forward (goal ≤ 0.1), and build / forward @320.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
import torchvision
from _timing import median, seconds  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import nn

import surgery
from surgery.anatomy import anatomy_for
from surgery.anatomy._backbone import probe_maps

#: (detection model, backbone source, detection_backbone keyword arguments)
CASES = (
    ("maskrcnn_resnet50_fpn", "mobilenet_v3_large", {"fpn": False}),
    ("maskrcnn_resnet50_fpn", "convnext_tiny", {}),
    ("fasterrcnn_resnet50_fpn", "resnet18", {"layers": 2, "out_channels": 128}),
    ("retinanet_resnet50_fpn", "resnet18", {"layers": 3, "out_channels": 128}),
    ("fcos_resnet50_fpn", "resnet18", {"layers": 3, "out_channels": 128}),
)
SIZE = 320


def _forward(model: nn.Module, size: int | None, repeats: int) -> float:
    """Median eval forward of one ``SIZE``×``SIZE`` image; transform sizes set to ``size`` (None: as built)."""
    model.eval()
    saved = model.transform.min_size, model.transform.max_size
    if size is not None:
        model.transform.min_size, model.transform.max_size = (size,), size
    images = [torch.rand(3, SIZE, SIZE)]
    try:
        with torch.no_grad():
            return median(lambda: model(images), repeats, warm_up=True)
    finally:
        model.transform.min_size, model.transform.max_size = saved


def _build(model: nn.Module, backbone: nn.Module, repeats: int) -> float:
    """Median time of the family's backbone plan alone (the rebuilt modules, fresh weights)."""
    target = copy.deepcopy(model)
    target.backbone = backbone
    anatomy = anatomy_for(target)
    feats = probe_maps(backbone, "the new backbone", anatomy.backbone_probe_size(target))
    return median(lambda: anatomy.backbone_plan(target, "backbone", feats), repeats, warm_up=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per median (default: 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'model':<24} {'backbone':<44} {'adapt':>7} {'build':>7} {'fwd@320':>8} {'fwd@800':>8} "
          f"{'adapt/320':>9} {'adapt/800':>9} {'build/320':>9}")
    worst = 0.0
    for name, source, kwargs in CASES:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        backbone = surgery.detection_backbone(source, **kwargs)
        times = []
        last = None
        for _ in range(args.repeats + 1):
            target, new = copy.deepcopy(model), copy.deepcopy(backbone)
            times.append(seconds(lambda: surgery.replace(target, "backbone", new, adapt=True)))  # noqa: B023
            last = target
        adapt = statistics.median(times[1:])  # the first run warms up
        assert last is not None
        build = _build(model, copy.deepcopy(backbone), args.repeats)
        small, full = _forward(last, SIZE, args.repeats), _forward(last, None, args.repeats)
        worst = max(worst, adapt / full)
        label = source + (f" {kwargs}" if kwargs else "")
        print(f"{name:<24} {label:<44} {adapt * 1e3:>5.1f}ms {build * 1e3:>5.1f}ms {small:>7.3f}s {full:>7.3f}s "
              f"{adapt / small:>9.3f} {adapt / full:>9.3f} {build / small:>9.3f}")
    print(f"largest adapt / forward at the model's own input size: {worst:.3f} (goal <= 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
