"""Shape rules for meta tensors: what every rule shares, and the checks the meta kernels skip.

A *rule* answers one torch function on meta tensors from shape arithmetic alone: it takes the
call's ``args`` and ``kwargs`` and returns the output (fresh ``torch.empty`` meta tensors of
the real op's shape, dtype and layout), or :data:`FALLBACK` when the call is anything it does
not fully understand, in which case the real op runs. So a rule only has to be exact on the
calls it accepts.

A rule also raises where the CPU kernel raises and the meta kernel would not: on torch's meta
device many checks are missing (a conv bias of the wrong size, a softmax ``dim`` out of range,
a weight of another dtype, an empty spatial dim an op cannot resample, ...), so a model that
fails on its first real forward would pass a meta probe. The ``check_*`` functions here make
those checks, with messages in torch's words that name the shapes; each costs a few integer
comparisons. Where the meta kernel raises an error of the CPU kernel's class by itself, a
rule may still fall back and let it. :mod:`surgery._meta_layers` holds the layer rules
(convolution, pooling, linear, matmul, attention, embedding, interpolation, grid sampling) and
:mod:`surgery._meta_ops` the mode that applies the rules and the elementwise, normalization
and shape-joining rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FALLBACK",
    "META",
    "FLOATS",
    "Rule",
    "Params",
    "on_meta",
    "cpu_scalar",
    "float_meta",
    "number",
    "vector",
    "ints",
    "empty",
    "suggested_format",
    "broadcast",
    "check_dim",
    "check_conv",
    "check_adaptive_avg",
    "check_resample",
    "check_grid_sample",
    "check_matmul_dtypes",
    "check_linear",
    "check_norm_dtypes",
    "check_embedding",
]

#: What a rule returns to have the real op run instead.
FALLBACK: Any = object()
META = torch.device("meta")
#: The dtypes the rules answer for; anything else runs the real op.
FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
#: A rule: ``(args, kwargs) -> output or FALLBACK``.
Rule = Callable[[tuple[Any, ...], dict[str, Any]], Any]

_PLAIN = frozenset({Tensor, nn.Parameter})  # subclasses with their own __torch_function__ run the real op
_REQUIRED: Any = object()
_CONTIGUOUS = torch.contiguous_format


class Params:
    """A function's parameter list, to bind a call's arguments to it by position and name.

    Args:
        *spec: Parameter names in order; a ``(name, default)`` pair for an optional one.
    """

    def __init__(self, *spec: str | tuple[str, Any]) -> None:
        self.names = tuple(s if isinstance(s, str) else s[0] for s in spec)
        self.defaults = tuple(_REQUIRED if isinstance(s, str) else s[1] for s in spec)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.required = sum(1 for d in self.defaults if d is _REQUIRED)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[Any] | None:
        """The value of every parameter, or None when the call does not fit the list (too many
        arguments, an unknown or repeated keyword, a required one missing)."""
        n = len(args)
        if not kwargs and self.required <= n:  # the common call: positional arguments only
            return args if n == len(self.names) else args + self.defaults[n:] if n < len(self.names) else None
        if n > len(self.names):
            return None
        values = [*args, *self.defaults[n:]]
        for key, value in kwargs.items():
            i = self.index.get(key)
            if i is None or i < n:
                return None
            values[i] = value
        for i in range(self.required):
            if values[i] is _REQUIRED:
                return None
        return values


def on_meta(t: Any) -> bool:
    """True for a plain tensor (or parameter) on the meta device."""
    return type(t) in _PLAIN and t.is_meta


def cpu_scalar(t: Any) -> bool:
    """True for a plain 0-dim CPU tensor (which elementwise ops take alongside meta tensors)."""
    return type(t) in _PLAIN and t.dim() == 0 and t.device.type == "cpu"


def float_meta(t: Any) -> bool:
    """True for a plain floating-point tensor (or parameter) on the meta device."""
    return type(t) in _PLAIN and t.is_meta and t.dtype in FLOATS


def number(v: Any) -> bool:
    """True for a plain int or float (not a bool)."""
    return type(v) in (int, float)


def vector(t: Any, like: Tensor, shape: tuple[int, ...]) -> bool:
    """None, or a meta tensor of ``like``'s dtype and exactly ``shape`` (a weight, a bias, a statistic)."""
    return t is None or (on_meta(t) and t.dtype == like.dtype and tuple(t.shape) == shape)


