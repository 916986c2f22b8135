"""Contract helpers shared by the families: what flows between slots, and whether the consumer takes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from surgery import paths
from surgery._util import first_line
from surgery.anatomy._base import PROBE_BATCH, Context, is_stock
from surgery.findings import Finding, Severity
from surgery.signature import Signature, input_signature, output_signature

__all__ = ["Flow", "feed", "finding", "looks_like_shape", "pool_size"]

def finding(severity: Severity, code: str, paths_: Sequence[str], message: str, fix: str | None = None) -> Finding:
    return Finding(severity, code, tuple(paths_), message, fix)


@dataclass
class Flow:
    """What flows out of a producer: a shape without the batch/RoI dimension, or only a width."""

    shape: tuple[int, ...] | None  # e.g. (256, 14, 14) or (1024,)
    width: int | None  # channels (dim 1) or features

    def describe(self) -> str:
        if self.shape and len(self.shape) > 1:
            return "×".join(map(str, self.shape))
        return str(self.width)


def feed(
    ctx: Context,
    producer: str,
    flow: Flow,
    consumer: str,
    *,
    fix: str | None,
    what: str = "channels",
) -> tuple[list[Finding], Flow | None]:
    """Check that ``consumer`` accepts what ``producer`` emits, and work out what it emits.

    Stock torchvision/torch modules are read statically. A user's own module is confirmed
    with a meta-device probe, whose success overrides a static reading that disagrees.

    Returns:
        The findings, and the consumer's output flow (None when it could not be determined).
    """
    module = ctx.get(consumer)
    in_sig = input_signature(module)
    findings: list[Finding] = []
    stock = is_stock(module)

    expected: int | None = None
    if in_sig is not None and flow.width is not None:
        if in_sig.kind == "features" and flow.shape is not None and len(flow.shape) > 1:
            expected = int(torch.Size(flow.shape).numel())
        else:
            expected = flow.width

    static_mismatch = in_sig is not None and expected is not None and in_sig.size != expected

    if stock:
        if static_mismatch:
            assert in_sig is not None
            findings.append(_mismatch(producer, flow, consumer, module, in_sig, expected, fix))
            return findings, None
        if flow.shape is None:  # nothing to run it on: the static reading is all there is
            out_sig = output_signature(module)
            return findings, (Flow((out_sig.size,), out_sig.size) if out_sig is not None else None)
        # a stock class can hold an edited layer (a conv swapped or sliced inside a head): its
        # first and last layers are not the whole story, so it runs on meta like any module

    if flow.shape is None:
        if static_mismatch:
            assert in_sig is not None
            findings.append(_mismatch(producer, flow, consumer, module, in_sig, expected, fix))
        return findings, None

    result = ctx.probe(consumer, (PROBE_BATCH, *flow.shape))
    if result.ok:
        return findings, _flow_of(result.output)
    if result.inconclusive:
        if static_mismatch:
            assert in_sig is not None
            findings.append(_mismatch(producer, flow, consumer, module, in_sig, expected, fix))
        return findings, None
    if static_mismatch:
        assert in_sig is not None
        findings.append(_mismatch(producer, flow, consumer, module, in_sig, expected, fix))
    else:
        where = paths.join(consumer, result.where)
        findings.append(
            finding(
                "error",
                "channel-mismatch" if looks_like_shape(result.error) else "shape-error",
                (producer, consumer),
                f"{consumer} ({type(module).__name__}) raised when fed {producer}'s output "
                f"of {_describe_input(flow, what)}: {type(result.error).__name__} in {where}: {first_line(result.error)}",
                fix,
            )
        )
    return findings, None


def _describe_input(flow: Flow, what: str) -> str:
    if flow.shape is not None and len(flow.shape) > 1:
        return f"shape {flow.describe()}"
    return f"{flow.describe()} {what}"


def _flow_of(output: Any) -> Flow | None:
    if isinstance(output, torch.Tensor) and output.dim() >= 2:
        return Flow(tuple(int(s) for s in output.shape[1:]), int(output.shape[1]))
    return None


def looks_like_shape(error: BaseException | None) -> bool:
    """True when an exception's text is about channels, shapes or sizes (a mismatch, not another bug)."""
    text = str(error).lower()
    # CPU kernels say "mat1 and mat2 shapes", meta kernels "must have same reduction dim"
    return any(k in text for k in ("channel", "shape", "size", "mat1 and mat2", "reduction dim", "dimension"))


def _mismatch(
    producer: str, flow: Flow, consumer: str, module: nn.Module, in_sig: Signature, expected: int | None, fix: str | None
) -> Finding:
    layer = paths.join(consumer, in_sig.source)
    produced = f"{flow.describe()} = {expected}" if expected != flow.width and flow.shape else f"{expected}"
    unit = "features" if in_sig.kind == "features" else "channels"
    return finding(
        "error",
        "channel-mismatch",
        (producer, consumer),
        f"{producer} produces {produced} {unit} but {consumer} ({type(module).__name__}) expects "
        f"{in_sig.size} (in {layer})",
        fix,
    )


def pool_size(value: object) -> tuple[int, int] | None:
    """An RoI pooler's ``output_size`` (an int or a pair) as ``(h, w)``, or None when it is neither."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None
