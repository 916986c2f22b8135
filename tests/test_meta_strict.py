"""Under the meta shortcuts, an op raises on meta tensors exactly when it raises on CPU tensors.

A meta probe stands in for a model's first real forward, so it must refuse what the CPU kernels
refuse. Every case runs one call twice: on small CPU tensors, and on meta tensors of the same
shapes, dtypes and layouts under :class:`MetaShortcuts` (with grad mode off, as the probes run).
Either both raise, with the same exception class, or neither does and the outputs have the same
structure, shapes and dtypes.

The table covers every op with a rule in :data:`RULES` and the ops a vision model commonly
calls without one (padding, reshapes, batched products, scaled dot-product attention). It does
not compare which dtypes a CPU kernel is compiled for (an integer input to ``gelu``, a bool
input to ``max_pool2d``: ``NotImplementedError`` on CPU, answered on meta): that is the
kernels' coverage, not a check of the call's arguments, and differs between devices. Nor
does it hold calls that the CPU kernel answers and the meta kernel refuses: a scaled
dot-product attention whose key and value lengths differ (the CPU kernel does not compare
them), a transposed convolution with an empty output.

At the end, :func:`surgery.check` on models with such a defect: it reports what their first
real forward raises.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from surgery import check
from surgery._meta_ops import RULES, MetaShortcuts
from tests.helpers import build

_T = torch.Tensor
_count = itertools.count()
F64, F16, BF16, I64, I32, BOOL = torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool


class S:
    """A tensor spec: ``shape``, ``dtype`` and ``layout`` (``c`` contiguous, ``cl`` channels-last,
    ``t`` its last two dims a transposed view). One spec used twice in a call is one tensor."""

    def __init__(self, *shape: int, dtype: torch.dtype = torch.float32, layout: str = "c") -> None:
        self.shape, self.dtype, self.layout = shape, dtype, layout

    def make(self, device: str, generator: torch.Generator) -> Tensor:
        shape = self.shape
        if self.layout == "t":
            shape = (*shape[:-2], shape[-1], shape[-2])
        if device == "meta":
            x = torch.empty(shape, dtype=self.dtype, device="meta")
        elif self.dtype.is_floating_point:
            x = torch.rand(shape, generator=generator).to(self.dtype)
        else:
            x = torch.zeros(shape, dtype=self.dtype)  # index 0 is in range of any non-empty table
        if self.layout == "cl":
            return x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
        return x.transpose(-1, -2) if self.layout == "t" else x

    def __repr__(self) -> str:
        return f"S{self.shape}"


def c(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One case: ``fn(*args, **kwargs)`` with every :class:`S` made into a tensor."""
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", "op")).replace(".", "_")
    return pytest.param(fn, args, kwargs, id=f"{name}-{next(_count)}")


def _made(value: Any, device: str, made: dict[int, Tensor], generator: torch.Generator) -> Any:
    if isinstance(value, S):
        if id(value) not in made:
            made[id(value)] = value.make(device, generator)
        return made[id(value)]
    if isinstance(value, (list, tuple)):
        return type(value)(_made(v, device, made, generator) for v in value)
    return value


def _run(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], device: str) -> tuple[Any, BaseException | None]:
    made: dict[int, Tensor] = {}
    generator = torch.Generator().manual_seed(0)
    call_args = _made(args, device, made, generator)
    call_kwargs = {k: _made(v, device, made, generator) for k, v in kwargs.items()}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if device == "meta":
                with MetaShortcuts():
                    return fn(*call_args, **call_kwargs), None
            return fn(*call_args, **call_kwargs), None
    except Exception as e:  # noqa: BLE001 - the error is the outcome being compared
        return None, e


