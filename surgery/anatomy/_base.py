"""Building blocks of an anatomy: slots, contracts and the context they run in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from surgery import paths
from surgery.findings import Finding, Severity
from surgery.signature import ProbeResult, Signature, input_signature, meta_like, meta_probe, output_signature

__all__ = ["Slot", "Contract", "Context", "Features", "Anatomy", "is_stock", "feed", "PROBE_BATCH"]

#: Batch (or RoI count) of meta probes: 2, so BatchNorm in train mode accepts 1×1 maps.
PROBE_BATCH = 2


@dataclass(frozen=True)
class Slot:
    """A swappable component of a model family.

    Attributes:
        path: Dotted path of the slot.
        role: What it does, e.g. ``"mask head: RoI features → mask features"``.
        accepts: What may replace it.
        optional: True for slots a model may leave empty (e.g. the mask triple).
    """

    path: str
    role: str
    accepts: str = "any nn.Module with the same inputs and outputs"
    optional: bool = False


@dataclass(frozen=True)
class Contract:
    """Something two (or more) slots must agree on.

    Attributes:
        name: Short description, e.g. ``"mask head → mask predictor channels"``.
        paths: The slots it reads, producer first. A contract runs only when all exist.
        run: Produces findings for a model, given the shared :class:`Context`.
    """

    name: str
    paths: tuple[str, ...]
    run: Callable[[Context], Iterable[Finding]]


def is_stock(module: nn.Module) -> bool:
    """True when ``module`` and everything inside it are torch / torchvision classes.

    Only then can its static signature be trusted as is: a stock container (``nn.Sequential``)
    holding a user's block runs that block's code, which needs a probe.
    """
    return all(type(m).__module__.startswith(("torchvision.", "torch.")) for m in module.modules())


@dataclass
class Features:
    """The feature maps a backbone produces.

    Attributes:
        names: Output keys in order.
        channels: Channels per key (None when unknown).
        source: ``"static"`` (read from known modules) or ``"probe"`` (meta-device run).
        shapes: Full per-key shapes (batch 1) when a probe ran.
    """

    names: list[str]
    channels: dict[str, int | None]
    source: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def common_channels(self) -> int | None:
        """The channel count shared by every map, or None when they differ or are unknown."""
        values = set(self.channels.values())
        if len(values) == 1:
            (only,) = values
            return only
        return None


class Context:
    """Shared, cached state for one ``check`` run over one model.

    Contracts read the model through it so that probes run at most once each.
    """

    def __init__(self, model: nn.Module, *, probe_image_size: int = 320) -> None:
        self.model = model
        self.probe_image_size = probe_image_size
        self._probes: dict[Any, ProbeResult] = {}
        self.cache: dict[str, Any] = {}

    def has(self, path: str) -> bool:
        return paths.exists(self.model, path)

    def get(self, path: str) -> nn.Module:
        return paths.get(self.model, path)

    def probe(self, path: str, *shapes: tuple[int, ...]) -> ProbeResult:
        """Meta-probe the module at ``path`` with inputs of the given shapes (cached)."""
        key = (path, shapes)
        if key not in self._probes:
            module = self.get(path)
            self._probes[key] = meta_probe(module, *(meta_like(s) for s in shapes))
        return self._probes[key]

    def probe_with(self, path: str, key: str, *args: Any) -> ProbeResult:
        """Meta-probe with arbitrary (meta) arguments, cached under ``key``."""
        full = (path, key)
        if full not in self._probes:
            self._probes[full] = meta_probe(self.get(path), *args)
        return self._probes[full]


class Anatomy:
    """Knowledge of one model family. Subclasses live one per file in :mod:`surgery.anatomy`."""

    #: Family name shown to users, e.g. ``"R-CNN"``.
    name: str = "generic"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """True when this anatomy describes ``model``."""
        raise NotImplementedError

    def slots(self, model: nn.Module) -> list[Slot]:
        """The family's slots that are present in ``model``, in data-flow order."""
        return [s for s in self.declared_slots(model) if paths.exists(model, s.path)]

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        """Every slot the family knows, present or not."""
        raise NotImplementedError

    def contracts(self, model: nn.Module) -> list[Contract]:
        """The contracts between this model's slots."""
        return []

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        """Static data-flow edges ``(producer, consumer)`` between the family's slots."""
        return []

    def flow(self, model: nn.Module) -> list[tuple[str, str]]:
        """The declared flow restricted to the slots present in ``model``.

        Where a slot is absent, its producers are connected to its consumers, so that an
        opaque ``backbone`` still feeds the heads.
        """
        present = {s.path for s in self.slots(model)}
        edges = self.declared_flow(model)
        out: list[tuple[str, str]] = []

        def targets(node: str, seen: frozenset[str]) -> list[str]:
            if node in present:
                return [node]
            found: list[str] = []
            for a, b in edges:
                if a == node and b not in seen:
                    found += targets(b, seen | {b})
            return found

        for a, b in edges:
            if a not in present:
                continue
            for t in targets(b, frozenset({b})):
                if (a, t) not in out and a != t:
                    out.append((a, t))
        return out

    def signatures(self, model: nn.Module, path: str) -> tuple[Signature | None, Signature | None]:
        """Static (input, output) signature of a slot; families override ambiguous ones.

        Multi-scale modules get one width per feature map: an ``IntermediateLayerGetter``
        body outputs the width of each returned layer, an FPN takes one per inner block.
        """
        module = paths.get(model, path)
        in_sig, out_sig = input_signature(module), output_signature(module)
        if isinstance(module, IntermediateLayerGetter):
            widths = []
            for name, child in module.named_children():
                if name in module.return_layers:
                    sig = output_signature(child)
                    widths.append(int(sig.size) if sig is not None and isinstance(sig.size, int) else 0)
            out_sig = Signature("channels", tuple(widths), "return_layers")
        elif isinstance(module, FeaturePyramidNetwork):
            ins = [input_signature(b) for b in module.inner_blocks]
            in_sig = Signature("channels", tuple(int(s.size) if s and isinstance(s.size, int) else 0 for s in ins), "inner_blocks")
            out_sig = output_signature(module.layer_blocks[0]) if len(module.layer_blocks) else None
        return in_sig, out_sig

    def features(self, ctx: Context) -> Features | None:
        """The backbone's feature maps, when the family has a backbone."""
        return None


# --------------------------------------------------------------------------- shared contract helpers


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

    static_mismatch = in_sig is not None and expected is not None and int(in_sig.size) != expected  # type: ignore[arg-type]

    out: Flow | None = None
    if stock:
        if static_mismatch:
            assert in_sig is not None
            findings.append(_mismatch(producer, flow, consumer, module, in_sig, expected, fix))
            return findings, None
        out_sig = output_signature(module)
        if flow.shape is not None and in_sig is not None and in_sig.kind == "channels" and len(flow.shape) > 1 and out_sig is not None:
            out = Flow((int(out_sig.size), *flow.shape[1:]), int(out_sig.size)) if out_sig.kind == "channels" else Flow((int(out_sig.size),), int(out_sig.size))  # type: ignore[arg-type]
        elif out_sig is not None:
            out = Flow((int(out_sig.size),), int(out_sig.size))  # type: ignore[arg-type]
        return findings, out

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


def first_line(error: BaseException | None) -> str:
    """The first line of an exception's text, or its type name when it has none."""
    return str(error).strip().splitlines()[0] if error is not None and str(error).strip() else type(error).__name__


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


def channels_of(module: nn.Module) -> int | None:
    sig = output_signature(module)
    return int(sig.size) if sig is not None and isinstance(sig.size, int) else None


def meta_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    return meta_like(shape)
