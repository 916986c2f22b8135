"""What a module consumes and produces.

Two sources, used together by :mod:`surgery.check`:

* a *static* reading of the first and last Conv / ConvTranspose / Linear / BatchNorm layer
  (registration order), which needs no input at all;
* a *meta-device probe*, which runs the module on ``torch.device("meta")`` tensors with meta
  stand-ins for every parameter and buffer put in place for the call only (:class:`MetaState`). No
  weights are allocated, nothing of the model changes, and the real output shapes (or the
  exception and the submodule that raised it) come back.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from surgery._meta_ops import MetaShortcuts
from surgery._util import ModuleStack

__all__ = [
    "Signature",
    "MultiSignature",
    "SlotSignature",
    "AttributeMismatch",
    "attribute_mismatches",
    "layer_widths",
    "in_width",
    "out_width",
    "ProbeResult",
    "first_layer",
    "last_layer",
    "input_signature",
    "output_signature",
    "meta_probe",
    "meta_like",
    "shapes_of",
    "rebuild_text",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM = (*_BATCHNORM, nn.GroupNorm)
_LAYERS = (*_CONV, nn.Linear, *_NORM)


@dataclass(frozen=True)
class Signature:
    """Channels (conv-like) or features (linear) on one side of a module.

    Attributes:
        kind: ``"channels"`` or ``"features"``.
        size: The count.
        source: The dotted path, relative to the module, of the layer it was read from.
    """

    kind: Literal["channels", "features"]
    size: int
    source: str = ""

    def __str__(self) -> str:
        return f"{self.size} {_unit(self.kind)}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "source": self.source}


@dataclass(frozen=True)
class MultiSignature:
    """One width per feature map, for modules with several inputs or outputs (a multi-scale body, an FPN).

    Attributes:
        kind: ``"channels"`` or ``"features"``.
        sizes: The count of each map, in order (0 where it could not be read).
        source: Where the widths were read, e.g. ``"return_layers"``.
    """

    kind: Literal["channels", "features"]
    sizes: tuple[int, ...]
    source: str = ""

    def __str__(self) -> str:
        return f"{','.join(map(str, self.sizes))} {_unit(self.kind)}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": list(self.sizes), "source": self.source}


#: What a slot consumes or produces: one width, or one per feature map.
SlotSignature = Signature | MultiSignature


def _unit(kind: str) -> str:
    return "ch" if kind == "channels" else "feat"


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


# --------------------------------------------------------------------------- widths from parameters


def _shape(value: object) -> tuple[int, ...] | None:
    """The shape of a materialised tensor (meta counts); None for None or a lazy, uninitialised one."""
    if not isinstance(value, torch.Tensor) or isinstance(value, (UninitializedParameter, UninitializedBuffer)):
        return None
    return tuple(int(s) for s in value.shape)


def _norm_width(layer: nn.Module) -> int | None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shape = _shape(getattr(layer, name, None))
        if shape is not None and len(shape) == 1:
            return shape[0]
    return None


def layer_widths(layer: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` channels/features of one layer, read from its parameter shapes.

    Attributes such as ``out_features`` are not read: they go stale when a weight is sliced
    in place. A conv's weight is ``out × in/groups × k…``, a transposed conv's
    ``in × out/groups × k…``, a linear's ``out × in``, an embedding's ``num × dim`` (it
    takes indices: ``in`` is its table size); norms keep their width.

    Args:
        layer: A Conv/ConvTranspose (1-3d), Linear, BatchNorm, GroupNorm, LayerNorm or Embedding.

    Returns:
        The pair, or None for another kind of module or one whose parameters are absent or
        not yet materialised (lazy modules).
    """
    if isinstance(layer, (*_CONV, nn.Linear, nn.Embedding)):
        shape = _shape(getattr(layer, "weight", None))
        if shape is None or len(shape) < 2:
            return None
        groups = int(getattr(layer, "groups", 1))
        if isinstance(layer, _TRANSPOSED):
            return shape[0], shape[1] * groups
        if isinstance(layer, _CONV):
            return shape[1] * groups, shape[0]
        if isinstance(layer, nn.Embedding):
            return shape[0], shape[1]
        return shape[1], shape[0]
    if isinstance(layer, nn.LayerNorm):
        shape = _shape(layer.weight) or _shape(layer.bias)
        return (shape[-1], shape[-1]) if shape else None
    if isinstance(layer, _NORM):
        width = _norm_width(layer)
        return None if width is None else (width, width)
    return None


