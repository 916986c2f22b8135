"""``surgery.smoke_test``: prove that a model runs and trains, before any real training does.

One call runs, in order:

1. ``check`` (static findings; ``check=False`` skips it);
2. a train step on a synthetic batch that fits the family (:func:`surgery.synthetic.synthetic_batch`):
   every loss key of the family present, each loss finite, backward, every trainable
   parameter reached by a gradient, gradients finite; with ``steps=N``, an SGD step between
   consecutive steps, so that the later steps run on updated weights;
3. an eval pass: one result per image with the family's keys, shapes and dtypes, labels in
   ``[0, num_classes)``, boxes inside the image;
4. with ``ddp=N``: ``N`` processes wrapping the model in ``DistributedDataParallel``
   (:mod:`surgery._ddp`).

Each phase is timed (CUDA-synchronized) and its peak memory recorded. The model comes back
exactly as it was: device, modes, ``requires_grad``, ``.grad``, hooks, buffers, transform
sizes and parameter values (the optimizer steps are undone), also when a phase raises.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from surgery import paths as _paths
from surgery._errors import SmokeTestError
from surgery._state import preserved
from surgery._util import ModuleStack, check_int, first_lines, fmt_bytes, require_module, sync, tensors_in
from surgery.anatomy import Anatomy, anatomy_for
from surgery.findings import Finding, Report
from surgery.synthetic import synthetic_batch
from surgery.trace import unused_parameter_findings

__all__ = [
    "Phase",
    "SmokeResult",
    "resolve_amp",
    "resolve_device",
    "smoke_test",
]

_AMP_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
#: Learning rate of the SGD step between train steps (undone afterwards).
_LR = 1e-3

#: What ``peak_memory`` means on each kind of device.
MEMORY_SOURCES = {
    "cuda": "torch.cuda.max_memory_allocated during the phase (model weights included)",
    "cpu": "growth of the process's peak RSS (getrusage ru_maxrss) during the phase; 0 when an earlier peak was higher",
}


# --------------------------------------------------------------------------- result types


@dataclass
class Phase:
    """One phase of a smoke test.

    Attributes:
        name: ``"check"``, ``"train"``, ``"eval"`` or ``"ddp"``.
        status: ``"ok"``, ``"failed"`` (an error finding came from it) or ``"skipped"``.
        seconds: Wall time (CUDA-synchronized on a GPU).
        peak_memory: Bytes, see :data:`MEMORY_SOURCES`; None when not measured.
        images_per_s: Throughput of the train/eval phases; None for the others.
        note: A short description of what ran.
    """

    name: str
    status: str
    seconds: float
    peak_memory: int | None = None
    images_per_s: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "peak_memory": self.peak_memory,
            "images_per_s": self.images_per_s,
            "note": self.note,
        }

    def __str__(self) -> str:
        mem = fmt_bytes(self.peak_memory) if self.peak_memory is not None else "-"
        ips = f"{self.images_per_s:.2f} img/s" if self.images_per_s is not None else "-"
        return f"{self.name:<6} {self.status:<7} {self.seconds:8.2f} s  {mem:>10}  {ips:>12}  {self.note}".rstrip()


@dataclass
class SmokeResult:
    """What :func:`smoke_test` found.

    Attributes:
        ok: True when no finding has error severity.
        findings: Every finding (check's, then the smoke phases'), errors first.
        phases: The phases in the order they ran.
        device: Where the train and eval phases ran, e.g. ``"cpu"`` or ``"cuda:0"``.
        device_note: Why that device (e.g. ``"auto: no CUDA GPU, using cpu"``).
        model: A name for the model (its class, or the CLI spec).
        family: The anatomy that matched (``"R-CNN"``, ``"RetinaNet"``, ..., ``"generic"``).
        batch_size: Images per step.
        image_size: Side of the square synthetic images.
        steps: Train steps run.
        amp: The autocast dtype (``"bfloat16"``, ``"float16"``) or None.
        losses: The loss values of the first train step.
        memory_source: What ``peak_memory`` measures on this device.
        ddp: World size, backend and device of the DDP phase, or None when it did not run.
    """

    ok: bool
    findings: list[Finding]
    phases: list[Phase]
    device: str
    device_note: str
    model: str = ""
    family: str = ""
    batch_size: int = 2
    image_size: int = 320
    steps: int = 1
    amp: str | None = None
    losses: dict[str, float] = field(default_factory=dict)
    memory_source: str = ""
    ddp: dict[str, Any] | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per phase, e.g. ``{"check": 0.05, "train": 3.1, "eval": 0.9}``."""
        return {p.name: p.seconds for p in self.phases}

    @property
    def memory(self) -> dict[str, int | None]:
        """Peak memory in bytes per phase (see :attr:`memory_source`)."""
        return {p.name: p.peak_memory for p in self.phases if p.name in ("train", "eval")}

    @property
    def throughput(self) -> dict[str, float]:
        """Images per second of the train and eval phases."""
        return {p.name: p.images_per_s for p in self.phases if p.images_per_s is not None}

    def codes(self) -> list[str]:
        """The codes of all findings, in order."""
        return [f.code for f in self.findings]

    def phase(self, name: str) -> Phase:
        """The phase called ``name``.

        Raises:
            KeyError: No phase of that name ran.
        """
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r}; phases run: {[p.name for p in self.phases]}")

    def report(self) -> Report:
        """The findings as a :class:`~surgery.Report` (for ``format("github")`` and friends)."""
        return Report(findings=list(self.findings), model=self.model, checked=[p.name for p in self.phases])

    def raise_for_errors(self) -> None:
        """Raise :class:`~surgery.SmokeTestError` listing every error, if there is any."""
        if self.errors:
            raise SmokeTestError(str(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "family": self.family,
            "device": self.device,
            "device_note": self.device_note,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "steps": self.steps,
            "amp": self.amp,
            "phases": [p.to_dict() for p in self.phases],
            "timings": self.timings,
            "memory": self.memory,
            "memory_source": self.memory_source,
            "throughput": self.throughput,
            "losses": dict(self.losses),
            "ddp": dict(self.ddp) if self.ddp is not None else None,
        }

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAILED, {len(self.errors)} error(s)"
        warnings = sum(f.severity == "warning" for f in self.findings)
        if warnings:
            verdict += f", {warnings} warning(s)"
        lines = [f"surgery smoke: {self.model or 'model'} ({self.family}) on {self.device}: {verdict}",
                 f"  {self.device_note}; batch {self.batch_size} × {self.image_size}×{self.image_size}, "
                 f"{self.steps} train step(s), amp {self.amp or 'off'}",
                 f"  {'phase':<6} {'status':<7} {'time':>10}  {'peak mem':>10}  {'throughput':>12}"]
        lines.extend(f"  {p}" for p in self.phases)
        if self.losses:
            lines.append("  losses: " + ", ".join(f"{k}={_fmt_loss(v)}" for k, v in self.losses.items()))
        if self.findings:
            lines.append("")
            lines.extend(str(f) for f in self.findings)
        return "\n".join(lines)


def _fmt_loss(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


# --------------------------------------------------------------------------- arguments


def resolve_device(device: str | torch.device) -> tuple[torch.device, str]:
    """Turn ``device`` into a concrete device and say why it was picked.

    Args:
        device: ``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The device and a one-line note such as ``"auto: no CUDA GPU, using cpu"``.

    Raises:
        SmokeTestError: A CUDA device was asked for and there is none (or not that index).
        ValueError: ``device`` is not one of the forms above.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), f"auto: CUDA available ({torch.cuda.get_device_name()}), using cuda"
        return torch.device("cpu"), "auto: no CUDA GPU, using cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type == "cpu":
        return dev, "cpu, as asked"
    if dev.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build on a machine with a GPU"
               if torch.version.cuda is None else
               f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but finds no GPU: check the driver "
               "(nvidia-smi) and CUDA_VISIBLE_DEVICES")
        raise SmokeTestError(
            f"device={str(device)!r} was asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False): {why}; "
            "or use device='auto' or 'cpu'"
        )
    count = torch.cuda.device_count()
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= count:
        raise SmokeTestError(f"device={str(device)!r}: there are only {count} CUDA device(s), indices 0..{count - 1}")
    return torch.device("cuda", index), f"{dev.type}, as asked ({torch.cuda.get_device_name(index)})"


def resolve_amp(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``.

    Args:
        amp: False/None (off), True (bfloat16 on CPU, float16 on CUDA), ``"bf16"``/``"fp16"``
            (or ``"bfloat16"``/``"float16"``), or a torch dtype.
        device: Where the model runs.

    Returns:
        The dtype, or None when AMP is off.

    Raises:
        ValueError: ``amp`` is none of these, or CUDA bfloat16 is asked for on a GPU without it.
    """
    if amp is None or amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    dtype: torch.dtype | None
    if isinstance(amp, torch.dtype):
        dtype = amp if amp in (torch.bfloat16, torch.float16) else None
    elif isinstance(amp, str):
        dtype = _AMP_NAMES.get(amp.lower())
    else:
        dtype = None
    if dtype is None:
        raise ValueError(f"amp must be False, True, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16), got {amp!r}")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp={amp!r}: this GPU does not support bfloat16; use amp='fp16'")
    return dtype


# --------------------------------------------------------------------------- measuring


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


class _Meter:
    """Times one phase and measures its peak memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.peak: int | None = None

    @contextmanager
    def measure(self) -> Iterator[_Meter]:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            before = _rss_peak_bytes()
        start = time.perf_counter()
        try:
            yield self
        finally:
            with suppress(RuntimeError):  # a failed kernel re-raises at sync; the phase already recorded the error
                sync(self.device)
            self.seconds = time.perf_counter() - start
            if self.device.type == "cuda":
                self.peak = int(torch.cuda.max_memory_allocated(self.device))
            else:
                self.peak = _rss_peak_bytes() - before


# --------------------------------------------------------------------------- where did it fail


def _describe_module(model: nn.Module, path: str | None) -> str:
    if path is None:
        return "outside any submodule"
    if path == "":
        return f"the model's own forward ({type(model).__name__})"
    try:
        return f"{path} ({type(_paths.get(model, path)).__name__})"
    except (AttributeError, TypeError):
        return path


def _raised_finding(model: nn.Module, where: str | None, phase: str, error: BaseException) -> Finding:
    return _raised_finding_text(model, where, phase, type(error).__name__, str(error), isinstance(error, torch.OutOfMemoryError))


def _raised_finding_text(model: nn.Module, where: str | None, phase: str, error_type: str, error: str, oom: bool) -> Finding:
    """A ``shape-error`` finding for a pass that raised, naming the module where it raised."""
    located = _describe_module(model, where)
    if oom:
        return Finding("error", "shape-error", (where,) if where else (),
                       f"{phase} ran out of memory in {located}: {first_lines(error)}", "lower batch_size or image_size, or use amp=True")
    return Finding("error", "shape-error", (where,) if where else (), f"{phase} raised {error_type} in {located}: {first_lines(error)}", None)


def _slot(model: nn.Module, path: str | None) -> tuple[str, ...]:
    return (path,) if path and _paths.exists(model, path) else ()


# --------------------------------------------------------------------------- the phases


@dataclass
class _Run:
    """State shared by the phases of one smoke test."""

    model: nn.Module
    anatomy: Anatomy
    device: torch.device
    amp: torch.dtype | None
    batch_size: int
    image_size: int
    steps: int
    report: Report
    losses: dict[str, float] = field(default_factory=dict)
    phase_errors: int = 0
    sgd_steps: int = 0

    def add(self, findings: Iterable[Finding]) -> None:
        """Add findings to the report, counting the current phase's errors (also those merged as duplicates)."""
        findings = list(findings)
        self.phase_errors += sum(f.severity == "error" for f in findings)
        self.report.extend(findings)

    def autocast(self) -> Any:
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    @property
    def amp_note(self) -> str:
        return f" under autocast({str(self.amp).removeprefix('torch.')})" if self.amp is not None else ""


def _train(run: _Run, images: Any, targets: Any) -> None:
    """Run the train steps, adding findings to ``run``."""
    model = run.model
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for _, p in trainable], lr=_LR) if trainable else None
    anatomy = run.anatomy
    expected = anatomy.loss_keys(model)
    unused: set[str] = set()
    bad_grads: dict[str, str] = {}
    nonfinite_loss = False
    model.train()
    for step in range(run.steps):
        for p in model.parameters():
            p.grad = None
        label = f"train step {step + 1}{run.amp_note}"
        where = ModuleStack(model)
        try:
            with where, run.autocast():
                output = anatomy.call(model, images, targets, train=True)
        except Exception as e:  # noqa: BLE001 - a user model may raise anything; it becomes a finding
            run.add([_raised_finding(model, where.innermost(), f"the forward pass of {label}", e)])
            return
        losses = _loss_dict(run, output, targets, label)
        if losses is None:
            return
        if step == 0:
            run.losses = {k: float(v.detach().float()) for k, v in losses.items()}
        missing = [k for k in expected if k not in losses]
        if missing:
            message = f"{label} returned the losses {sorted(losses)}; the {anatomy.name} family also needs {missing}"
            run.add([Finding("error", "shape-error", (), message, "make the head's forward return every loss of the family in training mode")])
        bad = {k: float(v.detach().float()) for k, v in losses.items() if not bool(torch.isfinite(v.detach()).all())}
        if bad:
            nonfinite_loss = True
            run.add(_nonfinite_loss_findings(run, images, targets, bad, label))
        total = sum((v.float().sum() for v in losses.values()), torch.zeros((), device=run.device))
        if not total.requires_grad:
            if trainable:
                message = (f"{label}: the losses do not depend on any trainable parameter ({len(trainable)} trainable tensors), "
                           "so backward reaches none of them")
                run.add([Finding("error", "unused-parameter", (), message, None)])
            break
        try:
            total.backward()
        except Exception as e:  # noqa: BLE001 - autograd errors of user code become findings
            run.add([Finding("error", "shape-error", (), f"backward of {label} raised {type(e).__name__}: {first_lines(str(e))}", None)])
            return
        unused.update(name for name, p in trainable if p.grad is None)
        reached = [(name, p.grad) for name, p in trainable if p.grad is not None]
        if reached and not bool(torch.stack([torch.isfinite(g).all() for _, g in reached]).all()):  # one device sync
            for name, grad in reached:
                if name not in bad_grads and not bool(torch.isfinite(grad).all()):
                    bad_grads[name] = "nan" if bool(torch.isnan(grad).any()) else "inf"
        if optimizer is not None and step + 1 < run.steps:  # update between steps; the last step needs none
            optimizer.step()
            run.sgd_steps += 1
    run.add(unused_parameter_findings(model, unused, context=f"the train step{run.amp_note}"))
    if bad_grads and not nonfinite_loss:
        owners: dict[str, list[str]] = {}
        for name in bad_grads:
            owners.setdefault(name.rpartition(".")[0], []).append(name)
        for owner, names in owners.items():
            message = (f"the gradient of {', '.join(names[:4])} is {bad_grads[names[0]]} after backward of the train step"
                       f"{run.amp_note} although every loss was finite")
            run.add([Finding("error", "non-finite", _slot(model, owner), message,
                             "look for log, sqrt or division of values that can be 0 in this module")])


