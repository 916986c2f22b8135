"""Fast shape rules for ops on meta tensors: the mode the probes run under.

On meta tensors many torch ops run through Python reference decompositions that cost tens of
microseconds to milliseconds a call (a bilinear interpolation about 4 ms, a grid sample about
20 ms), all to compute a shape. :class:`MetaShortcuts` answers the common ones from a table
of shape rules instead (see :mod:`surgery._meta_shapes` for what a rule is). A rule answers
only a call it fully understands, with every tensor on meta and grad mode off, and returns a
fresh meta tensor of exactly the real op's shape, dtype and layout; for any other call it
falls back and the real op runs. A call the CPU kernel rejects raises under the mode too:
the rule raises itself where the meta kernel would let the call pass (a conv bias of the
wrong size, a softmax ``dim`` out of range, a weight of another dtype, ...), else the real
op raises torch's own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from surgery._meta_layers import LAYER_RULES
from surgery._meta_shapes import (
    FALLBACK,
    FLOATS,
    META,
    Params,
    Rule,
    broadcast,
    check_dim,
    check_norm_dtypes,
    cpu_scalar,
    empty,
    float_meta,
    ints,
    number,
    on_meta,
    suggested_format,
    vector,
)

__all__ = ["MetaShortcuts", "RULES"]

_NO_KWARGS: dict[str, Any] = {}  # shared, never written
_NUMBERS = (int, float, bool)
_INTS = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


class MetaShortcuts(TorchFunctionMode):
    """Answer common ops on meta tensors from shape rules (:data:`RULES`), the rest as usual.

    Only the function object is looked up per call; a function without a rule costs one dict
    lookup. Nothing is shortcut while grad mode is on (the real op records autograd history).
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        rule = RULES.get(func)
        if rule is not None and not torch.is_grad_enabled():
            out = rule(args, kwargs or _NO_KWARGS)
            if out is not FALLBACK:
                return out
        return func(*args, **(kwargs or _NO_KWARGS))


# --- layouts ---------------------------------------------------------------------------------


def _dense(t: Tensor) -> bool:
    """True when ``t``'s elements fill its memory exactly once, in some dimension order."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape, strict=True) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return expected > 0


def _like(t: Tensor) -> Any:
    """A new tensor with ``t``'s strides (what batch norm and dropout return), or FALLBACK when
    ``t`` is not dense."""
    if not _dense(t):
        return FALLBACK
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=META)


def _compact(shape: Sequence[int], order: Sequence[int]) -> list[int]:
    """Strides of a dense tensor of ``shape`` whose dims are laid out in ``order``, innermost first."""
    strides = [0] * len(shape)
    step = 1
    for d in order:
        strides[d] = step
        step *= max(shape[d], 1)
    return strides


def _follows(shape: Sequence[int], strides: Sequence[int], order: Sequence[int]) -> bool:
    """True when ``strides`` are the dense strides of ``order`` (size-1 dims aside)."""
    step = 1
    for d in order:
        if shape[d] != 1:
            if strides[d] != step:
                return False
            step *= shape[d]
    return True


def _swap(a: int, b: int, shape: Sequence[int], operands: Sequence[Sequence[int]]) -> int:
    """Whether dim ``a`` should go outside dim ``b``: 1 yes, -1 no, 0 undecided (the first
    operand with non-zero strides on both decides; equal strides put the longer dim outside)."""
    for strides in operands:
        sa, sb = strides[a], strides[b]
        if sa == 0 or sb == 0:
            continue
        if sa == sb:
            if shape[b] >= shape[a]:
                continue
            return 1
        return -1 if sa < sb else 1
    return 0


def _elementwise(shape: tuple[int, ...], dtype: torch.dtype, tensors: Sequence[Tensor]) -> Any:
    """The output of an elementwise op over ``tensors`` broadcast to ``shape``, laid out the way
    torch's elementwise kernels order it: contiguous when every operand is (in its own shape);
    a lone operand's strides when it is dense; contiguous (or channels-last) when every
    broadcast operand is; else dims sorted by the operands' strides, the first operand deciding."""
    n = len(shape)
    operands = [t for t in tensors if t.is_meta or t.dim()]  # CPU scalars take no part
    if n <= 1 or not operands or all(t.is_contiguous() for t in operands):  # all contiguous: so is the output
        return empty(shape, dtype)
    if len(operands) == 1:
        t = operands[0]
        if _dense(t):
            return torch.empty_strided(shape, t.stride(), dtype=dtype, device=META)
        return empty(shape, dtype, suggested_format(t))
    aligned = []
    for t in operands:
        lead = n - t.dim()
        aligned.append([0] * lead + [0 if size == 1 and shape[lead + i] != 1 else stride
                                     for i, (size, stride) in enumerate(zip(t.shape, t.stride(), strict=True))])
    inner = range(n - 1, -1, -1)
    contiguous = all(_follows(shape, s, inner) for s in aligned)
    channels_last = n == 4 and all(_follows(shape, s, (1, 3, 2, 0)) for s in aligned)
    if contiguous and not channels_last:
        return empty(shape, dtype)
    if channels_last and not contiguous:
        return empty(shape, dtype, torch.channels_last)
    order = list(inner)  # innermost first
    for i in range(1, n):
        moving = i
        for j in range(i - 1, -1, -1):
            verdict = _swap(order[j], order[moving], shape, aligned)
            if verdict > 0:
                order[j], order[moving] = order[moving], order[j]
                moving = j
            elif verdict < 0:
                break
    return torch.empty_strided(shape, _compact(shape, order), dtype=dtype, device=META)


