"""How long the whole-model meta probe of ``surgery.check`` takes next to one real forward.

Run it with ``python benchmarks/bench_probe.py``. One model per kind that can run on the meta
device, each built offline (``weights=None``), in eval mode, on the CPU:

* resnet50 (classification), 2×3×224×224;
* fcn_resnet50 (segmentation), 2×3×224×224;
* r3d_18 (video), 2×3×8×112×112;
* raft_small (optical flow), two 2×3×128×128 frames;
* a plain MLP (784 → 1024 → 1024 → 10), 2×784.

For each: the probe as ``surgery.check`` runs it (:func:`surgery.probe.probe_model` with the
model's anatomy: its parameters swapped for meta stand-ins and the whole forward run on the
meta input the family gives, shown in the table; RAFT gets one flow update, whose shapes the
others repeat) and one real forward of the listed input under ``torch.no_grad()``, each the
median of ``--repeats`` runs after one warm-up. The ratio is probe / forward; the goal is a mean ratio ≤ 0.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch
import torchvision
from _timing import median  # benchmarks/ is on sys.path when a benchmark runs as a script
from torch import nn

from surgery.anatomy import anatomy_for
from surgery.probe import probe_model

GOAL = 0.1


def cases() -> list[tuple[str, Callable[[], nn.Module]]]:
    """``(name, builder)`` per model."""
    models = torchvision.models
    return [
        ("resnet50", lambda: models.resnet50(weights=None)),
        ("fcn_resnet50", lambda: models.segmentation.fcn_resnet50(weights=None, weights_backbone=None)),
        ("r3d_18", lambda: models.video.r3d_18(weights=None)),
        ("raft_small", lambda: models.optical_flow.raft_small(weights=None)),
        ("mlp", lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                      nn.Linear(1024, 10))),
    ]


def real_inputs(meta_inputs: tuple[object, ...]) -> tuple[torch.Tensor, ...]:
    """Random tensors of the probe's shapes (its other arguments, such as RAFT's one flow update,
    are left out: the real forward runs with the model's defaults)."""
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.rand(*t.shape, generator=gen) for t in meta_inputs if isinstance(t, torch.Tensor))


def main(argv: list[str] | None = None) -> int:
    """Print one row per model and the mean ratio; exit 1 when a probe did not run end to end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per median (default: 3)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'model':<14} {'input (probe and forward)':<30} {'probe':>9} {'forward':>9} {'ratio':>7}  anatomy: probe status")
    ratios = []
    failed = False
    family_ratios = []
    for name, builder in cases():
        model = builder().eval()
        anatomy = anatomy_for(model)  # the probe is fed what check feeds it: the family's input
        inputs = real_inputs(anatomy.probe_inputs(model, 320) or ())

        def forward(m: nn.Module = model, x: tuple[torch.Tensor, ...] = inputs) -> object:
            with torch.no_grad():
                return m(*x)

        probe = probe_model(model, anatomy)
        probe_s = median(lambda m=model, a=anatomy: probe_model(m, a), args.repeats, warm_up=True)
        forward_s = median(forward, args.repeats, warm_up=True)
        ratio = probe_s / forward_s
        ratios.append(ratio)
        if anatomy.knows_model:
            family_ratios.append(ratio)
        failed |= probe.status != "ran"
        shown = probe.input
        print(f"{name:<14} {shown:<30} {probe_s * 1e3:7.1f}ms {forward_s * 1e3:7.1f}ms {ratio:7.3f}  "
              f"{anatomy.name}: {probe.status} {probe.reason}".rstrip())
    print(f"mean ratio over the families: {statistics.mean(family_ratios):.3f} (goal ≤ {GOAL}); "
          f"over every row: {statistics.mean(ratios):.3f}")
    print("a tiny generic model's forward is shorter than the probe's fixed cost of about a millisecond")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
