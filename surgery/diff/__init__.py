"""``surgery.diff``: what an edit changed, in structure and in cost.

Structure: the slots and modules added, removed and changed, each with its old and new type,
signature or hyperparameters, and parameter count (see :func:`slot_changes` and
:func:`module_changes`, in :mod:`surgery.diff.structure`).

Cost, each as before / after / ratio, from one process:

* parameters, total and trainable;
* FLOPs of one eval forward on a synthetic batch, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions; ops it has no
  formula for, such as ``roi_align`` and NMS, count zero);
* latency: the median of several eval forwards, the two models timed interleaved so that
  machine load affects both alike;
* peak memory of one eval forward: on CUDA, ``torch.cuda.max_memory_allocated`` above what
  was allocated before the forward; on CPU, the peak of the bytes held by tensors that the
  forward's operators created (a ``TorchDispatchMode`` adds each new storage when an operator
  returns it and subtracts it when it is freed). The CPU figure excludes parameters, the
  input batch, allocator overhead and the scratch memory kernels use internally.

During the cost measurement the detection score thresholds are set to 0, so that the
second-stage heads (mask, keypoint) run on a full ``detections_per_img`` worth of boxes, as
for a trained model on a busy image; an untrained model would otherwise keep no detections
and its mask head would cost nothing. Every model setting is put back afterwards. Forward
hooks on the counted forward check that every slot with parameters ran on data; when one did
not (e.g. random weights whose activations explode leave no proposal at all), a note in
:attr:`Diff.notes` names it and says why, so a ΔFLOPs of 0 is never silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from surgery import _html
from surgery._util import check_int, require_module
from surgery.diff.cost import Measure, Progress, ProgressBar, measure_costs
from surgery.diff.structure import Change, module_changes, slot_changes
from surgery.overview import count_params

__all__ = ["Change", "Diff", "Measure", "Progress", "ProgressBar", "diff", "module_changes", "slot_changes"]


@dataclass
class Diff:
    """The result of :func:`diff`.

    Attributes:
        before: Class name of the model before the edit.
        after: Class name of the model after the edit.
        slots: Every slot of either model with its :class:`~surgery.render.Change` status,
            in data-flow order.
        modules: Modules added, removed or changed (descendants of an added or removed module
            are folded into it).
        params: Total parameters.
        trainable: Trainable parameters.
        flops: FLOPs of one eval forward (None when costs were not measured).
        latency: Median seconds of one eval forward.
        memory: Peak bytes of one eval forward (see the module docs for how).
        settings: How the costs were measured (image size, runs, devices, memory method).
        problems: Why a cost could not be measured (e.g. a model's forward raised).
        notes: Slots with parameters that never ran on data during the measurement, per
            model, and why: their cost is missing from the figures.
    """

    before: str
    after: str
    slots: list[Change]
    modules: list[Change]
    params: Measure
    trainable: Measure
    flops: Measure | None = None
    latency: Measure | None = None
    memory: Measure | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed_slots(self) -> list[Change]:
        """The slots that were added, removed or changed."""
        return [c for c in self.slots if c.status != "unchanged"]

    @property
    def measures(self) -> list[Measure]:
        """Every measure taken, in table order."""
        return [m for m in (self.params, self.trainable, self.flops, self.latency, self.memory) if m is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "slots": [c.to_dict() for c in self.slots],
            "modules": [c.to_dict() for c in self.modules],
            "cost": {m.name: m.to_dict() for m in self.measures},
            "settings": dict(self.settings),
            "problems": list(self.problems),
            "notes": list(self.notes),
        }

    def _repr_html_(self) -> str:
        return _html.fragment(_html.diff(self))

    def __repr__(self) -> str:
        return _html.short_repr("Diff", f"{self.before} → {self.after}: {len(self.changed_slots)} slot(s) and {len(self.modules)} module(s) "
                                        f"changed, params {self.params.format(self.params.before)} → {self.params.format(self.params.after)}")

    def __str__(self) -> str:
        lines = [f"surgery diff: {self.before} → {self.after}"]
        changed = self.changed_slots
        lines.append("")
        lines.append(f"Slots: {_counts(changed)}" if changed else "Slots: none changed")
        lines.extend(f"  {c}" for c in changed)
        lines.append("")
        lines.append(f"Modules: {_counts(self.modules)}" if self.modules else "Modules: none changed")
        lines.extend(f"  {c}" for c in self.modules)
        lines.append("")
        lines.append("Cost" + (f" ({self._cost_caption()})" if self.flops or self.latency or self.memory else " (parameters only)"))
        header = ("", "before", "after", "Δ", "ratio")
        rows = [header, *(m.row() for m in self.measures)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(r))).rstrip())
        for p in self.problems:
            lines.append(f"  ! {p}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    def _cost_caption(self) -> str:
        s = self.settings
        parts = [f"eval forward, {s.get('batch_size', 1)} image(s) {s.get('image_size')}×{s.get('image_size')}", f"on {s.get('device')}"]
        if self.latency is not None:
            parts.append(f"latency median of {s.get('runs')} runs")
        return ", ".join(parts)


def _counts(changes: list[Change]) -> str:
    n = {k: sum(1 for c in changes if c.status == k) for k in ("changed", "added", "removed")}
    return ", ".join(f"{v} {k}" for k, v in n.items())


# --------------------------------------------------------------------------- entry point


def diff(
    before: nn.Module,
    after: nn.Module,
    *,
    cost: bool = True,
    image_size: int = 320,
    batch_size: int = 1,
    runs: int = 3,
    progress: Progress | None = None,
) -> Diff:
    """Compare two models: structure (slots and modules) and, optionally, cost.

    Both models are left exactly as they were (modes, hooks, parameters, buffers, transform
    sizes, score thresholds).

    Args:
        before: The model before the edit.
        after: The model after the edit.
        cost: Also measure FLOPs, latency and peak memory (parameter counts are always given).
        image_size: Side of the square synthetic images of the eval forward.
        batch_size: Images per forward.
        runs: Timed forwards per model for the latency median (after one warm-up each).
        progress: Called as ``progress(done, total, what)`` during the cost measurement, e.g.
            a :class:`ProgressBar`.

    Returns:
        A :class:`Diff`; print it for a table, or call ``to_dict()``.

    Raises:
        NotAModuleError: ``before`` or ``after`` is not an ``nn.Module``.
        ValueError: ``image_size``, ``batch_size`` or ``runs`` is out of range.
    """
    require_module(before, "diff()", "before")
    require_module(after, "diff()", "after")
    check_int("image_size", image_size, 32)
    check_int("batch_size", batch_size, 1)
    check_int("runs", runs, 1)
    total_b, trainable_b = count_params(before)
    total_a, trainable_a = count_params(after)
    result = Diff(
        before=type(before).__name__,
        after=type(after).__name__,
        slots=slot_changes(before, after),
        modules=module_changes(before, after),
        params=Measure("params", total_b, total_a),
        trainable=Measure("trainable", trainable_b, trainable_a),
    )
    if cost:
        flops, latency, memory, settings, problems, notes = measure_costs(
            before, after, image_size=image_size, batch_size=batch_size, runs=runs, progress=progress
        )
        result.flops, result.latency, result.memory = flops, latency, memory
        result.settings = settings
        result.problems = problems
        result.notes = notes
    return result
