"""Small helpers shared across the package; one home each.

Nothing here knows a model family. Every layer may import this module; it imports only
torch and :mod:`surgery._errors`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from surgery._errors import NotAModuleError

__all__ = [
    "first_line",
    "first_lines",
    "device_of",
    "sync",
    "fmt_bytes",
    "require_module",
    "check_int",
    "tensors_in",
    "all_finite",
    "max_abs",
    "ModuleStack",
]


def first_line(error: BaseException | str | None) -> str:
    """The first line of an exception's (or a text's) message; the exception's type name when it has none."""
    text = str(error).strip() if error is not None else ""
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""


def first_lines(text: str, limit: int = 600) -> str:
    """Up to six non-empty lines of ``text`` joined into one, cut at ``limit`` characters."""
    text = " ".join(line.strip() for line in text.strip().splitlines()[:6] if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def device_of(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` when given, else the device of the model's first parameter (or buffer), else CPU.

    Raises:
        ValueError: ``device`` is not a device or a device string.
    """
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be a torch.device or a string such as 'cpu' or 'cuda:0', got {device!r}") from e
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only), so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fmt_bytes(n: int) -> str:
    """``n`` bytes in B, KiB, MiB or GiB (``"1.50 MiB"``), with a sign when negative."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.2f} {unit}"
        value /= 1024
    return f"{sign}{value:.2f} GiB"


def require_module(value: object, where: str, name: str = "model") -> nn.Module:
    """``value`` itself when it is an ``nn.Module``; the one check every public call makes.

    Args:
        value: What the caller was given.
        where: The call that needs it, e.g. ``"check()"``.
        name: What ``value`` is to that call, e.g. ``"model"``, ``"before"`` or
            ``"the replacement for 'roi_heads.mask_head'"``.

    Raises:
        NotAModuleError: ``value`` is not an ``nn.Module``. The message reads
            ``"check(): model must be an nn.Module, got dict"``.
    """
    if not isinstance(value, nn.Module):
        kind = type(value)
        shown = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise NotAModuleError(f"{where}: {name} must be an nn.Module, got {shown}")
    return value


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` when it is an int (never a bool) within ``[minimum, maximum]``.

    Raises:
        ValueError: It is not an int, is a bool, or lies outside the range; the message names
            the argument, the value and the range.
    """
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        if minimum is not None and maximum is not None:
            allowed = f"an int in {minimum}..{maximum}"
        elif minimum is not None:
            allowed = f"an int >= {minimum}"
        elif maximum is not None:
            allowed = f"an int <= {maximum}"
        else:
            allowed = "an int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return number


def tensors_in(value: Any, depth: int = 0) -> Iterator[Tensor]:
    """Every tensor inside ``value``: through dicts, lists, tuples and ``ImageList``-like ``.tensors``."""
    if isinstance(value, Tensor):
        yield value
    elif depth < 6 and isinstance(value, Mapping):
        for v in value.values():
            yield from tensors_in(v, depth + 1)
    elif depth < 6 and isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v, depth + 1)
    elif depth < 6 and isinstance(getattr(value, "tensors", None), Tensor):
        yield value.tensors


def all_finite(value: Any) -> bool:
    """True when every floating-point tensor inside ``value`` is free of NaN and Inf."""
    return all(bool(torch.isfinite(t).all()) for t in tensors_in(value) if t.is_floating_point() and t.numel())


def max_abs(value: Any) -> float | None:
    """The largest finite ``|x|`` over the floating-point tensors inside ``value`` (None when there are none)."""
    found: float | None = None
    for t in tensors_in(value):
        if t.is_floating_point() and t.numel() and t.device.type != "meta":
            finite = t.detach().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            v = float(finite.abs().max())
            found = v if found is None else max(found, v)
    return found


class ModuleStack:
    """Forward hooks on every module of a model that keep the stack of modules running.

    Used as a context manager: the hooks exist only inside the block. After a forward that
    raised, :meth:`innermost` names the module that was running. With ``watch_finite``, the
    first module whose output holds NaN/Inf is remembered in :attr:`nonfinite`. With
    ``watch_bound``, the first module whose output holds a value with ``|x|`` above it is
    remembered in :attr:`exploded` (with that largest ``|x|`` in :attr:`exploded_max`).
    With ``record``, every call is sorted by whether it did work (:attr:`called`,
    :attr:`worked`, :attr:`emptied`): a module that only ever received or returned empty
    tensors (e.g. a mask head fed 0 boxes) was called but did no work.

    Attributes:
        called: Paths of the modules that were called (``record`` only).
        worked: Paths of the modules called at least once on data: their output held a
            non-empty tensor (or, when it held no tensor at all, their input did).
        emptied: The first module to finish whose tensor inputs were all non-empty but whose
            output tensors were all empty: where the data ran out (e.g. a proposal network
            that kept no box).
    """

    def __init__(self, model: nn.Module, *, watch_finite: bool = False, watch_bound: float | None = None,
                 record: bool = False, names: dict[int, str] | None = None) -> None:
        self.names = names if names is not None else {id(m): name for name, m in model.named_modules()}
        self.model = model
        self.stack: list[nn.Module] = []
        self.handles: list[Any] = []
        self.nonfinite: str | None = None
        self.watch_finite = watch_finite
        self.watch_bound = watch_bound
        self.exploded: str | None = None
        self.exploded_max: float | None = None
        self.record = record
        self.called: set[str] = set()
        self.worked: set[str] = set()
        self.emptied: str | None = None

    def __enter__(self) -> ModuleStack:
        self.stack.clear()
        for m in self.model.modules():
            if isinstance(m, torch.jit.ScriptModule):
                continue
            self.handles.append(m.register_forward_pre_hook(self._push))
            self.handles.append(m.register_forward_hook(self._pop))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _push(self, module: nn.Module, args: Any) -> None:
        self.stack.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        while self.stack:
            if self.stack.pop() is module:
                break
        if self.watch_finite and self.nonfinite is None and not all_finite(output):
            self.nonfinite = self.path(module)
        if self.watch_bound is not None and self.exploded is None:
            largest = max_abs(output)
            if largest is not None and largest > self.watch_bound:
                self.exploded, self.exploded_max = self.path(module), largest
        if self.record:
            self._record(module, args, output)

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        path = self.path(module)
        self.called.add(path)
        if path in self.worked and self.emptied is not None:
            return
        outs = [t.numel() > 0 for t in tensors_in(output)]
        ins = [t.numel() > 0 for t in tensors_in(args)]
        if any(outs) or (not outs and any(ins)):
            self.worked.add(path)
        elif outs and ins and all(ins) and self.emptied is None:
            self.emptied = path

    def path(self, module: nn.Module) -> str:
        """The dotted path of ``module`` in the model (``""`` for the root or an unknown module)."""
        return self.names.get(id(module), "")

    def innermost(self) -> str | None:
        """Dotted path of the innermost module still running (None when it raised outside modules)."""
        return self.path(self.stack[-1]) if self.stack else None