def _summary(value: Any) -> Any:
    if isinstance(value, Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [_summary(v) for v in value]
    return value


def _check(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    cpu, cpu_error = _run(fn, args, kwargs, "cpu")
    meta, meta_error = _run(fn, args, kwargs, "meta")
    assert (cpu_error is None) == (meta_error is None), f"CPU: {cpu_error!r}\nmeta: {meta_error!r}"
    if cpu_error is not None:
        assert type(meta_error) is type(cpu_error), f"CPU: {cpu_error!r}\nmeta: {meta_error!r}"
        return
    assert _summary(meta) == _summary(cpu)


# --- the table -------------------------------------------------------------------------------

x4, x4cl, x4t = S(2, 8, 6, 6), S(2, 8, 6, 6, layout="cl"), S(2, 8, 6, 6, layout="t")
h23, i23, b23 = S(2, 3, dtype=F16), S(2, 3, dtype=I64), S(2, 3, dtype=BOOL)

_UNARY_NAMES = ("relu", "sigmoid", "tanh", "selu", "exp", "log", "sqrt", "rsqrt", "neg", "abs", "reciprocal")
UNARY = [
    *(c(getattr(owner, name + suffix), x) for owner in (torch, _T) for name in _UNARY_NAMES for suffix in ("", "_")
      if hasattr(owner, name + suffix) for x in (x4t, h23)),
    c(torch.sigmoid, i23), c(torch.exp, i23), c(torch.neg, i23), c(torch.relu, i23),
    *(c(fn, x) for fn in (F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.mish, F.selu, F.gelu, F.hardtanh, F.leaky_relu,
                          F.elu, F.celu) for x in (x4cl, h23)),
    *(c(fn, x4, inplace=True) for fn in (F.relu, F.relu6, F.hardswish, F.silu, F.selu, F.hardtanh, F.leaky_relu, F.elu, F.celu)),
    c(F.hardtanh, x4, 2.0, -2.0), c(F.gelu, x4, approximate="tanh"), c(F.gelu, x4, approximate="cubic"), c(F.relu, x4, bogus=True),
    c(F.leaky_relu, x4, 0.2), c(F.elu, x4, alpha=0.5),
    *(c(fn, x4t, -1.0, 1.0) for fn in (torch.clamp, torch.clip, _T.clamp, _T.clip, torch.clamp_, torch.clip_, _T.clamp_, _T.clip_)),
    c(torch.clamp, x4), c(torch.clamp, i23, 0, 1), c(torch.clamp_, i23, 0.5, 1),
]

DROPOUT = [
    c(F.dropout, x4, 0.5, True), c(F.dropout, x4t, 0.5, False), c(F.dropout, x4, 1.5), c(F.dropout, x4, -0.1, False),
    c(F.dropout1d, S(2, 8, 6), 0.5), c(F.dropout1d, x4, 0.5), c(F.dropout2d, x4, 0.5), c(F.dropout3d, S(2, 8, 3, 4, 4), 0.5),
    c(F.alpha_dropout, x4, 0.5, False), c(F.alpha_dropout, x4, 0.5, True), c(F.feature_alpha_dropout, x4, 0.5, False),
]

_BINARY = ("add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "eq", "ne", "lt", "le", "gt", "ge")
_DUNDERS = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__rdiv__",
            "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__matmul__")
BINARY = [
    *(c(getattr(owner, name), x4t, S(6)) for owner in (torch, _T) for name in _BINARY if hasattr(owner, name)),
    *(c(getattr(owner, name), x4, S(7)) for owner in (torch, _T) for name in _BINARY if hasattr(owner, name)),
    *(c(getattr(_T, name), x4cl, 2) for name in _DUNDERS if name != "__matmul__"),
    *(c(getattr(_T, name), x4, S(6, 6)) for name in _DUNDERS),
    *(c(getattr(_T, name), x4, S(2, 8, 1, 1)) for name in ("add_", "sub_", "mul_", "div_", "__iadd__", "__imul__")),
    *(c(getattr(_T, name), S(8, 1, 1), x4) for name in ("add_", "sub_", "mul_", "div_", "__iadd__", "__imul__")),
    c(torch.add, x4, x4, alpha=2), c(torch.add, i23, i23, alpha=0.5), c(torch.add, i23, 2.5), c(_T.add, h23, i23),
    c(_T.add, h23, S(2, 3, dtype=BF16)), c(_T.add, x4, torch.tensor(2.0)), c(_T.add, x4, "a"), c(_T.sub, b23, b23),
    c(torch.rsub, x4, x4, alpha=3), c(_T.__rsub__, i23, 1.5), c(_T.div, i23, 2, rounding_mode="floor"),
    c(_T.div, x4, 2, rounding_mode="up"), c(_T.add_, i23, 1.5), c(_T.div_, i23, 2), c(_T.div_, i23, 2, rounding_mode="floor"),
]

SOFTMAX = [
    *(c(fn, x4t, 1) for fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, _T.softmax, _T.log_softmax)),
    *(c(fn, x4, dim) for fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, _T.softmax, _T.log_softmax)
      for dim in (4, -5)),
    c(F.softmax, x4, -4), c(F.softmax, x4, 3, dtype=F64), c(F.log_softmax, S(), 0), c(F.softmax, S(), -1), c(F.softmax, S(), 1),
    c(torch.softmax, S(), -2), c(F.softmax, x4, 1.0), c(F.softmax, S(5), dim=1),
]

NORMS = [
    c(F.layer_norm, x4, (6,)), c(F.layer_norm, x4t, (6, 6), S(6, 6), S(6, 6)), c(torch.layer_norm, x4, [6], S(6), None, 1e-6),
    c(F.layer_norm, x4, (5,)), c(F.layer_norm, x4, (6,), S(5)), c(F.layer_norm, x4, (6,), S(6, dtype=F64)),
    c(F.layer_norm, S(2, 6, dtype=BF16), (6,), S(6), S(6)), c(F.layer_norm, S(2, 6, dtype=F16), (6,), S(6)),
    c(F.layer_norm, S(2, 6), (6,), S(6, dtype=BF16), S(6, dtype=BF16)), c(F.layer_norm, S(2, 6, dtype=BF16), (6,), S(6, dtype=BF16), S(6)),
    c(F.layer_norm, S(2, 6, dtype=BF16), (6,), None, S(6)), c(F.layer_norm, S(2, 6, dtype=F16), (6,), S(6, dtype=BF16)),
    c(F.layer_norm, S(2, 6, dtype=BF16), (6,), S(6, dtype=F64)), c(F.layer_norm, S(0, 6), (6,)),
    c(F.group_norm, x4, 4), c(F.group_norm, x4cl, 2, S(8), S(8)), c(torch.group_norm, x4, 2, None, None, 1e-5, False),
    c(F.group_norm, x4, 3), c(F.group_norm, x4, 4, S(4)), c(F.group_norm, x4, 4, S(8, dtype=F64)),
    c(F.group_norm, S(2, 8, 3, dtype=BF16), 2, S(8), S(8)), c(F.group_norm, S(2, 8, 3, dtype=F16), 2, S(8), S(8)),
    c(F.group_norm, S(2, 8, 3), 2, S(8, dtype=BF16), S(8, dtype=BF16)), c(F.group_norm, S(1, 4, 1, 1), 4),
    c(F.batch_norm, x4, S(8), S(8)), c(F.batch_norm, x4cl, S(8), S(8), S(8), S(8)), c(F.batch_norm, x4, None, None, training=True),
    c(F.batch_norm, x4, S(4), S(8)), c(F.batch_norm, x4, S(8), S(8), S(4)), c(F.batch_norm, x4, S(8, 1), S(8)),
    c(F.batch_norm, x4, S(8), S(1, 8)), c(F.batch_norm, x4, S(8, 1), S(8), training=True), c(F.batch_norm, x4, S(8), S(8), S(8, 1)),
    c(F.batch_norm, x4, S(8), S(8), S(1, 8)), c(F.batch_norm, x4, S(8), S(8, 1), S(8)), c(F.batch_norm, x4, None, None, S(8, 1), training=True),
    c(F.batch_norm, x4, S(8, dtype=F64), S(8, dtype=F64)), c(F.batch_norm, x4, S(8), S(8), S(8, dtype=F64)),
    c(F.batch_norm, S(2, 8, 3, dtype=BF16), S(8), S(8), S(8), S(8)), c(F.batch_norm, S(2, 8, 3, dtype=F16), S(8), S(8), S(8), S(8)),
    c(F.batch_norm, S(2, 8, 3, dtype=BF16), S(8), S(8), S(8, dtype=BF16), S(8, dtype=BF16)),
    c(F.batch_norm, S(2, 8, 3, dtype=F64), S(8), S(8), S(8), S(8)), c(F.batch_norm, S(2, 8, 3), S(8, dtype=F64), S(8, dtype=F64), None,
                                                                      None, True),
    c(F.batch_norm, S(1, 8), None, None, None, None, True), c(F.batch_norm, x4, S(8), S(8), eps=-1.0), c(F.batch_norm, S(2, 1, 3), S(), S()),
    c(F.instance_norm, x4), c(F.instance_norm, x4cl, S(8), S(8), S(8), S(8)), c(F.instance_norm, x4, weight=S(4)),
    c(F.instance_norm, S(2, 8)), c(F.instance_norm, S(2, 8, 1, 1)), c(F.instance_norm, x4, None, None, S(8, dtype=F64)),
    c(F.instance_norm, S(2, 8, 3), S(8, dtype=F64), S(8, dtype=F64)), c(F.instance_norm, S(2, 8, 3, dtype=BF16), None, None, S(8), S(8)),
    c(F.instance_norm, S(2, 8, 3, dtype=BF16), None, None, S(8), S(8, dtype=BF16)),
]

