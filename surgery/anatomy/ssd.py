"""Anatomy of torchvision's SSD and SSDlite: per-map heads over a multi-scale extractor."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torchvision.models.detection.ssd import SSD

from surgery.anatomy._backbone import backbone_features
from surgery.anatomy._base import Anatomy, Context, Contract, Features, Flow, Slot, feed, finding
from surgery.findings import Finding
from surgery.signature import output_signature

__all__ = ["SSDAnatomy"]

CLS = "head.classification_head"
REG = "head.regression_head"


class SSDAnatomy(Anatomy):
    """SSD300 (VGG16) and SSDlite320 (MobileNetV3)."""

    name = "SSD"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, SSD)

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

    def contracts(self, model: nn.Module) -> list[Contract]:
        return [Contract("feature maps → per-map heads, anchors, classes", ("backbone", "anchor_generator", CLS, REG), _ssd)]


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
    anchors = [int(a) for a in gen.num_anchors_per_location()] if callable(getattr(gen, "num_anchors_per_location", None)) else []
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
        for head_path in (CLS, REG):
            findings, _ = feed(ctx, "backbone", Flow(None, width), f"{head_path}.module_list.{i}",
                               fix=f"make {head_path}.module_list.{i} take {width} channels")
            yield from findings
        a = anchors[i]
        cls_out = output_signature(cls_list[i])
        reg_out = output_signature(reg_list[i])
        if reg_out is not None and int(reg_out.size) != 4 * a:  # type: ignore[arg-type]
            yield finding("error", "anchor-mismatch", ("anchor_generator", f"{REG}.module_list.{i}"),
                          f"anchor_generator makes {a} default boxes per location on map '{name}', so "
                          f"{REG}.module_list.{i} must output 4 × {a} = {4 * a} channels, but it outputs {reg_out.size}",
                          f"nn.Conv2d({width}, {4 * a}, kernel_size=3, padding=1)")
        if cls_out is not None:
            size = int(cls_out.size)  # type: ignore[arg-type]
            if size % a:
                yield finding("error", "anchor-mismatch", ("anchor_generator", f"{CLS}.module_list.{i}"),
                              f"{CLS}.module_list.{i} outputs {size} channels, not a multiple of the {a} default boxes "
                              f"per location on map '{name}'",
                              f"nn.Conv2d({width}, {a} * num_classes, kernel_size=3, padding=1)")
            else:
                per_map_classes.append(size // a)
                if isinstance(columns, int) and size // a != columns:
                    yield finding("error", "num-classes-mismatch", (CLS, f"{CLS}.module_list.{i}"),
                                  f"{CLS}.num_columns is {columns} classes but {CLS}.module_list.{i} predicts "
                                  f"{size} / {a} = {size // a} classes per default box",
                                  f"nn.Conv2d({width}, {a * columns}, kernel_size=3, padding=1)")
