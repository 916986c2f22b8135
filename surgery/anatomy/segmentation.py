"""Anatomy of torchvision's semantic segmentation models: DeepLabV3, FCN and LRASPP.

DeepLabV3 and FCN share one layout: a ``backbone`` (an ``IntermediateLayerGetter``) returning
an ``'out'`` map and, when the model has an auxiliary loss, an ``'aux'`` map; a
``classifier`` reading ``'out'`` and an optional ``aux_classifier`` reading ``'aux'``. Both
heads end in a 1×1 conv with one output channel per class, and both outputs are upsampled
to the input's size. LRASPP's backbone returns ``'low'`` and ``'high'`` maps, which its one
``classifier`` (``LRASPPHead``) combines.

The contracts read the backbone's maps with a meta probe, so a changed backbone is checked
against the heads it feeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from surgery import paths
from surgery._util import first_line
from surgery.anatomy._backbone import backbone_features
from surgery.anatomy._base import (
    PROBE_BATCH,
    Anatomy,
    AttrUpdate,
    ClassLayer,
    Context,
    Contract,
    Features,
    Slot,
    SyntheticBatch,
    is_stock,
)
from surgery.anatomy._feed import finding, looks_like_shape
from surgery.anatomy._layers import linear_default, need_layer
from surgery.findings import Finding
from surgery.signature import in_width, input_signature, meta_like, out_width, output_signature

__all__ = ["SegmentationAnatomy"]

#: Weight of the auxiliary loss in the total, as in torchvision's reference training script.
AUX_WEIGHT = 0.5
#: The backbone map each head of a DeepLabV3 / FCN reads.
_READS = {"classifier": "out", "aux_classifier": "aux"}
_CONV_INIT = "nn.Conv2d default"


def _last_conv(head: nn.Module) -> str | None:
    """Name of the last child of a sequential head when it is an ``nn.Conv2d`` (the class conv)."""
    if isinstance(head, nn.Sequential) and len(head):
        name = list(head._modules)[-1]
        return name if isinstance(head._modules[name], nn.Conv2d) else None
    return None


def _aspp_rates(aspp: nn.Module | None) -> tuple[int, ...] | None:
    """The atrous rates of an ``ASPP``, read from the dilation of its 3×3 branches."""
    if not isinstance(aspp, ASPP):
        return None
    rates = []
    for branch in list(aspp.convs)[1:-1]:
        conv = branch[0] if isinstance(branch, nn.Sequential) and len(branch) else None
        if not isinstance(conv, nn.Conv2d):
            return None
        rates.append(int(conv.dilation[0]))
    return tuple(rates)


class SegmentationAnatomy(Anatomy):
    """DeepLabV3, FCN and LRASPP: ``model(images)`` returns ``{"out": logits[, "aux": logits]}``,
    each ``(B, num_classes, H, W)`` at the input's size."""

    name = "segmentation"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, (DeepLabV3, FCN, LRASPP))

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        if isinstance(model, LRASPP):
            return [
                Slot("backbone", "backbone: image → {'low': stride-8 features, 'high': stride-16 features}",
                     "a module returning a dict with 'low' and 'high' feature maps (IntermediateLayerGetter)"),
                Slot("classifier", "LR-ASPP head: 'low' + 'high' features → per-pixel class logits",
                     "LRASPPHead(low_channels, high_channels, num_classes, inter_channels)"),
            ]
        head = "DeepLabHead(in_channels, num_classes)" if isinstance(model, DeepLabV3) else "FCNHead(in_channels, num_classes)"
        return [
            Slot("backbone", "backbone: image → {'out': features[, 'aux': features]}",
                 "a module returning a dict with an 'out' (and, for the aux head, an 'aux') feature map"),
            Slot("classifier", "classifier: backbone 'out' features → per-pixel class logits", head),
            Slot("aux_classifier", "auxiliary classifier: backbone 'aux' features → per-pixel class logits (a training loss)",
                 "FCNHead(in_channels, num_classes)", optional=True),
        ]

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        return [("backbone", "classifier"), ("backbone", "aux_classifier")]

    def features(self, ctx: Context) -> Features | None:
        feats = backbone_features(ctx, "backbone")
        return feats if isinstance(feats, Features) else None

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        if isinstance(model, LRASPP):
            return [Contract("backbone 'low'/'high' maps → classifier low_channels/high_channels", ("backbone", "classifier"),
                             _lraspp_inputs)]
        return [
            Contract("backbone 'out' map → classifier input channels", ("backbone", "classifier"),
                     lambda ctx: _head_input(ctx, "classifier")),
            Contract("backbone 'aux' map → aux_classifier input channels", ("backbone", "aux_classifier"),
                     lambda ctx: _head_input(ctx, "aux_classifier")),
            Contract("classifier classes vs aux_classifier classes", ("classifier", "aux_classifier"), _classes_agree),
        ]

    # ----------------------------------------------------------------------- inputs

    def probe_inputs(self, model: nn.Module, image_size: int) -> tuple[Any, ...] | None:
        return (meta_like((PROBE_BATCH, 3, image_size, image_size)),)

    def synthetic_batch(
        self, model: nn.Module, batch_size: int, image_size: int, generator: torch.Generator, device: torch.device
    ) -> SyntheticBatch:
        """Images ``(B, 3, S, S)`` and per-pixel labels ``(B, S, S)`` (int64 in ``[0, num_classes)``)."""
        images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
        return SyntheticBatch(images.to(device), self._labels(model, batch_size, image_size, image_size, generator).to(device))

    def _labels(self, model: nn.Module, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        classes = self.num_classes(model) or 1
        return torch.randint(0, classes, (batch, height, width), generator=generator, dtype=torch.int64)

    def split_inputs(self, inputs: Any) -> tuple[Any, Any]:
        """A :class:`SyntheticBatch`, ``(images, labels)`` or an image tensor."""
        if isinstance(inputs, SyntheticBatch):
            return inputs.images, inputs.targets
        if isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(t, Tensor) for t in inputs):
            images, labels = inputs
            if labels.dim() != 3 or labels.is_floating_point():
                raise ValueError(f"segmentation inputs (images, labels) need integer labels of shape (B, H, W), got "
                                 f"{labels.dtype} of shape {tuple(labels.shape)}")
            return images, labels
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            shown = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"a segmentation model takes a (B, 3, H, W) image tensor or (images, labels); got {shown}")
        return inputs, None

    def train_targets(self, model: nn.Module, images: Any, generator: torch.Generator, device: torch.device) -> Any:
        b, _, h, w = (int(s) for s in images.shape)
        return self._labels(model, b, h, w, generator).to(device)

    # ----------------------------------------------------------------------- the train step

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        return ("out", "aux") if paths.exists(model, "aux_classifier") else ("out",)

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        return dict(_LOSS_SLOTS)

    def train_losses(self, model: nn.Module, output: Any, targets: Any) -> dict[str, Tensor] | str | None:
        """Per-pixel cross-entropy of ``out`` and ``0.5 ×`` that of ``aux`` (already weighted:
        the losses sum to what torchvision's reference script trains on)."""
        if not isinstance(output, Mapping) or not isinstance(output.get("out"), Tensor):
            return f"returned {type(output).__name__}, not a dict with an 'out' tensor of per-pixel logits"
        if not isinstance(targets, Tensor):
            return None
        losses: dict[str, Tensor] = {}
        for key, weight in (("out", 1.0), ("aux", AUX_WEIGHT)):
            logits = output.get(key)
            if logits is None:
                continue
            if not isinstance(logits, Tensor) or logits.dim() != 4 or logits.shape[0] != targets.shape[0] \
                    or tuple(logits.shape[-2:]) != tuple(targets.shape[-2:]):
                shown = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                return (f"returned {key!r} of shape {shown}; per-pixel logits must be (B, num_classes, H, W) with "
                        f"(B, H, W) = {tuple(targets.shape)} of the labels")
            losses[key] = weight * F.cross_entropy(logits, targets)
        return losses

    # ----------------------------------------------------------------------- the eval pass

    def check_eval_output(self, model: nn.Module, output: Any, images: Any, label: str) -> list[Finding]:
        """A dict with ``out`` (and ``aux`` when the model has the head) of shape
        ``(B, num_classes, H, W)`` at the images' size, finite."""
        if not isinstance(output, Mapping) or "out" not in output:
            return [Finding("error", "shape-error", (), f"{label} returned {type(output).__name__}; expected a dict with an 'out' tensor", None)]
        b, _, h, w = (int(s) for s in images.shape)
        classes = self.num_classes(model)
        found: list[Finding] = []
        for key, slot in (("out", "classifier"), ("aux", "aux_classifier")):
            if key not in output:
                continue
            where = (slot,) if paths.exists(model, slot) else ()
            t = output[key]
            want = (b, classes if classes is not None else (t.shape[1] if isinstance(t, Tensor) and t.dim() == 4 else -1), h, w)
            if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != want:
                shown = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                found.append(Finding("error", "shape-error", where, f"{label}: {key!r} is {shown}; expected float of shape {want}", None))
            elif not bool(torch.isfinite(t).all()):
                found.append(Finding("error", "non-finite", where, f"{label}: {key!r} contains NaN/Inf", None))
        return found

    # ----------------------------------------------------------------------- classes

    def num_classes(self, model: nn.Module) -> int | None:
        head = model._modules.get("classifier")
        if isinstance(head, LRASPPHead) and isinstance(head.low_classifier, nn.Conv2d):
            return out_width(head.low_classifier)
        name = _last_conv(head) if head is not None else None
        return out_width(head._modules[name]) if head is not None and name is not None else None  # type: ignore[arg-type]

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The 1×1 class conv ending each head (``classifier.4``, ``aux_classifier.4``); LRASPP's
        ``low_classifier`` and ``high_classifier``. All keep nn.Conv2d's default initialisation."""
        if isinstance(model, LRASPP):
            convs = [f"classifier.{n}" for n in ("low_classifier", "high_classifier")]
        else:
            convs = []
            for slot in ("classifier", "aux_classifier"):
                if not paths.exists(model, slot):
                    continue
                module = paths.get(model, slot)
                name = _last_conv(module)
                if name is None:
                    raise ValueError(
                        f"set_num_classes() rebuilds the 1×1 conv that ends {slot} (a DeepLabHead or FCNHead), but {slot} is a "
                        f"{type(module).__name__} that does not end in an nn.Conv2d; replace it yourself with "
                        f"surgery.replace(model, {slot!r}, FCNHead(in_channels, num_classes))"
                    )
                convs.append(f"{slot}.{name}")
        layers = []
        for path in convs:
            conv = need_layer(model, path, (nn.Conv2d,), "a 1×1 class conv")
            layers.append(ClassLayer(path, paths.parent_of(path)[0], 1, 1, out_width(conv), linear_default, _CONV_INIT))
        return layers, []

    def backbone_body(self, model: nn.Module) -> tuple[str, nn.Module]:
        """``backbone``: the ``IntermediateLayerGetter`` over the classification network's layers."""
        return "backbone", paths.get(model, "backbone")