LINEAR = [
    c(F.linear, S(2, 6), S(4, 6), S(4)), c(F.linear, x4t, S(3, 6), S(3)), c(F.linear, S(6), S(4, 6), S(4)), c(F.linear, S(2, 6), S(4, 7)),
    c(F.linear, S(2, 6), S(4, 6), S(5)), c(F.linear, S(2, 6), S(4, 6), S(1)), c(F.linear, S(2, 6), S(4, 6), S(2, 4)),
    c(F.linear, S(2, 6), S(4, 6), S(3, 2, 4)), c(F.linear, S(2, 5, 6), S(4, 6), S(3, 2, 5, 4)), c(F.linear, S(2, 6), S(6)),
    c(F.linear, S(2, 6), S(4, 6, dtype=F64)), c(F.linear, S(2, 6, dtype=BF16), S(4, 6)), c(F.linear, S(), S(4, 6)),
    c(F.linear, S(2, 6), S(4, 6), S(4, dtype=F64)), c(F.linear, S(2, 5, 6), S(4, 6), S(4, dtype=F64)),
    c(F.linear, S(6), S(4, 6), S(4, dtype=F64)), c(F.linear, x4, S(4, 6), S(4, dtype=F64)), c(F.linear, x4t, S(4, 6), S(4, dtype=F64)),
    c(F.linear, S(3, 5, 6, layout="t"), S(4, 6), S(4, dtype=F64)), c(F.linear, S(0, 6), S(4, 6)),
]

MATMUL = [
    c(torch.matmul, x4, S(6, 5)), c(_T.matmul, x4t, S(8, 6, 3)), c(torch.matmul, S(3, 1, 4, 6), S(5, 6, 2)), c(torch.matmul, x4, S(5, 6)),
    c(torch.matmul, S(2, 6), S(6, 4, dtype=F64)), c(torch.matmul, S(6), S(6, dtype=F64)), c(torch.matmul, S(2, 3, 6), S(3, 6, 1)),
    c(torch.matmul, S(2, 6, dtype=I64), S(6, 4, dtype=I64)), c(torch.matmul, S(6), S(5)), c(torch.matmul, S(), S(5, 4)),
    c(torch.bmm, S(2, 3, 6), S(2, 6, 4)), c(torch.bmm, S(2, 3, 6), S(2, 5, 4)), c(torch.bmm, S(2, 3, 6), S(3, 6, 4)),
    c(torch.bmm, S(2, 3, 6), S(2, 6, 4, dtype=F64)), c(torch.bmm, S(3, 6), S(6, 4)),
    c(F.normalize, x4), c(F.normalize, x4t, 2.0, -1), c(F.normalize, x4, dim=4), c(F.normalize, x4, dim=-5), c(F.normalize, S(5), dim=0),
]

mha = F.multi_head_attention_forward
q3, q2, kv3, w_in, b_in, w_out, b_out = S(5, 3, 8), S(5, 8), S(7, 3, 8), S(24, 8), S(24), S(8, 8), S(8)
qt = S(3, 5, 8, layout="t")  # a batch-first query, transposed to (length, batch, embedding): not contiguous
ATTENTION = [
    c(mha, q3, q3, q3, 8, 2, w_in, b_in, None, None, False, 0.0, w_out, b_out),
    c(mha, q2, q2, q2, 8, 4, w_in, b_in, None, None, False, 0.0, w_out, b_out, need_weights=False),
    c(mha, q3, kv3, kv3, 8, 2, w_in, b_in, None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 6, 2, w_in, b_in, None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 8, 3, w_in, b_in, None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 8, 2, S(24, 6), b_in, None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 8, 2, w_in, S(20), None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 8, 2, w_in, b_in, None, None, False, 0.0, w_out, S(5)),
    c(mha, q3, q3, q3, 8, 2, S(24, 8, dtype=F64), b_in, None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 8, 2, w_in, S(24, dtype=F64), None, None, False, 0.0, w_out, b_out),
    c(mha, qt, qt, qt, 8, 2, w_in, S(24, dtype=F64), None, None, False, 0.0, w_out, b_out),
    c(mha, q3, q3, q3, 8, 2, w_in, b_in, None, None, False, 0.0, S(8, 8, dtype=F64), b_out),
    c(mha, q3, q3, q3, 8, 2, w_in, b_in, None, None, False, 0.0, w_out, S(8, dtype=F64), need_weights=False),
    c(mha, q3, q3, q3, 8, 2, w_in, b_in, None, None, False, 0.0, w_out, b_out, attn_mask=S(5, 4)),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(2, 4, 7, 8), S(2, 4, 7, 8)),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(2, 4, 7, 6), S(2, 4, 7, 8)),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(3, 4, 7, 8), S(3, 4, 7, 8)),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(2, 4, 7, 8, dtype=F64), S(2, 4, 7, 8)),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(2, 4, 7, 8), S(2, 4, 7, 8), S(5, 6)),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(2, 2, 7, 8), S(2, 2, 7, 8), enable_gqa=True),
    c(F.scaled_dot_product_attention, S(2, 4, 5, 8), S(2, 3, 7, 8), S(2, 3, 7, 8), enable_gqa=True),
    c(F.scaled_dot_product_attention, S(8), S(8), S(8)),
]

