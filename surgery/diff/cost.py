"""Cost of one eval forward, measured on two models side by side: FLOPs, latency and peak
memory (see :mod:`surgery.diff` for how each is counted), and the progress bar shown meanwhile.

The counted forward runs under forward hooks that record which slots ran on data, so that a
head that never ran (a mask head fed 0 detections) is stated in a note instead of hiding
behind a ΔFLOPs of 0."""

from __future__ import annotations

import math
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from surgery._state import preserved
from surgery._util import ModuleStack, device_of, first_line, sync
from surgery.anatomy import Anatomy, anatomy_for
from surgery.overview import human
from surgery.trace.findings import idle_reason, idle_slots

__all__ = ["Measure", "Progress", "ProgressBar", "measure_costs"]


#: Called as ``progress(done, total, what)`` while costs are measured.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Measure:
    """One quantity measured on both models.

    Attributes:
        name: What it is (``"params"``, ``"FLOPs"``, ``"latency"``, ...).
        before: Value for the model before the edit (None when it could not be measured).
        after: Value for the model after the edit.
        unit: ``"count"``, ``"flop"``, ``"s"`` or ``"bytes"``.
    """

    name: str
    before: float | None
    after: float | None
    unit: str = "count"

    @property
    def delta(self) -> float | None:
        """``after - before``."""
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    @property
    def ratio(self) -> float | None:
        """``after / before`` (None when ``before`` is zero or unknown)."""
        if self.before is None or self.after is None or self.before == 0:
            return None
        return self.after / self.before

    def format(self, value: float | None, *, signed: bool = False) -> str:
        """A value of this measure in its unit (``"1.2 GFLOP"``, ``"412.3 ms"``, ``"96.0 MiB"``)."""
        if value is None:
            return "-"
        sign = "+" if signed and value > 0 else "-" if value < 0 else ""
        v = abs(value)
        if self.unit == "count":
            return f"{sign}{int(v):,}"
        if self.unit == "flop":
            text = human(int(v))
            return f"{sign}{text[:-1]} {text[-1]}FLOP" if text[-1].isalpha() else f"{sign}{text} FLOP"
        if self.unit == "s":
            return f"{sign}{v * 1000:.1f} ms"
        if self.unit == "bytes":
            for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
                if v >= scale:
                    return f"{sign}{v / scale:.1f} {unit}"
            return f"{sign}{int(v)} B"
        return f"{sign}{v}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "delta": self.delta,
            "ratio": self.ratio,
            "unit": self.unit,
        }

    def row(self) -> tuple[str, str, str, str, str]:
        ratio = self.ratio
        return (
            self.name,
            self.format(self.before),
            self.format(self.after),
            self.format(self.delta, signed=True),
            "-" if ratio is None else f"{ratio:.2f}×",
        )


# --------------------------------------------------------------------------- progress


