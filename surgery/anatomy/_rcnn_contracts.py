"""The contracts of torchvision's two-stage detectors (Faster, Mask and Keypoint R-CNN).

The bodies of the checks that :class:`surgery.anatomy.rcnn.RCNNAnatomy` declares: backbone
channels into the RPN head, anchors per location, anchor sizes per feature map, each RoI
branch (pooler names, pooler → head → predictor) and the predictors' class counts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from surgery import paths
from surgery._util import first_line
from surgery.anatomy._backbone import anchor_maps_findings, backbone_contracts_findings, backbone_features, common_width
from surgery.anatomy._base import PROBE_BATCH, Context, Contract, Features
from surgery.anatomy._feed import Flow, feed, finding, looks_like_shape, pool_size
from surgery.findings import Finding, Severity
from surgery.signature import in_width, input_signature, meta_like, out_width, output_signature

__all__ = ["BRANCHES", "contracts"]

#: Each RoI branch: kind → (pooler, head, predictor).
BRANCHES = {
    "box": ("roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"),
    "mask": ("roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"),
    "keypoint": ("roi_heads.keypoint_roi_pool", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor"),
}


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
    width, failed = common_width(ctx)
    if failed is not None:
        yield failed
    if width is None:
        return
    feats = _features(ctx)
    assert isinstance(feats, Features)  # a failed probe gives no common width
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
        cls_out = out_width(head.cls_logits)
        box_out = out_width(head.bbox_pred)
        width = in_width(head.cls_logits)
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


def _branch(ctx: Context, kind: str) -> Iterable[Finding]:
    pool_path, head_path, pred_path = BRANCHES[kind]
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
    layers = tuple(out_width(m) for m in head.modules() if isinstance(m, nn.Conv2d))
    cls = "MaskRCNNHeads" if kind == "mask" else "KeypointRCNNHeads"
    args = f"{width}, {layers or (256,)}, 1" if kind == "mask" else f"{width}, {layers or (512,)}"
    return f"model.roi_heads.{kind}_head = {cls}({args})"


def _predictor_fix(kind: str, predictor: nn.Module, width: int | None) -> str:
    if kind == "box":
        classes = _box_num_classes(predictor)
        return f"model.roi_heads.box_predictor = FastRCNNPredictor({width}, {classes or 'num_classes'})"
    if kind == "mask":
        dim = out_width(predictor.conv5_mask) if isinstance(predictor, MaskRCNNPredictor) else 256
        classes = _mask_num_classes(predictor)
        return f"model.roi_heads.mask_predictor = MaskRCNNPredictor({width}, {dim}, {classes or 'num_classes'})"
    kps = out_width(predictor.kps_score_lowres) if isinstance(predictor, KeypointRCNNPredictor) else "num_keypoints"
    return f"model.roi_heads.keypoint_predictor = KeypointRCNNPredictor({width}, {kps})"


def _box_num_classes(predictor: nn.Module) -> int | None:
    if isinstance(predictor, FastRCNNPredictor):
        return out_width(predictor.cls_score)
    return None


def _mask_num_classes(predictor: nn.Module) -> int | None:
    if isinstance(predictor, MaskRCNNPredictor):
        return out_width(predictor.mask_fcn_logits)
    sig = output_signature(predictor)
    return sig.size if sig is not None else None


def _box_outputs(ctx: Context) -> tuple[int, int] | None:
    """(classes, box deltas) of the box predictor, statically or by probe."""
    predictor = ctx.get("roi_heads.box_predictor")
    if isinstance(predictor, FastRCNNPredictor):
        return out_width(predictor.cls_score), out_width(predictor.bbox_pred)
    sig = input_signature(predictor)
    width = None
    if sig is not None:
        width = sig.size
    elif ctx.has("roi_heads.box_head"):
        out = output_signature(ctx.get("roi_heads.box_head"))
        width = out.size if out is not None else None
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
        if in_sig is not None:
            probe = ctx.probe("roi_heads.mask_predictor", (PROBE_BATCH, in_sig.size, 14, 14))
            if probe.ok and isinstance(probe.output, torch.Tensor):
                mask_classes = int(probe.output.shape[1])
    if mask_classes is not None and mask_classes != classes:
        width = input_signature(predictor)
        dim = out_width(predictor.conv5_mask) if isinstance(predictor, MaskRCNNPredictor) else 256
        yield finding("error", "num-classes-mismatch", ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
                      f"roi_heads.box_predictor has {classes} classes but roi_heads.mask_predictor predicts "
                      f"{mask_classes} mask channels; masks are picked by the box's class label, so they must agree",
                      f"model.roi_heads.mask_predictor = MaskRCNNPredictor({width.size if width else 256}, {dim}, {classes})")


def _keypoint_count(ctx: Context) -> Iterable[Finding]:
    """A keypoint predictor's ``out_channels`` (the keypoint count the targets and the loss use)
    against the heatmaps its ``kps_score_lowres`` really outputs."""
    predictor = ctx.get("roi_heads.keypoint_predictor")
    if not isinstance(predictor, KeypointRCNNPredictor):
        return
    declared = getattr(predictor, "out_channels", None)
    heatmaps = out_width(predictor.kps_score_lowres)
    if isinstance(declared, int) and declared != heatmaps:
        width = in_width(predictor.kps_score_lowres)
        yield finding("error", "channel-mismatch", ("roi_heads.keypoint_predictor",),
                      f"roi_heads.keypoint_predictor.out_channels says {declared} keypoints but its kps_score_lowres "
                      f"outputs {heatmaps} heatmaps; targets and the keypoint loss are sized by out_channels",
                      f"model.roi_heads.keypoint_predictor = KeypointRCNNPredictor({width}, {heatmaps})")


def _triples_complete(ctx: Context) -> Iterable[Finding]:
    for kind in ("mask", "keypoint"):
        triple = BRANCHES[kind]
        present = [p for p in triple if ctx.has(p)]
        if present and len(present) < 3:
            absent = [p for p in triple if p not in present]
            gate = "has_mask()" if kind == "mask" else "has_keypoint()"
            for p in present:
                yield finding("error", "orphan-module", (p,),
                              f"{p} is set but {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} None, so "
                              f"RoIHeads.{gate} is False and the {kind} branch never runs",
                              f"set {', '.join(absent)} too, or remove {p}")


def contracts() -> list[Contract]:
    """Every R-CNN contract; each runs only when all of its paths exist."""
    out = [
        Contract("backbone body → FPN → out_channels", ("backbone",), lambda ctx: backbone_contracts_findings(ctx, "backbone")),
        Contract("backbone channels → RPN head input", ("backbone", "rpn.head"), _rpn_channels),
        Contract("anchors per location → RPN head outputs", ("rpn.anchor_generator", "rpn.head"), _rpn_anchors),
        Contract("anchor size tuples → feature maps", ("backbone", "rpn.anchor_generator"), _anchor_maps),
    ]
    for kind, (pool, head, predictor) in BRANCHES.items():
        out.append(Contract(f"{kind} branch: pooler names, pooler → head → predictor", ("backbone", pool, head, predictor),
                            functools.partial(_branch, kind=kind)))
    out.append(Contract("box predictor classes: cls_score vs bbox_pred/4", ("roi_heads.box_predictor",), _box_classes))
    out.append(Contract("mask predictor classes vs box predictor classes", ("roi_heads.box_predictor", "roi_heads.mask_predictor"), _mask_classes))
    out.append(Contract("keypoint predictor: heatmaps vs out_channels", ("roi_heads.keypoint_predictor",), _keypoint_count))
    out.append(Contract("mask / keypoint triples complete", ("roi_heads",), _triples_complete, covers=()))
    return out
