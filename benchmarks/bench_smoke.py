"""What ``surgery.smoke_test`` costs over a hand-written train step + eval pass.

Both run on the same Mask R-CNN (``maskrcnn_resnet50_fpn``, no weights), the same synthetic
batch and the same image size, interleaved so that machine load hits both alike; the table
shows the median of ``--repeats`` runs after one warm-up each.

The hand-written baseline is what a user would write to smoke-test by hand::

    model.train(); losses = model(images, targets); sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)
    model.eval(); with torch.no_grad(): model(images)

``smoke_test`` does that plus ``check``, the loss/gradient/output checks, the hooks that name
a failing module, and putting the model back exactly as it was. Neither takes an optimizer
step (``smoke_test`` with ``steps=1`` has no next step to update the weights for), so both eval
passes see the same weights: one SGD step changes how many detections a randomly
initialised Mask R-CNN returns (100 per image before, 29 and 40 after, at 320×320), and the
eval pass's cost with it.

Run: python benchmarks/bench_smoke.py [--device cpu|cuda] [--image-size 320] [--repeats 3] [--max-ratio 1.3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from surgery import smoke_test
from surgery.anatomy import anatomy_for
from surgery.synthetic import synthetic_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_written(model: nn.Module, device: torch.device, batch_size: int, image_size: int, amp: bool) -> Callable[[], dict[str, float]]:
    """The baseline: one train step (forward, backward), one eval pass (timed, CUDA-synchronized).

    Each run starts from the same BatchNorm statistics (put back untimed), as each
    ``smoke_test`` call does.
    """
    images, targets = synthetic_batch(model, batch_size, image_size, device=device, seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    anatomy_for(model).fit_inputs(model, [(image_size, image_size)] * batch_size)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def run() -> dict[str, float]:
        model.load_state_dict(initial)
        torch.manual_seed(0)
        _sync(device)
        start = time.perf_counter()
        model.train()
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            losses = model(images, targets)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        middle = time.perf_counter()
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            model(images)
        _sync(device)
        end = time.perf_counter()
        return {"train": middle - start, "eval": end - middle, "total": end - start}

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="autocast both (bfloat16 on CPU, float16 on CUDA)")
    parser.add_argument("--max-ratio", type=float, default=None, help="exit 1 when smoke_test / hand-written exceeds this")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_smoke: --device cuda asked for, but there is no CUDA GPU", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    smoke_model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    smoke_model.load_state_dict(model.state_dict())
    smoke_model.to(device)  # like the baseline, the model already sits on the device
    model.to(device)
    baseline = hand_written(model, device, args.batch_size, args.image_size, args.amp)

    def smoke() -> dict[str, float]:
        start = time.perf_counter()
        result = smoke_test(smoke_model, device=args.device, batch_size=args.batch_size, image_size=args.image_size, amp=args.amp)
        total = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"bench_smoke: the smoke test failed:\n{result}")
        return {**result.timings, "total": total, "peak_train": float(result.memory["train"] or 0)}

    baseline()  # warm-up
    smoke()
    plain_runs, smoke_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(baseline())
        smoke_runs.append(smoke())

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    plain_total, smoke_total = med(plain_runs, "total"), med(smoke_runs, "total")
    ratio = smoke_total / plain_total
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"Mask R-CNN (resnet50 FPN), batch {args.batch_size} × {args.image_size}×{args.image_size}, {where}, "
          f"amp {'on' if args.amp else 'off'}, median of {args.repeats} (after 1 warm-up)")
    print(f"{'':<28}{'train':>10}{'eval':>10}{'check':>10}{'total':>10}")
    print(f"{'hand-written step + eval':<28}{med(plain_runs, 'train'):>9.3f}s{med(plain_runs, 'eval'):>9.3f}s{'-':>10}{plain_total:>9.3f}s")
    print(f"{'surgery.smoke_test':<28}{med(smoke_runs, 'train'):>9.3f}s{med(smoke_runs, 'eval'):>9.3f}s"
          f"{med(smoke_runs, 'check'):>9.3f}s{smoke_total:>9.3f}s")
    print(f"ratio smoke_test / hand-written: {ratio:.2f}x"
          + (f" (target <= {args.max_ratio:.2f}x: {'ok' if ratio <= args.max_ratio else 'EXCEEDED'})" if args.max_ratio else ""))
    peak = med(smoke_runs, "peak_train")
    label = "peak GPU memory (train)" if device.type == "cuda" else "peak RSS growth (train)"
    print(f"{label}: {peak / 2**20:.1f} MiB")
    return 1 if args.max_ratio is not None and ratio > args.max_ratio else 0


if __name__ == "__main__":
    sys.exit(main())
