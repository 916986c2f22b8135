"""The DDP phase of :func:`surgery.smoke_test`: ``N`` processes, two train steps under
``DistributedDataParallel(find_unused_parameters=False)``.

Each rank runs the smoke test's own train step (:func:`surgery.smoke.step.train_step`), so
losses are taken from the output exactly as in the single-process train phase, and an output
with no loss to backpropagate from is the same finding, labelled with the rank and step.

How the model reaches the workers: the parent pickles the whole model object with
``torch.save`` into a fresh private temporary directory (``tempfile.mkdtemp``, mode 0700),
and each worker reads it back with ``torch.load(weights_only=False)``. That is the one place
``surgery`` unpickles a whole model, and it is safe because the file was written by this
same call a moment earlier and is deleted afterwards; user-supplied files are never read
this way. It does mean the model must pickle: its classes importable at module level (a
class defined in a script works when the script guards its entry point with
``if __name__ == "__main__":``, as ``multiprocessing``'s spawn start method requires) and
no lambdas in its hooks.

Workers are started with the ``spawn`` method on loopback (``127.0.0.1``, a free port picked
each time), use ``gloo`` on CPU and ``nccl`` when there is one GPU per process, and start
with ``TORCH_DISTRIBUTED_DEBUG=INFO`` so that DDP names the parameters that got no gradient
(``DETAIL`` names them too but crashes DDP's constructor with torch 2.14 on CPU). When DDP
only lists parameter indices, they are mapped back through ``named_parameters()`` order.
A model built from a ``.py`` spec file has its classes in a module named after that file
(``_surgery_spec_...``); each worker imports those files under the same names before it reads
the model, so such models reach the workers too.

Each writes a JSON result file; the parent waits at most ``timeout`` seconds in all, then
kills whatever is still running, and always removes the temporary directory. A worker that
crashes, or workers that run past the timeout, become an error finding of the phase (the
earlier phases' results are kept). When one rank fails, the others usually fail after it in
a collective ("Connection closed by peer"): only the ranks that raised an error of their own
are reported (by step, then rank), not those follow-on errors. A worker that dies without a
result ends the wait at once (the others would only wait for it).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from surgery._errors import SmokeTestError
from surgery._util import first_lines
from surgery.anatomy import anatomy_for
from surgery.findings import Finding, Report
from surgery.loading import import_spec_file, spec_modules
from surgery.smoke.device import amp_name, amp_note, autocast
from surgery.smoke.step import LR, raised_finding_text, train_step
from surgery.synthetic import synthetic_batch
from surgery.trace import unused_parameter_findings

__all__ = ["DDPOutcome", "run_ddp", "parse_unused"]

#: Train steps each worker runs (DDP reports unused parameters at the start of the second).
STEPS = 2
_NAMES = re.compile(r"Parameters which did not receive grad for rank \d+:\s*([^\n]+)")
_INDICES = re.compile(r"Parameter indices which did not receive grad for rank \d+:\s*([\d ,]+)")
_LOG_TAIL = 2000
#: Errors a rank raises because another rank failed first (its peer went away mid-collective).
_FOLLOW_ON = re.compile(r"connection closed by peer|connection reset|broken pipe|socket.*(closed|timeout)|"
                        r"ProcessGroupGloo|gloo|NCCL (error|communicator)|timed out|Timeout|aborted", re.IGNORECASE)


@dataclass
class _Config:
    model_file: str
    out_dir: str
    port: int
    world_size: int
    backend: str
    cuda: bool
    batch_size: int
    image_size: int
    amp: str | None
    threads: int
    pg_timeout: float
    spec_modules: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class DDPOutcome:
    """What the DDP phase found.

    Attributes:
        findings: Unused parameters (grouped by module), errors raised in a worker, non-finite losses,
            outputs with no loss to backpropagate from.
        seconds: Wall time of the phase, process start-up included.
        world_size: Number of processes.
        backend: ``"gloo"`` or ``"nccl"``.
        device: ``"cpu"`` or ``"cuda"`` (one GPU per rank).
        losses: Per rank, the loss values of each step that finished.
        fallback: Why the phase did not run where the train/eval phases ran (or at all), if so.
        skipped: True when nothing ran (a model without trainable parameters).
        raised: What the first failing rank raised, in one line (empty when none did).
    """

    findings: list[Finding]
    seconds: float
    world_size: int
    backend: str
    device: str
    losses: list[list[dict[str, float]]] = field(default_factory=list)
    fallback: str = ""
    skipped: bool = False
    raised: str = ""

    def info(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "device": self.device, "steps": STEPS,
                "losses": self.losses, "fallback": self.fallback or None}

    def note(self) -> str:
        text = f"{self.world_size} processes, {self.backend} on {self.device}, {STEPS} steps, find_unused_parameters=False"
        text += f" ({self.fallback})" if self.fallback else ""
        return text + (f"; {self.raised}" if self.raised else "")


def parse_unused(message: str, names: list[str]) -> list[str]:
    """The parameter names DDP says got no gradient, from its error message.

    Args:
        message: The text of DDP's "Expected to have finished reduction" error.
        names: Trainable parameter names in DDP's order (``named_parameters()`` order), used
            when the message only lists indices.

    Returns:
        Parameter names (empty when the message names none).
    """
    found = _NAMES.search(message)
    if found:
        return [n.strip() for n in found.group(1).split(",") if n.strip()]
    found = _INDICES.search(message)
    if found:
        indices = [int(i) for i in re.split(r"[ ,]+", found.group(1).strip()) if i]
        return [names[i] for i in indices if 0 <= i < len(names)]
    return []


def _first_sentence(text: str) -> str:
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    return first.rstrip(".") + "."


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback() -> str:
    return "lo0" if sys.platform == "darwin" else "lo"


# --------------------------------------------------------------------------- worker side


def _worker(rank: int, cfg: _Config) -> None:
    """One DDP rank: load the model, run the steps, write ``rank{N}.json``. Never raises."""
    log = open(os.path.join(cfg.out_dir, f"rank{rank}.log"), "w")  # kept open for the life of the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    faulthandler.enable(file=log)  # a crash (segfault, abort) leaves its stack in the log the parent shows
    result: dict[str, Any] = {"rank": rank, "ok": False, "error_type": None, "error": None, "where": None,
                              "oom": False, "losses": [], "param_names": [], "findings": []}
    initialised = False
    try:
        torch.set_num_threads(cfg.threads)
        dist.init_process_group(cfg.backend, init_method=f"tcp://127.0.0.1:{cfg.port}", rank=rank, world_size=cfg.world_size,
                                timeout=timedelta(seconds=cfg.pg_timeout))
        initialised = True
        device = torch.device("cuda", rank) if cfg.cuda else torch.device("cpu")
        if cfg.cuda:
            torch.cuda.set_device(device)
        for name, file in cfg.spec_modules:  # the .py spec files whose classes the pickled model refers to
            if name not in sys.modules:
                import_spec_file(file, name)
        # Our own file, written by the parent a moment ago (see the module docstring).
        model = torch.load(cfg.model_file, weights_only=False, map_location=device)
        model.to(device)
        _run_steps(rank, cfg, model, device, result)
        result["ok"] = result["error"] is None
    except Exception as e:  # noqa: BLE001 - every failure is reported to the parent through the result file
        result["error_type"], result["error"] = type(e).__name__, str(e)
        result["oom"] = isinstance(e, torch.OutOfMemoryError)
    finally:
        if result["error"] is not None:
            result.setdefault("failed_at", time.time())
        tmp = os.path.join(cfg.out_dir, f"rank{rank}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, os.path.join(cfg.out_dir, f"rank{rank}.json"))
        if initialised:
            with contextlib.suppress(RuntimeError):  # the group may already be broken by the failure being reported
                dist.destroy_process_group()
        log.flush()


def _run_steps(rank: int, cfg: _Config, model: nn.Module, device: torch.device, result: dict[str, Any]) -> None:
    """The DDP train steps of one rank, with the smoke test's own :func:`~surgery.smoke.step.train_step`."""
    anatomy = anatomy_for(model)
    anatomy.fit_inputs(model, [(cfg.image_size, cfg.image_size)] * cfg.batch_size)
    model.train()
    result["param_names"] = [n for n, p in model.named_parameters() if p.requires_grad]
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if cfg.cuda else None, find_unused_parameters=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    amp = getattr(torch, cfg.amp) if cfg.amp else None
    for step in range(STEPS):
        images, targets = synthetic_batch(model, cfg.batch_size, cfg.image_size, device=device, seed=1000 * rank + step, anatomy=anatomy)
        label = f"DDP rank {rank}, step {step + 1}{amp_note(amp)}"
        outcome = train_step(model, anatomy, images, targets, label=label, amp=autocast(device, amp), runner=wrapped)
        if outcome.losses is not None:
            result["losses"].append({k: float(v.detach().float()) for k, v in outcome.losses.items()})
        if outcome.error is not None:
            e = outcome.error
            result["failed_at"] = time.time()
            result["error_type"], result["error"] = type(e).__name__, str(e)
            result["where"], result["oom"], result["step"] = outcome.where, isinstance(e, torch.OutOfMemoryError), step + 1
            return
        if outcome.findings or not outcome.backward:  # no loss to backpropagate: the next step would say the same
            result["findings"] = [f.to_dict() for f in outcome.findings]
            result["step"] = step + 1
            return
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- parent side