_LOSS_SLOTS = {"out": "classifier", "aux": "aux_classifier"}


def _map_width(ctx: Context, key: str, reader: str) -> tuple[Features | None, Finding | None]:
    """The backbone's maps, or a finding when it raised or lacks ``key`` (which ``reader`` reads)."""
    feats = backbone_features(ctx, "backbone")
    if isinstance(feats, Finding):
        return None, feats
    if not feats.names:
        return None, None
    if key not in feats.names:
        return None, finding("error", "featmap-missing", ("backbone", reader),
                             f"{reader} reads the backbone's {key!r} map but the backbone produces {feats.names}; "
                             f"the forward raises KeyError: {key!r}",
                             f"{paths.expression('backbone', ctx.model)}.return_layers must name a layer for {key!r}"
                             + (f", or {paths.expression(reader, ctx.model)} = None" if reader == "aux_classifier" else ""))
    return feats, None


def _head_fix(ctx: Context, path: str, width: int) -> str:
    """A line rebuilding the head at ``path`` for ``width`` input channels, class count kept."""
    head = ctx.get(path)
    target = paths.expression(path, ctx.model)
    name = _last_conv(head)
    classes = out_width(head._modules[name]) if name is not None else None  # type: ignore[arg-type]
    if type(head) is DeepLabHead and classes is not None:
        rates = _aspp_rates(head._modules["0"])
        extra = f", atrous_rates={rates}" if rates is not None and rates != (12, 24, 36) else ""
        return f"{target} = DeepLabHead({width}, {classes}{extra})"
    if type(head) is FCNHead and classes is not None:
        return f"{target} = FCNHead({width}, {classes})"
    return f"rebuild {target} to take {width} input channels"