def ints(value: Any, n: int, *, single: bool = True) -> tuple[int, ...] | None:
    """``value`` as ``n`` ints: an int (repeated), or a sequence of ``n`` ints (or of one, when
    ``single``); None for anything else (bools, floats, other lengths)."""
    if type(value) is int:
        return (value,) * n
    if not isinstance(value, (tuple, list)):
        return None
    for v in value:
        if type(v) is not int:
            return None
    if len(value) == n:
        return tuple(value)
    return (value[0],) * n if single and len(value) == 1 else None


def empty(shape: Sequence[int], dtype: torch.dtype, memory_format: torch.memory_format = _CONTIGUOUS) -> Tensor:
    """A new meta tensor."""
    return torch.empty(shape, dtype=dtype, device=META, memory_format=memory_format)


def broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast shape of ``a`` and ``b``, None when they do not broadcast."""
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    offset = len(a) - len(b)
    for i, s in enumerate(b):
        t = out[offset + i]
        if s != t:
            if t == 1:
                out[offset + i] = s
            elif s != 1:
                return None
    return tuple(out)


def suggested_format(t: Tensor) -> torch.memory_format:
    """The memory format torch's kernels give an output made from ``t``: channels-last when
    ``t``'s strides are ordered like channels-last (4-D or 5-D), contiguous otherwise."""
    d = t.dim()
    if d == 4:
        order: tuple[int, ...] = (1, 3, 2, 0)
    elif d == 5:
        order = (1, 4, 3, 2, 0)
    else:
        return _CONTIGUOUS
    sizes, strides = t.shape, t.stride()
    least = 0
    for i in order:
        if sizes[i] == 0 or strides[i] < least or (i == 0 and least == strides[1]):
            return _CONTIGUOUS
        least = strides[i] * sizes[i] if sizes[i] > 1 else strides[i]
    return torch.channels_last if d == 4 else torch.channels_last_3d


# --- checks the meta kernels skip ------------------------------------------------------------
#
# Each raises what the CPU kernel raises (same class, a message in torch's words naming the
# shapes) for a call the meta kernel would answer (or refuse with an error of another class),
# and returns otherwise. They are called with the call's raw arguments and judge only what
# they can read; anything else is left to the real op.

_REDUCED = frozenset({torch.float16, torch.bfloat16})


def check_dim(dim: Any, t: Tensor) -> None:
    """An ``IndexError`` when the int ``dim`` is not a dimension of ``t`` (a 0-dim tensor has
    dims -1 and 0, as in torch)."""
    rank = max(t.dim(), 1)
    if type(dim) is int and not -rank <= dim < rank:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})")


