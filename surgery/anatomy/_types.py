"""The types an anatomy is built from: slots, contracts, the context they run in, and what
the families hand back for surgery (class layers, adapt rules, backbone plans)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor, nn

from surgery import paths
from surgery.findings import Finding
from surgery.signature import (
    ProbeResult,
    attribute_mismatches,
    meta_like,
    meta_probe,
)

if TYPE_CHECKING:
    from surgery.anatomy._base import Anatomy

__all__ = [
    "Slot",
    "Contract",
    "Context",
    "Features",
    "SyntheticBatch",
    "ClassLayer",
    "AttrUpdate",
    "AdaptRule",
    "BackbonePlan",
    "Rebuild",
    "is_stock",
    "PROBE_BATCH",
    "RowLayer",
    "LAYER_CONTRACT",
    "layer_attribute_findings",
]

#: A layer whose output rows (channels) ``set_num_classes`` / ``set_num_keypoints`` resize.
RowLayer = nn.Linear | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d

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
        covers: The slots whose fit it checks (for the report's coverage); None means
            ``paths`` and every slot inside them.
    """

    name: str
    paths: tuple[str, ...]
    run: Callable[[Context], Iterable[Finding]]
    covers: tuple[str, ...] | None = None

    def checks(self, slot: str) -> bool:
        """True when this contract checks the fit of ``slot``."""
        return any(slot == p or slot.startswith(p + ".") for p in (self.paths if self.covers is None else self.covers))


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


def _model_probe_key(train: bool) -> str:
    """Where :meth:`Context.model_probe` keeps the whole-model probe of one mode."""
    return f"model probe:{'train' if train else 'eval'}"


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
            for whole in (self.cache.get(_model_probe_key(False)), self.cache.get(_model_probe_key(True))):
                output = whole.slot_output(self.model, path, shapes) if whole is not None else None
                if output is not None:  # the whole-model probe already ran this slot on these inputs
                    self._probes[key] = ProbeResult(output=output)
                    return self._probes[key]
            module = self.get(path)
            self._probes[key] = meta_probe(module, *(meta_like(s) for s in shapes))
        return self._probes[key]

    def model_probe(self, anatomy: Anatomy, *, train: bool = False) -> Any:
        """The whole-model meta probe (:func:`surgery.probe.probe_model`), run at most once per mode.

        Contracts that need what a slot receives inside the whole forward read it here, so
        ``check`` runs one whole forward on meta however many of them ask.
        """
        key = _model_probe_key(train)
        if key not in self.cache:
            from surgery.probe import probe_model  # the probe module imports the anatomy

            self.cache[key] = probe_model(self.model, anatomy, self.probe_image_size, train=train)
        return self.cache[key]

    def probe_with(self, path: str, key: str, *args: Any) -> ProbeResult:
        """Meta-probe with arbitrary (meta) arguments, cached under ``key``."""
        full = (path, key)
        if full not in self._probes:
            self._probes[full] = meta_probe(self.get(path), *args)
        return self._probes[full]


class SyntheticBatch(NamedTuple):
    """What :func:`surgery.synthetic_batch` returns; unpacks as ``images, targets = batch``.

    Attributes:
        images: A list of ``3×S×S`` image tensors for families whose forward takes a list
            (detection), or one ``(batch_size, 3, S, S)`` tensor for any other model.
        targets: What the family trains on: one dict per image for detection (``boxes``,
            ``labels`` and, where the model has the branch, ``masks`` / ``keypoints``), a
            tensor of labels for classification; None when the family has none.
    """

    images: list[Tensor] | Tensor
    targets: Any


@dataclass(frozen=True)
class ClassLayer:
    """One class-dependent layer, whose outputs are ``anchors × classes × per_class``, anchor first
    (also one keypoint-dependent layer, with a keypoint for a class).

    Attributes:
        path: Dotted path of the layer (an ``nn.Linear``, ``nn.Conv2d`` or ``nn.ConvTranspose2d``).
        slot: The slot it belongs to (what ``check`` is scoped to).
        anchors: Anchor groups in its output (1 for predictors without anchors).
        per_class: Outputs per class and anchor (4 for a box regressor, else 1).
        old_classes: Classes it predicts now.
        init: Initialises a freshly built layer the way its family does.
        init_name: What ``init`` does, for messages.
    """

    path: str
    slot: str
    anchors: int
    per_class: int
    old_classes: int
    init: Callable[[RowLayer], None]
    init_name: str


@dataclass(frozen=True)
class AttrUpdate:
    """An attribute that stores the class count (``num_classes``, ``num_columns``)."""

    path: str
    name: str


@dataclass(frozen=True)
class AdaptRule:
    """A producer slot and the consumer that ``adapt`` rebuilds to fit it.

    Attributes:
        kind: Short name of the branch, e.g. ``"mask"``.
        producer: The slot whose output width the consumer must take (e.g. a head).
        consumer: The slot rebuilt (e.g. the predictor behind that head).
        pool: The RoI pooler feeding the producer, when there is one (used to probe it).
    """

    kind: str
    producer: str
    consumer: str
    pool: str | None = None


@dataclass(frozen=True)
class Rebuild:
    """One slot that a backbone adapt puts a freshly built module into.

    Attributes:
        path: The slot rebuilt.
        module: The new module; tensors whose name and shape match the old one's are copied into it.
        old: Short description of what was there, e.g. ``"RPNHead(256, 3)"``.
        new: Short description of the new module, e.g. ``"RPNHead(256, 15)"``.
    """

    path: str
    module: nn.Module
    old: str
    new: str


@dataclass
class BackbonePlan:
    """What must change after a new backbone went in, as the family works it out.

    Attributes:
        rebuilds: Slots to rebuild, in data-flow order.
        attributes: ``(path, name, value)`` attributes to set, e.g. ``("backbone", "out_channels", 512)``.
        notes: What was kept and why, in words.
    """

    rebuilds: list[Rebuild] = field(default_factory=list)
    attributes: list[tuple[str, str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: Name of the contract every model gets: each layer's attributes against its own parameter shapes.
LAYER_CONTRACT = "layer attributes vs parameter shapes"


def layer_attribute_findings(ctx: Context) -> Iterator[Finding]:
    """A ``channel-mismatch`` for every layer of the model whose attributes (``out_features``,
    ``in_channels``, ``num_features``, …) or bias disagree with its own weight, e.g. a weight
    sliced in place that left ``out_features`` behind."""
    for path, layer in ctx.model.named_modules():
        for m in attribute_mismatches(layer):
            where = paths.join(path, m.attribute)
            shown = _shape_text(m.value) if m.attribute in ("bias", "weight", "running_mean", "running_var") else str(m.value)
            verb = "has shape" if m.attribute in ("bias", "weight", "running_mean", "running_var") else "says"
            message = (
                f"{where or m.attribute} {verb} {shown} but its {m.tensor} has shape {_shape_text(m.shape)}; "
                f"the layer ({type(layer).__name__}) was resized without being rebuilt, and code that reads "
                f"{m.attribute} will size things wrongly"
            )
            target = paths.expression(path, ctx.model)
            fix = f"{target} = {m.rebuild}" if m.rebuild else f"rebuild {target} with its weight's shape {_shape_text(m.shape)}"
            yield Finding("error", "channel-mismatch", (path,) if path else (), message, fix)


def _shape_text(shape: object) -> str:
    if isinstance(shape, tuple) and len(shape) == 1:
        return f"({shape[0]},)"
    return str(tuple(shape)) if isinstance(shape, tuple) else str(shape)


