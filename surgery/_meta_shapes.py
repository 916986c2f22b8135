"""Shape rules for meta tensors: the helpers every rule shares, and the layer ops.

A *rule* answers one torch function on meta tensors from shape arithmetic alone: it takes the
call's ``args`` and ``kwargs`` and returns the output (fresh ``torch.empty`` meta tensors of
the real op's shape, dtype and layout), or :data:`FALLBACK` when the call is anything it does
not fully understand, in which case the real op runs. A rule never raises for a bad call: it
falls back, and the real op raises with torch's own message. So a rule only has to be exact
on the calls it accepts. :mod:`surgery._meta_ops` holds the mode that applies the rules and
the elementwise, normalization and shape-joining rules; this module holds the layers:
convolution, pooling, linear, attention, interpolation and grid sampling (:data:`LAYER_RULES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
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
    "LAYER_RULES",
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


def _spatial_input(x: Any, n: int) -> bool:
    """A floating meta tensor with ``n`` spatial dims, batched or not, and no empty dimension."""
    return float_meta(x) and x.dim() in (n + 1, n + 2) and x.numel() > 0


# --- convolution -----------------------------------------------------------------------------

_CONV = Params("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))


def _conv(n: int) -> Rule:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = _CONV.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, w, bias, stride, padding, dilation, groups = bound
        if not (_spatial_input(x, n) and on_meta(w) and w.dtype == x.dtype and w.dim() == n + 2 and w.numel() > 0):
            return FALLBACK
        out_channels = w.shape[0]
        if type(groups) is not int or groups < 1 or out_channels % groups or x.shape[-n - 1] != w.shape[1] * groups:
            return FALLBACK
        if bias is not None and not (on_meta(bias) and bias.dtype == x.dtype and tuple(bias.shape) == (out_channels,)):
            return FALLBACK
        steps, dilations = ints(stride, n), ints(dilation, n)
        if steps is None or dilations is None or min(steps) < 1 or min(dilations) < 1:
            return FALLBACK
        spatial = x.shape[-n:]
        if padding == "same":
            if max(steps) != 1:
                return FALLBACK
            out = list(spatial)
        else:
            pads = (0,) * n if padding == "valid" else ints(padding, n)
            if pads is None or min(pads) < 0:
                return FALLBACK
            out = []
            for size, k, p, s, d in zip(spatial, w.shape[2:], pads, steps, dilations, strict=True):
                reach = d * (k - 1) + 1
                if size + 2 * p < reach:
                    return FALLBACK
                out.append((size + 2 * p - reach) // s + 1)
        shape = [x.shape[0], out_channels, *out] if x.dim() == n + 2 else [out_channels, *out]
        return empty(shape, x.dtype)  # the meta convolution always answers contiguous

    return rule


# --- pooling ---------------------------------------------------------------------------------


def _pooled(size: int, k: int, p: int, s: int, d: int, ceil_mode: bool) -> int:
    """Output length of a pooling window over ``size`` (torch's formula, ceil mode included)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _window(x: Any, n: int, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any) -> list[int] | None:
    """The pooled output shape, or None when any argument is out of the ordinary or the output
    would be empty."""
    if not _spatial_input(x, n) or type(ceil_mode) is not bool:
        return None
    ks = ints(kernel_size, n)
    ss = ks if stride is None or (isinstance(stride, (list, tuple)) and not stride) else ints(stride, n)
    ps, ds = ints(padding, n), ints(dilation, n)
    if ks is None or ss is None or ps is None or ds is None or min(ks) < 1 or min(ss) < 1 or min(ds) < 1 or min(ps) < 0:
        return None
    out = list(x.shape[:-n])
    for size, k, s, p, d in zip(x.shape[-n:], ks, ss, ps, ds, strict=True):
        if 2 * p > k or 2 * p > d * (k - 1) + 1:  # both of torch's padding limits
            return None
        length = _pooled(size, k, p, s, d, ceil_mode)
        if length < 1:
            return None
        out.append(length)
    return out


def _max_pool(n: int, indices: str) -> Rule:
    """Max pooling: ``indices`` is ``"flag"`` for ``F.max_pool{n}d`` (``return_indices``),
    ``"always"`` for ``F.max_pool{n}d_with_indices``, ``"never"`` for ``torch.max_pool{n}d``."""
    spec: list[str | tuple[str, Any]] = [
        "input", "kernel_size", ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False)]
    params = Params(*spec) if indices == "never" else Params(*spec, ("return_indices", False))

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, kernel_size, stride, padding, dilation, ceil_mode, *flag = bound
        shape = _window(x, n, kernel_size, stride, padding, dilation, ceil_mode)
        if shape is None or (flag and type(flag[0]) is not bool):
            return FALLBACK
        fmt = suggested_format(x)
        out = empty(shape, x.dtype, fmt)
        return (out, empty(shape, torch.int64, fmt)) if indices == "always" or (flag and flag[0]) else out

    return rule


