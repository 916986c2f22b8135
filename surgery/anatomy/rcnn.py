"""Anatomy of torchvision's two-stage detectors: Faster, Mask and Keypoint R-CNN
(``GeneralizedRCNN``), including the ``_v2`` and MobileNet variants."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from surgery import paths
from surgery.anatomy._backbone import backbone_contracts_findings, backbone_features
from surgery.anatomy._base import (
    PROBE_BATCH,
    Anatomy,
    Context,
    Contract,
    Features,
    Flow,
    Slot,
    feed,
    finding,
    first_line,
    looks_like_shape,
)
from surgery.findings import Finding, Severity
from surgery.signature import Signature, input_signature, meta_like, output_signature

__all__ = ["RCNNAnatomy", "pool_size"]

_BRANCHES = {
    # kind: (pool, head, predictor, what the predictor makes)
    "box": ("roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"),
    "mask": ("roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"),
    "keypoint": ("roi_heads.keypoint_roi_pool", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor"),
}


def pool_size(value: object) -> tuple[int, int] | None:
    """An RoI pooler's ``output_size`` (an int or a pair) as ``(h, w)``, or None when it is neither."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


class RCNNAnatomy(Anatomy):
    """Faster / Mask / Keypoint R-CNN."""

    name = "R-CNN"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, GeneralizedRCNN)

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        return [
            Slot("transform", "transform: images → normalized, resized, batched ImageList", "GeneralizedRCNNTransform"),
            Slot("backbone", "backbone: image → feature maps (OrderedDict of tensors with out_channels each)",
                 "a module with .out_channels returning an OrderedDict of feature maps"),
            Slot("backbone.body", "backbone body: image → multi-scale features", "a feature extractor returning a dict"),
            Slot("backbone.fpn", "feature pyramid: body features → FPN maps", "FeaturePyramidNetwork or a module with the same inputs and outputs"),
            Slot("rpn.anchor_generator", "anchor generator: feature maps → anchors", "AnchorGenerator with one sizes tuple per feature map"),
            Slot("rpn.head", "RPN head: feature maps → objectness + box deltas per anchor", "RPNHead(in_channels, num_anchors)"),
            Slot("roi_heads.box_roi_pool", "box RoI pooler: feature maps + proposals → RoI features", "MultiScaleRoIAlign"),
            Slot("roi_heads.box_head", "box head: RoI features → box features", "TwoMLPHead, FastRCNNConvFCHead or any (R, C, h, w) → (R, F) module"),
            Slot("roi_heads.box_predictor", "box predictor: box features → class scores + box deltas", "FastRCNNPredictor(F, num_classes)"),
            Slot("roi_heads.mask_roi_pool", "mask RoI pooler: feature maps + detections → RoI features", "MultiScaleRoIAlign", True),
            Slot("roi_heads.mask_head", "mask head: RoI features → mask features", "MaskRCNNHeads or any (R, C, 14, 14) → (R, C', 14, 14) module", True),
            Slot("roi_heads.mask_predictor", "mask predictor: mask features → per-class mask logits", "MaskRCNNPredictor(C', dim_reduced, num_classes)", True),
            Slot("roi_heads.keypoint_roi_pool", "keypoint RoI pooler: feature maps + detections → RoI features", "MultiScaleRoIAlign", True),
            Slot("roi_heads.keypoint_head", "keypoint head: RoI features → keypoint features", "KeypointRCNNHeads or any (R, C, 14, 14) → (R, C', 14, 14) module", True),
            Slot("roi_heads.keypoint_predictor", "keypoint predictor: keypoint features → keypoint heatmaps", "KeypointRCNNPredictor(C', num_keypoints)", True),
        ]

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        split = paths.exists(model, "backbone.body") and paths.exists(model, "backbone.fpn")
        feat = "backbone.fpn" if split else "backbone"
        edges = [("transform", "backbone.body"), ("backbone.body", "backbone.fpn")] if split else [("transform", "backbone")]
        edges += [
            (feat, "rpn.head"),
            (feat, "rpn.anchor_generator"),
            ("rpn.head", "roi_heads.box_roi_pool"),
            ("rpn.anchor_generator", "roi_heads.box_roi_pool"),
        ]
        for kind, (pool, head, predictor) in _BRANCHES.items():
            edges += [(feat, pool), (pool, head), (head, predictor)]
            if kind != "box":
                edges.append(("roi_heads.box_predictor", pool))
        return edges

    def slots(self, model: nn.Module) -> list[Slot]:
        present = super().slots(model)
        has_split = any(s.path in ("backbone.body", "backbone.fpn") for s in present)
        # a backbone with body/fpn is listed by its parts; an opaque one as a whole
        return [s for s in present if not (s.path == "backbone" and has_split)]

    def signatures(self, model: nn.Module, path: str) -> tuple[Signature | None, Signature | None]:
        in_sig, out_sig = super().signatures(model, path)
        module = model.get_submodule(path)
        if isinstance(module, FastRCNNPredictor):
            out_sig = Signature("features", int(module.cls_score.out_features), "cls_score")
        elif isinstance(module, RPNHead):
            out_sig = Signature("channels", int(module.cls_logits.out_channels), "cls_logits")
        return in_sig, out_sig

    def features(self, ctx: Context) -> Features | None:
        feats = backbone_features(ctx, "backbone", _probe_size(ctx))
        return feats if isinstance(feats, Features) else None

    def contracts(self, model: nn.Module) -> list[Contract]:
        out = [
            Contract("backbone body → FPN → out_channels", ("backbone",), lambda ctx: backbone_contracts_findings(ctx, "backbone")),
            Contract("backbone channels → RPN head input", ("backbone", "rpn.head"), _rpn_channels),
            Contract("anchors per location → RPN head outputs", ("rpn.anchor_generator", "rpn.head"), _rpn_anchors),
            Contract("anchor size tuples → feature maps", ("backbone", "rpn.anchor_generator"), _anchor_maps),
        ]
        for kind, (pool, head, predictor) in _BRANCHES.items():
            out.append(Contract(f"{kind} branch: pooler names, pooler → head → predictor", ("backbone", pool, head, predictor),
                                functools.partial(_branch, kind=kind)))
        out.append(Contract("box predictor classes: cls_score vs bbox_pred/4", ("roi_heads.box_predictor",), _box_classes))
        out.append(Contract("mask predictor classes vs box predictor classes", ("roi_heads.box_predictor", "roi_heads.mask_predictor"), _mask_classes))
        out.append(Contract("mask / keypoint triples complete", ("roi_heads",), _triples_complete))
        return out