class ProgressBar:
    """A one-line text progress bar, redrawn in place (for a terminal's stderr).

    Args:
        stream: Where to draw (``sys.stderr`` when None).
        width: Bar width in characters.
    """

    def __init__(self, stream: IO[str] | None = None, width: int = 28) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width

    def __call__(self, done: int, total: int, what: str) -> None:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(round(frac * self.width))
        bar = "█" * filled + "·" * (self.width - filled)
        self.stream.write(f"\r  [{bar}] {done}/{total} {what:<32}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


# --------------------------------------------------------------------------- measurement


class _PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes held by storages that operators create, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {id(s) for s in map(_storage, tree_flatten((args, kwargs))[0]) if s is not None}
        for t in tree_flatten(out)[0]:
            storage = _storage(t)
            if storage is None:
                continue
            key = id(storage)
            if key in self.live or key in inputs:  # a view of, or an in-place write to, an input
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            weakref.finalize(storage, self._release, key)
        self.peak = max(self.peak, self.current)
        return out


def _storage(value: Any) -> Any:
    """The untyped storage behind a tensor, or None (not a tensor, meta, sparse, wrapper)."""
    if not isinstance(value, torch.Tensor) or value.device.type == "meta":
        return None
    try:
        return value.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


class _Runner:
    """One model prepared for eval forwards on a fixed synthetic batch."""

    def __init__(self, name: str, model: nn.Module, anatomy: Anatomy, image_size: int, batch_size: int) -> None:
        from surgery.synthetic import synthetic_batch

        self.name = name
        self.model = model
        self.anatomy = anatomy
        self.device = device_of(model)
        batch = synthetic_batch(model, batch_size=batch_size, image_size=image_size, device=self.device, seed=0, anatomy=anatomy)
        self.images = batch.images
        anatomy.fit_inputs(model, [(image_size, image_size)] * batch_size)
        model.eval()
        self.error: str | None = None
        self.note: str | None = None

    def forward(self) -> Any:
        with torch.no_grad():
            return self.anatomy.call(self.model, self.images, None, train=False)

    def attempt(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a model whose forward raises is recorded and skipped from then on."""
        if self.error is not None:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a user's model may raise anything; the diff reports it
            self.error = f"{self.name} model: eval forward raised {type(e).__name__}: {first_line(str(e))}"
            return None

    def flops_and_memory(self) -> tuple[int, int]:
        """FLOPs and peak memory of one eval forward."""
        counter = FlopCounterMode(display=False)
        watch = ModuleStack(self.model, record=True)
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            with counter, watch:
                output = self.forward()
            sync(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device) - base)
        else:
            tracker = _PeakTensorMemory()
            with counter, tracker, watch:
                output = self.forward()
            peak = int(tracker.peak)
        self.note = self._idle_note(watch, output)
        return int(counter.get_total_flops()), peak

    def _idle_note(self, watch: ModuleStack, output: Any) -> str | None:
        """Which slots with parameters did no work in the counted forward, and why, or None."""
        slots = [s.path for s in self.anatomy.slots(self.model)]
        idle = idle_slots(self.model, slots, watch.worked, watch.called)
        if not idle:
            return None
        outcome = self.anatomy.unexercised_reason(self.model, output, exercised=True)
        listed = idle[0] if len(idle) == 1 else ", ".join(idle[:-1]) + f" and {idle[-1]}"
        text = f"{self.name} model: {listed} never ran on any data during the measurement"
        if outcome:
            text += f" (the eval forward {outcome})"
        text += ", so their cost is missing from FLOPs, latency and memory" if len(idle) > 1 else ", so its cost is missing from FLOPs, latency and memory"
        causes = idle_reason(self.model, watch.emptied, None)
        return text + "".join(f"; {c}" for c in causes)

    def timed(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.forward()
        sync(self.device)
        return time.perf_counter() - start


def measure_costs(
    before: nn.Module, after: nn.Module, *, image_size: int, batch_size: int, runs: int, progress: Progress | None
) -> tuple[Measure, Measure, Measure, dict[str, Any], list[str], list[str]]:
    """FLOPs, latency and peak memory of one eval forward of each model.

    Args:
        before: The model before the edit.
        after: The model after the edit.
        image_size: Side of the square synthetic images.
        batch_size: Images per forward.
        runs: Timed forwards per model (after one warm-up each).
        progress: Called as ``progress(done, total, what)`` after each step, or None.

    Returns:
        The FLOPs, latency and peak memory measures, the settings they were taken with, why a
        model could not be measured (one line per model whose forward raised), and notes: one
        per model in which a slot with parameters never ran on data during the counted forward.
    """
    total = 2 + 2 * (runs + 1)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    with ExitStack() as stack:
        anatomies = [anatomy_for(before), anatomy_for(after)]
        for model, anatomy in zip((before, after), anatomies, strict=True):
            stack.enter_context(preserved(model))
            stack.enter_context(anatomy.exercised(model))
        runners = [_Runner("before", before, anatomies[0], image_size, batch_size),
                   _Runner("after", after, anatomies[1], image_size, batch_size)]
        if progress is not None:
            progress(0, total, "FLOPs and memory")
        counted = []
        for r in runners:
            counted.append(r.attempt(r.flops_and_memory) or (None, None))
            step(f"FLOPs and memory ({r.name})")
        flops = [c[0] for c in counted]
        memory = [c[1] for c in counted]
        times: list[list[float]] = [[], []]
        for i in range(runs + 1):  # round 0 warms up (first-call allocations, kernel selection) and is not counted
            for j, r in enumerate(runners):
                t = r.attempt(r.timed)
                if t is not None and i > 0:
                    times[j].append(t)
                step(f"latency ({r.name}) {i}/{runs}" if i else f"warm-up ({r.name})")
        latency = [statistics.median(t) if t else None for t in times]
        devices = sorted({str(r.device) for r in runners})
        problems = [r.error for r in runners if r.error is not None]
        notes = [r.note for r in runners if r.note is not None and r.error is None]
    settings = {
        "image_size": image_size,
        "batch_size": batch_size,
        "runs": runs,
        "device": ", ".join(devices),
        "memory_method": "torch.cuda.max_memory_allocated"
        if all(r.device.type == "cuda" for r in runners)
        else "peak bytes of tensors created by operators (TorchDispatchMode)",
        "score_thresh": 0.0,
    }
    return (
        Measure("FLOPs", _num(flops[0]), _num(flops[1]), "flop"),
        Measure("latency", latency[0], latency[1], "s"),
        Measure("peak memory", _num(memory[0]), _num(memory[1]), "bytes"),
        settings,
        problems,
        notes,
    )


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
