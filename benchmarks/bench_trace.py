"""What ``surgery.trace`` costs next to the same pass without it, in time and in memory.

Run it with ``python benchmarks/bench_trace.py`` (or ``make bench``). Everything is measured
in one run, on the CPU, with Mask R-CNN built offline (``weights=None``) and a synthetic batch
of two square images at each ``--sizes`` side:

* time: the plain pass and the traced pass, interleaved, ``--repeats`` times after one
  warm-up of each; the medians and their ratio (target: traced ≤ 1.2 × plain). Both wall
  time and process CPU time are shown, because CPU time is steadier on a busy machine.

  - eval: plain is ``model.eval()`` + forward under ``torch.no_grad()``; traced is
    ``surgery.trace(model, batch)``.
  - train: plain is ``model.train()`` + forward with targets + ``sum(losses).backward()``;
    traced is ``surgery.trace(model, batch, train=True)`` (same forward and backward, plus
    hooks, the producer-tag function mode and the save/restore of the model's state).

* memory: each pass once more in a fresh child process, which reports how far its peak RSS
  rose above the RSS it had before the pass, and the bytes of tensors still alive after the
  pass (other than the model's parameters, buffers and the input batch). The traced pass
  stores shapes, never tensors, and keeps producer tags through weak references, so its
  peak should match the plain pass and nothing should stay alive after it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

import surgery
from surgery._state import preserved
from surgery.anatomy import anatomy_for

MODEL = "maskrcnn_resnet50_fpn"
KINDS = ("plain-eval", "traced-eval", "plain-train", "traced-train")


def build(name: str = MODEL) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, weights_backbone=None)


def runner(model: nn.Module, kind: str, batch: surgery.SyntheticBatch, seed: int = 0) -> Callable[[], None]:
    """A closure running one pass of ``kind`` on ``batch``. Plain passes expect the model's
    transform already fitted to the images (:meth:`Anatomy.fit_inputs`); traced ones fit it themselves."""
    images, targets = batch

    def plain_eval() -> None:
        model.eval()
        with torch.no_grad():
            model(images)

    def plain_train() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.zero_grad(set_to_none=True)
            model.train()
            losses = model(images, targets)
            sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    def traced_eval() -> None:
        surgery.trace(model, batch, seed=seed)

    def traced_train() -> None:
        surgery.trace(model, batch, train=True, seed=seed)

    return {"plain-eval": plain_eval, "traced-eval": traced_eval, "plain-train": plain_train, "traced-train": traced_train}[kind]


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs``); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak RSS since the last :func:`reset_peak` (``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def live_tensor_bytes(exclude: set[int]) -> int:
    total = 0
    with warnings.catch_warnings():  # isinstance() on some torch objects warns about deprecations
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objects:
        if id(obj) not in exclude and not isinstance(obj, nn.Parameter):
            try:
                total += obj.untyped_storage().nbytes()
            except RuntimeError:
                continue
    return total


def child(kind: str, size: int) -> dict[str, Any]:
    """One pass in this (fresh) process: peak RSS rise and tensors left alive."""
    model = build()
    batch = surgery.synthetic_batch(model, image_size=size)
    if kind.startswith("plain"):
        anatomy_for(model).fit_inputs(model, [(size, size)] * len(batch.images))
    keep = {id(t) for t in model.state_dict().values()} | {id(t) for t in batch.images}
    keep |= {id(v) for t in batch.targets or [] for v in t.values()}
    fn = runner(model, kind, batch)
    gc.collect()
    before = rss_mb()
    exact = reset_peak()
    fn()
    peak = peak_mb()
    gc.collect()
    return {
        "kind": kind,
        "size": size,
        "rss_before_mb": before,
        "peak_exact": exact,
        "peak_rise_mb": peak - before,
        "live_after_mb": live_tensor_bytes(keep) / 2**20,
    }


def measure(model: nn.Module, batch: surgery.SyntheticBatch, size: int, repeats: int) -> list[tuple[Any, ...]]:
    """Interleaved plain and traced runs of each pass; medians of wall and CPU time."""
    rows = []
    for mode in ("eval", "train"):
        plain, traced = runner(model, f"plain-{mode}", batch), runner(model, f"traced-{mode}", batch)
        plain(), traced()  # warm-up
        p_times, t_times = [], []
        for _ in range(repeats):
            p_times.append(timed(plain))
            t_times.append(timed(traced))
        pw, pc = statistics.median(t[0] for t in p_times), statistics.median(t[1] for t in p_times)
        tw, tc = statistics.median(t[0] for t in t_times), statistics.median(t[1] for t in t_times)
        rows.append((size, mode, pw, tw, tw / pw, pc, tc, tc / pc))
        print(f"  {size} {mode}: plain {pw:.2f}s, traced {tw:.2f}s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    if ns.child:
        print(json.dumps(child(ns.child, ns.size)))
        return

    print(f"surgery.trace overhead on {MODEL} (weights=None), batch of 2, CPU, {torch.get_num_threads()} threads, "
          f"median of {ns.repeats} interleaved runs")
    model = build()
    rows = []
    for size in ns.sizes:
        batch = surgery.synthetic_batch(model, image_size=size)
        with preserved(model):
            anatomy_for(model).fit_inputs(model, [(size, size)] * len(batch.images))
            rows.extend(measure(model, batch, size, ns.repeats))
    print()
    print(f"{'size':>4}  {'pass':<5}  {'plain wall':>10}  {'traced wall':>11}  {'ratio':>5}  {'plain cpu':>9}  {'traced cpu':>10}  {'ratio':>5}")
    for size, mode, pw, tw, rw, pc, tc, rc in rows:
        print(f"{size:>4}  {mode:<5}  {pw:>9.2f}s  {tw:>10.2f}s  {rw:>5.2f}  {pc:>8.2f}s  {tc:>9.2f}s  {rc:>5.2f}")

    print()
    print("memory, one pass per fresh process: peak RSS rise over the RSS before the pass; tensors alive after it")
    print(f"{'size':>4}  {'pass':<5}  {'plain peak':>10}  {'traced peak':>11}  {'plain alive':>11}  {'traced alive':>12}")
    for size in ns.sizes:
        results = {}
        for kind in KINDS:
            cmd = [sys.executable, __file__, "--child", kind, "--size", str(size)]
            if ns.threads:
                cmd += ["--threads", str(ns.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[kind] = json.loads(out.strip().splitlines()[-1])
        for mode in ("eval", "train"):
            p, t = results[f"plain-{mode}"], results[f"traced-{mode}"]
            print(f"{size:>4}  {mode:<5}  {p['peak_rise_mb']:>8.0f}MB  {t['peak_rise_mb']:>9.0f}MB  "
                  f"{p['live_after_mb']:>9.1f}MB  {t['live_after_mb']:>10.1f}MB")


if __name__ == "__main__":
    main()