def _head_input(ctx: Context, path: str) -> Iterable[Finding]:
    key = _READS[path]
    feats, problem = _map_width(ctx, key, path)
    if problem is not None:
        yield problem
    if feats is None:
        return
    width = feats.channels.get(key)
    if width is None:
        return
    head = ctx.get(path)
    sig = input_signature(head)
    fix = _head_fix(ctx, path, width)
    if is_stock(head):
        if sig is not None and sig.size != width:
            yield finding("error", "channel-mismatch", ("backbone", path),
                          f"the backbone's {key!r} map has {width} channels but {path} ({type(head).__name__}) expects "
                          f"{sig.size} (in {paths.join(path, sig.source)})",
                          fix)
        return
    shape = feats.shapes.get(key)
    probe = ctx.probe(path, (PROBE_BATCH, *shape[1:])) if shape else None
    if probe is not None and not probe.ok and not probe.inconclusive:
        yield finding("error", "channel-mismatch" if looks_like_shape(probe.error) else "shape-error", ("backbone", path),
                      f"{path} ({type(head).__name__}) raised on the backbone's {key!r} map of {width} channels: "
                      f"{type(probe.error).__name__} in {paths.join(path, probe.where)}: {first_line(probe.error)}",
                      fix)


def _head_classes(ctx: Context, path: str) -> int | None:
    """Classes a DeepLabV3 / FCN head predicts: its last conv's outputs, else a probe's channels."""
    head = ctx.get(path)
    name = _last_conv(head)
    if name is not None and is_stock(head):
        return out_width(head._modules[name])  # type: ignore[arg-type]
    feats = backbone_features(ctx, "backbone")
    shape = feats.shapes.get(_READS[path]) if isinstance(feats, Features) else None
    if shape is None:
        sig = output_signature(head)
        return sig.size if sig is not None else None
    probe = ctx.probe(path, (PROBE_BATCH, *shape[1:]))
    if probe.ok and isinstance(probe.output, Tensor) and probe.output.dim() == 4:
        return int(probe.output.shape[1])
    return None


