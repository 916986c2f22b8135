"""Shape rules for the layer ops on meta tensors: convolution (plain and transposed), pooling,
linear, matrix products, attention, embedding, interpolation and grid sampling
(:data:`LAYER_RULES`).

What a rule is, and the checks a rule makes where the meta kernel skips the CPU kernel's,
are described in :mod:`surgery._meta_shapes`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from surgery._meta_shapes import (
    FALLBACK,
    Params,
    Rule,
    broadcast,
    check_adaptive_avg,
    check_conv,
    check_embedding,
    check_grid_sample,
    check_linear,
    check_matmul_dtypes,
    check_resample,
    empty,
    float_meta,
    ints,
    number,
    on_meta,
    suggested_format,
    vector,
)

__all__ = ["LAYER_RULES"]


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
        checked = check_conv(x, w, bias, stride, padding, dilation, groups, n)
        # past the checks: the weight fits the input and groups, the bias fits the weight, one dtype
        if checked is None or not (_spatial_input(x, n) and w.numel() > 0 and (bias is None or on_meta(bias))):
            return FALLBACK
        steps, pads, dilations, _ = checked
        spatial = x.shape[-n:]
        if padding == "same":
            if max(steps) != 1:
                return FALLBACK
            out = list(spatial)
        elif type(padding) is str and padding != "valid":
            return FALLBACK
        else:
            out = []
            for size, k, p, s, d in zip(spatial, w.shape[2:], pads, steps, dilations, strict=True):
                reach = d * (k - 1) + 1
                if size + 2 * p < reach:
                    return FALLBACK
                out.append((size + 2 * p - reach) // s + 1)
        shape = [x.shape[0], w.shape[0], *out] if x.dim() == n + 2 else [w.shape[0], *out]
        return empty(shape, x.dtype)  # the meta convolution always answers contiguous

    return rule


_CONV_TRANSPOSE = Params("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1),
                         ("dilation", 1))


def _conv_transpose(n: int) -> Rule:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = _CONV_TRANSPOSE.bind(args, kwargs)
        if bound is None:
            return FALLBACK
        x, w, bias, stride, padding, output_padding, groups, dilation = bound
        checked = check_conv(x, w, bias, stride, padding, dilation, groups, n, output_padding)
        if checked is None or type(padding) is str or not (_spatial_input(x, n) and w.numel() > 0 and (bias is None or on_meta(bias))):
            return FALLBACK
        steps, pads, dilations, out_pads = checked
        out = []
        for size, k, p, o, s, d in zip(x.shape[-n:], w.shape[2:], pads, out_pads or pads, steps, dilations, strict=True):
            length = (size - 1) * s - 2 * p + d * (k - 1) + o + 1
            if length < 1:  # the meta kernel refuses an empty output, which the CPU kernel answers: left to it
                return FALLBACK
            out.append(length)
        channels = w.shape[1] * groups
        shape = [x.shape[0], channels, *out] if x.dim() == n + 2 else [channels, *out]
        return empty(shape, x.dtype)  # contiguous, like the plain convolution

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
        if bound is None:
            return FALLBACK
        x, size, *flag = bound
        if type(size) is int:
            size = (size,) * n
        if not (on_meta(x) and x.dim() in (n + 1, n + 2) and isinstance(size, (list, tuple)) and len(size) == n):
            return FALLBACK
        spatial = [s if o is None and nones else o for o, s in zip(size, x.shape[-n:], strict=True)]
        if not all(type(o) is int and o >= 0 for o in spatial):
            return FALLBACK
        if indices == "never":
            check_adaptive_avg(x, n, spatial)
        if not _spatial_input(x, n) or min(spatial) == 0 or (flag and type(flag[0]) is not bool):
            return FALLBACK
        shape = [*x.shape[:-n], *spatial]
        fmt = suggested_format(x)
        out = empty(shape, x.dtype, fmt)
        return (out, empty(shape, torch.int64, fmt)) if indices == "always" or (flag and flag[0]) else out

    return rule


# --- linear, matmul and attention ------------------------------------------------------------

_LINEAR = Params("input", "weight", ("bias", None))


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _LINEAR.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, w, bias = bound
    check_linear(x, w, bias)
    if not float_meta(x) or x.dim() < 1 or x.numel() == 0 or not on_meta(w) or w.dtype != x.dtype or w.dim() != 2:
        return FALLBACK
    if x.shape[-1] != w.shape[1] or not (bias is None or float_meta(bias) and bias.dim() == 1 and bias.shape[0] == w.shape[0]):
        return FALLBACK
    # a bias of another dtype got past the checks: it is added in place, cast to the input's dtype
    return empty((*x.shape[:-1], w.shape[0]), x.dtype)  # contiguous whatever the input's layout


_MATMUL = Params("input", "other")


def _matmul(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``matmul`` of two tensors of at least 2 dims: batch dims broadcast, always contiguous."""
    bound = _MATMUL.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    a, b = bound
    check_matmul_dtypes(a, b)
    if not (float_meta(a) and on_meta(b) and b.dtype == a.dtype and a.dim() >= 2 and b.dim() >= 2 and a.shape[-1] == b.shape[-2]):
        return FALLBACK
    batch = broadcast(a.shape[:-2], b.shape[:-2])
    return FALLBACK if batch is None else empty((*batch, a.shape[-2], b.shape[-1]), a.dtype)


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
    if (float_meta(q) and q.dim() in (2, 3) and type(embed) is int and embed == q.shape[-1] and type(heads) is int and heads > 0
            and embed % heads == 0):
        _check_projections(q, (q, k, v), w_in, b_in, w_out, b_out)
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
    if not (on_meta(w_in) and vector(w_in, q, (3 * e, e)) and (b_in is None or float_meta(b_in) and tuple(b_in.shape) == (3 * e,))):
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


