"""Anatomy of torchvision's SSD and SSDlite: per-map heads over a multi-scale extractor."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

from surgery import paths
from surgery.anatomy._backbone import backbone_features
from surgery.anatomy._base import AdaptRule, AttrUpdate, BackbonePlan, ClassLayer, Context, Contract, Features, Rebuild, Slot
from surgery.anatomy._detection import DetectionAnatomy
from surgery.anatomy._feed import Flow, feed, finding
from surgery.anatomy._layers import int_attr, need_layer, normal_init, xavier_init
from surgery.findings import Finding
from surgery.signature import output_signature

__all__ = ["SSDAnatomy"]

CLS = "head.classification_head"
REG = "head.regression_head"


class SSDAnatomy(DetectionAnatomy):
    """SSD300 (VGG16) and SSDlite320 (MobileNetV3)."""

    name = "SSD"
    class_slot = CLS
    box_slot = REG

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        return ("bbox_regression", "classification")

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        return {"classification": CLS, "bbox_regression": REG}

    def num_classes(self, model: nn.Module) -> int | None:
        value = getattr(getattr(getattr(model, "head", None), "classification_head", None), "num_columns", None)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The per-map convs of ``head.classification_head.module_list`` and its ``num_columns``."""
        head = paths.get(model, CLS)
        columns = getattr(head, "num_columns", None)
        module_list = head._modules.get("module_list")
        if not isinstance(columns, int) or not isinstance(module_list, nn.ModuleList):
            raise ValueError(
                f"set_num_classes() rebuilds the convs of {CLS}.module_list, but {CLS} is a {type(head).__name__} "
                "without module_list / num_columns (SSDClassificationHead's layout)"
            )
        lite = isinstance(head, SSDLiteClassificationHead)
        layers = []
        for i in range(len(module_list)):
            path = f"{CLS}.module_list.{i}.1" if lite else f"{CLS}.module_list.{i}"
            conv = need_layer(model, path, (nn.Conv2d,), "a class-logits conv")
            out = int_attr(conv, "out_channels")
            if out % columns:
                raise ValueError(
                    f"{path} outputs {out} channels, not a multiple of {CLS}.num_columns = {columns}; "
                    "fix that mismatch (surgery.check reports it) before changing the class count"
                )
            # SSDlite: torchvision's ssdlite._normal_init; SSD300: ssd._xavier_init
            init, name = (normal_init(0.03), "normal_(std=0.03) weights, zero bias") if lite else (xavier_init, "xavier_uniform_ weights, zero bias")
            layers.append(ClassLayer(path, CLS, out // columns, 1, columns, init, name))
        return layers, [AttrUpdate(CLS, "num_columns")]

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, SSD)

    # ----------------------------------------------------------------------- backbone adapt

    def adapt_rule(self, model: nn.Module, path: str) -> AdaptRule:
        if path == "backbone":
            return AdaptRule("backbone", "backbone", "head")
        return super().adapt_rule(model, path)

    def consumers(self, model: nn.Module, path: str) -> list[str]:
        return [p for p in ("anchor_generator", CLS, REG) if paths.exists(model, p)] if path == "backbone" else []

    def backbone_probe_size(self, model: nn.Module) -> int:
        """SSD's transform resizes to one fixed size (300 or 320): the backbone is probed at it."""
        transform = model._modules.get("transform")
        fixed = getattr(transform, "fixed_size", None)
        return int(fixed[0]) if isinstance(fixed, (tuple, list)) and fixed else 300

    def backbone_plan(self, model: nn.Module, path: str, feats: Features) -> BackbonePlan:
        """After a new backbone with as many maps as before: an ``SSDHead`` rebuilt for the new
        channels per map (default boxes and classes kept, the per-map convs whose shapes still fit
        kept). Anything else (another map count, SSDlite's head) is refused with what to do."""
        gen = paths.get(model, "anchor_generator")
        per_location = getattr(gen, "num_anchors_per_location", None)
        anchors = [int(a) for a in per_location()] if callable(per_location) else []
        channels = [feats.channels[n] for n in feats.names]
        head = paths.get(model, "head")
        classes = self.num_classes(model)
        todo = (f"build the head and default boxes for these maps yourself inside `with surgery.edit(model) as e:`, e.g. "
                f"e.replace('anchor_generator', DefaultBoxGenerator([[2, 3]] * {len(channels)})) and "
                f"e.replace('head', SSDHead({channels}, [6] * {len(channels)}, {classes or 'num_classes'}))")
        if len(anchors) != len(channels):
            raise ValueError(f"the new backbone produces {len(channels)} feature maps but anchor_generator makes default boxes for "
                             f"{len(anchors)}; adapt keeps SSD's default boxes, so it needs the same map count. To change it, {todo}")
        plan = BackbonePlan()
        cls_list = getattr(paths.get(model, CLS), "module_list", None)
        convs = [m for m in cls_list if isinstance(m, nn.Conv2d)] if isinstance(cls_list, nn.ModuleList) else []
        current = [int(m.in_channels) for m in convs] if isinstance(cls_list, nn.ModuleList) and len(convs) == len(cls_list) else None
        if current == channels:
            return plan
        if type(head) is not SSDHead or classes is None:
            raise ValueError(f"the new backbone's maps have {channels} channels; adapt rebuilds SSD300's SSDHead, but head is a "
                             f"{type(head).__name__}. To change it, {todo}")
        plan.rebuilds.append(Rebuild("head", SSDHead(channels, anchors, classes), f"SSDHead({current}, {anchors}, {classes})",
                                     f"SSDHead({channels}, {anchors}, {classes})"))
        return plan

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        return [
            Slot("transform", "transform: images → normalized, fixed-size batch", "GeneralizedRCNNTransform"),
            Slot("backbone", "feature extractor: image → multi-scale feature maps", "a module returning an OrderedDict of maps"),
            Slot("anchor_generator", "default box generator: feature maps → default boxes", "DefaultBoxGenerator"),
            Slot(CLS, "classification head: one conv per map → class logits per default box", "SSDClassificationHead"),
            Slot(REG, "regression head: one conv per map → box deltas per default box", "SSDRegressionHead"),
        ]

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        return [("transform", "backbone"), ("backbone", "anchor_generator"), ("backbone", CLS), ("backbone", REG)]

    def features(self, ctx: Context) -> Features | None:
        feats = backbone_features(ctx, "backbone", _size(ctx))
        return feats if isinstance(feats, Features) else None

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        return [Contract("feature maps → per-map heads, anchors, classes", ("backbone", "anchor_generator", CLS, REG), _ssd),
                self.predictions_contract()]


def _size(ctx: Context) -> int:
    transform = ctx.model._modules.get("transform")
    sizes = getattr(transform, "min_size", None)
    if isinstance(sizes, (tuple, list)) and sizes and isinstance(sizes[0], int):
        return int(sizes[0])
    return ctx.probe_image_size


def _ssd(ctx: Context) -> Iterable[Finding]:
    feats = backbone_features(ctx, "backbone", _size(ctx))
    if isinstance(feats, Finding):
        yield feats
        return
    gen = ctx.get("anchor_generator")
    per_location = getattr(gen, "num_anchors_per_location", None)
    anchors = [int(a) for a in per_location()] if callable(per_location) else []
    cls_head, reg_head = ctx.get(CLS), ctx.get(REG)
    cls_list = getattr(cls_head, "module_list", None)
    reg_list = getattr(reg_head, "module_list", None)
    if not isinstance(cls_list, nn.ModuleList) or not isinstance(reg_list, nn.ModuleList) or not feats.names:
        return
    n = len(feats.names)
    for path, count in (("anchor_generator", len(anchors)), (f"{CLS}.module_list", len(cls_list)), (f"{REG}.module_list", len(reg_list))):
        if count != n:
            yield finding("error", "anchor-mismatch", ("backbone", path),
                          f"backbone produces {n} feature maps but {path} covers {count}; SSD needs exactly one entry per map",
                          f"give {path} {n} entries")
    if any(count != n for count in (len(anchors), len(cls_list), len(reg_list))):
        return
    columns = getattr(cls_head, "num_columns", None)
    per_map_classes: list[int] = []
    for i, name in enumerate(feats.names):
        width = feats.channels.get(name)
        if width is None:
            continue
        a = anchors[i]
        for head_path, entries in ((CLS, cls_list), (REG, reg_list)):
            out = output_signature(entries[i])
            findings, _ = feed(ctx, "backbone", Flow(None, width), f"{head_path}.module_list.{i}",
                               fix=_conv_fix(head_path, i, entries[i], width, out.size if out is not None else None))
            yield from (finding(f.severity, f.code, f.paths, f"feature map '{name}': {f.message}", f.fix) for f in findings)
        cls_out = output_signature(cls_list[i])
        reg_out = output_signature(reg_list[i])
        if reg_out is not None and reg_out.size != 4 * a:
            yield finding("error", "anchor-mismatch", ("anchor_generator", f"{REG}.module_list.{i}"),
                          f"anchor_generator makes {a} default boxes per location on map '{name}', so "
                          f"{REG}.module_list.{i} must output 4 × {a} = {4 * a} channels, but it outputs {reg_out.size}",
                          _conv_fix(REG, i, reg_list[i], width, 4 * a))
        if cls_out is not None:
            size = cls_out.size
            if size % a:
                yield finding("error", "anchor-mismatch", ("anchor_generator", f"{CLS}.module_list.{i}"),
                              f"{CLS}.module_list.{i} outputs {size} channels, not a multiple of the {a} default boxes "
                              f"per location on map '{name}'",
                              _conv_fix(CLS, i, cls_list[i], width, a * columns if isinstance(columns, int) else None))
            else:
                per_map_classes.append(size // a)
                if isinstance(columns, int) and size // a != columns:
                    yield finding("error", "num-classes-mismatch", (CLS, f"{CLS}.module_list.{i}"),
                                  f"{CLS}.num_columns is {columns} classes but {CLS}.module_list.{i} predicts "
                                  f"{size} / {a} = {size // a} classes per default box",
                                  _conv_fix(CLS, i, cls_list[i], width, a * columns))
    if not isinstance(columns, int) and len(set(per_map_classes)) > 1:
        yield finding("error", "num-classes-mismatch", (CLS,),
                      f"the maps of {CLS}.module_list predict different class counts per default box: {per_map_classes}; "
                      "every map must score the same classes",
                      f"rebuild {CLS} with one num_classes for every map")


def _conv_fix(head_path: str, i: int, entry: nn.Module, width: int, out: int | None) -> str:
    """A line replacing one per-map conv of an SSD head, or what to rebuild when it is not a plain conv."""
    target = f"model.{head_path}.module_list[{i}]"
    if isinstance(entry, nn.Conv2d) and out is not None:
        k, p = entry.kernel_size[0], entry.padding[0] if isinstance(entry.padding, tuple) else entry.padding
        return f"{target} = nn.Conv2d({width}, {out}, kernel_size={k}, padding={p})"
    wanted = f"{out} channels" if out is not None else "a multiple of its default boxes per location"
    return f"rebuild {target} ({type(entry).__name__}) to take {width} channels and output {wanted}"
