"""What a module consumes and produces.

Two sources, used together by :mod:`surgery.check`:

* a *static* reading of the first and last Conv / ConvTranspose / Linear / BatchNorm layer
  (registration order), which needs no input at all;
* a *meta-device probe*, which runs the module on ``torch.device("meta")`` tensors through
  ``torch.func.functional_call`` with meta stand-ins for every parameter and buffer. No
  weights are allocated, nothing of the model changes, and the real output shapes (or the
  exception and the submodule that raised it) come back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "Signature",
    "ProbeResult",
    "first_layer",
    "last_layer",
    "input_signature",
    "output_signature",
    "meta_probe",
    "meta_like",
    "shapes_of",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM = (*_BATCHNORM, nn.GroupNorm)
_LAYERS = (*_CONV, nn.Linear, *_NORM)


@dataclass(frozen=True)
class Signature:
    """Channels (conv-like) or features (linear) on one side of a module.

    Attributes:
        kind: ``"channels"`` or ``"features"``.
        size: The count; a tuple for modules with several outputs (e.g. a multi-scale body).
        source: The dotted path, relative to the module, of the layer it was read from.
    """

    kind: Literal["channels", "features"]
    size: int | tuple[int, ...]
    source: str = ""

    def __str__(self) -> str:
        size = ",".join(map(str, self.size)) if isinstance(self.size, tuple) else str(self.size)
        return f"{size} {'ch' if self.kind == 'channels' else 'feat'}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": list(self.size) if isinstance(self.size, tuple) else self.size, "source": self.source}


def _layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in module.named_modules():
        if isinstance(m, _LAYERS):
            yield name, m


def first_layer(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv/ConvTranspose/Linear/Norm layer in registration order, with its path."""
    return next(_layers(module), None)


def last_layer(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The last Conv/ConvTranspose/Linear/Norm layer in registration order, with its path."""
    found = None
    for item in _layers(module):
        found = item
    return found


def _in_of(name: str, layer: nn.Module) -> Signature | None:
    if isinstance(layer, _CONV):
        return Signature("channels", int(layer.in_channels), name)
    if isinstance(layer, nn.Linear):
        return Signature("features", int(layer.in_features), name)
    if isinstance(layer, nn.GroupNorm):
        return Signature("channels", int(layer.num_channels), name)
    if isinstance(layer, _BATCHNORM):
        return Signature("channels", int(layer.num_features), name)
    return None


def _out_of(name: str, layer: nn.Module) -> Signature | None:
    if isinstance(layer, _CONV):
        return Signature("channels", int(layer.out_channels), name)
    if isinstance(layer, nn.Linear):
        return Signature("features", int(layer.out_features), name)
    return _in_of(name, layer)  # norms keep their width


def input_signature(module: nn.Module) -> Signature | None:
    """Input channels/features read from the first layer, or None when there is none."""
    found = first_layer(module)
    return _in_of(*found) if found else None


def output_signature(module: nn.Module) -> Signature | None:
    """Output channels/features read from the last layer, or None when there is none."""
    found = last_layer(module)
    return _out_of(*found) if found else None


# --------------------------------------------------------------------------- meta probe


def meta_like(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` on the meta device (no memory)."""
    return torch.empty(tuple(shape), device="meta", dtype=dtype)


def shapes_of(value: Any) -> Any:
    """Shapes of every tensor in a nested structure of tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: shapes_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shapes_of(v) for v in value) if isinstance(value, list) else tuple(shapes_of(v) for v in value)
    return None


@dataclass
class ProbeResult:
    """What a meta probe saw.

    Attributes:
        output: The module's output, made of meta tensors (None when it raised).
        error: The exception raised, or None.
        where: Path (relative to the probed module, ``""`` for itself) of the innermost submodule
            that raised.
        inconclusive: True when the failure came from the probe itself (an op without a meta
            kernel, a tensor the module keeps outside its parameters), not from the model.
    """

    output: Any = None
    error: BaseException | None = None
    where: str = ""
    inconclusive: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _meta_state(module: nn.Module) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        state[name] = torch.empty_like(p, device="meta")
    for name, b in module.named_buffers(remove_duplicate=False):
        state[name] = torch.empty_like(b, device="meta")
    return state


def _is_probe_limitation(error: BaseException) -> bool:
    text = str(error)
    return (
        isinstance(error, NotImplementedError)
        or "meta" in text and ("device" in text or "Meta" in text or "backend" in text)
        or "data-dependent" in text
        or "Cannot copy out of meta tensor" in text
        or ".item()" in text
    )


def meta_probe(module: nn.Module, *args: Any, **kwargs: Any) -> ProbeResult:
    """Run ``module`` on meta tensors and report the output or where it raised.

    Parameters and buffers are swapped for meta stand-ins only for the duration of the call
    (``torch.func.functional_call``), so the module is left exactly as it was.

    Args:
        module: The module to run.
        *args: Positional inputs, usually made with :func:`meta_like`.
        **kwargs: Keyword inputs.

    Returns:
        A :class:`ProbeResult`.
    """
    state = _meta_state(module)
    guards = _guard_transposed(module)
    try:
        with torch.no_grad():
            out = functional_call(module, state, args, kwargs, tie_weights=False, strict=False)
        return ProbeResult(output=out)
    except Exception as e:  # noqa: BLE001 - any failure inside user code is a finding
        error: BaseException = e
    finally:
        for h in guards:
            h.remove()
    where = _locate_failure(module, state, args, kwargs)
    return ProbeResult(error=error, where=where, inconclusive=_is_probe_limitation(error))


_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _check_transposed_input(m: nn.Module, inputs: tuple[Any, ...]) -> None:
    conv = cast(nn.modules.conv._ConvTransposeNd, m)
    x = inputs[0] if inputs else None
    if isinstance(x, torch.Tensor) and x.dim() >= 2:
        batched = x.dim() == conv.weight.dim()
        got = int(x.shape[1] if batched else x.shape[0])
        if got != conv.in_channels:
            raise RuntimeError(
                f"Given transposed=1, weight of size {list(conv.weight.shape)}, expected input{list(x.shape)} "
                f"to have {conv.in_channels} channels, but got {got} channels instead"
            )


def _guard_transposed(module: nn.Module) -> list[Any]:
    """Input-channel checks for transposed convs, whose meta kernel does not check them.

    The real CPU/CUDA kernels raise on a channel mismatch; on meta tensors
    ``conv_transpose`` silently succeeds, so the probe adds the check as a pre-hook
    (removed again before the probe returns).
    """
    return [m.register_forward_pre_hook(_check_transposed_input) for m in module.modules() if isinstance(m, _TRANSPOSED)]


def _locate_failure(module: nn.Module, state: dict[str, torch.Tensor], args: Any, kwargs: Any) -> str:
    """Re-run a failed probe with hooks to find the innermost submodule that raised."""
    names = {id(m): n for n, m in module.named_modules()}
    stack: list[str] = []

    def pre(m: nn.Module, _inp: Any) -> None:
        stack.append(names.get(id(m), ""))

    def post(m: nn.Module, _inp: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    handles = []
    try:
        for m in module.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        handles += _guard_transposed(module)  # after ``pre``, so the raising module is on the stack
        with torch.no_grad():
            functional_call(module, state, args, kwargs, tie_weights=False, strict=False)
    except Exception:  # noqa: BLE001 - the failure is expected; we only want where it happened
        return stack[-1] if stack else ""
    finally:
        for h in handles:
            h.remove()
    return ""