def check_conv(x: Any, w: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any, n: int,
               output_padding: Any = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...] | None] | None:
    """The argument checks of a convolution (``output_padding`` not None: a transposed one), in
    the CPU kernel's order: signs of padding, stride, dilation and groups; the weight against
    ``groups``; the input's channels; the bias; the output padding; the dtypes.

    Returns:
        ``(stride, padding, dilation, output_padding)`` as ``n`` ints each (zeros for a string
        padding, None for a plain convolution's output padding) when the input and weight are
        meta tensors and every argument was read and passed; None when the real op judges.
    """
    if type(x) not in _PLAIN or type(w) not in _PLAIN or not (x.is_meta and w.is_meta):
        return None
    rank, size = x.dim(), w.shape
    if rank != n + 1 and rank != n + 2:
        return None
    if len(size) != n + 2:
        raise RuntimeError(f"expected a {n + 2}-dimensional weight for a {n}-d convolution, but got weight of size {list(size)}")
    steps, dilations = ints(stride, n), ints(dilation, n)
    pads = (0,) * n if type(padding) is str else ints(padding, n)
    out_pads = None if output_padding is None else ints(output_padding, n)
    if steps is None or dilations is None or pads is None or type(groups) is not int or (out_pads is None and output_padding is not None):
        return None
    if min(pads) < 0:
        raise RuntimeError("negative padding is not supported")
    if out_pads is not None and min(out_pads) < 0:
        raise RuntimeError("negative output_padding is not supported")
    if min(steps) < 1:
        raise RuntimeError("non-positive stride is not supported")
    if min(dilations) < 1:
        raise RuntimeError("non-positive dilation is not supported")
    if groups < 1:
        raise RuntimeError("non-positive groups is not supported")
    if size[0] < groups or size[0] % groups:
        expected = "at least" if size[0] < groups else "divisible by"
        raise RuntimeError(f"Given groups={groups}, expected weight to be {expected} {groups} at dimension 0, but got weight of size "
                           f"{list(size)} instead")
    given = f"Given groups={groups}" if out_pads is None else "Given transposed=1"
    channels = x.shape[1] if rank == n + 2 else x.shape[0]
    expected, outs = (size[1] * groups, size[0]) if out_pads is None else (size[0], size[1] * groups)
    if channels != expected:
        shape = list(x.shape) if rank == n + 2 else [1, *x.shape]
        raise RuntimeError(f"{given}, weight of size {list(size)}, expected input{shape} to have {expected} channels, but got "
                           f"{channels} channels instead")
    if isinstance(bias, Tensor) and (bias.dim() != 1 or bias.shape[0] != outs):
        raise RuntimeError(f"{given}, weight of size {list(size)}, expected bias to be 1-dimensional with {outs} elements, but got "
                           f"bias of size {list(bias.shape)} instead")
    if out_pads is not None and any(p >= s and p >= d for p, s, d in zip(out_pads, steps, dilations, strict=True)):
        raise RuntimeError(f"output padding must be smaller than either stride or dilation, but got output_padding={list(out_pads)}, "
                           f"stride={list(steps)} and dilation={list(dilations)}")
    if w.dtype != x.dtype:
        raise RuntimeError(f"Input type ({x.dtype}) and weight type ({w.dtype}) should be the same")
    if isinstance(bias, Tensor) and bias.dtype != x.dtype:
        raise RuntimeError(f"Input type ({x.dtype}) and bias type ({bias.dtype}) should be the same")
    return steps, pads, dilations, out_pads


def check_adaptive_avg(x: Tensor, n: int, out: Sequence[int]) -> None:
    """Adaptive average pooling to ``out`` over ``x`` (a meta tensor of ``n`` spatial dims,
    batched or not): an output of ones is a mean and takes anything; otherwise the CPU kernel
    refuses an empty spatial dim (3-d pooling: an empty channel dim of a batched input too)."""
    if all(o == 1 for o in out):
        return
    for i in range(-n, 0) if n < 3 else range(1, x.dim()):
        if x.shape[i] == 0:
            raise RuntimeError(f"adaptive_avg_pool{max(n, 2)}d(): Expected input to have non-zero size for non-batch dimensions, "
                               f"but input has sizes {list(x.shape)} with dimension {i % x.dim()} being empty")


def check_resample(x: Tensor, out: Sequence[int]) -> None:
    """Upsampling (any mode but area) of ``x`` (a batched meta tensor) to spatial size ``out``:
    every input and output size must be positive, and only the batch dim may be empty."""
    spatial = list(x.shape[2:])
    if min(spatial) < 1 or min(out) < 1:
        raise RuntimeError(f"Input and output sizes should be greater than 0, but got input {spatial} and output {list(out)}")
    if x.shape[1] == 0:
        raise RuntimeError(f"Non-empty {x.dim()}D data tensor expected but got a tensor with sizes {list(x.shape)}")


def check_grid_sample(x: Any, grid: Any) -> None:
    """``grid_sample`` of a 4-d or 5-d meta tensor: batch sizes agree, the grid's last dim is the
    number of spatial dims, no spatial dim is empty, and the grid has the input's dtype."""
    if not (on_meta(x) and on_meta(grid)):
        return
    if x.dim() != grid.dim() or x.dim() not in (4, 5):
        raise RuntimeError(f"grid_sampler(): expected 4D or 5D input and grid with same number of dimensions, but got input with "
                           f"sizes {list(x.shape)} and grid with sizes {list(grid.shape)}")
    if x.shape[0] != grid.shape[0]:
        raise RuntimeError(f"grid_sampler(): expected grid and input to have same batch size, but got input with sizes "
                           f"{list(x.shape)} and grid with sizes {list(grid.shape)}")
    if grid.shape[-1] != x.dim() - 2:
        raise RuntimeError(f"grid_sampler(): expected grid to have size {x.dim() - 2} in last dimension, but got grid with sizes "
                           f"{list(grid.shape)}")
    for i in range(2, x.dim()):
        if x.shape[i] == 0:
            raise RuntimeError(f"grid_sampler(): expected input to have non-empty spatial dimensions, but input has sizes "
                               f"{list(x.shape)} with dimension {i} being empty")
    if grid.dtype != x.dtype:
        raise RuntimeError(f"grid_sampler(): expected grid to have the input's dtype {x.dtype}, but got grid of dtype {grid.dtype}")