JOIN = [
    c(torch.cat, [x4, x4cl], 1), c(torch.concat, [S(3), S(4)]), c(torch.cat, [x4, S(2, 3, 6, 6)], 0), c(torch.cat, [x4, x4], 4),
    c(torch.cat, [S(), S()]), c(torch.cat, [S(2, 3), S()]), c(torch.cat, [S(0), S()]), c(torch.cat, [S(2, 3), S(0)]), c(torch.cat, []),
    c(torch.cat, [S(2, 3), S(2, 3, 1)]), c(torch.cat, [S(2, 3), S(2, 3, dtype=F64)]), c(torch.cat, [S(2, 3), S(0, 4)], 1),
    c(torch.stack, [x4, x4], 4), c(torch.stack, [x4, S(2, 8, 6, 5)]), c(torch.stack, [x4, x4], 5), c(torch.stack, [S(), S()], 1),
    c(torch.stack, [S(2, 3), S(2, 3, dtype=F64)]),
    c(torch.roll, x4t, (1, -1), (2, 3)), c(_T.roll, x4cl, 1), c(torch.roll, x4, 1, 4), c(torch.roll, x4, (1, 2), 1),
    c(_T.masked_fill, x4, S(2, 8, 6, 6, dtype=BOOL), 0.0), c(torch.masked_fill, S(8, 1, 1), S(2, 8, 6, 6, dtype=BOOL), 1.5),
    c(_T.masked_fill, x4, S(2, 8, 6, 6), 0.0), c(_T.masked_fill, x4, S(5, 6, dtype=BOOL), 0.0),
]

RESHAPE = [
    c(_T.view, x4, 16, -1), c(_T.view, x4, 5, -1), c(_T.view, x4, 2, -1, -1), c(_T.view, x4t, 16, -1), c(torch.reshape, x4t, (16, -1)),
    c(torch.reshape, x4, (5, -1)), c(torch.flatten, x4, 1), c(torch.flatten, x4, 3, 1), c(torch.flatten, x4, 1, 5),
    c(torch.flatten, S(), 0, 1), c(_T.permute, x4, (0, 2, 3, 1)), c(_T.permute, x4, (0, 0, 1, 2)), c(torch.transpose, x4, 1, 4),
    c(F.pad, x4, (1, 1)), c(F.pad, x4, (-1, -1)), c(F.pad, x4, (-4, -4)), c(F.pad, x4, (-3, -3)), c(F.pad, x4, (1, 1, 1)),
    c(F.pad, x4, (1,) * 10), c(F.pad, x4, (1, 1, 1, 1), mode="reflect"), c(F.pad, x4, (6, 6, 6, 6), mode="reflect"),
    c(F.pad, x4, (5, 5, 5, 5), mode="reflect"), c(F.pad, x4, (7, 7, 7, 7), mode="replicate"), c(F.pad, x4, (6, 6, 6, 6), mode="circular"),
    c(F.pad, x4, (7, 7, 7, 7), mode="circular"), c(F.pad, S(2, 8, 0, 6), (1, 1, 1, 1), mode="replicate"), c(F.pad, x4, (1, 1), mode="reflect"),
    c(F.pad, S(2, 8, 1), (1, 1), mode="reflect"), c(F.pad, x4, (1, 1), value=2.0),
]

w3 = S(4, 8, 3, 3)
CONV = [
    c(torch.conv2d, x4, w3, S(4)), c(torch.conv2d, x4cl, w3, None, 2, 1), c(torch.conv2d, x4t, S(8, 1, 3, 3), None, 1, 1, 1, 8),
    c(torch.conv2d, x4, w3, padding="same"), c(torch.conv2d, S(8, 6, 6), w3), c(torch.conv2d, S(0, 8, 6, 6), w3), c(torch.conv2d, S(2, 0, 6, 6), S(4, 0, 3, 3)),
    c(torch.conv2d, x4, w3, S(5)), c(torch.conv2d, x4, w3, S(4, 1)), c(torch.conv2d, x4, S(4, 8, 1, 1), S()),
    c(torch.conv2d, x4, S(6, 2, 3, 3), None, 1, 0, 1, 4), c(torch.conv2d, x4, S(6, 4, 3, 3), None, 1, 0, 1, 3),
    c(torch.conv2d, x4, S(6, 2, 3, 3), None, 1, 0, 1, 3), c(torch.conv2d, x4, S(0, 8, 3, 3)), c(torch.conv2d, x4, w3, groups=0),
    c(torch.conv2d, x4, w3, None, 1, -1), c(torch.conv2d, x4, w3, None, 1, (0, -1)), c(torch.conv2d, x4, w3, S(5), 1, -1),
    c(torch.conv2d, x4, w3, None, 0), c(torch.conv2d, x4, w3, None, (1, -1)), c(torch.conv2d, x4, w3, None, 1, 0, 0),
    c(torch.conv2d, x4, w3, None, 1, "same", 0), c(torch.conv2d, x4, w3, None, 2, "same"), c(torch.conv2d, x4, w3, padding="full"),
    c(torch.conv2d, x4, S(4, 8, 3, 3, dtype=F64)), c(torch.conv2d, S(2, 8, 6, 6, dtype=BF16), w3), c(torch.conv2d, x4, w3, S(4, dtype=F64)),
    c(torch.conv2d, x4, S(4, 8, 3, 3, dtype=F64), S(5)), c(torch.conv2d, x4, S(4, 7, 3, 3, dtype=F64)), c(torch.conv2d, x4, S(4, 8, 7, 7)),
    c(torch.conv2d, x4, S(4, 8, 7, 7), S(5)), c(torch.conv2d, x4, S(4, 7, 3, 3)), c(torch.conv2d, S(6, 6, 6), w3), c(torch.conv2d, S(6, 6), w3),
    c(torch.conv2d, x4, S(4, 8, 3)), c(torch.conv2d, S(2, 8, 6, 6, dtype=I64), S(4, 8, 3, 3, dtype=I64)),
    c(torch.conv1d, S(2, 8, 10), S(4, 8, 3), S(4)), c(torch.conv1d, S(2, 8, 10), S(4, 8, 3), S(5)), c(torch.conv1d, S(2, 8, 10), S(4, 8, 3), None, 1, -1),
    c(torch.conv3d, S(2, 8, 4, 6, 6), S(4, 8, 3, 3, 3)), c(torch.conv3d, S(2, 8, 4, 6, 6), S(6, 2, 1, 3, 3), None, 1, 0, 1, 4),
    c(torch.conv3d, S(2, 8, 4, 6, 6), S(4, 8, 3, 3, 3), None, 1, -1),
]