# --- activations, dropout, clamp -------------------------------------------------------------


def _unary(params: Params, *, inplace: bool | None = False, valid: Any = None) -> Rule:
    """An op that keeps its input's shape, dtype and layout. ``inplace``: True for ``relu_``
    spellings, None when the last parameter is an ``inplace`` flag. ``valid(bound)`` vets the
    other arguments."""

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None or not float_meta(bound[0]) or (valid is not None and not valid(bound)):
            return FALLBACK
        in_place = bound[-1] if inplace is None else inplace
        if type(in_place) is not bool:
            return FALLBACK
        x = bound[0]
        return x if in_place else _elementwise(tuple(x.shape), x.dtype, (x,))

    return rule


_X = Params("input")
_X_INPLACE = Params("input", ("inplace", False))
_HARDTANH = Params("input", ("min_val", -1.0), ("max_val", 1.0), ("inplace", False))
_LEAKY = Params("input", ("negative_slope", 0.01), ("inplace", False))
_ELU = Params("input", ("alpha", 1.0), ("inplace", False))
_GELU = Params("input", ("approximate", "none"))
_CLAMP = Params("input", ("min", None), ("max", None))


def _clamp_args(b: Sequence[Any]) -> bool:
    if b[1] is None and b[2] is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    return all(v is None or number(v) for v in b[1:])


def _dropout(params: Params, dims: tuple[int, ...] | None, *, alpha: bool = False) -> Rule:
    """A dropout: the input itself when not training or in place, else a tensor like it.
    ``dims``: the input dims it takes without a warning (None: any). Alpha dropouts are
    answered only when not training."""

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, p, training, inplace = bound
        if not float_meta(x) or (dims is not None and x.dim() not in dims) or not number(p) or not 0.0 <= p <= 1.0:
            return FALLBACK
        if type(training) is not bool or type(inplace) is not bool or (alpha and training):
            return FALLBACK
        return x if inplace or not training or p == 0 else _like(x)

    return rule


# --- binary elementwise ----------------------------------------------------------------------

_ALPHA = Params("input", "other", ("alpha", 1))
_OTHER = Params("input", "other")
_DIV = Params("input", "other", ("rounding_mode", None))