def check_matmul_dtypes(a: Any, b: Any) -> None:
    """A matrix product of two meta tensors (of at least 1 dim) takes one dtype for both."""
    if on_meta(a) and on_meta(b) and a.dtype != b.dtype and a.dim() and b.dim():
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {a.dtype} != {b.dtype}")


def check_linear(x: Any, w: Any, bias: Any) -> None:
    """``linear``: the weight has the input's dtype; the bias broadcasts to the output. The CPU
    kernel adds the bias in a fused ``addmm`` to the input flattened to 2 dims when the input
    is 2-d, or contiguous with a contiguous bias of one non-trivial dim: there the bias must
    broadcast to the flattened output and have the input's dtype. Otherwise it is added to
    the output in place, which casts it."""
    if not (on_meta(x) and on_meta(w) and x.dim() and w.dim()):
        return
    if w.dtype != x.dtype:
        check_matmul_dtypes(x, w)
    if not on_meta(bias) or w.dim() != 2 or bias.dim() == 1 and bias.shape[0] == w.shape[0] and bias.dtype == x.dtype:
        return  # no bias, or the usual one
    fused = x.dim() == 2 or x.is_contiguous() and bias.is_contiguous() and (bias.dim() == 1 or bias.squeeze().dim() == 1)
    target = [math.prod(x.shape[:-1]), w.shape[0]] if fused else [*x.shape[:-1], w.shape[0]]
    if bias.dim() > len(target) or any(b not in (1, t) for b, t in zip(reversed(bias.shape), reversed(target), strict=False)):
        flattened = " (the input flattened to 2 dims)" if fused and x.dim() != 2 else ""
        raise RuntimeError(f"linear(): expected bias to broadcast to the output of size {target}{flattened}, but got bias of size "
                           f"{list(bias.shape)}")
    if fused and bias.dtype != x.dtype:
        raise RuntimeError(f"self and mat2 must have the same dtype, but got {bias.dtype} and {x.dtype}")


def check_norm_dtypes(op: str, x: Any, params: Sequence[Any]) -> None:
    """A normalization's parameters (weights, biases, running statistics) all have the input's
    dtype, or are all float32 for a float16 or bfloat16 input (the CPU kernels' mixed mode)."""
    if type(x) not in _PLAIN or not x.is_meta or x.dtype not in FLOATS:
        return
    dtype = x.dtype
    for p in params:
        if type(p) in _PLAIN and p.dtype != dtype and p.is_meta:
            break
    else:
        return
    given = [p for p in params if on_meta(p)]
    if dtype not in _REDUCED or any(p.dtype != torch.float32 for p in given):
        dtypes = ", ".join(str(p.dtype) for p in given)
        raise RuntimeError(f"{op}(): mixed dtype (CPU): expected the parameters to be {dtype} like the input (or float32 for a "
                           f"float16 or bfloat16 input), but got input of dtype {dtype} and parameters of dtypes {dtypes}")


def check_embedding(indices: Any, weight: Any) -> None:
    """``embedding``: a 2-d weight, with at least one row when any index is looked up."""
    if not (on_meta(weight) and on_meta(indices)):
        return
    if weight.dim() != 2:
        raise RuntimeError(f"'weight' must be 2-D, but got weight of size {list(weight.shape)}")
    if weight.shape[0] == 0 and indices.numel():
        raise RuntimeError(f"index_select(): self indexing axis dim should be positive, but the weight of size {list(weight.shape)} "
                           f"has no rows for indices of size {list(indices.shape)}")