_AVG_POOL = Params("input", "kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
                   ("count_include_pad", True), ("divisor_override", None))
_AVG_POOL1D = Params("input", "kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False), ("count_include_pad", True))


def _avg_pool(n: int) -> Rule:
    params = _AVG_POOL1D if n == 1 else _AVG_POOL

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, *divisor = bound
        if type(count_include_pad) is not bool or (divisor and divisor[0] is not None and (type(divisor[0]) is not int or divisor[0] == 0)):
            return FALLBACK
        shape = _window(x, n, kernel_size, stride, padding, 1, ceil_mode)
        return FALLBACK if shape is None else empty(shape, x.dtype, suggested_format(x))

    return rule


def _adaptive(n: int, indices: str, *, nones: bool) -> Rule:
    """Adaptive pooling; ``indices`` as for :func:`_max_pool` (``"never"`` for average pooling).
    ``nones``: an output size of None keeps the input's size (the functional 2-d and 3-d forms)."""
    params = Params("input", "output_size") if indices == "never" else Params("input", "output_size", ("return_indices", False))

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = params.bind(args, kwargs)
        if bound is None or not _spatial_input(bound[0], n):
            return FALLBACK
        x, size, *flag = bound
        if type(size) is int:
            size = (size,) * n
        if not isinstance(size, (list, tuple)) or len(size) != n or (flag and type(flag[0]) is not bool):
            return FALLBACK
        spatial = [s if o is None and nones else o for o, s in zip(size, x.shape[-n:], strict=True)]
        if not all(type(o) is int and o > 0 for o in spatial):
            return FALLBACK
        shape = [*x.shape[:-n], *spatial]
        fmt = suggested_format(x)
        out = empty(shape, x.dtype, fmt)
        return (out, empty(shape, torch.int64, fmt)) if indices == "always" or (flag and flag[0]) else out

    return rule


# --- linear and attention ------------------------------------------------------------------

_LINEAR = Params("input", "weight", ("bias", None))


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _LINEAR.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, w, bias = bound
    if not float_meta(x) or x.dim() < 1 or x.numel() == 0 or not on_meta(w) or w.dtype != x.dtype or w.dim() != 2:
        return FALLBACK
    if x.shape[-1] != w.shape[1] or not vector(bias, x, (w.shape[0],)):
        return FALLBACK
    return empty((*x.shape[:-1], w.shape[0]), x.dtype)  # contiguous whatever the input's layout


_ATTENTION = Params("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k", "bias_v",
                    "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", ("training", True), ("key_padding_mask", None),
                    ("need_weights", True), ("attn_mask", None), ("use_separate_proj_weight", False), ("q_proj_weight", None),
                    ("k_proj_weight", None), ("v_proj_weight", None), ("static_k", None), ("static_v", None),
                    ("average_attn_weights", True), ("is_causal", False))


def _attention(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.multi_head_attention_forward`` for plain self-attention (query, key and value one
    tensor; packed in-projection; no masks, extra key/value biases or static keys)."""
    bound = _ATTENTION.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    (q, k, v, embed, heads, w_in, b_in, bias_k, bias_v, zero_attn, p, w_out, b_out, training, padding_mask, need_weights,
     mask, separate, w_q, w_k, w_v, static_k, static_v, average, causal) = bound
    if not (q is k and k is v and float_meta(q) and q.dim() in (2, 3) and q.numel()):
        return FALLBACK
    if any(a is not None for a in (bias_k, bias_v, padding_mask, mask, w_q, w_k, w_v, static_k, static_v)):
        return FALLBACK
    if zero_attn is not False or separate is not False or causal is not False or not number(p) or not 0 <= p <= 1:
        return FALLBACK
    if not all(type(flag) is bool for flag in (training, need_weights, average)):
        return FALLBACK
    e = q.shape[-1]
    if type(embed) is not int or embed != e or type(heads) is not int or heads < 1 or e % heads:
        return FALLBACK
    if not (on_meta(w_in) and vector(w_in, q, (3 * e, e)) and vector(b_in, q, (3 * e,))):
        return FALLBACK
    if not (on_meta(w_out) and w_out.dtype == q.dtype and w_out.dim() == 2 and w_out.shape[1] == e):
        return FALLBACK
    if not vector(b_out, q, (w_out.shape[0],)):
        return FALLBACK
    batch = tuple(q.shape[1:2]) if q.dim() == 3 else ()
    length = q.shape[0]
    out = empty((length, *batch, w_out.shape[0]), q.dtype)
    if not need_weights:
        return out, None
    return out, empty((*batch, *(() if average else (heads,)), length, length), q.dtype)


# --- interpolation and grid sampling ---------------------------------------------------------

_INTERPOLATE = Params("input", ("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
                      ("recompute_scale_factor", None), ("antialias", False))
#: mode -> the input dims it takes
_MODES = {"nearest": (3, 4, 5), "nearest-exact": (3, 4, 5), "area": (3, 4, 5), "linear": (3,), "bilinear": (4,),
          "bicubic": (4,), "trilinear": (5,)}


def _scaled(size: int, scale: Any) -> int | None:
    """``size`` scaled by ``scale`` and rounded down, None when ``scale`` is not a plain number."""
    if type(scale) not in (int, float):
        return None
    return int(size * float(scale))


def _interpolate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _INTERPOLATE.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, size, scale_factor, mode, align_corners, recompute, antialias = bound
    if mode not in _MODES or not float_meta(x) or x.dim() not in _MODES[mode] or x.numel() == 0:
        return FALLBACK
    resamples = mode in ("linear", "bilinear", "bicubic", "trilinear")
    if not (align_corners is None or (resamples and type(align_corners) is bool)):
        return FALLBACK
    if antialias is not False and not (antialias is True and mode in ("bilinear", "bicubic")):
        return FALLBACK
    if recompute not in (None, False, True) or (size is None) == (scale_factor is None) or (recompute and size is not None):
        return FALLBACK
    n = x.dim() - 2
    if size is not None:
        out = ints(size, n, single=False)
    else:
        factors = scale_factor if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * n
        scaled = [_scaled(s, f) for s, f in zip(x.shape[2:], factors, strict=False)] if len(factors) == n else []
        out = tuple(o for o in scaled if o is not None) if len(scaled) == n else None
    if out is None or len(out) != n or min(out) < 1:
        return FALLBACK
    return empty([*x.shape[:2], *out], x.dtype, suggested_format(x))


_GRID_SAMPLE = Params("input", "grid", ("mode", "bilinear"), ("padding_mode", "zeros"), ("align_corners", None))


def _grid_sample(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _GRID_SAMPLE.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, grid, mode, padding_mode, align_corners = bound
    if (mode not in ("bilinear", "nearest", "bicubic") or padding_mode not in ("zeros", "border", "reflection")
            or type(align_corners) is not bool):  # None warns: the real op says so
        return FALLBACK
    if not (float_meta(x) and on_meta(grid) and grid.dtype == x.dtype and x.dim() == grid.dim()):
        return FALLBACK
    d = x.dim()
    if d not in (4, 5) or (mode == "bicubic" and d != 4) or x.numel() == 0 or grid.numel() == 0:
        return FALLBACK
    if x.shape[0] != grid.shape[0] or grid.shape[-1] != d - 2:
        return FALLBACK
    return empty([*x.shape[:2], *grid.shape[1:-1]], x.dtype)


LAYER_RULES: dict[Any, Rule] = {
    torch._C._nn.linear: _linear,
    F.multi_head_attention_forward: _attention,
    torch.conv1d: _conv(1),
    torch.conv2d: _conv(2),
    torch.conv3d: _conv(3),
    F.max_pool1d: _max_pool(1, "flag"),
    F.max_pool2d: _max_pool(2, "flag"),
    F.max_pool3d: _max_pool(3, "flag"),
    F.max_pool1d_with_indices: _max_pool(1, "always"),
    F.max_pool2d_with_indices: _max_pool(2, "always"),
    F.max_pool3d_with_indices: _max_pool(3, "always"),
    torch.max_pool1d: _max_pool(1, "never"),
    torch.max_pool2d: _max_pool(2, "never"),
    torch.max_pool3d: _max_pool(3, "never"),
    torch.avg_pool1d: _avg_pool(1),
    torch._C._nn.avg_pool2d: _avg_pool(2),
    torch._C._nn.avg_pool3d: _avg_pool(3),
    torch.adaptive_avg_pool1d: _adaptive(1, "never", nones=False),
    F.adaptive_avg_pool2d: _adaptive(2, "never", nones=True),
    F.adaptive_avg_pool3d: _adaptive(3, "never", nones=True),
    torch._C._nn.adaptive_avg_pool2d: _adaptive(2, "never", nones=False),
    torch._C._nn.adaptive_avg_pool3d: _adaptive(3, "never", nones=False),
    F.adaptive_max_pool1d: _adaptive(1, "flag", nones=False),
    F.adaptive_max_pool2d: _adaptive(2, "flag", nones=True),
    F.adaptive_max_pool3d: _adaptive(3, "flag", nones=True),
    F.adaptive_max_pool1d_with_indices: _adaptive(1, "always", nones=False),
    F.adaptive_max_pool2d_with_indices: _adaptive(2, "always", nones=True),
    F.adaptive_max_pool3d_with_indices: _adaptive(3, "always", nones=True),
    F.interpolate: _interpolate,
    F.grid_sample: _grid_sample,
}