def _loss_dict(run: _Run, output: Any, targets: Any, label: str) -> dict[str, Tensor] | None:
    """The family's losses of a train-mode output; without any, the sum of the means of its float tensors."""
    losses = run.anatomy.train_losses(run.model, output, targets)
    if isinstance(losses, str):
        run.add([Finding("error", "shape-error", (), f"{label} {losses}", None)])
        return None
    if losses is not None:
        return losses
    tensors = [t for t in tensors_in(output) if t.is_floating_point()]
    if not tensors:
        message = f"{label} returned {type(output).__name__} with no floating-point tensor to backpropagate from"
        run.add([Finding("error", "shape-error", (), message, None)])
        return None
    return {"output": sum((t.float().mean() for t in tensors), torch.zeros((), device=tensors[0].device))}


def _nonfinite_loss_findings(run: _Run, images: Any, targets: Any, bad: dict[str, float], label: str) -> list[Finding]:
    """Name the losses, and the first module whose output was not finite (one more forward, no grad)."""
    first: str | None = None
    where = ModuleStack(run.model)
    where.watch_finite = True
    try:
        with torch.no_grad(), where, run.autocast():
            run.anatomy.call(run.model, images, targets, train=True)
        first = where.nonfinite
    except Exception:  # noqa: BLE001 - the diagnosis is best effort; the loss finding stands anyway
        first = where.nonfinite
    slots = run.anatomy.loss_slots(run.model)
    out = []
    for name, value in bad.items():
        paths = tuple(dict.fromkeys(p for p in (first, slots.get(name)) if p and _paths.exists(run.model, p)))
        origin = f"; the first module whose output is not finite is {_describe_module(run.model, first)}" if first else ""
        hint = " (try amp=False: float16/bfloat16 overflow is a common cause)" if run.amp is not None else ""
        out.append(Finding("error", "non-finite", paths, f"loss {name!r} is {value} in {label}{origin}{hint}",
                           "make the module's output finite for random weights and inputs (check divisions, logs, exp, and initialisation)"))
    return out


