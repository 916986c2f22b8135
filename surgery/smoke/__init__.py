"""``surgery.smoke_test``: prove that a model runs and trains, before any real training does.

One call runs, in order:

1. ``check`` (static findings; ``check=False`` skips it);
2. a train step on a synthetic batch that fits the family (:func:`surgery.synthetic.synthetic_batch`):
   every loss key of the family present, each loss finite, backward, every trainable
   parameter reached by a gradient, gradients finite; with ``steps=N``, an SGD step between
   consecutive steps, so that the later steps run on updated weights;
3. an eval pass, inside :meth:`Anatomy.exercised` (detection score thresholds at 0, so that
   the second-stage heads run even with random weights): one result per image with the
   family's keys, shapes and dtypes, labels in ``[0, num_classes)``, boxes inside the image;
4. with ``ddp=N``: ``N`` processes wrapping the model in ``DistributedDataParallel``
   (:mod:`surgery.smoke.ddp`).

Forward hooks record which slots ran on data in the train steps and in the eval pass: a slot
with parameters that was called but did no work in a phase (a mask head fed 0 boxes) gets a
``not-exercised`` warning saying why when that is known, so an "ok" never hides a head that
was never run. A loss above :data:`~surgery.smoke.step.LOSS_BOUND` gets an ``exploding``
warning naming the first module whose output explodes.

Each phase is timed (CUDA-synchronized) and its peak memory recorded. The model comes back
exactly as it was: device, modes, ``requires_grad``, ``.grad``, hooks, buffers, transform
sizes and parameter values (the optimizer steps are undone), also when a phase raises.

The package: :mod:`~surgery.smoke.device` (device, AMP, the phase meter),
:mod:`~surgery.smoke.step` (the one train step, shared with DDP), :mod:`~surgery.smoke.ddp`
(the DDP phase), :mod:`~surgery.smoke.result` (:class:`Phase`, :class:`SmokeResult`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surgery._state import preserved
from surgery._util import ModuleStack, check_int, require_module
from surgery.anatomy import anatomy_for
from surgery.findings import Finding, Report
from surgery.smoke.ddp import run_ddp
from surgery.smoke.device import MEMORY_SOURCES, _Meter, amp_name, resolve_amp, resolve_device
from surgery.smoke.result import Phase, SmokeResult
from surgery.smoke.step import Run, raised_finding, train
from surgery.synthetic import synthetic_batch
from surgery.trace.findings import idle_reason, idle_slots, not_exercised_finding

__all__ = [
    "Phase",
    "SmokeResult",
    "resolve_amp",
    "resolve_device",
    "smoke_test",
]


# --------------------------------------------------------------------------- the eval pass


def _eval(run: Run, images: Any) -> None:
    """Run one eval pass, adding findings to ``run``."""
    model = run.model
    model.eval()
    where = ModuleStack(model, record=True)
    label = f"the eval pass{run.amp_note}"
    try:
        with torch.no_grad(), run.anatomy.exercised(model), where, run.autocast():
            output = run.anatomy.call(model, images, None, train=False)
    except Exception as e:  # noqa: BLE001 - a user model may raise anything; it becomes a finding
        run.add([raised_finding(model, where.innermost(), label, e)])
        return
    run.evaluated = where
    run.eval_outcome = run.anatomy.unexercised_reason(model, output, exercised=True)
    run.add(run.anatomy.check_eval_output(model, output, images, label))


def _not_exercised(run: Run) -> list[Finding]:
    """One ``not-exercised`` warning per pass that left slots with parameters without work.

    A slot never called in any pass is an orphan (``orphan-module``, ``unused-parameter``);
    it is not repeated here. When both passes left the same slots idle, one finding says so
    for both (findings with the same code and paths are one finding in a report).
    """
    stacks = [s for s in (run.trained, run.evaluated) if s is not None]
    called = set().union(*(s.called for s in stacks))
    slots = [s.path for s in run.anatomy.slots(run.model)]
    found: list[Finding] = []
    phases = ((run.trained, f"the train step{'s' if run.steps > 1 else ''}{run.amp_note}", None),
              (run.evaluated, f"the eval pass{run.amp_note}", run.eval_outcome))
    for stack, phase, outcome in phases:
        if stack is None:
            continue
        idle = idle_slots(run.model, slots, stack.worked, called)
        if not idle:
            continue
        finding = not_exercised_finding(phase, idle, outcome, idle_reason(run.model, stack.emptied, run.exploded))
        if found and found[0].paths == finding.paths:
            first = found[0]
            found[0] = Finding(first.severity, first.code, first.paths, f"{first.message}. Likewise, {finding.message}", first.fix)
        else:
            found.append(finding)
    return found


# --------------------------------------------------------------------------- entry point


def smoke_test(
    model: nn.Module,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 2,
    image_size: int = 320,
    amp: bool | str | torch.dtype = False,
    steps: int = 1,
    ddp: int = 0,
    check: bool = True,
    ddp_timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> SmokeResult:
    """Check, train one step and evaluate ``model`` on a synthetic batch; optionally under DDP.

    Every phase runs even when an earlier one found errors, so one call reports everything.
    The model is left exactly as it was (device, modes, ``requires_grad``, ``.grad``, hooks,
    buffers, transform sizes, parameter values), also when a phase raises. The global RNG
    state is left alone too: the phases run under a forked, seeded generator.

    Args:
        model: The model to test.
        device: ``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: Images per step.
        image_size: Side of the square synthetic images (>= 32). A detection transform larger
            than that is shrunk to it for the test, so the model runs at this size.
        amp: Run the forward passes under ``torch.autocast``: True picks bfloat16 on CPU and
            float16 on CUDA; ``"bf16"``/``"fp16"`` pick explicitly.
        steps: Train steps, with an SGD step between consecutive ones (undone afterwards).
        ddp: 0 for none, or a world size >= 2 for the DDP phase (:mod:`surgery.smoke.ddp`).
        check: Run :func:`surgery.check` first.
        ddp_timeout: Seconds the DDP workers may take in all before they are killed.
        progress: Called with one line per phase as the phases finish (the CLI prints them).

    Returns:
        A :class:`SmokeResult`; ``result.ok`` is False when any phase found an error.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
        SmokeTestError: The test cannot run: CUDA asked for and absent, or the model cannot be
            sent to the DDP workers (a crash or timeout there is an error finding of the ddp phase).
        ValueError: An argument is out of range.
    """
    require_module(model, "smoke_test()")
    check_int("batch_size", batch_size, 1)
    check_int("image_size", image_size, 32)
    check_int("steps", steps, 1)
    if isinstance(ddp, bool) or not isinstance(ddp, int) or ddp < 0 or ddp == 1:
        raise ValueError(f"ddp must be 0 (no DDP phase) or a world size >= 2, got {ddp!r}")
    if not isinstance(ddp_timeout, (int, float)) or not 0 < ddp_timeout < float("inf"):  # nan and inf too
        raise ValueError(f"ddp_timeout must be a positive number of seconds, got {ddp_timeout!r}")
    dev, device_note = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    anatomy = anatomy_for(model)
    family = anatomy.name
    say = progress or (lambda line: None)
    report = Report(model=type(model).__name__)
    run = Run(model, anatomy, dev, amp_dtype, batch_size, image_size, steps, report)
    phases: list[Phase] = []
    amp_label = amp_name(amp_dtype)
    say(f"surgery smoke: {type(model).__name__} ({family}) on {dev} [{device_note}], batch {batch_size} × {image_size}×{image_size}, "
        f"amp {amp_label or 'off'}")

    def finish(phase: Phase) -> None:
        if phase.status != "skipped":
            phase.status = "failed" if run.phase_errors else "ok"
        if phase.status == "failed":
            phase.images_per_s = None  # the pass did not complete as it should: no throughput to speak of
        run.phase_errors = 0
        phases.append(phase)
        say(f"  {phase}")

    if check:
        from surgery.check import check as run_check

        start = time.perf_counter()
        checked = run_check(model, probe_image_size=image_size)
        run.add(checked.findings)
        finish(Phase("check", "", time.perf_counter() - start, note=f"{len(checked.checked)} static checks"))

    meter_train, meter_eval = _Meter(dev), _Meter(dev)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    with preserved(model), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.manual_seed(0)
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        for p in params:  # the caller's .grad tensors stay untouched; preserved() puts them back
            p.grad = None
        moved = any(p.device != dev for p in params) or any(b.device != dev for b in model.buffers())
        # Moving replaces each parameter's .data, so the originals survive as they are; on the
        # same device the SGD steps between train steps write in place, so keep copies then.
        saved = [p.data for p in trainable] if moved else [p.detach().clone() for p in trainable] if steps > 1 else []
        try:
            if moved:
                model.to(dev)
            images, targets = synthetic_batch(model, batch_size, image_size, device=dev, seed=0, anatomy=anatomy)
            anatomy.fit_inputs(model, [(image_size, image_size)] * batch_size)
            with meter_train.measure():
                train(run, images, targets)
            finish(Phase("train", "", meter_train.seconds, meter_train.peak, batch_size * steps / max(meter_train.seconds, 1e-9),
                         f"{steps} step(s), {len(run.losses)} losses" + (f", {run.sgd_steps} SGD step(s) undone" if run.sgd_steps else "")))
            with meter_eval.measure():
                _eval(run, images)
            run.add(_not_exercised(run))
            finish(Phase("eval", "", meter_eval.seconds, meter_eval.peak, batch_size / max(meter_eval.seconds, 1e-9),
                         "no_grad"))
        finally:
            for p in params:
                p.grad = None
            with torch.no_grad():
                for p, original in zip(trainable, saved, strict=False):  # saved is empty when nothing changed
                    if moved:
                        p.data = original
                    else:
                        p.copy_(original)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    ddp_info: dict[str, Any] | None = None
    if ddp:
        outcome = run_ddp(model, world_size=ddp, device=dev, batch_size=batch_size, image_size=image_size, amp=amp_dtype,
                          timeout=float(ddp_timeout))
        run.add(outcome.findings)
        ddp_info = outcome.info()
        finish(Phase("ddp", "skipped" if outcome.skipped else "", outcome.seconds, note=outcome.note()))

    return SmokeResult(
        ok=report.ok,
        findings=list(report.findings),
        phases=phases,
        device=str(dev),
        device_note=device_note,
        model=type(model).__name__,
        family=family,
        batch_size=batch_size,
        image_size=image_size,
        steps=steps,
        amp=amp_label,
        losses=dict(run.losses),
        memory_source=MEMORY_SOURCES[dev.type],
        ddp=ddp_info,
    )
