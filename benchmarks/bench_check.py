"""How long ``surgery.check`` takes next to one forward pass, and how it grows with a deeper head.

Run it with ``python benchmarks/bench_check.py`` (or ``make bench``). Everything is measured
in one run, on the CPU, with models built offline (``weights=None``):

* forward: one 320×320 image in eval mode under ``torch.no_grad()`` (transform min/max size
  320), median of ``--repeats`` runs after one warm-up;
* check cold: the first ``check`` of the model with the source-analysis caches emptied, as a
  one-shot ``surgery check`` would pay it; check warm: the median of ``--repeats`` more;
* ratio: warm check / forward (target ≤ 0.05);
* linearity: check time with a user-defined mask head of 4 and of 40 conv layers (so the
  meta-device probe runs), and with torchvision's ``MaskRCNNHeads`` of 4 and 40 layers (read
  statically); target: the 10× deeper head costs ≤ ~10× as much.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
import torchvision
from _timing import median, seconds  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

import surgery
from surgery import _orphans

MODELS = ("maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn")
SIZE = 320


class DeepMaskHead(nn.Module):
    """A user's mask head: ``depth`` 3×3 convs of 256 channels, each followed by ReLU."""

    def __init__(self, depth: int, channels: int = 256) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def build(name: str) -> nn.Module:
    """A torchvision detection model with no weights, sized for 320×320 inputs, in eval mode."""
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    model.transform.min_size = (SIZE,)
    model.transform.max_size = SIZE
    return model.eval()


def clear_caches() -> None:
    """Forget every parsed ``forward`` so the next check pays the full static analysis."""
    _orphans._parse.cache_clear()
    _orphans._usage.cache_clear()
    _orphans.used_attribute_names.cache_clear()


def check_seconds(model: nn.Module, repeats: int) -> tuple[float, float]:
    clear_caches()
    cold = seconds(lambda: surgery.check(model))
    warm = median(lambda: surgery.check(model), repeats)
    return cold, warm


def main(argv: list[str] | None = None) -> int:
    """Print both tables. Returns 0 when every target is met, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per median (default: 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.manual_seed(0)
    print(f"surgery {surgery.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"CPU, {torch.get_num_threads()} threads, {args.repeats} repeats per median\n")

    header = f"{'model':<28} {'forward ms':>10} {'check cold ms':>13} {'check warm ms':>13} {'warm/fwd':>9} {'cold/fwd':>9}"
    print(header)
    print("-" * len(header))
    met = True
    image = [torch.rand(3, SIZE, SIZE)]
    for name in MODELS:
        model = build(name)
        with torch.no_grad():
            model(image)  # warm-up
            forward = median(lambda m=model: m(image), args.repeats)
        cold, warm = check_seconds(model, args.repeats)
        report = surgery.check(model)
        if not report.ok:
            print(f"{name}: unexpected errors\n{report}", file=sys.stderr)
            return 1
        met &= warm / forward <= 0.05
        print(f"{name:<28} {forward * 1e3:>10.1f} {cold * 1e3:>13.2f} {warm * 1e3:>13.2f} {warm / forward:>9.4f} {cold / forward:>9.4f}")
        del model

    print()
    header = f"{'mask head (maskrcnn_resnet50_fpn)':<38} {'4 layers ms':>11} {'40 layers ms':>12} {'40 / 4':>7}"
    print(header)
    print("-" * len(header))
    base = build("maskrcnn_resnet50_fpn")
    heads: list[tuple[str, Callable[[int], nn.Module]]] = [
        ("user-defined class (meta probe)", DeepMaskHead),
        ("MaskRCNNHeads (static)", lambda depth: MaskRCNNHeads(256, (256,) * depth, 1)),
    ]
    for label, make in heads:
        times = []
        for depth in (4, 40):
            base.roi_heads.mask_head = make(depth)
            report = surgery.check(base)
            if not report.ok:
                print(f"{label}, {depth} layers: unexpected errors\n{report}", file=sys.stderr)
                return 1
            times.append(median(lambda: surgery.check(base), args.repeats))
        ratio = times[1] / times[0]
        met &= ratio <= 10
        print(f"{label:<38} {times[0] * 1e3:>11.2f} {times[1] * 1e3:>12.2f} {ratio:>7.2f}")
    print(f"\ntargets (check/forward <= 0.05, 10x deeper head <= ~10x): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