def _binary(kind: str, params: Params, *, inplace: bool = False) -> Rule:
    """``add``/``sub``/``rsub`` (with ``alpha``), ``mul``, ``div``/``rdiv`` (true division and
    ``rounding_mode``) and the comparisons (``cmp``), out of place or in place."""

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, other = bound[0], bound[1]
        extra = bound[2] if len(bound) > 2 else (1 if kind in ("add", "sub", "rsub") else None)
        if not on_meta(x) or x.dtype not in FLOATS and x.dtype not in _INTS:
            return FALLBACK
        tensor = isinstance(other, Tensor)
        if tensor:
            if not (on_meta(other) or cpu_scalar(other)):
                return FALLBACK
        elif type(other) not in _NUMBERS:
            return FALLBACK
        dtype = torch.result_type(x, other)
        if dtype not in FLOATS and dtype not in _INTS:
            return FALLBACK
        if kind in ("add", "sub", "rsub"):
            if type(extra) is float and dtype not in FLOATS:  # alpha
                raise RuntimeError("For integral input tensors, argument alpha must not be a floating point number.")
            if type(extra) not in (int, float):
                return FALLBACK
        elif kind in ("div", "rdiv"):
            if extra is None:
                dtype = dtype if dtype in FLOATS else torch.get_default_dtype()
            elif isinstance(extra, str) and extra not in ("trunc", "floor"):
                raise RuntimeError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{extra}'")
            elif extra not in ("trunc", "floor"):
                return FALLBACK
        elif kind == "cmp":
            dtype = torch.bool
        shape = broadcast(x.shape, other.shape) if tensor and other.is_meta else tuple(x.shape)
        if shape is None:
            return FALLBACK
        if inplace:
            return x if shape == tuple(x.shape) and torch.can_cast(dtype, x.dtype) else FALLBACK
        return _elementwise(shape, dtype, (x, other) if tensor and other.is_meta else (x,))

    return rule


# --- softmax and normalization ---------------------------------------------------------------

_SOFTMAX_F = Params("input", ("dim", None), ("_stacklevel", 3), ("dtype", None))
_SOFTMAX = Params("input", "dim", ("dtype", None))


def _softmax(params: Params) -> Rule:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, dim, dtype = bound[0], bound[1], bound[-1]
        if on_meta(x):
            check_dim(dim, x)
        if not float_meta(x) or type(dim) is not int or not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
            return FALLBACK
        if dtype is not None and dtype not in FLOATS:
            return FALLBACK
        return empty(x.shape, dtype or x.dtype)  # contiguous whatever the input's layout

    return rule


_NORM_ARGS: tuple[str | tuple[str, Any], ...] = (("weight", None), ("bias", None), ("eps", 1e-5))
_LAYER_NORM_F = Params("input", "normalized_shape", *_NORM_ARGS)
_LAYER_NORM = Params("input", "normalized_shape", *_NORM_ARGS, ("cudnn_enable", True))


def _layer_norm(params: Params) -> Rule:
    return lambda args, kwargs: _layer_norm_rule(params.bind(args, kwargs))


def _layer_norm_rule(bound: Sequence[Any] | None) -> Any:
    if bound is None:
        return FALLBACK
    x, normalized, weight, bias = bound[:4]
    check_norm_dtypes("layer_norm", x, (weight, bias))
    if not float_meta(x) or x.numel() == 0:
        return FALLBACK
    dims = ints(normalized, len(normalized), single=False) if isinstance(normalized, (list, tuple)) else None
    if not dims or len(dims) > x.dim() or tuple(x.shape[-len(dims):]) != dims:
        return FALLBACK
    if not (vector(weight, x, dims) and vector(bias, x, dims)):
        return FALLBACK
    return empty(x.shape, x.dtype)


_GROUP_NORM_F = Params("input", "num_groups", *_NORM_ARGS)
_GROUP_NORM = Params("input", "num_groups", *_NORM_ARGS, ("cudnn_enabled", True))


