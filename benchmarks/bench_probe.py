"""How long the whole-model meta probe of ``surgery.check`` takes next to one real forward.

Run it with ``python benchmarks/bench_probe.py``. One model per kind that can run on the meta
device, each built offline (``weights=None``), in eval mode, on the CPU:

* resnet50 (classification), 2×3×224×224;
* fcn_resnet50 (segmentation), 2×3×224×224;
* r3d_18 (video), 2×3×8×112×112;
* raft_small (optical flow), two 2×3×128×128 frames;
* a plain MLP (784 → 1024 → 1024 → 10), 2×784.

For each: the probe (:func:`surgery.probe.probe_model`, the model's parameters swapped for meta
stand-ins and the whole forward run on meta tensors of the same shapes as the real input)
and one real forward under ``torch.no_grad()``, each the median of ``--repeats`` runs after
one warm-up. The ratio is probe / forward; the goal is a mean ratio ≤ 0.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from surgery.anatomy.generic import GenericAnatomy
from surgery.probe import probe_model
from surgery.signature import meta_like

GOAL = 0.1


class FedAnatomy(GenericAnatomy):
    """Feeds the probe meta copies of given inputs, so that probe and forward see the same
    shapes (RAFT takes two frames, which no single-tensor guess can give)."""

    def __init__(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.inputs = inputs

    def probe_inputs(self, model: nn.Module, image_size: int) -> tuple[Any, ...] | None:  # noqa: ARG002 - the given inputs decide
        return tuple(meta_like(t.shape, t.dtype) for t in self.inputs)


def cases() -> list[tuple[str, Callable[[], nn.Module], tuple[torch.Tensor, ...]]]:
    """``(name, builder, real inputs)`` per model."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    models = torchvision.models
    return [
        ("resnet50", lambda: models.resnet50(weights=None), (rand(2, 3, 224, 224),)),
        ("fcn_resnet50", lambda: models.segmentation.fcn_resnet50(weights=None, weights_backbone=None), (rand(2, 3, 224, 224),)),
        ("r3d_18", lambda: models.video.r3d_18(weights=None), (rand(2, 3, 8, 112, 112),)),
        ("raft_small", lambda: models.optical_flow.raft_small(weights=None), (rand(2, 3, 128, 128), rand(2, 3, 128, 128))),
        ("mlp", lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                      nn.Linear(1024, 10)), (rand(2, 784),)),
    ]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print one row per model and the mean ratio; exit 1 when a probe did not run end to end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per median (default: 3)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'model':<14} {'input':<26} {'probe':>9} {'forward':>9} {'ratio':>7}  probe status")
    ratios = []
    failed = False
    for name, builder, inputs in cases():
        model = builder().eval()
        anatomy = FedAnatomy(inputs)  # the probe gets the real forward's shapes, whatever the family would guess

        def forward(m: nn.Module = model, x: tuple[torch.Tensor, ...] = inputs) -> object:
            with torch.no_grad():
                return m(*x)

        probe = probe_model(model, anatomy)
        probe_s = median_seconds(lambda m=model, a=anatomy: probe_model(m, a), args.repeats)
        forward_s = median_seconds(forward, args.repeats)
        ratio = probe_s / forward_s
        ratios.append(ratio)
        failed |= probe.status != "ran"
        shown = " + ".join("×".join(map(str, t.shape)) for t in inputs)
        print(f"{name:<14} {shown:<26} {probe_s * 1e3:7.1f}ms {forward_s * 1e3:7.1f}ms {ratio:7.3f}  {probe.status} {probe.reason}".rstrip())
    mean = statistics.mean(ratios)
    print(f"mean ratio {mean:.3f} (goal ≤ {GOAL})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
