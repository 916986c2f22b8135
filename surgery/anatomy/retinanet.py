"""Anatomy of torchvision's RetinaNet (and the dense-head base that FCOS shares)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetClassificationHead, RetinaNetHead

from surgery import paths
from surgery.anatomy._backbone import (
    anchor_generator_like,
    anchor_maps_findings,
    backbone_contracts_findings,
    backbone_features,
    common_width,
)
from surgery.anatomy._base import (
    AdaptRule,
    AttrUpdate,
    BackbonePlan,
    ClassLayer,
    Context,
    Contract,
    Features,
    Rebuild,
    Slot,
    is_stock,
)
from surgery.anatomy._detection import DetectionAnatomy
from surgery.anatomy._feed import Flow, feed, finding
from surgery.anatomy._layers import int_attr, need_layer, prior_init
from surgery.findings import Finding
from surgery.signature import input_signature, out_width

__all__ = ["DenseAnatomy", "RetinaNetAnatomy"]

CLS = "head.classification_head"
REG = "head.regression_head"


#: torchvision's default ``prior_probability`` of RetinaNet and FCOS classification heads.
_PRIOR = 0.01


class DenseAnatomy(DetectionAnatomy):
    """One-stage detectors with ``backbone``, ``anchor_generator`` and a two-part ``head``."""

    #: Layers of the regression head and how many outputs each makes per anchor.
    regression_outputs: tuple[tuple[str, int], ...] = (("bbox_reg", 4),)
    head_class = "RetinaNetHead"
    class_slot = CLS
    box_slot = REG
    #: The train step's loss keys, each with the head that produces it.
    losses: dict[str, str] = {"classification": CLS, "bbox_regression": REG}

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(self.losses)

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        return dict(self.losses)

    def num_classes(self, model: nn.Module) -> int | None:
        value = getattr(getattr(getattr(model, "head", None), "classification_head", None), "num_classes", None)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The classification head's ``cls_logits`` (``anchor * num_classes + class``) and its ``num_classes``."""
        head = need_layer(model, CLS, (RetinaNetClassificationHead, FCOSClassificationHead), "a classification head")
        logits = need_layer(model, f"{CLS}.cls_logits", (nn.Conv2d,), "the class-logits conv")
        anchors, classes = int_attr(head, "num_anchors"), int_attr(head, "num_classes")
        out = int_attr(logits, "out_channels")
        if out != anchors * classes:
            raise ValueError(
                f"{CLS}.cls_logits has {out} output channels but {CLS} says {anchors} anchors × {classes} classes = "
                f"{anchors * classes}; fix that mismatch (surgery.check reports it) before changing the class count"
            )
        return (
            [ClassLayer(f"{CLS}.cls_logits", CLS, anchors, 1, classes, prior_init,
                        f"normal_(std=0.01) weights, bias -log((1 - {_PRIOR}) / {_PRIOR})")],
            [AttrUpdate(CLS, "num_classes")],
        )

    # ----------------------------------------------------------------------- backbone adapt

    def adapt_rule(self, model: nn.Module, path: str) -> AdaptRule:
        if path == "backbone":
            return AdaptRule("backbone", "backbone", "head")
        return super().adapt_rule(model, path)

    def consumers(self, model: nn.Module, path: str) -> list[str]:
        if path == "backbone":
            return [p for p in ("anchor_generator", CLS, REG) if paths.exists(model, p)]
        return []

    def anchor_rebuild(self, gen: nn.Module, feats: Features) -> tuple[nn.Module, str, str] | None:
        """A new anchor generator for ``feats`` (None: keep ``gen``): the sizes spread over the maps."""
        return anchor_generator_like(gen, len(feats.names))

    def build_head(self, head: nn.Module, width: int, anchors: int, classes: int) -> tuple[nn.Module, str] | None:
        """A head like ``head`` for ``width`` channels and ``anchors`` per location, with its
        description; None when ``head`` is not the family's stock head."""
        if type(head) is not RetinaNetHead:
            return None
        norm = any(isinstance(m, nn.GroupNorm) for m in head.modules())
        new = RetinaNetHead(width, anchors, classes, norm_layer=partial(nn.GroupNorm, 32) if norm else None)
        new.regression_head._loss_type = head.regression_head._loss_type  # type: ignore[union-attr]
        return new, f"RetinaNetHead({width}, {anchors}, {classes}{', norm_layer=GroupNorm(32)' if norm else ''})"

    def backbone_plan(self, model: nn.Module, path: str, feats: Features) -> BackbonePlan:
        """After a new backbone: ``backbone.out_channels``, the anchor generator (one level per
        map) and, when the channels or anchors per location changed, the whole head (its towers
        take the map width; the weights whose shapes still fit are kept)."""
        plan = BackbonePlan()
        width = feats.common_channels()
        if width is None:
            raise ValueError(
                f"the new backbone's feature maps have different channel counts {feats.channels}, but the {self.name} "
                "head shares its convs across maps and needs one width; put a feature pyramid on it "
                "(surgery.detection_backbone(..., fpn=True))"
            )
        if getattr(paths.get(model, path), "out_channels", None) != width:
            plan.attributes.append((path, "out_channels", width))
        gen = paths.get(model, "anchor_generator")
        built = self.anchor_rebuild(gen, feats)
        if built is not None:
            plan.rebuilds.append(Rebuild("anchor_generator", *built))
            gen = built[0]
        counts = sorted({int(a) for a in gen.num_anchors_per_location()}) if isinstance(gen, AnchorGenerator) else []
        head = paths.get(model, "head")
        cls_head = paths.get(model, CLS)
        old_anchors, classes = getattr(cls_head, "num_anchors", None), getattr(cls_head, "num_classes", None)
        anchors = counts[0] if len(counts) == 1 else old_anchors
        first = next((m for m in cls_head.modules() if isinstance(m, nn.Conv2d)), None)
        old_width = int(first.in_channels) if first is not None else None
        if (old_width, old_anchors) == (width, anchors):
            return plan
        made = self.build_head(head, width, anchors, classes) if isinstance(anchors, int) and isinstance(classes, int) else None
        if made is None:
            plan.notes.append(f"head is a {type(head).__name__}, which adapt cannot rebuild; it must take {width} channels "
                              f"and predict {anchors} anchors per location")
            return plan
        new, text = made
        old_text = f"{type(head).__name__}({old_width}, {old_anchors}, {classes})"
        plan.rebuilds.append(Rebuild("head", new, old_text, text))
        return plan

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        return [
            Slot("transform", "transform: images → normalized, resized, batched ImageList", "GeneralizedRCNNTransform"),
            Slot("backbone.body", "backbone body: image → multi-scale features", "a feature extractor returning a dict"),
            Slot("backbone.fpn", "feature pyramid: body features → FPN maps (+ P6/P7)", "FeaturePyramidNetwork"),
            Slot("anchor_generator", "anchor generator: feature maps → anchors", "AnchorGenerator with one sizes tuple per map"),
            Slot(CLS, "classification head: feature maps → class logits per anchor", f"{self.head_class}'s classification head"),
            Slot(REG, "regression head: feature maps → box deltas per anchor", f"{self.head_class}'s regression head"),
        ]

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        return [
            ("transform", "backbone.body"),
            ("backbone.body", "backbone.fpn"),
            ("backbone.fpn", "anchor_generator"),
            ("backbone.fpn", CLS),
            ("backbone.fpn", REG),
        ]

    def features(self, ctx: Context) -> Features | None:
        feats = backbone_features(ctx, "backbone")
        return feats if isinstance(feats, Features) else None

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        return [
            Contract("backbone body → FPN → out_channels", ("backbone",), lambda ctx: backbone_contracts_findings(ctx, "backbone")),
            Contract("backbone channels → head inputs", ("backbone", CLS, REG), self._head_inputs),
            Contract("anchor size tuples → feature maps", ("backbone", "anchor_generator"), self._anchor_maps),
            Contract("anchors per location → head outputs", ("anchor_generator", CLS, REG), self._anchors),
            self.predictions_contract(),
        ]

    def _head_inputs(self, ctx: Context) -> Iterable[Finding]:
        width, failed = common_width(ctx)
        if failed is not None:
            yield failed
        if width is None:
            return
        for path in (CLS, REG):
            part = ctx.get(path)
            conv = getattr(part, "conv", None)
            target = f"{path}.conv" if isinstance(conv, nn.Module) and ctx.has(f"{path}.conv") else path
            findings, _ = feed(ctx, "backbone", Flow(None, width), target, fix=self._head_fix(ctx, width=width))
            yield from (finding(f.severity, f.code, ("backbone", path), f.message, f.fix) for f in findings)

    def _anchor_maps(self, ctx: Context) -> Iterable[Finding]:
        gen = ctx.get("anchor_generator")
        sizes = getattr(gen, "sizes", None)
        if sizes is None:
            return
        ratios = getattr(gen, "aspect_ratios", None)
        yield from anchor_maps_findings(ctx, "anchor_generator", list(sizes), list(ratios) if ratios is not None else None,
                                        backbone_features(ctx, "backbone"))

    def _head_fix(self, ctx: Context, *, width: int | None = None, anchors: int | None = None) -> str:
        """A line rebuilding the whole head with the right sizes (a description for a custom head)."""
        cls_head = ctx.get(CLS)
        if width is None:
            feats = backbone_features(ctx, "backbone")
            width = feats.common_channels() if isinstance(feats, Features) else None
        if width is None:
            sig = input_signature(cls_head)
            width = sig.size if sig is not None else None
        if anchors is None:
            fn = getattr(ctx.get("anchor_generator"), "num_anchors_per_location", None) if ctx.has("anchor_generator") else None
            counts = sorted({int(a) for a in fn()}) if callable(fn) else []
            anchors = counts[0] if len(counts) == 1 else getattr(cls_head, "num_anchors", None)
        classes = getattr(cls_head, "num_classes", None)
        head = ctx.get("head") if ctx.has("head") else None
        if head is None or type(head).__name__ != self.head_class or not is_stock(head) or None in (width, anchors, classes):
            return f"rebuild model.head to take {width} channels with {anchors} anchors per location and {classes} classes"
        norm = ""
        if self.head_class == "RetinaNetHead" and any(isinstance(m, nn.GroupNorm) for m in head.modules()):
            norm = ", norm_layer=partial(nn.GroupNorm, 32)"
        return f"model.head = {self.head_class}({width}, {anchors}, {classes}{norm})"

    def _anchors(self, ctx: Context) -> Iterable[Finding]:
        gen = ctx.get("anchor_generator")
        fn = getattr(gen, "num_anchors_per_location", None)
        if not callable(fn):
            return
        anchors = sorted({int(a) for a in fn()})
        if len(anchors) != 1:
            yield finding("error", "anchor-mismatch", ("anchor_generator", "head"),
                          f"anchor_generator makes {list(fn())} anchors per location, but the head shares its convs "
                          "across feature maps and needs the same count on every map",
                          "give every feature map the same number of sizes × aspect ratios")
            return
        a = anchors[0]
        cls_head, reg_head = ctx.get(CLS), ctx.get(REG)
        declared = getattr(cls_head, "num_anchors", None)
        classes = getattr(cls_head, "num_classes", None)
        logits = getattr(cls_head, "cls_logits", None)
        fix = self._head_fix(ctx, anchors=a)
        wrong_anchors = isinstance(declared, int) and declared != a
        if wrong_anchors:
            yield finding("error", "anchor-mismatch", ("anchor_generator", CLS),
                          f"anchor_generator makes {_count(a, 'anchor')} per location but {CLS}.num_anchors is {declared}",
                          fix)
        if isinstance(logits, nn.Conv2d) and isinstance(classes, int):
            expect = a * classes
            out = out_width(logits)
            # a head built for another anchor count is already reported above
            if out != expect and not (isinstance(declared, int) and wrong_anchors and out == declared * classes):
                code = "num-classes-mismatch" if out % a == 0 else "anchor-mismatch"
                yield finding("error", code, ("anchor_generator", CLS),
                              f"{CLS}.cls_logits has {out} output channels but {_count(a, 'anchor')} × "
                              f"{classes} classes ({CLS}.num_classes) = {expect}"
                              + (f"; it predicts {out // a} classes per anchor" if code == "num-classes-mismatch" else ""),
                              fix)
        for layer, per in self.regression_outputs:
            conv = getattr(reg_head, layer, None)
            if isinstance(conv, nn.Conv2d) and out_width(conv) != per * a:
                yield finding("error", "anchor-mismatch", ("anchor_generator", f"{REG}.{layer}"),
                              f"anchor_generator makes {_count(a, 'anchor')} per location, so {REG}.{layer} must output "
                              f"{per} × {a} = {per * a} channels, but it outputs {out_width(conv)}",
                              fix)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class RetinaNetAnatomy(DenseAnatomy):
    """RetinaNet (``retinanet_resnet50_fpn`` and ``_v2``)."""

    name = "RetinaNet"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, RetinaNet)