def _classes_agree(ctx: Context) -> Iterable[Finding]:
    main, aux = _head_classes(ctx, "classifier"), _head_classes(ctx, "aux_classifier")
    if main is None or aux is None or main == aux:
        return
    head = ctx.get("aux_classifier")
    sig = input_signature(head)
    target = paths.expression("aux_classifier", ctx.model)
    fix = (f"{target} = FCNHead({sig.size}, {main})" if type(head) is FCNHead and sig is not None
           else f"make {target} predict {main} classes")
    yield finding("error", "num-classes-mismatch", ("classifier", "aux_classifier"),
                  f"classifier predicts {main} classes but aux_classifier predicts {aux}; both are trained on the same "
                  "per-pixel labels, so they must agree",
                  fix)


def _lraspp_inputs(ctx: Context) -> Iterable[Finding]:
    feats: Features | None = None
    for key in ("low", "high"):
        feats, problem = _map_width(ctx, key, "classifier")
        if problem is not None:
            yield problem
            return
    if feats is None:
        return
    low, high = feats.channels.get("low"), feats.channels.get("high")
    head = ctx.get("classifier")
    target = paths.expression("classifier", ctx.model)
    if not (isinstance(head, LRASPPHead) and is_stock(head)):
        maps = {k: meta_like(feats.shapes[k]) for k in ("low", "high") if k in feats.shapes}
        if len(maps) < 2:
            return
        probe = ctx.probe_with("classifier", "low/high", maps)
        if not probe.ok and not probe.inconclusive:
            yield finding("error", "channel-mismatch" if looks_like_shape(probe.error) else "shape-error", ("backbone", "classifier"),
                          f"classifier ({type(head).__name__}) raised on the backbone's 'low' ({low} channels) and 'high' "
                          f"({high} channels) maps: {type(probe.error).__name__} in {paths.join('classifier', probe.where)}: "
                          f"{first_line(probe.error)}",
                          f"rebuild {target} to take {low} 'low' and {high} 'high' channels")
        return
    classes, inter = out_width(head.low_classifier), out_width(head.cbr[0])
    fix = f"{target} = LRASPPHead({low}, {high}, {classes}, {inter})"
    readers = (("low", low, "low_classifier", head.low_classifier), ("high", high, "cbr.0", head.cbr[0]),
               ("high", high, "scale.1", head.scale[1]))
    for key, width, layer, module in readers:
        expects = in_width(module)
        if width is not None and expects != width:
            yield finding("error", "channel-mismatch", ("backbone", "classifier"),
                          f"the backbone's {key!r} map has {width} channels but classifier.{layer} expects {expects} "
                          f"({key}_channels of LRASPPHead)",
                          fix)