def _check_projections(q: torch.Tensor, inputs: tuple[Any, ...], w_in: Any, b_in: Any, w_out: Any, b_out: Any) -> None:
    """The dtypes of attention's projections (valid heads): both weights take the query's dtype,
    and so does the output bias (added to a 2-d product in a fused ``addmm``); the in-projection
    bias does too when a contiguous query, key or value is projected with it in an ``addmm``
    (a non-contiguous one has it added in place, which casts)."""
    for t in (w_in, b_in, w_out, b_out):
        if on_meta(t) and t.dtype != q.dtype:
            break
    else:
        return  # one dtype throughout
    check_matmul_dtypes(q, w_in)
    check_matmul_dtypes(q, w_out)
    fused = any(on_meta(t) and t.is_contiguous() for t in inputs)
    biases: tuple[Any, ...] = (b_in, b_out) if fused else (b_out,)
    for bias in biases:
        if on_meta(bias) and bias.dtype != q.dtype:
            raise RuntimeError(f"self and mat2 must have the same dtype, but got {bias.dtype} and {q.dtype}")


# --- embedding -------------------------------------------------------------------------------

_EMBEDDING_F = Params("input", "weight", ("padding_idx", None), ("max_norm", None), ("norm_type", 2.0), ("scale_grad_by_freq", False),
                      ("sparse", False))
_EMBEDDING = Params("weight", "indices", ("padding_idx", -1), ("scale_grad_by_freq", False), ("sparse", False))


def _embedding(functional: bool) -> Rule:
    """``F.embedding`` (``functional``) or ``torch.embedding`` (weight first). A padding index is
    checked the functional form's way (an index of the weight's rows, or None); a ``max_norm``
    (which renormalizes the weight in place) runs the real op."""

    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = (_EMBEDDING_F if functional else _EMBEDDING).bind(args, kwargs)
        if bound is None:
            return FALLBACK
        if functional:
            indices, weight, padding_idx, max_norm = bound[:4]
            if max_norm is not None or not (padding_idx is None or on_meta(weight) and weight.dim() and type(padding_idx) is int
                                            and -weight.shape[0] <= padding_idx < max(weight.shape[0], 1)):
                return FALLBACK
        else:
            weight, indices, padding_idx = bound[:3]
            if type(padding_idx) is not int:
                return FALLBACK
        check_embedding(indices, weight)
        if not (float_meta(weight) and on_meta(indices) and indices.dtype in (torch.int32, torch.int64)):
            return FALLBACK
        if not all(type(flag) is bool for flag in bound[-2:]):
            return FALLBACK
        return empty((*indices.shape, weight.shape[1]), weight.dtype)

    return rule


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
    if mode not in _MODES or not on_meta(x) or x.dim() not in _MODES[mode]:
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
    if out is None or len(out) != n:
        return FALLBACK
    if mode == "area":  # adaptive average pooling
        check_adaptive_avg(x, n, out)
        if x.numel() == 0:
            return FALLBACK
    else:
        check_resample(x, out)  # past it, only the batch may be empty
    if not float_meta(x) or min(out) < 1:
        return FALLBACK
    return empty([*x.shape[:2], *out], x.dtype, suggested_format(x))


_GRID_SAMPLE = Params("input", "grid", ("mode", "bilinear"), ("padding_mode", "zeros"), ("align_corners", None))


def _grid_sample(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _GRID_SAMPLE.bind(args, kwargs)
    if bound is None:
        return FALLBACK
    x, grid, mode, padding_mode, align_corners = bound
    if mode not in ("bilinear", "nearest", "bicubic") or padding_mode not in ("zeros", "border", "reflection"):
        return FALLBACK
    check_grid_sample(x, grid)
    if type(align_corners) is not bool:  # None warns: the real op says so
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
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    F.multi_head_attention_forward: _attention,
    torch.conv1d: _conv(1),
    torch.conv2d: _conv(2),
    torch.conv3d: _conv(3),
    torch.conv_transpose1d: _conv_transpose(1),
    torch.conv_transpose2d: _conv_transpose(2),
    torch.conv_transpose3d: _conv_transpose(3),
    F.embedding: _embedding(True),
    torch.embedding: _embedding(False),
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
