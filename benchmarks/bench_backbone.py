"""How long a backbone swap with adapt takes next to one forward pass.

Run it with ``python benchmarks/bench_backbone.py``. On the CPU, models built offline
(``weights=None``):

* forward: one 320×320 image in eval mode under ``torch.no_grad()`` (transform min/max size
  320), median of ``--repeats`` runs after one warm-up;
* adapt: ``surgery.replace(model, "backbone", new, adapt=True)`` on a fresh copy of the model,
  check included, median of ``--repeats`` runs (the backbone is built beforehand and not timed);
* ratio: adapt / forward (goal ≤ 0.1).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

import surgery

#: (detection model, backbone source, detection_backbone keyword arguments)
CASES = (
    ("maskrcnn_resnet50_fpn", "mobilenet_v3_large", {"fpn": False}),
    ("maskrcnn_resnet50_fpn", "convnext_tiny", {}),
    ("fasterrcnn_resnet50_fpn", "resnet18", {"layers": 2, "out_channels": 128}),
    ("retinanet_resnet50_fpn", "resnet18", {"layers": 3, "out_channels": 128}),
    ("fcos_resnet50_fpn", "resnet18", {"layers": 3, "out_channels": 128}),
)
SIZE = 320


def _forward(model: torch.nn.Module, repeats: int) -> float:
    model.eval()
    model.transform.min_size, model.transform.max_size = (SIZE,), SIZE
    images = [torch.rand(3, SIZE, SIZE)]
    times = []
    with torch.no_grad():
        model(images)
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'model':<26} {'backbone':<36} {'forward s':>9} {'adapt s':>8} {'ratio':>6}")
    for name, source, kwargs in CASES:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        backbone = surgery.detection_backbone(source, **kwargs)
        times = []
        last = None
        for _ in range(args.repeats + 1):
            target, new = copy.deepcopy(model), copy.deepcopy(backbone)
            start = time.perf_counter()
            surgery.replace(target, "backbone", new, adapt=True)
            times.append(time.perf_counter() - start)
            last = target
        adapt = statistics.median(times[1:])
        assert last is not None
        forward = _forward(last, args.repeats)
        label = source + (f" {kwargs}" if kwargs else "")
        print(f"{name:<26} {label:<36} {forward:>9.3f} {adapt:>8.3f} {adapt / forward:>6.3f}")


if __name__ == "__main__":
    main()
