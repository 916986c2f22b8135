"""Anatomy of torchvision's two-stage detectors: Faster, Mask and Keypoint R-CNN
(``GeneralizedRCNN``), including the ``_v2`` and MobileNet variants.

Everything the package knows about the family is here or in :mod:`._rcnn_contracts` (the
bodies of its checks): slots, data flow, loss keys, result keys, class-dependent layers, the
head → predictor adapt rules and the backbone body that ``freeze_backbone_layers`` reads.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from surgery import paths
from surgery.anatomy._backbone import anchor_generator_like, backbone_features, first_layer_like, kaiming_relu, pooler_like
from surgery.anatomy._base import (
    AdaptRule,
    AttrUpdate,
    BackbonePlan,
    ClassLayer,
    Context,
    Contract,
    Features,
    Rebuild,
    RowLayer,
    Slot,
)
from surgery.anatomy._detection import DetectionAnatomy
from surgery.anatomy._feed import pool_size
from surgery.anatomy._layers import int_attr, linear_default, need_layer
from surgery.anatomy._rcnn_contracts import BRANCHES, contracts
from surgery.signature import Signature, SlotSignature, output_signature

__all__ = ["RCNNAnatomy"]

_LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
_LOSS_SLOTS = {
    "loss_classifier": "roi_heads.box_predictor",
    "loss_box_reg": "roi_heads.box_predictor",
    "loss_objectness": "rpn.head",
    "loss_rpn_box_reg": "rpn.head",
    "loss_mask": "roi_heads.mask_predictor",
    "loss_keypoint": "roi_heads.keypoint_predictor",
}


def _branch_on(model: nn.Module, name: str) -> bool:
    """``model.roi_heads.has_mask()`` / ``has_keypoint()``, False when there is no such check."""
    check = getattr(getattr(model, "roi_heads", None), name, None)
    return bool(check()) if callable(check) else False


def _mask_logits_init(layer: RowLayer) -> None:
    # MaskRCNNPredictor: kaiming_normal_(fan_out, relu) on weights; its bias line is commented
    # out in torchvision, so the bias keeps nn.Conv2d's default initialisation.
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")


def _keypoint_init(layer: RowLayer) -> None:
    # KeypointRCNNPredictor: kaiming_normal_(fan_out, relu) on the weight, zero bias
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.constant_(layer.bias, 0.0)


def _child(module: nn.Module, name: str, kind: type[nn.Module]) -> nn.Module | None:
    child = module._modules.get(name)
    return child if isinstance(child, kind) else None


class RCNNAnatomy(DetectionAnatomy):
    """Faster / Mask / Keypoint R-CNN."""

    name = "R-CNN"
    class_slot = "roi_heads.box_predictor"
    box_slot = "roi_heads.box_predictor"

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
        for kind, (pool, head, predictor) in BRANCHES.items():
            edges += [(feat, pool), (pool, head), (head, predictor)]
            if kind != "box":
                edges.append(("roi_heads.box_predictor", pool))
        return edges

    def slots(self, model: nn.Module) -> list[Slot]:
        present = super().slots(model)
        has_split = any(s.path in ("backbone.body", "backbone.fpn") for s in present)
        # a backbone with body/fpn is listed by its parts; an opaque one as a whole
        return [s for s in present if not (s.path == "backbone" and has_split)]

    def signatures(self, model: nn.Module, path: str) -> tuple[SlotSignature | None, SlotSignature | None]:
        in_sig, out_sig = super().signatures(model, path)
        module = model.get_submodule(path)
        # the class scores / objectness, not the box deltas registered after them
        layer = "cls_score" if isinstance(module, FastRCNNPredictor) else "cls_logits" if isinstance(module, RPNHead) else None
        if layer is not None:
            sig = output_signature(module.get_submodule(layer))
            out_sig = Signature(sig.kind, sig.size, layer) if sig is not None else None
        return in_sig, out_sig

    def features(self, ctx: Context) -> Features | None:
        feats = backbone_features(ctx, "backbone", ctx.probe_image_size)
        return feats if isinstance(feats, Features) else None

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        return contracts()

    # ----------------------------------------------------------------------- surgery knowledge

    def has_masks(self, model: nn.Module) -> bool:
        return _branch_on(model, "has_mask")

    def num_keypoints(self, model: nn.Module) -> int | None:
        if not _branch_on(model, "has_keypoint"):
            return None
        predictor = getattr(getattr(model, "roi_heads", None), "keypoint_predictor", None)
        for value in (getattr(predictor, "out_channels", None), getattr(getattr(predictor, "kps_score_lowres", None), "out_channels", None)):
            if isinstance(value, int):
                return value
        return None

    def result_keys(self, model: nn.Module) -> dict[str, str | None]:
        keys = super().result_keys(model)
        if self.has_masks(model):
            keys["masks"] = "roi_heads.mask_predictor"
        if _branch_on(model, "has_keypoint"):
            keys["keypoints"] = keys["keypoints_scores"] = "roi_heads.keypoint_predictor"
        return keys

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        return (_LOSS_KEYS + (("loss_mask",) if self.has_masks(model) else ())
                + (("loss_keypoint",) if _branch_on(model, "has_keypoint") else ()))

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        return dict(_LOSS_SLOTS)

    def num_classes(self, model: nn.Module) -> int | None:
        cls_score = getattr(getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_score", None)
        weight = getattr(cls_score, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(weight, nn.parameter.UninitializedParameter):
            return int(weight.shape[0])  # the weight, not out_features, which goes stale when weights are sliced
        value = getattr(cls_score, "out_features", None)
        return int(value) if isinstance(value, int) else None

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """Box ``cls_score`` and ``bbox_pred`` (4 rows per class) and the mask logits; keypoint
        predictors predict keypoints, not classes."""
        box = "roi_heads.box_predictor"
        predictor = paths.get(model, box)
        cls_score, bbox_pred = predictor._modules.get("cls_score"), predictor._modules.get("bbox_pred")
        for name, layer in (("cls_score", cls_score), ("bbox_pred", bbox_pred)):
            if not isinstance(layer, nn.Linear):
                raise ValueError(
                    f"set_num_classes() rebuilds {box}.cls_score and {box}.bbox_pred (FastRCNNPredictor's layers), but "
                    f"{box} is a {type(predictor).__name__} without an nn.Linear {name!r}; replace it yourself with "
                    f"surgery.replace(model, {box!r}, FastRCNNPredictor(in_features, num_classes))"
                )
        assert isinstance(cls_score, nn.Linear) and isinstance(bbox_pred, nn.Linear)  # checked just above
        classes = int(cls_score.out_features)
        if bbox_pred.out_features != 4 * classes:
            raise ValueError(
                f"{box}.cls_score scores {classes} classes but {box}.bbox_pred predicts {bbox_pred.out_features} box deltas, "
                f"not 4 × {classes}; the predictor is inconsistent, so the rows of a class cannot be located. "
                f"Replace it with FastRCNNPredictor({cls_score.in_features}, {classes}) first"
            )
        layers = [
            ClassLayer(f"{box}.cls_score", box, 1, 1, classes, linear_default, "nn.Linear default"),
            ClassLayer(f"{box}.bbox_pred", box, 1, 4, classes, linear_default, "nn.Linear default"),
        ]
        mask = "roi_heads.mask_predictor"
        if paths.exists(model, mask):
            logits = need_layer(model, f"{mask}.mask_fcn_logits", (nn.Conv2d,), "MaskRCNNPredictor's 1×1 class conv")
            layers.append(ClassLayer(f"{mask}.mask_fcn_logits", mask, 1, 1, int_attr(logits, "out_channels"), _mask_logits_init,
                                     "kaiming_normal_(fan_out, relu) weights, nn.Conv2d default bias"))
        return layers, []

    def keypoint_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The keypoint predictor's ``kps_score_lowres`` (one heatmap channel per keypoint) and its
        ``out_channels``, which targets and the keypoint loss are sized by."""
        kp = "roi_heads.keypoint_predictor"
        if not _branch_on(model, "has_keypoint"):
            raise ValueError(
                f"set_num_keypoints() changes models that predict keypoints, but {type(model).__name__} has no keypoint "
                f"branch ({kp}, roi_heads.keypoint_head and roi_heads.keypoint_roi_pool are not all set)"
            )
        predictor = paths.get(model, kp)
        scores = need_layer(model, f"{kp}.kps_score_lowres", (nn.ConvTranspose2d,), "KeypointRCNNPredictor's heatmap deconvolution")
        if not isinstance(predictor, KeypointRCNNPredictor):
            raise ValueError(
                f"set_num_keypoints() rebuilds {kp}.kps_score_lowres of torchvision's KeypointRCNNPredictor, but {kp} is a "
                f"{type(predictor).__name__}; replace it yourself with surgery.replace(model, {kp!r}, "
                f"KeypointRCNNPredictor(in_channels, num_keypoints))"
            )
        return (
            [ClassLayer(f"{kp}.kps_score_lowres", kp, 1, 1, int_attr(scores, "out_channels"), _keypoint_init,
                        "kaiming_normal_(fan_out, relu) weights, zero bias")],
            [AttrUpdate(kp, "out_channels")],
        )

    def adapt_rule(self, model: nn.Module, path: str) -> AdaptRule:
        if path == "backbone":
            return AdaptRule("backbone", "backbone", "rpn.head")
        for kind, (pool, head, predictor) in BRANCHES.items():
            if path in (head, predictor):
                return AdaptRule(kind, head, predictor, pool)
        known = ", ".join(head for _, head, _ in BRANCHES.values())
        raise ValueError(
            f"adapt rebuilds what follows the backbone ('backbone') and the predictor behind an R-CNN head "
            f"({known}, or the predictors themselves); "
            f"{path!r} of {type(model).__name__} has no such rule. Rebuild its consumers yourself inside "
            "`with surgery.edit(model) as e:` and the whole change is checked once at the end"
        )

    def consumers(self, model: nn.Module, path: str) -> list[str]:
        if path == "backbone":
            fed = ["rpn.anchor_generator", "rpn.head"] + [p for branch in BRANCHES.values() for p in branch]
            return [p for p in fed if paths.exists(model, p)]
        return [predictor for _, head, predictor in BRANCHES.values() if head == path]

    def backbone_plan(self, model: nn.Module, path: str, feats: Features) -> BackbonePlan:
        """After a new backbone: ``backbone.out_channels``, the anchor generator (one level per
        map, sizes spread by :func:`~surgery.anatomy._backbone.spread_sizes`), the RPN head
        (channels, anchors per location), each RoI pooler's ``featmap_names`` (every map but
        ``pool``) and the first layer of each head behind a pooler."""
        plan = BackbonePlan()
        width = feats.common_channels()
        if width is None:
            raise ValueError(
                f"the new backbone's feature maps have different channel counts {feats.channels}, but the R-CNN RPN head "
                "and RoI heads share their layers across maps and need one width; put a feature pyramid on it "
                "(surgery.detection_backbone(..., fpn=True)) or a 1×1 conv per map"
            )
        backbone = paths.get(model, path)
        if getattr(backbone, "out_channels", None) != width:
            plan.attributes.append((path, "out_channels", width))
        anchors = None
        gen_path = "rpn.anchor_generator"
        if paths.exists(model, gen_path):
            gen = paths.get(model, gen_path)
            built = anchor_generator_like(gen, len(feats.names))
            if built is not None:
                plan.rebuilds.append(Rebuild(gen_path, *built))
                gen = built[0]
            per_location = getattr(gen, "num_anchors_per_location", None)
            counts = sorted({int(a) for a in per_location()}) if callable(per_location) else []
            anchors = counts[0] if len(counts) == 1 else None
        head_path = "rpn.head"
        if paths.exists(model, head_path):
            head = paths.get(model, head_path)
            if isinstance(head, RPNHead):
                old_width, old_anchors = int(head.cls_logits.in_channels), int(head.cls_logits.out_channels)
                new_anchors = anchors if anchors is not None else old_anchors
                if (old_width, old_anchors) != (width, new_anchors):
                    depth = len(head.conv)
                    extra = f", conv_depth={depth}" if depth != 1 else ""
                    plan.rebuilds.append(Rebuild(head_path, RPNHead(width, new_anchors, conv_depth=depth),
                                                 f"RPNHead({old_width}, {old_anchors}{extra})", f"RPNHead({width}, {new_anchors}{extra})"))
            else:
                plan.notes.append(f"{head_path} is a {type(head).__name__}, which adapt cannot rebuild; it must take {width} "
                                  f"channels and predict {anchors if anchors is not None else 'its'} anchors per location")
        names = [n for n in feats.names if n != "pool"] or list(feats.names)
        for pool_path, branch_head, _ in BRANCHES.values():
            if not paths.exists(model, pool_path):
                continue
            pool = paths.get(model, pool_path)
            built_pool = pooler_like(pool, names)
            if built_pool is not None:
                plan.rebuilds.append(Rebuild(pool_path, *built_pool))
            if not paths.exists(model, branch_head):
                continue
            head = paths.get(model, branch_head)
            built_head = first_layer_like(head, width, pool_size(getattr(pool, "output_size", None)), kaiming_relu)
            if built_head is not None:
                plan.rebuilds.append(Rebuild(branch_head, *built_head))
            elif self._head_width(head, pool) not in (None, width):
                plan.notes.append(f"{branch_head} is a {type(head).__name__} whose first layer adapt cannot rebuild; "
                                  f"rebuild it to take {width}-channel RoI features")
        return plan

    @staticmethod
    def _head_width(head: nn.Module, pool: nn.Module) -> int | None:
        layer = next((m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if isinstance(layer, nn.Conv2d):
            return int(layer.in_channels)
        size = pool_size(getattr(pool, "output_size", None))
        if isinstance(layer, nn.Linear) and size is not None:
            return int(layer.in_features) // (size[0] * size[1])
        return None

    def rebuild_consumer(self, module: nn.Module, width: int) -> tuple[nn.Module, str, str] | None:
        """torchvision's predictor like ``module`` taking ``width``, every other hyperparameter kept."""
        kind = type(module)
        cls_score = _child(module, "cls_score", nn.Linear)
        if kind is FastRCNNPredictor and isinstance(cls_score, nn.Linear):
            classes = int(cls_score.out_features)
            return (FastRCNNPredictor(width, classes), f"FastRCNNPredictor({cls_score.in_features}, {classes})",
                    f"FastRCNNPredictor({width}, {classes})")
        conv5 = _child(module, "conv5_mask", nn.ConvTranspose2d)
        logits = _child(module, "mask_fcn_logits", nn.Conv2d)
        if kind is MaskRCNNPredictor and isinstance(conv5, nn.ConvTranspose2d) and isinstance(logits, nn.Conv2d):
            dim, classes = int(conv5.out_channels), int(logits.out_channels)
            return (MaskRCNNPredictor(width, dim, classes), f"MaskRCNNPredictor({conv5.in_channels}, {dim}, {classes})",
                    f"MaskRCNNPredictor({width}, {dim}, {classes})")
        scores = _child(module, "kps_score_lowres", nn.ConvTranspose2d)
        if kind is KeypointRCNNPredictor and isinstance(scores, nn.ConvTranspose2d):
            keypoints = int(scores.out_channels)
            new = KeypointRCNNPredictor(width, keypoints)
            new.up_scale = getattr(module, "up_scale", new.up_scale)
            return (new, f"KeypointRCNNPredictor({scores.in_channels}, {keypoints})", f"KeypointRCNNPredictor({width}, {keypoints})")
        return None

    def rebuild_note(self, consumer: str, module: nn.Module, width: int) -> str:
        """Why a consumer was left as it is, when :meth:`rebuild_consumer` could not rebuild it."""
        return (f"adapt rebuilds torchvision's FastRCNNPredictor, MaskRCNNPredictor and KeypointRCNNPredictor; "
                f"{consumer} is a {type(module).__name__}, so it was left as it is: rebuild it to take {width}")

    def consumed_width(self, module: nn.Module) -> int | None:
        for layer in ("cls_score", "conv5_mask", "kps_score_lowres"):
            child = module._modules.get(layer)
            if isinstance(child, nn.Linear):
                return int(child.in_features)
            if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
                return int(child.in_channels)
        return None

    def flow_label(self, model: nn.Module, src: str, dst: str) -> str | None:
        consumer = paths.get(model, dst) if paths.exists(model, dst) else None
        is_pooler = consumer is not None and hasattr(consumer, "featmap_names") and hasattr(consumer, "output_size")
        inherited = super().flow_label(model, src, dst)
        if inherited is not None:
            return inherited
        if is_pooler and src.startswith(("rpn.", "roi_heads.")):
            return "proposals" if src.startswith("rpn.") else "detections"
        return None

    def carries_features(self, model: nn.Module, path: str) -> bool:
        return super().carries_features(model, path) and not path.startswith(("rpn.", "roi_heads."))