wt = S(8, 4, 3, 3)
CONV_TRANSPOSE = [
    c(torch.conv_transpose2d, x4, wt, S(4)), c(torch.conv_transpose2d, x4cl, wt, None, 2, 1, 1), c(torch.conv_transpose2d, S(8, 6, 6), wt),
    c(torch.conv_transpose2d, x4, S(8, 2, 3, 3), S(8), 1, 0, 0, 4), c(torch.conv_transpose2d, x4, wt, None, 1, 0, 1, 1, 2),
    c(torch.conv_transpose2d, x4, S(8, 2, 3, 3), S(2), 1, 0, 0, 4), c(torch.conv_transpose2d, x4, wt, S(5)),
    c(torch.conv_transpose2d, x4, wt, None, 1, 0, 0, 3), c(torch.conv_transpose2d, x4, wt, None, 1, 0, 0, 0),
    c(torch.conv_transpose2d, x4, S(6, 4, 3, 3)), c(torch.conv_transpose2d, S(6, 6, 6), wt), c(torch.conv_transpose2d, S(6, 6), wt),
    c(torch.conv_transpose2d, x4, wt, None, 1, 0, 1), c(torch.conv_transpose2d, x4, wt, None, 2, 0, 2),
    c(torch.conv_transpose2d, x4, wt, None, (2, 1), 0, (1, 1)), c(torch.conv_transpose2d, x4, wt, None, 2, 0, -1),
    c(torch.conv_transpose2d, x4, wt, None, 1, -1), c(torch.conv_transpose2d, x4, wt, None, 0), c(torch.conv_transpose2d, x4, wt, None, 1, 0, 0, 1, 0),
    c(torch.conv_transpose2d, x4, S(8, 4, 3, 3, dtype=F64)), c(torch.conv_transpose2d, x4, wt, S(4, dtype=F64)),
    c(torch.conv_transpose2d, x4, wt, None, 1, 5), c(torch.conv_transpose2d, x4, S(8, 4, 3)),
    c(torch.conv_transpose1d, S(2, 8, 6), S(8, 4, 3), S(4), 2), c(torch.conv_transpose1d, S(2, 8, 6), S(6, 4, 3)),
    c(torch.conv_transpose3d, S(2, 8, 3, 6, 6), S(8, 4, 3, 3, 3), S(4)), c(torch.conv_transpose3d, S(2, 8, 3, 6, 6), S(8, 4, 3, 3, 3), S(5)),
]

POOLS = [
    c(F.max_pool2d, x4, 3, 2, 1), c(F.max_pool2d, x4cl, 2, return_indices=True), c(F.max_pool2d_with_indices, x4t, 2),
    c(torch.max_pool2d, x4, 2), c(F.max_pool2d, S(2, 8, 5, 5), 2, 2, 1, ceil_mode=True), c(F.max_pool2d, x4, 7), c(F.max_pool2d, x4, 3, 1, 2),
    c(F.max_pool2d, S(2, 8, 0, 6), 2), c(F.max_pool2d, S(0, 8, 6, 6), 2), c(F.max_pool2d, S(2, 0, 6, 6), 2), c(F.max_pool2d, S(1, 2, 8, 6, 6), 2),
    c(F.max_pool2d, x4, 2, -1), c(F.max_pool2d, x4, 2, dilation=0), c(F.max_pool2d, S(2, 8, 6, 6, dtype=I64), 2),
    c(F.max_pool1d, S(2, 8, 10), 3), c(F.max_pool1d_with_indices, S(2, 8, 10), 2), c(torch.max_pool1d, S(8, 10), 3, 2, 1),
    c(F.max_pool1d, S(2, 8, 0), 2), c(F.max_pool1d, S(2, 8, 2), 3), c(F.max_pool3d, S(2, 8, 4, 6, 6), 2),
    c(F.max_pool3d_with_indices, S(2, 8, 4, 6, 6), 2, 1, 1), c(torch.max_pool3d, S(2, 8, 4, 6, 6), 2), c(F.max_pool3d, S(2, 8, 0, 6, 6), 2),
    c(F.avg_pool2d, x4, 3, 2, 1, True, False), c(F.avg_pool2d, x4, 7), c(F.avg_pool2d, x4, 7, 1, 1), c(F.avg_pool2d, x4, 3, 1, 2),
    c(F.avg_pool2d, S(2, 8, 0, 6), 2), c(F.avg_pool2d, S(0, 8, 6, 6), 2), c(F.avg_pool2d, x4, 2, divisor_override=0),
    c(torch._C._nn.avg_pool2d, x4cl, 2), c(F.avg_pool1d, S(2, 8, 10), 3), c(F.avg_pool1d, S(2, 0, 6), 2),
    c(F.avg_pool3d, S(2, 8, 5, 5, 5), 2, 2, 1, True), c(torch._C._nn.avg_pool3d, S(2, 8, 4, 6, 6), 2), c(F.avg_pool3d, S(2, 8, 0, 6, 6), 2),
    c(F.lp_pool2d, x4, 2, 7), c(F.lp_pool2d, x4, 2, 2),
]