@contextmanager
def _worker_environment() -> Iterator[None]:
    """The environment the spawned workers start with (they inherit it; ours is put back after).

    ``TORCH_DISTRIBUTED_DEBUG`` must be set before the worker imports torch. ``INFO`` makes DDP
    name the parameters that got no gradient; ``DETAIL`` would too, but with torch 2.14 it
    crashes (SIGSEGV) in DDP's constructor on CPU, so it is not used.
    """
    wanted = {
        "TORCH_DISTRIBUTED_DEBUG": "INFO",
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", _loopback()),
        "NCCL_SOCKET_IFNAME": os.environ.get("NCCL_SOCKET_IFNAME", _loopback()),
    }
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _kill(processes: list[Any]) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def _tail(out_dir: str, rank: int) -> str:
    try:
        with open(os.path.join(out_dir, f"rank{rank}.log"), errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text[-_LOG_TAIL:].strip()


def run_ddp(
    model: nn.Module,
    *,
    world_size: int,
    device: torch.device,
    batch_size: int,
    image_size: int,
    amp: torch.dtype | None,
    timeout: float,
) -> DDPOutcome:
    """Run :data:`STEPS` DDP train steps of ``model`` in ``world_size`` processes.

    Args:
        model: The model (pickled as is; it is not changed).
        world_size: Number of processes (>= 2).
        device: Where the single-process phases ran; CUDA uses ``nccl`` when there is one GPU
            per process, else the phase falls back to ``gloo`` on CPU and says so.
        batch_size: Images per rank and step.
        image_size: Side of the square synthetic images.
        amp: Autocast dtype, or None.
        timeout: Seconds all workers may take together; then they are killed.

    Returns:
        A :class:`DDPOutcome`.

    Raises:
        SmokeTestError: The model cannot be pickled, or torch.distributed is missing. A worker
            that crashes without a result, or workers that run past ``timeout``, are an error
            finding of the outcome instead (they are killed), so earlier phases keep their results.
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"ddp_timeout must be a finite number of seconds > 0, got {timeout!r}")
    if not dist.is_available():
        raise SmokeTestError("ddp needs torch.distributed, which this torch build lacks; run with ddp=0")
    fallback = ""
    cuda = device.type == "cuda" and torch.cuda.device_count() >= world_size and dist.is_nccl_available()
    if device.type == "cuda" and not cuda:
        fallback = f"gloo on cpu: nccl needs {world_size} GPUs, there are {torch.cuda.device_count()}"
    backend = "nccl" if cuda else "gloo"
    outcome = DDPOutcome([], 0.0, world_size, backend, "cuda" if cuda else "cpu", fallback=fallback)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        outcome.fallback, outcome.skipped = "no trainable parameters, DDP has nothing to synchronise", True
        return outcome
    start = time.perf_counter()
    out_dir = tempfile.mkdtemp(prefix="surgery-ddp-")
    processes: list[Any] = []
    results: list[dict[str, Any]] = []
    problem: Finding | None = None
    try:
        model_file = os.path.join(out_dir, "model.pt")
        try:
            torch.save(model, model_file)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise SmokeTestError(
                f"ddp={world_size} sends the model to its worker processes by pickling it, and {type(model).__name__} cannot be "
                f"pickled ({type(e).__name__}: {e}); define its classes at module level, drop lambda hooks, or run with ddp=0"
            ) from e
        cpus = os.cpu_count() or 1
        cfg = _Config(model_file, out_dir, _free_port(), world_size, backend, cuda, batch_size, image_size,
                      amp_name(amp), max(1, cpus // world_size),
                      max(30.0, timeout / 2), spec_modules())
        ctx = multiprocessing.get_context("spawn")
        with _worker_environment():
            for rank in range(world_size):
                p = ctx.Process(target=_worker, args=(rank, cfg), daemon=True, name=f"surgery-ddp-{rank}")
                p.start()
                processes.append(p)
        deadline = start + timeout
        pending = {p.sentinel: p for p in processes}
        crashed: list[int] = []
        while pending:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            for sentinel in multiprocessing.connection.wait(list(pending), timeout=remaining):
                done = pending.pop(sentinel)
                done.join()
                if not os.path.exists(os.path.join(out_dir, f"rank{processes.index(done)}.json")):
                    crashed.append(processes.index(done))
            if crashed:  # a rank died without a result: the others would only wait for it until the timeout
                pending.clear()
        _kill(processes)
        if pending and time.perf_counter() >= deadline:
            tails = "\n".join(f"rank {r}: {_tail(out_dir, r)[-400:]}" for r in range(world_size))
            problem = Finding("error", "shape-error", (),
                              f"the DDP phase did not finish: its {world_size} workers ran past {timeout:g} s and were killed. Last output:\n{tails}",
                              "raise ddp_timeout (--ddp-timeout) or lower image_size")
        results, problem = _collect(out_dir, processes, problem, crashed)
    finally:
        _kill(processes)
        shutil.rmtree(out_dir, ignore_errors=True)
    outcome.seconds = time.perf_counter() - start
    outcome.losses = [r["losses"] for r in results]
    report = Report()
    if problem is not None:
        report.extend([problem])
        outcome.raised = first_lines(problem.message, 300)
    for r in results:
        rank = r["rank"]
        for step, losses in enumerate(r["losses"], 1):
            for name, value in losses.items():
                if not math.isfinite(value):
                    report.extend([Finding("error", "non-finite", (), f"loss {name!r} is {value} on DDP rank {rank}, step {step}", None)])
        report.extend(Finding(f["severity"], f["code"], tuple(f["paths"]), f["message"], f["fix"]) for f in r["findings"])
    failed = _blamed(results)
    for r in failed:
        rank = r["rank"]
        names = parse_unused(r["error"], r["param_names"] or trainable)
        said = _first_sentence(r["error"])
        if not outcome.raised:
            outcome.raised = f"rank {rank} raised {r['error_type']} at step {r.get('step') or '?'}: {said}"
            if names:
                outcome.raised += " (no gradient: " + ", ".join(f.paths[0] if f.paths else "<model>" for f in unused_parameter_findings(model, names)) + ")"
        if names:
            report.extend(unused_parameter_findings(
                model, names, context=f"a DDP train step ({world_size} {backend} processes)",
                detail=f"DistributedDataParallel(find_unused_parameters=False) raised on rank {rank}, step {r.get('step') or STEPS}: {said}"))
        elif "did not receive grad" in r["error"] or "finished reduction in the prior iteration" in r["error"]:
            report.extend([Finding("error", "unused-parameter", (), f"DistributedDataParallel(find_unused_parameters=False) raised on rank {rank}: "
                                   f"{first_lines(r['error'])}", "run surgery.smoke_test(model) without ddp to see which modules get no gradient")])
        else:
            label = f"DDP rank {rank}" + (f", step {r['step']}" if r.get("step") else "")
            report.extend([raised_finding_text(model, r["where"], label, r["error_type"] or "Error", r["error"], bool(r["oom"]))])
    outcome.findings = list(report.findings)
    return outcome


def _collect(out_dir: str, processes: list[Any], problem: Finding | None,
             crashed: list[int]) -> tuple[list[dict[str, Any]], Finding | None]:
    """The result files the workers wrote, and a finding for the worker that died first without one
    (``crashed`` lists those in the order they died; unless ``problem`` already says why)."""
    results = []
    for rank in [*crashed, *(r for r in range(len(processes)) if r not in crashed)]:
        p = processes[rank]
        path = os.path.join(out_dir, f"rank{rank}.json")
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, ValueError):
            if problem is None:
                problem = Finding("error", "shape-error", (),
                                  f"the DDP phase did not finish: rank {rank} exited with code {p.exitcode} without a result "
                                  f"(crashed or killed). Its output:\n{_tail(out_dir, rank)}", None)
    results.sort(key=lambda r: r["rank"])
    return results, problem


def _blamed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed ranks to report: those that raised an error of their own, by step then rank (the
    follow-on errors of the others, a peer gone mid-collective, are left out); when every error
    is such a follow-on, the one that happened first."""
    failed = sorted((r for r in results if r["error"] is not None), key=lambda r: (r.get("failed_at") or math.inf, r["rank"]))
    if not failed:
        return []
    own = sorted((r for r in failed if not _FOLLOW_ON.search(r["error"])), key=lambda r: (r.get("step") or STEPS + 1, r["rank"]))
    if not own:  # only follow-on errors: the earliest is the best clue
        return failed[:1]
    return own