def _eval(run: _Run, images: Any) -> None:
    """Run one eval pass, adding findings to ``run``."""
    model = run.model
    model.eval()
    where = ModuleStack(model)
    label = f"the eval pass{run.amp_note}"
    try:
        with torch.no_grad(), where, run.autocast():
            output = run.anatomy.call(model, images, None, train=False)
    except Exception as e:  # noqa: BLE001 - a user model may raise anything; it becomes a finding
        run.add([_raised_finding(model, where.innermost(), label, e)])
        return
    run.add(run.anatomy.check_eval_output(model, output, images, label))


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
        ddp: 0 for none, or a world size >= 2 for the DDP phase (:mod:`surgery._ddp`).
        check: Run :func:`surgery.check` first.
        ddp_timeout: Seconds the DDP workers may take in all before they are killed.
        progress: Called with one line per phase as the phases finish (the CLI prints them).

    Returns:
        A :class:`SmokeResult`; ``result.ok`` is False when any phase found an error.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
        SmokeTestError: The test cannot run: CUDA asked for and absent, the DDP workers could
            not start, crashed or ran past ``ddp_timeout``.
        ValueError: An argument is out of range.
    """
    require_module(model, "smoke_test()")
    check_int("batch_size", batch_size, 1)
    check_int("image_size", image_size, 32)
    check_int("steps", steps, 1)
    if isinstance(ddp, bool) or not isinstance(ddp, int) or ddp < 0 or ddp == 1:
        raise ValueError(f"ddp must be 0 (no DDP phase) or a world size >= 2, got {ddp!r}")
    if not isinstance(ddp_timeout, (int, float)) or ddp_timeout <= 0:
        raise ValueError(f"ddp_timeout must be a positive number of seconds, got {ddp_timeout!r}")
    dev, device_note = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    anatomy = anatomy_for(model)
    family = anatomy.name
    say = progress or (lambda line: None)
    report = Report(model=type(model).__name__)
    run = _Run(model, anatomy, dev, amp_dtype, batch_size, image_size, steps, report)
    phases: list[Phase] = []
    amp_name = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None
    say(f"surgery smoke: {type(model).__name__} ({family}) on {dev} [{device_note}], batch {batch_size} × {image_size}×{image_size}, "
        f"amp {amp_name or 'off'}")

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
                _train(run, images, targets)
            finish(Phase("train", "", meter_train.seconds, meter_train.peak, batch_size * steps / max(meter_train.seconds, 1e-9),
                         f"{steps} step(s), {len(run.losses)} losses" + (f", {run.sgd_steps} SGD step(s) undone" if run.sgd_steps else "")))
            with meter_eval.measure():
                _eval(run, images)
            finish(Phase("eval", "", meter_eval.seconds, meter_eval.peak, batch_size / max(meter_eval.seconds, 1e-9), "no_grad"))
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
        from surgery._ddp import run_ddp

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
        amp=amp_name,
        losses=dict(run.losses),
        memory_source=MEMORY_SOURCES[dev.type],
        ddp=ddp_info,
    )