def _group_norm(params: Params) -> Rule:
    return lambda args, kwargs: _group_norm_rule(params.bind(args, kwargs))


def _group_norm_rule(bound: Sequence[Any] | None) -> Any:
    if bound is None:
        return FALLBACK
    x, groups, weight, bias = bound[:4]
    check_norm_dtypes("group_norm", x, (weight, bias))
    if not float_meta(x) or x.dim() < 2 or x.numel() == 0 or type(groups) is not int or groups < 1:
        return FALLBACK
    channels = x.shape[1]
    if channels % groups or not (vector(weight, x, (channels,)) and vector(bias, x, (channels,))):
        return FALLBACK
    if x.numel() // groups == 1:  # one value per group: the functional form refuses it
        return FALLBACK
    return empty(x.shape, x.dtype)


_BATCH_NORM = Params("input", "running_mean", "running_var", ("weight", None), ("bias", None), ("training", False),
                     ("momentum", 0.1), ("eps", 1e-5))
_INSTANCE_NORM = Params("input", ("running_mean", None), ("running_var", None), ("weight", None), ("bias", None),
                        ("use_input_stats", True), ("momentum", 0.1), ("eps", 1e-5))


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _BATCH_NORM.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, mean, var, weight, bias, training, _, eps = bound
    check_norm_dtypes("batch_norm", x, (mean, var, weight, bias))
    if (on_meta(mean) and mean.dim() != 1 or on_meta(var) and var.dim() != 1) and float_meta(x) and x.dim() > 1:
        for name, stat in (("running_mean", mean), ("running_var", var)):
            if on_meta(stat) and stat.dim() != 1:
                raise RuntimeError(f"batch_norm(): expected {name} to be 1-dimensional with {x.shape[1]} elements, but got {name} of "
                                   f"size {list(stat.shape)}")
    if not float_meta(x) or x.dim() < 2 or x.numel() == 0 or type(training) is not bool or not number(eps):
        return FALLBACK
    if (eps <= 0 if training else eps < 0) or (training and x.numel() == x.shape[1]):  # one value per channel
        return FALLBACK
    if not training and (mean is None or var is None):
        return FALLBACK
    channel = (x.shape[1],)
    if not all(vector(t, x, channel) for t in (mean, var, weight, bias)):
        return FALLBACK
    return _like(x)


def _instance_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _INSTANCE_NORM.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, mean, var, weight, bias, use_input_stats = bound[:6]
    check_norm_dtypes("instance_norm", x, (weight, bias))
    if use_input_stats is not True or not float_meta(x) or x.dim() < 3 or x.numel() == 0:
        return FALLBACK
    if x.numel() == x.shape[0] * x.shape[1]:  # one spatial element
        return FALLBACK
    channel = (x.shape[1],)
    if not all(vector(t, x, channel) for t in (mean, var, weight, bias)):
        return FALLBACK
    return empty(x.shape, x.dtype)


_NORMALIZE = Params("input", ("p", 2.0), ("dim", 1), ("eps", 1e-12), ("out", None))