ADAPTIVE = [
    c(F.adaptive_avg_pool2d, x4cl, 2), c(F.adaptive_avg_pool2d, x4, (None, 3)), c(torch._C._nn.adaptive_avg_pool2d, x4t, [2, 2]),
    *(c(F.adaptive_avg_pool2d, S(*shape), size) for shape in ((2, 8, 0, 6), (2, 8, 6, 0), (2, 0, 6, 6), (0, 8, 6, 6), (0, 6, 6), (6, 6),
                                                               (1, 2, 8, 6, 6)) for size in (1, 2, (1, 2), (None, 2))),
    c(F.adaptive_avg_pool2d, x4, 0), c(F.adaptive_avg_pool2d, x4, -1), c(F.adaptive_avg_pool2d, x4, (1, 2, 3)),
    c(torch._C._nn.adaptive_avg_pool2d, S(2, 8, 0, 6), [2, 2]), c(torch._C._nn.adaptive_avg_pool2d, S(2, 8, 0, 6), [1, 1]),
    *(c(F.adaptive_avg_pool1d, S(*shape), size) for shape in ((2, 8, 10), (2, 8, 0), (2, 0, 6), (8, 0), (8,)) for size in (1, 2)),
    *(c(F.adaptive_avg_pool3d, S(*shape), size) for shape in ((2, 8, 4, 6, 6), (2, 8, 0, 6, 6), (2, 0, 4, 6, 6), (0, 8, 4, 6, 6),
                                                               (0, 4, 6, 6), (8, 0, 6, 6), (6, 6, 6)) for size in (1, 2, (None, 1, 1))),
    c(torch._C._nn.adaptive_avg_pool3d, S(2, 8, 0, 6, 6), [1, 2, 2]),
    *(c(F.adaptive_max_pool2d, S(*shape), size) for shape in ((2, 8, 6, 6), (2, 8, 0, 6), (2, 0, 6, 6), (0, 8, 6, 6), (6, 6))
      for size in (1, 2)),
    c(F.adaptive_max_pool2d, x4cl, (2, 3), True), c(F.adaptive_max_pool2d, x4, (None, 2)), c(F.adaptive_max_pool1d, S(2, 8, 10), 3),
    c(F.adaptive_max_pool1d, S(2, 8, 0), 2), c(F.adaptive_max_pool3d, S(2, 8, 4, 6, 6), 2), c(F.adaptive_max_pool3d, S(2, 8, 0, 6, 6), 2),
    c(F.adaptive_max_pool1d_with_indices, S(2, 8, 10), 3), c(F.adaptive_max_pool2d_with_indices, x4cl, (None, 2)),
    c(F.adaptive_max_pool3d_with_indices, S(2, 8, 4, 6, 6), 2),
]

_SHAPES = {1: [(2, 8, 6), (2, 0, 6), (0, 8, 6), (2, 8, 0)], 2: [(2, 8, 6, 6), (2, 0, 6, 6), (0, 8, 6, 6), (2, 8, 0, 6)],
           3: [(2, 8, 4, 6, 6), (2, 0, 4, 6, 6), (0, 8, 4, 6, 6), (2, 8, 0, 6, 6)]}
_MODE_DIMS = {"nearest": (1, 2, 3), "nearest-exact": (2,), "area": (1, 2, 3), "linear": (1,), "bilinear": (2,), "bicubic": (2,),
              "trilinear": (3,)}
RESAMPLE = [
    *(c(F.interpolate, S(*shape), size=size, mode=mode) for mode, dims in _MODE_DIMS.items() for n in dims for shape in _SHAPES[n]
      for size in ((3,) * n, (1,) * n, (0,) + (3,) * (n - 1))),
    *(c(F.interpolate, S(*shape), size=(3, 3), mode=mode, antialias=True) for mode in ("bilinear", "bicubic") for shape in _SHAPES[2]),
    c(F.interpolate, x4cl, scale_factor=2), c(F.interpolate, x4t, scale_factor=0.5, mode="bilinear"), c(F.interpolate, x4, scale_factor=0.1),
    c(F.interpolate, x4, scale_factor=0.1, mode="bilinear"), c(F.interpolate, x4, scale_factor=0.1, mode="area"),
    c(F.interpolate, x4, scale_factor=-1), c(F.interpolate, x4, scale_factor=-1, mode="area"), c(F.interpolate, x4, size=(-1, 4)),
    c(F.interpolate, x4, scale_factor=1.5, recompute_scale_factor=True), c(F.interpolate, x4, scale_factor=2, mode="linear"),
    c(F.interpolate, x4, size=4, scale_factor=2), c(F.interpolate, x4, size=(4, 4, 4)), c(F.interpolate, S(6), scale_factor=2),
    c(F.interpolate, x4, scale_factor=2, align_corners=True), c(F.interpolate, S(2, 8, 6), size=3, mode="linear", antialias=True),
    c(F.interpolate, S(2, 8, 6, 6, dtype=torch.uint8), scale_factor=2, mode="bilinear"), c(F.interpolate, x4, size=(100, 4), mode="bicubic"),
    c(F.grid_sample, x4, S(2, 5, 7, 2), align_corners=True), c(F.grid_sample, x4cl, S(2, 5, 7, 2), "nearest", "border", False),
    c(F.grid_sample, x4, S(2, 5, 7, 2)), c(F.grid_sample, S(2, 8, 3, 4, 4), S(2, 2, 5, 7, 3), align_corners=True),
    c(F.grid_sample, x4, S(2, 5, 7, 2, dtype=F64), align_corners=True), c(F.grid_sample, x4, S(2, 5, 7, 2, dtype=BF16), align_corners=True),
    c(F.grid_sample, S(2, 8, 6, 6, dtype=F64), S(2, 5, 7, 2), align_corners=True), c(F.grid_sample, x4, S(2, 5, 7, 2, dtype=F64)),
    c(F.grid_sample, S(2, 8, 3, 6, 6), S(2, 2, 5, 7, 3, dtype=F64), align_corners=True), c(F.grid_sample, S(2, 8, 0, 6), S(2, 5, 7, 2)),
    c(F.grid_sample, S(2, 8, 6, 0), S(2, 5, 7, 2), align_corners=True), c(F.grid_sample, S(2, 8, 0, 6, 6), S(2, 2, 5, 7, 3), align_corners=True),
    c(F.grid_sample, S(2, 0, 6, 6), S(2, 5, 7, 2), align_corners=True), c(F.grid_sample, S(0, 8, 6, 6), S(0, 5, 7, 2), align_corners=True),
    c(F.grid_sample, x4, S(2, 0, 7, 2), align_corners=True), c(F.grid_sample, x4, S(3, 5, 7, 2), align_corners=True),
    c(F.grid_sample, x4, S(3, 5, 7, 2, dtype=F64), align_corners=True), c(F.grid_sample, S(2, 8, 0, 6), S(2, 5, 7, 2, dtype=F64)),
    c(F.grid_sample, x4, S(2, 5, 7, 3), align_corners=True), c(F.grid_sample, x4, S(2, 5, 7, 1, 2), align_corners=True),
    c(F.grid_sample, S(2, 8, 3, 4, 4), S(2, 2, 5, 7, 3), "bicubic", align_corners=True), c(F.grid_sample, x4, S(2, 5, 7, 2), "cubic"),
]