def _probe_size(ctx: Context) -> int:
    return ctx.probe_image_size


def _features(ctx: Context) -> Features | Finding:
    return backbone_features(ctx, "backbone", _probe_size(ctx))


def _feature_flow(ctx: Context, feats: Features) -> list[torch.Tensor]:
    size = _probe_size(ctx)
    tensors = []
    for i, name in enumerate(feats.names):
        if name in feats.shapes:
            tensors.append(meta_like(feats.shapes[name]))
        else:
            side = max(1, size // (4 * 2**i))
            tensors.append(meta_like((PROBE_BATCH, feats.channels[name] or 1, side, side)))
    return tensors


def _rpn_channels(ctx: Context) -> Iterable[Finding]:
    feats = _features(ctx)
    if isinstance(feats, Finding):
        yield feats
        return
    width = feats.common_channels()
    if width is None:
        return
    head = ctx.get("rpn.head")
    anchors = _anchors_per_location(ctx)
    fix = f"model.rpn.head = RPNHead({width}, {anchors[0] if anchors else 3})"
    if isinstance(head, RPNHead):
        findings, _ = feed(ctx, "backbone", Flow(None, width), "rpn.head", fix=fix)
        yield from findings
        return
    probe = ctx.probe_with("rpn.head", "features", _feature_flow(ctx, feats))
    if not probe.ok and not probe.inconclusive:
        sig = input_signature(head)
        wrong_width = sig is not None and sig.size != width
        expects = f"expects {sig.size} (in rpn.head.{sig.source}) and raised" if sig is not None and wrong_width else "raised"
        code = "channel-mismatch" if wrong_width or looks_like_shape(probe.error) else "shape-error"
        yield finding("error", code, ("backbone", "rpn.head"),
                      f"backbone produces {width} channels but rpn.head ({type(head).__name__}) {expects}: "
                      f"{type(probe.error).__name__} in {paths.join('rpn.head', probe.where)}: {first_line(probe.error)}",
                      fix)


def _anchors_per_location(ctx: Context) -> list[int]:
    gen = ctx.get("rpn.anchor_generator")
    fn = getattr(gen, "num_anchors_per_location", None)
    return [int(a) for a in fn()] if callable(fn) else []


def _rpn_anchors(ctx: Context) -> Iterable[Finding]:
    anchors = _anchors_per_location(ctx)
    if not anchors:
        return
    head = ctx.get("rpn.head")
    if isinstance(head, RPNHead):
        cls_out = int(head.cls_logits.out_channels)
        box_out = int(head.bbox_pred.out_channels)
        width = int(head.cls_logits.in_channels)
    else:
        feats = _features(ctx)
        if isinstance(feats, Finding):
            return
        probe = ctx.probe_with("rpn.head", "features", _feature_flow(ctx, feats))
        if not probe.ok:
            return  # reported by the channel contract
        outputs = _rpn_outputs(probe.output)
        if outputs is None:
            return
        cls_out, box_out = outputs
        width = feats.common_channels() or 256
    where = "rpn.head.cls_logits" if isinstance(head, RPNHead) else "first output of rpn.head"
    where_box = "rpn.head.bbox_pred" if isinstance(head, RPNHead) else "second output of rpn.head"
    distinct = sorted(set(anchors))
    if len(distinct) > 1:
        yield finding("error", "anchor-mismatch", ("rpn.anchor_generator", "rpn.head"),
                      f"rpn.anchor_generator makes {anchors} anchors per location on its feature maps, but rpn.head "
                      f"shares one conv across maps and predicts {cls_out} per location; every map needs the same count",
                      "give every feature map the same number of sizes × aspect ratios")
        return
    a = distinct[0]
    if cls_out != a:
        yield finding("error", "anchor-mismatch", ("rpn.anchor_generator", "rpn.head"),
                      f"rpn.anchor_generator makes {a} anchors per location but rpn.head predicts {cls_out} "
                      f"objectness scores per location ({where})",
                      f"model.rpn.head = RPNHead({width}, {a})")
    if box_out != 4 * a:
        yield finding("error", "anchor-mismatch", ("rpn.anchor_generator", "rpn.head"),
                      f"rpn.anchor_generator makes {a} anchors per location, so rpn.head must predict 4 × {a} = {4 * a} "
                      f"box deltas per location, but {where_box} gives {box_out}",
                      f"model.rpn.head = RPNHead({width}, {a})")


def _rpn_outputs(output: object) -> tuple[int, int] | None:
    """(objectness, box deltas) channels per location from an RPN head's ``(logits, deltas)`` lists."""
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        return None
    logits, deltas = output
    if not (isinstance(logits, (tuple, list)) and isinstance(deltas, (tuple, list)) and logits and deltas):
        return None
    if not (isinstance(logits[0], torch.Tensor) and isinstance(deltas[0], torch.Tensor)):
        return None
    if logits[0].dim() < 2 or deltas[0].dim() < 2:
        return None
    return int(logits[0].shape[1]), int(deltas[0].shape[1])


def _anchor_maps(ctx: Context) -> Iterable[Finding]:
    gen = ctx.get("rpn.anchor_generator")
    sizes = getattr(gen, "sizes", None)
    ratios = getattr(gen, "aspect_ratios", None)
    if sizes is None:
        return
    yield from anchor_maps_findings(ctx, "rpn.anchor_generator", list(sizes), list(ratios) if ratios is not None else None, _features(ctx))


def anchor_maps_findings(ctx: Context, gen_path: str, sizes: list, ratios: list | None, feats: Features | Finding) -> Iterable[Finding]:
    """Sizes tuples vs aspect-ratio tuples vs the number of feature maps (shared with dense detectors)."""
    if ratios is not None and len(ratios) != len(sizes):
        yield finding("error", "anchor-mismatch", (gen_path,),
                      f"{gen_path} has {len(sizes)} sizes tuples but {len(ratios)} aspect_ratios tuples; they must pair up",
                      f"aspect_ratios=((0.5, 1.0, 2.0),) * {len(sizes)}")
    if isinstance(feats, Finding) or not feats.names:
        return
    n = len(feats.names)
    if len(sizes) != n:
        example = tuple((32 * 2**i,) for i in range(n))
        yield finding("error", "anchor-mismatch", ("backbone", gen_path),
                      f"backbone produces {n} feature maps {feats.names} but {gen_path} has {len(sizes)} sizes tuples; "
                      "it needs one per feature map",
                      f"model.{gen_path} = AnchorGenerator(sizes={example}, aspect_ratios=((0.5, 1.0, 2.0),) * {n})")


def _branch(ctx: Context, kind: str) -> Iterable[Finding]:
    pool_path, head_path, pred_path = _BRANCHES[kind]
    if not all(ctx.has(p) for p in (pool_path, head_path, pred_path)):
        return
    feats = _features(ctx)
    if isinstance(feats, Finding):
        yield feats
        return
    pool = ctx.get(pool_path)
    names = getattr(pool, "featmap_names", None)
    if names is not None and feats.names:
        missing = [n for n in names if n not in feats.names]
        if missing:
            present = [n for n in names if n in feats.names]
            severity: Severity = "warning" if present else "error"
            keep = present or [n for n in feats.names if n != "pool"] or feats.names
            fix_size = pool_size(getattr(pool, "output_size", None)) or (7, 7)
            sampling = getattr(pool, "sampling_ratio", 2)
            yield finding(severity, "featmap-missing", ("backbone", pool_path),
                          f"{pool_path} pools feature maps {list(names)} but the backbone produces {feats.names}; "
                          f"{missing} {'is' if len(missing) == 1 else 'are'} silently ignored"
                          + ("" if present else ", so no map at all is pooled"),
                          f"model.{pool_path} = MultiScaleRoIAlign(featmap_names={keep}, output_size={fix_size[0]}, sampling_ratio={sampling})")
            if not present:
                return
    width = feats.common_channels()
    out_size = pool_size(getattr(pool, "output_size", None))
    if width is None or out_size is None:
        return
    pooled = Flow((width, *out_size), width)
    head = ctx.get(head_path)
    findings, head_flow = feed(ctx, pool_path, pooled, head_path, fix=_head_fix(kind, head, width, out_size))
    yield from findings
    if findings or head_flow is None:
        return
    predictor = ctx.get(pred_path)
    if kind == "box" and not isinstance(predictor, FastRCNNPredictor) and head_flow.width is not None:
        # a custom predictor returns (scores, deltas): probe it directly
        probe = ctx.probe(pred_path, (PROBE_BATCH, *(head_flow.shape or (head_flow.width,))))
        if not probe.ok and not probe.inconclusive:
            yield finding("error", "channel-mismatch" if looks_like_shape(probe.error) else "shape-error", (head_path, pred_path),
                          f"{head_path} produces {head_flow.describe()} features but {pred_path} ({type(predictor).__name__}) "
                          f"raised on them: {type(probe.error).__name__} in {paths.join(pred_path, probe.where)}: "
                          f"{first_line(probe.error)}",
                          _predictor_fix(kind, predictor, head_flow.width))
        return
    findings, _ = feed(ctx, head_path, head_flow, pred_path, fix=_predictor_fix(kind, predictor, head_flow.width))
    yield from findings


def _head_fix(kind: str, head: nn.Module, width: int, out_size: tuple[int, int]) -> str:
    if kind == "box":
        sig = input_signature(head)
        rep = output_signature(head)
        if sig is not None and sig.kind == "features":
            return f"model.roi_heads.box_head = TwoMLPHead({width} * {out_size[0]} * {out_size[1]}, {rep.size if rep else 1024})"
        return f"rebuild roi_heads.box_head to take {width}-channel {out_size[0]}×{out_size[1]} RoI features"
    layers = tuple(int(m.out_channels) for m in head.modules() if isinstance(m, nn.Conv2d))
    cls = "MaskRCNNHeads" if kind == "mask" else "KeypointRCNNHeads"
    args = f"{width}, {layers or (256,)}, 1" if kind == "mask" else f"{width}, {layers or (512,)}"
    return f"model.roi_heads.{kind}_head = {cls}({args})"


def _predictor_fix(kind: str, predictor: nn.Module, width: int | None) -> str:
    if kind == "box":
        classes = _box_num_classes(predictor)
        return f"model.roi_heads.box_predictor = FastRCNNPredictor({width}, {classes or 'num_classes'})"
    if kind == "mask":
        dim = int(predictor.conv5_mask.out_channels) if isinstance(predictor, MaskRCNNPredictor) else 256
        classes = _mask_num_classes(predictor)
        return f"model.roi_heads.mask_predictor = MaskRCNNPredictor({width}, {dim}, {classes or 'num_classes'})"
    kps = int(predictor.kps_score_lowres.out_channels) if isinstance(predictor, KeypointRCNNPredictor) else "num_keypoints"
    return f"model.roi_heads.keypoint_predictor = KeypointRCNNPredictor({width}, {kps})"


def _box_num_classes(predictor: nn.Module) -> int | None:
    if isinstance(predictor, FastRCNNPredictor):
        return int(predictor.cls_score.out_features)
    return None


def _mask_num_classes(predictor: nn.Module) -> int | None:
    if isinstance(predictor, MaskRCNNPredictor):
        return int(predictor.mask_fcn_logits.out_channels)
    sig = output_signature(predictor)
    return int(sig.size) if sig is not None and isinstance(sig.size, int) else None


def _box_outputs(ctx: Context) -> tuple[int, int] | None:
    """(classes, box deltas) of the box predictor, statically or by probe."""
    predictor = ctx.get("roi_heads.box_predictor")
    if isinstance(predictor, FastRCNNPredictor):
        return int(predictor.cls_score.out_features), int(predictor.bbox_pred.out_features)
    sig = input_signature(predictor)
    width = None
    if sig is not None and isinstance(sig.size, int):
        width = sig.size
    elif ctx.has("roi_heads.box_head"):
        out = output_signature(ctx.get("roi_heads.box_head"))
        width = int(out.size) if out is not None and isinstance(out.size, int) else None
    if width is None:
        return None
    probe = ctx.probe("roi_heads.box_predictor", (PROBE_BATCH, width))
    if probe.ok and isinstance(probe.output, (tuple, list)) and len(probe.output) == 2:
        scores, deltas = probe.output
        return int(scores.shape[-1]), int(deltas.shape[-1])
    return None


def _box_classes(ctx: Context) -> Iterable[Finding]:
    outs = _box_outputs(ctx)
    if outs is None:
        return
    classes, deltas = outs
    if deltas != 4 * classes:
        predictor = ctx.get("roi_heads.box_predictor")
        sig = input_signature(predictor)
        yield finding("error", "num-classes-mismatch", ("roi_heads.box_predictor",),
                      f"roi_heads.box_predictor scores {classes} classes but predicts {deltas} box deltas; "
                      f"it needs 4 × {classes} = {4 * classes} (one box per class)",
                      f"model.roi_heads.box_predictor = FastRCNNPredictor({sig.size if sig else 'in_features'}, {classes})")


def _mask_classes(ctx: Context) -> Iterable[Finding]:
    outs = _box_outputs(ctx)
    if outs is None or not ctx.has("roi_heads.mask_predictor"):
        return
    classes = outs[0]
    predictor = ctx.get("roi_heads.mask_predictor")
    mask_classes = _mask_num_classes(predictor)
    if not isinstance(predictor, MaskRCNNPredictor):
        in_sig = input_signature(predictor)
        if in_sig is not None and isinstance(in_sig.size, int):
            probe = ctx.probe("roi_heads.mask_predictor", (PROBE_BATCH, in_sig.size, 14, 14))
            if probe.ok and isinstance(probe.output, torch.Tensor):
                mask_classes = int(probe.output.shape[1])
    if mask_classes is not None and mask_classes != classes:
        width = input_signature(predictor)
        dim = int(predictor.conv5_mask.out_channels) if isinstance(predictor, MaskRCNNPredictor) else 256
        yield finding("error", "num-classes-mismatch", ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
                      f"roi_heads.box_predictor has {classes} classes but roi_heads.mask_predictor predicts "
                      f"{mask_classes} mask channels; masks are picked by the box's class label, so they must agree",
                      f"model.roi_heads.mask_predictor = MaskRCNNPredictor({width.size if width else 256}, {dim}, {classes})")


def _triples_complete(ctx: Context) -> Iterable[Finding]:
    for kind in ("mask", "keypoint"):
        triple = _BRANCHES[kind]
        present = [p for p in triple if ctx.has(p)]
        if present and len(present) < 3:
            absent = [p for p in triple if p not in present]
            gate = "has_mask()" if kind == "mask" else "has_keypoint()"
            for p in present:
                yield finding("error", "orphan-module", (p,),
                              f"{p} is set but {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} None, so "
                              f"RoIHeads.{gate} is False and the {kind} branch never runs",
                              f"set {', '.join(absent)} too, or remove {p}")