def _normalize(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.normalize``: the input divided by its norm along ``dim``, which the input lays out."""
    bound = _NORMALIZE.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, p, dim, eps, out = bound
    if not float_meta(x) or out is not None or not number(p) or not number(eps) or type(dim) is not int:
        return FALLBACK
    if not -x.dim() <= dim < x.dim() or any(st == 0 and sz > 1 for st, sz in zip(x.stride(), x.shape, strict=True)):
        return FALLBACK
    return _elementwise(tuple(x.shape), x.dtype, (x, x))  # x decides the layout of x / norm: the norm has a 0 stride


# --- joining, roll, masked_fill ---------------------------------------------------------------

_JOIN = Params("tensors", ("dim", 0))


def _joined(tensors: Any) -> bool:
    """A non-empty list of non-empty meta tensors of one dtype and one rank (at least 1)."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        return False
    first = tensors[0]
    if not on_meta(first) or first.dim() == 0:
        return False
    return all(on_meta(t) and t.dtype == first.dtype and t.dim() == first.dim() and t.numel() for t in tensors)


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _JOIN.bind(args, kwargs)
    if bound is not None and isinstance(bound[0], (list, tuple)):
        for i, t in enumerate(bound[0]):
            if on_meta(t) and t.dim() == 0:
                raise RuntimeError(f"zero-dimensional tensor (at position {i}) cannot be concatenated")
    if bound is None or not _joined(bound[0]) or type(bound[1]) is not int:
        return FALLBACK
    tensors, dim = bound
    rank = tensors[0].dim()
    if not -rank <= dim < rank:
        return FALLBACK
    dim %= rank
    shape = list(tensors[0].shape)
    for t in tensors[1:]:
        if any(a != b for i, (a, b) in enumerate(zip(shape, t.shape, strict=True)) if i != dim):
            return FALLBACK
        shape[dim] += t.shape[dim]
    formats = {suggested_format(t) for t in tensors}
    return empty(shape, tensors[0].dtype, formats.pop() if len(formats) == 1 else torch.contiguous_format)


def _stack(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _JOIN.bind(args, kwargs)
    if bound is None or not _joined(bound[0]) or type(bound[1]) is not int:
        return FALLBACK
    tensors, dim = bound
    shape = tuple(tensors[0].shape)
    if not -len(shape) - 1 <= dim <= len(shape) or not all(tuple(t.shape) == shape and t.is_contiguous() for t in tensors):
        return FALLBACK
    dim %= len(shape) + 1
    return empty((*shape[:dim], len(tensors), *shape[dim:]), tensors[0].dtype)


_ROLL = Params("input", "shifts", ("dims", None))


def _roll(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _ROLL.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, shifts, dims = bound
    if not float_meta(x) or x.numel() == 0:
        return FALLBACK
    shifts = (shifts,) if type(shifts) is int else shifts
    dims = () if dims is None else (dims,) if type(dims) is int else dims
    if not (isinstance(shifts, (list, tuple)) and isinstance(dims, (list, tuple))):
        return FALLBACK
    if not all(type(v) is int for v in (*shifts, *dims)) or len(shifts) != (len(dims) or 1):
        return FALLBACK
    if not all(-x.dim() <= d < x.dim() for d in dims):
        return FALLBACK
    return empty(x.shape, x.dtype)


_MASKED_FILL = Params("input", "mask", "value")


def _masked_fill(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _MASKED_FILL.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, mask, value = bound
    if not float_meta(x) or not on_meta(mask) or mask.dtype != torch.bool or type(value) not in _NUMBERS:
        return FALLBACK
    shape = broadcast(x.shape, mask.shape)
    return FALLBACK if shape is None else empty(shape, x.dtype)


# --- the table -------------------------------------------------------------------------------

_T = torch.Tensor
_nn: Any = torch._C._nn


def _activations() -> dict[Any, Rule]:
    rules: dict[Any, Rule] = {}
    fn: Any
    for name in ("relu", "sigmoid", "tanh", "selu", "exp", "log", "sqrt", "rsqrt", "neg", "abs", "reciprocal"):
        for owner in (torch, _T):
            if hasattr(owner, name):
                rules[getattr(owner, name)] = _unary(_X)
                rules[getattr(owner, name + "_")] = _unary(_X, inplace=True)
    for fn in (F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.mish, F.selu):
        rules[fn] = _unary(_X_INPLACE, inplace=None)
    rules[F.hardtanh] = _unary(_HARDTANH, inplace=None, valid=lambda b: number(b[1]) and number(b[2]) and b[1] <= b[2])
    rules[F.leaky_relu] = _unary(_LEAKY, inplace=None, valid=lambda b: number(b[1]))
    rules[F.elu] = rules[F.celu] = _unary(_ELU, inplace=None, valid=lambda b: number(b[1]))
    rules[_nn.gelu] = _unary(_GELU, valid=lambda b: b[1] in ("none", "tanh"))
    for fn in (torch.clamp, torch.clip, _T.clamp, _T.clip):
        rules[fn] = _unary(_CLAMP, valid=_clamp_args)
    for fn in (torch.clamp_, torch.clip_, _T.clamp_, _T.clip_):
        rules[fn] = _unary(_CLAMP, inplace=True, valid=_clamp_args)
    return rules


def _dropouts() -> dict[Any, Rule]:
    f_params = Params("input", ("p", 0.5), ("training", True), ("inplace", False))
    return {
        F.dropout: _dropout(f_params, None),
        F.dropout1d: _dropout(f_params, (3,)),
        F.dropout2d: _dropout(f_params, (4,)),
        F.dropout3d: _dropout(f_params, (5,)),
        F.alpha_dropout: _dropout(Params("input", ("p", 0.5), ("training", False), ("inplace", False)), None, alpha=True),
        F.feature_alpha_dropout: _dropout(f_params, None, alpha=True),
    }


#: operator spelling -> kind (one operand each side, no keywords)
_OPERATORS = {"__add__": "add", "__radd__": "add", "__sub__": "sub", "__mul__": "mul", "__rmul__": "mul", "__truediv__": "div",
              "__rdiv__": "rdiv", "__rtruediv__": "rdiv", **{f"__{op}__": "cmp" for op in ("eq", "ne", "lt", "le", "gt", "ge")}}


def _arithmetic() -> dict[Any, Rule]:
    rules: dict[Any, Rule] = {}
    names: tuple[str, ...]
    for kind, names, params in (("add", ("add",), _ALPHA), ("sub", ("sub", "subtract"), _ALPHA), ("mul", ("mul", "multiply"), _OTHER),
                                ("div", ("div", "divide"), _DIV), ("div", ("true_divide",), _OTHER),
                                ("cmp", ("eq", "ne", "lt", "le", "gt", "ge"), _OTHER)):
        for name in names:
            rules[getattr(torch, name)] = rules[getattr(_T, name)] = _binary(kind, params)
    for name, kind in _OPERATORS.items():
        rules[getattr(_T, name)] = _binary(kind, _OTHER)
    for kind, params in (("add", _ALPHA), ("sub", _ALPHA), ("mul", _OTHER), ("div", _DIV)):
        rules[getattr(_T, kind + "_")] = _binary(kind, params, inplace=True)
    rules[_T.__iadd__] = _binary("add", _OTHER, inplace=True)
    rules[_T.__imul__] = _binary("mul", _OTHER, inplace=True)
    rules[torch.rsub] = _binary("rsub", _ALPHA)
    rules[_T.__rsub__] = _binary("rsub", _OTHER)
    return rules


def _others() -> dict[Any, Rule]:
    return {
        F.softmax: _softmax(_SOFTMAX_F), F.log_softmax: _softmax(_SOFTMAX_F),
        torch.softmax: _softmax(_SOFTMAX), torch.log_softmax: _softmax(_SOFTMAX),
        _T.softmax: _softmax(_SOFTMAX), _T.log_softmax: _softmax(_SOFTMAX),
        F.layer_norm: _layer_norm(_LAYER_NORM_F), torch.layer_norm: _layer_norm(_LAYER_NORM),
        F.group_norm: _group_norm(_GROUP_NORM_F), torch.group_norm: _group_norm(_GROUP_NORM),
        F.batch_norm: _batch_norm, F.instance_norm: _instance_norm,
        torch.cat: _cat, torch.concat: _cat, torch.stack: _stack,
        torch.roll: _roll, _T.roll: _roll,
        F.normalize: _normalize,
        torch.masked_fill: _masked_fill, _T.masked_fill: _masked_fill,
    }


#: function object -> its rule
RULES: dict[Any, Rule] = {**_activations(), **_dropouts(), **_arithmetic(), **_others(), **LAYER_RULES}