EMBEDDING = [
    c(F.embedding, S(2, 3, dtype=I64), S(10, 4)), c(F.embedding, S(2, 3, dtype=I32), S(10, 4, layout="t")),
    c(F.embedding, S(dtype=I64), S(10, 4)), c(F.embedding, S(2, 3, dtype=I64), S(10, 4), 0), c(F.embedding, S(2, 3, dtype=I64), S(10, 4), -10),
    c(F.embedding, S(2, 3, dtype=I64), S(10, 4), 12), c(F.embedding, S(2, 3, dtype=I64), S(10, 4), -11), c(F.embedding, S(2, 3), S(10, 4)),
    c(F.embedding, S(2, 3, dtype=BOOL), S(10, 4)), c(F.embedding, S(2, 3, dtype=I64), S(10)), c(F.embedding, S(2, 3, dtype=I64), S(10, 4, 2)),
    c(F.embedding, S(2, 3, dtype=I64), S(0, 4)), c(F.embedding, S(0, dtype=I64), S(0, 4)), c(F.embedding, S(2, 3, dtype=I64), S(10, 4), 0),
    c(torch.embedding, S(10, 4), S(2, 3, dtype=I64)), c(torch.embedding, S(10, 4), S(2, 3, dtype=I64), 1, False, True),
    c(torch.embedding, S(10), S(2, 3, dtype=I64)), c(torch.embedding, S(0, 4), S(2, 3, dtype=I64)),
]

CASES = (UNARY + DROPOUT + BINARY + SOFTMAX + NORMS + LINEAR + MATMUL + ATTENTION + JOIN + RESHAPE + CONV + CONV_TRANSPOSE + POOLS
         + ADAPTIVE + RESAMPLE + EMBEDDING)


