"""What the meta shortcuts save: common ops on meta tensors, and whole-model probes, with and without them.

Run it with ``python benchmarks/bench_meta_ops.py``. Two tables, both measured in this run:

* ops: each call once on plain meta tensors (the real meta kernel, often a Python reference
  decomposition) and once under :class:`surgery._meta_ops.MetaShortcuts` (its shape rule),
  in microseconds per call (the best of ``--repeats`` timed loops), and the ratio;
* probes: :func:`surgery.probe.probe_model` for one model per kind torchvision has, with the
  rule table emptied (every op runs its real meta kernel, as before the shortcuts) and with
  it, in milliseconds (the median of ``--repeats`` runs after a warm-up), and the ratio.
  Models are built offline (``weights=None``), in eval mode; images are 224×224 (320×320 for
  Mask R-CNN, whose probe stops at the first data-dependent op in post-processing).

``--ops-only`` skips the probes table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from _timing import median  # benchmarks/ is on sys.path when a benchmark runs as a script

from surgery._meta_ops import RULES, MetaShortcuts
from surgery.anatomy import anatomy_for
from surgery.probe import probe_model

#: (builder, image side) per kind of model
MODELS = (("resnet50", 224), ("fcn_resnet50", 224), ("deeplabv3_mobilenet_v3_large", 224), ("lraspp_mobilenet_v3_large", 224),
          ("raft_small", 224), ("r3d_18", 224), ("maskrcnn_resnet50_fpn", 320), ("efficientnet_b0", 224), ("convnext_tiny", 224),
          ("swin_t", 224), ("vit_b_16", 224))


def _m(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def ops() -> list[tuple[str, Callable[[], object]]]:
    """``(label, call)`` per op, on tensors the size of a ResNet stage at 224×224."""
    x, b, w, tokens = _m(2, 64, 56, 56), _m(64), _m(64, 64, 3, 3), _m(2, 197, 768)
    grid, mask = _m(2, 56, 56, 2), torch.empty(2, 64, 56, 56, dtype=torch.bool, device="meta")
    w_in, b_in, w_out = _m(3 * 768, 768), _m(3 * 768), _m(768, 768)
    q = tokens.transpose(0, 1)
    return [
        ("F.relu(x)", lambda: F.relu(x)),
        ("F.relu(x, inplace=True)", lambda: F.relu(x, inplace=True)),
        ("F.hardswish(x)", lambda: F.hardswish(x)),
        ("F.gelu(tokens)", lambda: F.gelu(tokens)),
        ("torch.sigmoid(x)", lambda: torch.sigmoid(x)),
        ("x + x", lambda: x + x),
        ("x * b[:, None, None]", lambda: x * b[:, None, None]),
        ("x.add_(1)", lambda: x.add_(1)),
        ("F.softmax(tokens, -1)", lambda: F.softmax(tokens, -1)),
        ("F.batch_norm(x, b, b, b, b)", lambda: F.batch_norm(x, b, b, b, b)),
        ("F.layer_norm(tokens, (768,))", lambda: F.layer_norm(tokens, (768,))),
        ("F.group_norm(x, 32)", lambda: F.group_norm(x, 32)),
        ("F.linear(tokens, w_out)", lambda: F.linear(tokens, w_out)),
        ("F.conv2d(x, w, padding=1)", lambda: F.conv2d(x, w, padding=1)),
        ("F.max_pool2d(x, 3, 2, 1)", lambda: F.max_pool2d(x, 3, 2, 1)),
        ("F.adaptive_avg_pool2d(x, 1)", lambda: F.adaptive_avg_pool2d(x, 1)),
        ("torch.cat([x, x], 1)", lambda: torch.cat([x, x], 1)),
        ("F.interpolate(x, 2, bilinear)", lambda: F.interpolate(x, scale_factor=2, mode="bilinear")),
        ("F.grid_sample(x, grid)", lambda: F.grid_sample(x, grid, align_corners=True)),
        ("x.masked_fill(mask, 0)", lambda: x.masked_fill(mask, 0.0)),
        ("torch.roll(x, 3, 2)", lambda: torch.roll(x, 3, 2)),
        ("F.multi_head_attention_forward", lambda: F.multi_head_attention_forward(
            q, q, q, 768, 12, w_in, b_in, None, None, False, 0.0, w_out, None, need_weights=False)),
    ]


def per_call_us(call: Callable[[], object], repeats: int) -> float:
    """Microseconds per call: the best of ``repeats`` loops, each of enough calls to take about 20 ms."""
    call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    n = max(1, min(2000, int(0.02 / max(once, 1e-7))))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


@contextmanager
def rules_off() -> Iterator[None]:
    """Every op runs its real meta kernel: the rule table is empty for the duration."""
    saved = dict(RULES)
    RULES.clear()
    try:
        yield
    finally:
        RULES.update(saved)


def build(name: str) -> Any:
    kwargs: dict[str, Any] = {"weights": None}
    if name.startswith(("fcn", "deeplab", "lraspp", "maskrcnn")):
        kwargs["weights_backbone"] = None
    return torchvision.models.get_model(name, **kwargs).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed loops (ops) or runs (probes) per figure (default: 3)")
    parser.add_argument("--ops-only", action="store_true", help="skip the whole-model probes")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'op (meta tensors)':<34} {'real µs':>10} {'shortcut µs':>12} {'ratio':>8}")
    with torch.no_grad():
        for label, call in ops():
            real = per_call_us(call, args.repeats)
            with MetaShortcuts():
                fast = per_call_us(call, args.repeats)
            print(f"{label:<34} {real:10.1f} {fast:12.1f} {real / fast:7.1f}x")
    if args.ops_only:
        return 0
    print(f"\n{'model (probe_model)':<34} {'without ms':>10} {'with ms':>12} {'ratio':>8}  status")
    ratios = []
    for name, side in MODELS:
        model = build(name)
        anatomy = anatomy_for(model)
        with rules_off():
            without = median(lambda m=model, a=anatomy, s=side: probe_model(m, a, s), args.repeats, warm_up=True)
        status = probe_model(model, anatomy, side).status
        with_ = median(lambda m=model, a=anatomy, s=side: probe_model(m, a, s), args.repeats, warm_up=True)
        ratios.append(without / with_)
        print(f"{name:<34} {without * 1e3:10.1f} {with_ * 1e3:12.1f} {without / with_:7.1f}x  {status}")
    print(f"geometric mean speed-up: {statistics.geometric_mean(ratios):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