def _attr_widths(layer: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` as the layer's attributes state them (a lazy or weight-less layer's only source)."""
    if isinstance(layer, _CONV):
        return int(layer.in_channels), int(layer.out_channels)
    if isinstance(layer, nn.Linear):
        return int(layer.in_features), int(layer.out_features)
    if isinstance(layer, nn.Embedding):
        return int(layer.num_embeddings), int(layer.embedding_dim)
    if isinstance(layer, nn.LayerNorm):
        return int(layer.normalized_shape[-1]), int(layer.normalized_shape[-1])
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels), int(layer.num_channels)
    if isinstance(layer, _BATCHNORM):
        return int(layer.num_features), int(layer.num_features)
    return None


def _widths(layer: nn.Module) -> tuple[int, int]:
    widths = layer_widths(layer) or _attr_widths(layer)
    if widths is None:
        raise TypeError(
            f"layer must be a Conv/ConvTranspose, Linear, BatchNorm, GroupNorm, LayerNorm or Embedding layer, "
            f"got {type(layer).__name__}"
        )
    return widths


def _kind(layer: nn.Module) -> Literal["channels", "features"]:
    return "features" if isinstance(layer, (nn.Linear, nn.Embedding, nn.LayerNorm)) else "channels"


def in_width(layer: nn.Module) -> int:
    """Input channels/features of one layer, from its parameters (see :func:`layer_widths`);
    its attributes only when it has no materialised parameters (a lazy layer).

    Raises:
        TypeError: ``layer`` is not one of the layers :func:`layer_widths` reads.
    """
    return _widths(layer)[0]


def out_width(layer: nn.Module) -> int:
    """Output channels/features of one layer, from its parameters (see :func:`in_width`).

    Raises:
        TypeError: ``layer`` is not one of the layers :func:`layer_widths` reads.
    """
    return _widths(layer)[1]


def _in_of(name: str, layer: nn.Module) -> Signature:
    return Signature(_kind(layer), in_width(layer), name)


def _out_of(name: str, layer: nn.Module) -> Signature:
    return Signature(_kind(layer), out_width(layer), name)


def input_signature(module: nn.Module) -> Signature | None:
    """Input channels/features read from the first layer's parameters, or None when there is none."""
    found = first_layer(module)
    return _in_of(*found) if found else None


def output_signature(module: nn.Module) -> Signature | None:
    """Output channels/features read from the last layer's parameters, or None when there is none."""
    found = last_layer(module)
    return _out_of(*found) if found else None


@dataclass(frozen=True)
class AttributeMismatch:
    """A layer attribute that disagrees with the layer's own parameters.

    Attributes:
        attribute: The attribute, e.g. ``"out_features"``, or a parameter such as ``"bias"``
            whose shape disagrees with the weight.
        value: What it says (an int, a tuple for ``normalized_shape``, a shape for a parameter).
        tensor: The parameter or buffer it was compared with, e.g. ``"weight"``.
        shape: That tensor's shape.
        rebuild: Constructor call of a layer that matches the parameters, e.g. ``"nn.Linear(1024, 2)"``
            (None when there is no simple one).
    """

    attribute: str
    value: object
    tensor: str
    shape: tuple[int, ...]
    rebuild: str | None


def _plainly_consistent(layer: nn.Module) -> bool:
    """True for a stock conv, linear or batch-norm layer whose attributes and tensors all agree:
    the common case, answered with a few comparisons. False means "read it in full", not "wrong"."""
    kind = type(layer)
    params = layer._parameters
    weight = params.get("weight")
    if weight is None or type(weight) is not nn.Parameter:
        return False
    bias = params.get("bias")
    shape = weight.shape
    if kind is nn.Conv2d or kind is nn.Conv1d or kind is nn.Conv3d:
        conv = cast(nn.modules.conv._ConvNd, layer)
        return (weight.dim() >= 3 and conv.out_channels == shape[0] and conv.in_channels == shape[1] * conv.groups
                and (bias is None or type(bias) is nn.Parameter and bias.shape == shape[:1]))
    if kind is nn.Linear:
        linear = cast(nn.Linear, layer)
        return (weight.dim() == 2 and linear.out_features == shape[0] and linear.in_features == shape[1]
                and (bias is None or type(bias) is nn.Parameter and bias.shape == shape[:1]))
    if kind is nn.BatchNorm2d or kind is nn.BatchNorm1d or kind is nn.BatchNorm3d:
        norm = cast(nn.modules.batchnorm._BatchNorm, layer)
        buffers = layer._buffers
        mean, var = buffers.get("running_mean"), buffers.get("running_var")
        return (weight.dim() == 1 and norm.num_features == shape[0] and bias is not None and bias.shape == shape
                and mean is not None and mean.shape == shape and var is not None and var.shape == shape)
    return False


def attribute_mismatches(layer: nn.Module) -> list[AttributeMismatch]:
    """Where ``layer``'s attributes (``in_features``, ``out_channels``, ``num_features``,
    ``normalized_shape``, ``embedding_dim``, …) or its bias/running statistics disagree with
    the shape of its weight.

    Args:
        layer: Any module; only Conv/ConvTranspose, Linear, BatchNorm, GroupNorm, LayerNorm and
            Embedding layers are read.

    Returns:
        One entry per disagreement; empty for a consistent layer, another kind of module, or
        a lazy one whose parameters are not materialised yet.
    """
    if _plainly_consistent(layer):
        return []
    weight = _shape(getattr(layer, "weight", None))
    widths = layer_widths(layer)
    found: list[AttributeMismatch] = []
    rebuild: str | None

    def compare(name: str, real: object, tensor: str, shape: tuple[int, ...], rebuild: str | None) -> None:
        value = getattr(layer, name, None)
        if isinstance(value, (int, tuple)) and not isinstance(value, bool) and value != real:
            found.append(AttributeMismatch(name, value, tensor, shape, rebuild))

    def vectors(names: tuple[str, ...], wanted: tuple[int, ...], tensor: str, shape: tuple[int, ...], rebuild: str | None) -> None:
        for name in names:
            got = _shape(getattr(layer, name, None))
            if got is not None and got != wanted:
                found.append(AttributeMismatch(name, got, tensor, shape, rebuild))

    if widths is None:
        return found
    if isinstance(layer, (*_CONV, nn.Linear)) and weight is not None:
        rebuild = rebuild_text(layer, widths)
        names = ("in_features", "out_features") if isinstance(layer, nn.Linear) else ("in_channels", "out_channels")
        for name, real in zip(names, widths, strict=True):
            compare(name, real, "weight", weight, rebuild)
        vectors(("bias",), (widths[1],), "weight", weight, rebuild)
    elif isinstance(layer, nn.Embedding) and weight is not None:
        rebuild = f"nn.Embedding({widths[0]}, {widths[1]})"
        compare("num_embeddings", widths[0], "weight", weight, rebuild)
        compare("embedding_dim", widths[1], "weight", weight, rebuild)
    elif isinstance(layer, nn.LayerNorm):
        tensor = "weight" if weight is not None else "bias"
        full = weight if weight is not None else _shape(layer.bias)
        if full is not None:
            compare("normalized_shape", full, tensor, full, f"nn.LayerNorm({_tuple_text(full)})")
            if weight is not None:
                vectors(("bias",), full, tensor, full, None)
    elif isinstance(layer, _NORM):
        tensor = next(n for n in ("weight", "bias", "running_mean", "running_var") if _shape(getattr(layer, n, None)))
        shape = (widths[0],)
        if isinstance(layer, nn.GroupNorm):
            rebuild = f"nn.GroupNorm({layer.num_groups}, {widths[0]})"
            compare("num_channels", widths[0], tensor, shape, rebuild)
        else:
            rebuild = f"{torch_class_name(layer)}({widths[0]})" if isinstance(layer, _BATCHNORM) else None
            compare("num_features", widths[0], tensor, shape, rebuild)
        others = tuple(n for n in ("weight", "bias", "running_mean", "running_var") if n != tensor)
        vectors(others, shape, tensor, shape, rebuild)
    return found


def _tuple_text(shape: tuple[int, ...]) -> str:
    return str(shape[0]) if len(shape) == 1 else str(tuple(shape))


def _arg(value: tuple[int, ...]) -> str:
    """``3`` for ``(3, 3)``, ``(1, 2)`` as is: how a conv's per-dimension arguments are written."""
    return str(value[0]) if len(set(value)) == 1 else str(tuple(value))


def torch_class_name(layer: nn.Module) -> str:
    """How code names the layer's class: ``nn.Linear`` for a torch layer, also for the subclass a
    parametrization (weight norm, spectral norm) makes at run time; the class name otherwise."""
    for cls in type(layer).__mro__:
        if cls.__module__.startswith("torch.nn.modules"):
            return f"nn.{cls.__name__}"
        if not cls.__module__.startswith("torch.nn.utils"):
            break
    return type(layer).__name__


def rebuild_text(layer: nn.Module, widths: tuple[int, int]) -> str:
    """``nn.Linear(1024, 2)`` / ``nn.Conv2d(256, 91, kernel_size=1)`` sized like the layer's weight."""
    cls = torch_class_name(layer)
    if isinstance(layer, nn.Linear):
        bias = "" if layer.bias is not None else ", bias=False"
        return f"{cls}({widths[0]}, {widths[1]}{bias})"
    conv = cast(nn.modules.conv._ConvNd, layer)
    args = [str(widths[0]), str(widths[1]), f"kernel_size={_arg(tuple(conv.kernel_size))}"]
    defaults = (("stride", 1), ("padding", 0), ("output_padding", 0), ("dilation", 1))
    for name, default in defaults:
        value = getattr(conv, name, default)
        if isinstance(value, tuple) and any(v != default for v in value):
            args.append(f"{name}={_arg(tuple(value))}")
        elif isinstance(value, str):
            args.append(f"{name}={value!r}")
    if conv.groups != 1:
        args.append(f"groups={conv.groups}")
    if conv.bias is None:
        args.append("bias=False")
    if conv.padding_mode != "zeros":
        args.append(f"padding_mode={conv.padding_mode!r}")
    return f"{cls}({', '.join(args)})"


# --------------------------------------------------------------------------- meta probe


def shapes_of(value: Any) -> Any:
    """Shapes of every tensor in a nested structure of tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: shapes_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shapes_of(v) for v in value] if isinstance(value, list) else tuple(shapes_of(v) for v in value)
    return None


def meta_like(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` on the meta device (no memory)."""
    return torch.empty(tuple(shape), device="meta", dtype=dtype)


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


class MetaState:
    """Meta stand-ins for every parameter and buffer of a module, put in place for a call only.

    The stand-ins are written straight into each submodule's ``_parameters`` / ``_buffers``
    and the originals written back afterwards, which costs a dictionary store per tensor
    (``torch.func.functional_call`` resolves every dotted name on each call, most of a
    small probe's time). A model holding TorchScript modules, whose stores are not plain
    dictionaries, goes through ``functional_call`` instead.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modules = list(module.modules())
        self.scripted = any(isinstance(m, torch.jit.ScriptModule) for m in self.modules)
        self.entries: list[tuple[dict[str, Any], str, torch.Tensor, torch.Tensor]] = []
        self.named: dict[str, torch.Tensor] = {}
        #: True when a parameter or buffer is lazy and still uninitialised (its shape comes with the first forward)
        self.lazy = False
        if self.scripted:
            for name, p in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
                self.named[name] = torch.empty_like(p, device="meta")
            return
        twins: dict[tuple[Any, ...], torch.Tensor] = {}  # one stand-in per shape and dtype: meta tensors hold no data
        for m in self.modules:
            for store in (m._parameters, m._buffers):
                for key, t in store.items():
                    if t is None:
                        continue
                    if isinstance(t, (UninitializedParameter, UninitializedBuffer)):
                        self.lazy = True  # no stand-in: callers must not run the module
                        continue
                    plain = type(t) in (torch.Tensor, nn.Parameter) and t.layout == torch.strided
                    if plain:
                        like = (tuple(t.shape), t.dtype)
                        twin = twins.get(like)
                        if twin is None:
                            twin = twins[like] = torch.empty(like[0], dtype=like[1], device="meta")
                    else:
                        twin = torch.empty_like(t, device="meta")  # subclasses keep empty_like's own handling
                    self.entries.append((store, key, t, twin))

    def call(self, args: Any, kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` with the stand-ins in place; the originals are back afterwards.

        So are the plain attributes a forward assigns (an anchor generator moves its cached
        anchors to the device of what it is fed): every module's attributes are as before the call.
        """
        attributes = [(m.__dict__, m.__dict__.copy()) for m in self.modules]
        try:
            if self.scripted:
                return functional_call(self.module, self.named, args, kwargs, tie_weights=False, strict=False)
            entries = self.entries
            for store, key, _, meta in entries:
                store[key] = meta
            try:
                return self.module(*args, **kwargs)
            finally:
                for store, key, original, _ in entries:
                    store[key] = original
        finally:
            for now, before in attributes:  # identity, compared in C: most modules assign nothing
                if len(now) != len(before) or not all(map(operator.is_, now.values(), before.values())):
                    now.clear()
                    now.update(before)


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
    (:class:`MetaState`), so the module is left exactly as it was.

    Args:
        module: The module to run.
        *args: Positional inputs, usually made with :func:`meta_like`.
        **kwargs: Keyword inputs.

    Returns:
        A :class:`ProbeResult`.
    """
    state = MetaState(module)
    if state.lazy:
        lazy = ValueError(f"{type(module).__name__} has lazy modules that are still uninitialized; their shapes come with the first real forward")
        return ProbeResult(error=lazy, inconclusive=True)
    guards = _guard_transposed(module)
    try:
        out = run_on_meta(module, state, args, kwargs)
        return ProbeResult(output=out)
    except Exception as e:  # noqa: BLE001 - any failure inside user code is a finding
        error: BaseException = e
    finally:
        for h in guards:
            h.remove()
    where = _locate_failure(module, state, args, kwargs)
    return ProbeResult(error=error, where=where, inconclusive=_is_probe_limitation(error))


def run_on_meta(module: nn.Module, state: MetaState, args: Any, kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its parameters and buffers swapped for ``state`` (meta
    stand-ins) for the call only, without autograd and with the meta shortcuts."""
    with torch.no_grad(), MetaShortcuts():
        return state.call(args, kwargs)


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


def _locate_failure(module: nn.Module, state: MetaState, args: Any, kwargs: Any) -> str:
    """Re-run a failed probe with hooks to find the innermost submodule that raised."""
    with ModuleStack(module) as stack:
        guards = _guard_transposed(module)  # after the stack's hooks, so the raising module is on the stack
        try:
            run_on_meta(module, state, args, kwargs)
        except Exception:  # noqa: BLE001 - the failure is expected; we only want where it happened
            return stack.innermost() or ""
        finally:
            for h in guards:
                h.remove()
    return ""