@pytest.mark.parametrize(("fn", "args", "kwargs"), UNARY + DROPOUT + BINARY)
def test_elementwise_ops_raise_on_meta_exactly_when_on_cpu(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check(fn, args, kwargs)


@pytest.mark.parametrize(("fn", "args", "kwargs"), SOFTMAX + NORMS + LINEAR + MATMUL + ATTENTION)
def test_softmax_norms_products_and_attention_raise_on_meta_exactly_when_on_cpu(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    _check(fn, args, kwargs)


@pytest.mark.parametrize(("fn", "args", "kwargs"), JOIN + RESHAPE + EMBEDDING)
def test_joins_reshapes_padding_and_embedding_raise_on_meta_exactly_when_on_cpu(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    _check(fn, args, kwargs)


@pytest.mark.parametrize(("fn", "args", "kwargs"), CONV + CONV_TRANSPOSE + POOLS + ADAPTIVE)
def test_convolution_and_pooling_raise_on_meta_exactly_when_on_cpu(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check(fn, args, kwargs)


@pytest.mark.parametrize(("fn", "args", "kwargs"), RESAMPLE)
def test_interpolate_and_grid_sample_raise_on_meta_exactly_when_on_cpu(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check(fn, args, kwargs)


def test_every_rule_has_a_differential_case() -> None:
    covered = {case.values[0] for case in CASES}
    assert [getattr(fn, "__qualname__", repr(fn)) for fn in RULES if fn not in covered] == []


def test_the_comparison_sees_a_meta_op_that_passes_where_the_cpu_op_raises() -> None:
    """The harness itself: ``torch.mm`` has no rule, and its meta kernel takes two dtypes."""
    with pytest.raises(AssertionError, match="expected m1 and m2 to have the same dtype"):
        _check(torch.mm, (S(2, 6), S(6, 4, dtype=F64)), {})


# --- the messages name the shapes ------------------------------------------------------------


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


MESSAGES: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: torch.conv2d(_meta(2, 8, 6, 6), _meta(4, 8, 3, 3), _meta(5)), RuntimeError,
     r"^Given groups=1, weight of size \[4, 8, 3, 3\], expected bias to be 1-dimensional with 4 elements, but got bias of size \[5\] instead$"),
    (lambda: torch.conv2d(_meta(2, 8, 6, 6), _meta(6, 2, 3, 3), groups=4), RuntimeError,
     r"^Given groups=4, expected weight to be divisible by 4 at dimension 0, but got weight of size \[6, 2, 3, 3\] instead$"),
    (lambda: torch.conv2d(_meta(2, 8, 6, 6), _meta(4, 8, 3, 3), padding=-1), RuntimeError, r"^negative padding is not supported$"),
    (lambda: torch.conv2d(_meta(2, 8, 6, 6), _meta(4, 8, 3, 3, dtype=F64)), RuntimeError,
     r"^Input type \(torch\.float32\) and weight type \(torch\.float64\) should be the same$"),
    (lambda: torch.conv_transpose2d(_meta(8, 6, 6), _meta(6, 4, 3, 3)), RuntimeError,
     r"^Given transposed=1, weight of size \[6, 4, 3, 3\], expected input\[1, 8, 6, 6\] to have 6 channels, but got 8 channels instead$"),
    (lambda: torch.conv_transpose2d(_meta(2, 8, 6, 6), _meta(8, 4, 3, 3), stride=2, output_padding=2), RuntimeError,
     r"^output padding must be smaller than either stride or dilation, but got output_padding=\[2, 2\], stride=\[2, 2\] and "
     r"dilation=\[1, 1\]$"),
    (lambda: F.softmax(_meta(2, 8, 6, 6), dim=4), IndexError, r"^Dimension out of range \(expected to be in range of \[-4, 3\], but got 4\)$"),
    (lambda: F.adaptive_avg_pool2d(_meta(2, 8, 0, 6), 2), RuntimeError,
     r"^adaptive_avg_pool2d\(\): Expected input to have non-zero size for non-batch dimensions, but input has sizes \[2, 8, 0, 6\] "
     r"with dimension 2 being empty$"),
    (lambda: F.interpolate(_meta(2, 8, 0, 6), size=(3, 3), mode="bilinear"), RuntimeError,
     r"^Input and output sizes should be greater than 0, but got input \[0, 6\] and output \[3, 3\]$"),
    (lambda: F.interpolate(_meta(2, 0, 6, 6), size=(3, 3), mode="bilinear"), RuntimeError,
     r"^Non-empty 4D data tensor expected but got a tensor with sizes \[2, 0, 6, 6\]$"),
    (lambda: F.grid_sample(_meta(2, 8, 6, 6), _meta(2, 5, 7, 2, dtype=F64), align_corners=True), RuntimeError,
     r"^grid_sampler\(\): expected grid to have the input's dtype torch\.float32, but got grid of dtype torch\.float64$"),
    (lambda: F.grid_sample(_meta(2, 8, 0, 6), _meta(2, 5, 7, 2), align_corners=True), RuntimeError,
     r"^grid_sampler\(\): expected input to have non-empty spatial dimensions, but input has sizes \[2, 8, 0, 6\] with dimension 2 "
     r"being empty$"),
    (lambda: F.linear(_meta(2, 6), _meta(4, 6, dtype=F64)), RuntimeError,
     r"^expected m1 and m2 to have the same dtype, but got: torch\.float32 != torch\.float64$"),
    (lambda: F.linear(_meta(2, 6), _meta(4, 6), _meta(3, 2, 4)), RuntimeError,
     r"^linear\(\): expected bias to broadcast to the output of size \[2, 4\], but got bias of size \[3, 2, 4\]$"),
    (lambda: F.layer_norm(_meta(2, 6), (6,), _meta(6, dtype=BF16)), RuntimeError,
     r"^layer_norm\(\): mixed dtype \(CPU\): expected the parameters to be torch\.float32 like the input \(or float32 for a float16 or "
     r"bfloat16 input\), but got input of dtype torch\.float32 and parameters of dtypes torch\.bfloat16$"),
    (lambda: F.batch_norm(_meta(2, 8, 6, 6), _meta(8, 1), _meta(8)), RuntimeError,
     r"^batch_norm\(\): expected running_mean to be 1-dimensional with 8 elements, but got running_mean of size \[8, 1\]$"),
    (lambda: torch.cat([_meta(2, 3), _meta()]), RuntimeError, r"^zero-dimensional tensor \(at position 1\) cannot be concatenated$"),
    (lambda: F.embedding(torch.empty(2, 3, dtype=I64, device="meta"), _meta(0, 4)), RuntimeError,
     r"^index_select\(\): self indexing axis dim should be positive, but the weight of size \[0, 4\] has no rows for indices of size "
     r"\[2, 3\]$"),
]


@pytest.mark.parametrize(("call", "error", "message"), MESSAGES, ids=[m[2][1:40] for m in MESSAGES])
def test_a_refused_call_says_what_was_wrong_with_its_shapes(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with torch.no_grad(), MetaShortcuts(), pytest.raises(error, match=message):
        call()


# --- whole models: surgery.check reports what the first real forward would raise -------------


def _resnet(**changes: nn.Module) -> nn.Module:
    """A 10-class resnet18 with the named top-level children replaced."""
    model = build("resnet18", num_classes=10)
    for name, module in changes.items():
        setattr(model, name, module)
    return model


#: (what is wrong, model, the finding's paths, words of its message)
DEFECTS = [
    ("a softmax over a dim the logits do not have", lambda: _resnet(fc=nn.Sequential(nn.Linear(512, 10), nn.Softmax(dim=2))),
     ("fc.0", "fc.1"), "fc.1 (Softmax) raised IndexError when fed 2×10 from fc.0 (Linear): Dimension out of range "
                       "(expected to be in range of [-2, 1], but got 2)"),
    ("a stem convolution with negative padding", lambda: _resnet(conv1=nn.Conv2d(3, 64, 7, 2, padding=-1, bias=False)),
     ("conv1",), "conv1 (Conv2d) raised RuntimeError when fed 2×3×320×320: negative padding is not supported"),
    ("a head left in float64", lambda: _resnet(fc=nn.Linear(512, 10).double()),
     ("layer4", "fc"), "fc (Linear) raised RuntimeError when fed 2×512 from layer4 (Sequential): expected m1 and m2 to have the "
                       "same dtype, but got: torch.float32 != torch.float64"),
    ("an upsampling to an empty map", lambda: _resnet(avgpool=nn.Sequential(nn.Upsample(scale_factor=0.01, mode="bilinear"),
                                                                            nn.AdaptiveAvgPool2d(1))),
     ("layer4", "avgpool.0"), "avgpool.0 (Upsample) raised RuntimeError when fed 2×512×10×10 from layer4 (Sequential): Input and "
                              "output sizes should be greater than 0, but got input [10, 10] and output [0, 0]"),
    ("a transposed conv whose output padding is not below its stride",
     lambda: _resnet(avgpool=nn.Sequential(nn.ConvTranspose2d(512, 512, 3, output_padding=1), nn.AdaptiveAvgPool2d(1))),
     ("layer4", "avgpool.0"), "avgpool.0 (ConvTranspose2d) raised RuntimeError when fed 2×512×10×10 from layer4 (Sequential): "
                              "output padding must be smaller than either stride or dilation, but got output_padding=[1, 1], "
                              "stride=[1, 1] and dilation=[1, 1]"),
]


@pytest.mark.parametrize(("make", "paths", "message"), [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
def test_check_reports_a_defect_only_a_real_forward_would_show(make: Callable[[], nn.Module], paths: tuple[str, ...], message: str) -> None:
    model = make()
    with pytest.raises((RuntimeError, IndexError)):  # the defect is real: the first CPU forward raises
        model.eval()(torch.rand(1, 3, 64, 64))
    report = check(model)
    assert not report.ok
    assert [(f.severity, f.code, f.paths, f.message) for f in report.findings] == [("error", "shape-error", paths, message)]


def test_check_passes_the_same_layers_used_rightly() -> None:
    model = _resnet(fc=nn.Sequential(nn.Linear(512, 10), nn.LogSoftmax(dim=1)),
                    avgpool=nn.Sequential(nn.ConvTranspose2d(512, 512, 3, stride=2, output_padding=1), nn.AdaptiveAvgPool2d(1)))
    assert tuple(model.eval()(torch.rand(1, 3, 64, 64)).shape) == (1, 10)
    report = check(model)
    assert report.ok
    assert report.findings == []
