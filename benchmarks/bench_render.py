"""How long ``surgery.render`` takes on Mask R-CNN, beyond the traced forward it labels edges from.

Run it with ``python benchmarks/bench_render.py``. Everything is measured in one run, on the
CPU, with a model built offline (``weights=None``), writing SVG (so the ``dot`` run counts):

* trace: ``surgery.trace`` of one synthetic 320×320 image in eval mode (what ``render``
  runs by default), once;
* components: ``render(model, "x.svg", trace=t)`` with that trace: the anatomy, the check,
  the DOT text and the ``dot`` run (target ≤ 0.5 s);
* components, static: the same without a trace (``trace=False``);
* modules, full depth: ``render(model, "x.svg", level="modules", trace=t)`` over every
  module (target ≤ 3 s), and the same without a trace; then the same traced figure for a
  Mask R-CNN with a ResNet-101 backbone (343 modules);
* default: ``render(model, "x.svg")`` as a user calls it, trace included.

Each render figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from _timing import median, seconds  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import surgery

TARGETS = {"components": 0.5, "modules, full depth": 3.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per render figure, median reported (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if shutil.which("dot") is None:
        print("bench_render: Graphviz's dot is not on PATH; install it (apt-get install graphviz)", file=sys.stderr)
        return 2

    model: nn.Module = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    n_modules = sum(1 for _ in model.modules())
    out = Path(tempfile.mkdtemp()) / "diagram.svg"

    surgery.trace(model, mode="eval", batch_size=1)  # warm-up: first-call allocations
    t_trace = seconds(lambda: surgery.trace(model, mode="eval", batch_size=1))
    trace = surgery.trace(model, mode="eval", batch_size=1)

    rows: list[tuple[str, float, float | None]] = [("trace (one eval forward, hooks on)", t_trace, None)]
    rows.append(("components (trace given)", median(lambda: surgery.render(model, out, trace=trace), args.repeats),
                 TARGETS["components"]))
    rows.append(("components, static (trace=False)", median(lambda: surgery.render(model, out, trace=False), args.repeats), None))
    rows.append((f"modules, full depth, {n_modules} modules (trace given)",
                 median(lambda: surgery.render(model, out, level="modules", trace=trace), args.repeats), TARGETS["modules, full depth"]))
    rows.append((f"modules, full depth, {n_modules} modules, static",
                 median(lambda: surgery.render(model, out, level="modules", trace=False), args.repeats), None))
    rows.append(("default render(model, 'x.svg'): trace + components", seconds(lambda: surgery.render(model, out)), None))

    big: nn.Module = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=5), 91)
    n_big = sum(1 for _ in big.modules())
    big_trace = surgery.trace(big, mode="eval", batch_size=1)
    rows.append((f"modules, full depth, ResNet-101 Mask R-CNN, {n_big} modules (trace given)",
                 median(lambda: surgery.render(big, out, level="modules", trace=big_trace), args.repeats), TARGETS["modules, full depth"]))

    width = max(len(r[0]) for r in rows)
    print(f"surgery.render on MaskRCNN (maskrcnn_resnet50_fpn, CPU, {torch.get_num_threads()} threads, SVG via dot)")
    print(f"{'what'.ljust(width)}  {'seconds':>8}  target")
    print("-" * (width + 20))
    ok = True
    for name, value, target in rows:
        verdict = ""
        if target is not None:
            passed = value <= target
            ok &= passed
            verdict = f"≤ {target:g} s {'ok' if passed else 'MISSED'}"
        print(f"{name.ljust(width)}  {value:8.3f}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
