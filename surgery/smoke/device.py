"""Where the smoke test runs and how it measures: device and AMP resolution, the phase meter.

Nothing here knows a model family or a phase; :mod:`surgery.smoke` and its DDP phase
(:mod:`surgery.smoke.ddp`) both use it.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

import torch

from surgery._errors import SmokeTestError
from surgery._util import sync

__all__ = ["MEMORY_SOURCES", "amp_name", "amp_note", "autocast", "resolve_amp", "resolve_device"]

_AMP_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}

#: What ``peak_memory`` means on each kind of device.
MEMORY_SOURCES = {
    "cuda": "torch.cuda.max_memory_allocated during the phase (model weights included)",
    "cpu": "growth of the process's peak RSS (getrusage ru_maxrss) during the phase; 0 when an earlier peak was higher",
}


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


def amp_name(dtype: torch.dtype | None) -> str | None:
    """``"bfloat16"`` / ``"float16"`` for an autocast dtype; None when AMP is off."""
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def amp_note(dtype: torch.dtype | None) -> str:
    """``" under autocast(bfloat16)"`` to append to a pass's label; empty when AMP is off."""
    return f" under autocast({amp_name(dtype)})" if dtype is not None else ""


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


class _Meter:
    """Times one phase and measures its peak memory (see :data:`MEMORY_SOURCES`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.peak: int | None = None

    @contextmanager
    def measure(self) -> Iterator[_Meter]:
        """Measure the block: wall time (device-synchronized) into :attr:`seconds`, peak memory into :attr:`peak`."""
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
