"""``surgery.set_num_classes``: every class-dependent layer, kept rows copied exactly."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

import surgery
from surgery import ClassChange, Finding, IncompatibleError, Report
from surgery.signature import meta_like, meta_probe
from tests.helpers import build, fingerprint

COCO_KEEP = [0, 1, 3, 18]  # background, person, car, dog


def light_maskrcnn() -> nn.Module:
    return MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), 91)


def rows(tensor: torch.Tensor, indices: list[int]) -> torch.Tensor:
    return tensor.detach()[indices]


def box_rows(classes: list[int]) -> list[int]:
    return [4 * k + j for k in classes for j in range(4)]


def test_mask_rcnn_keep_list_copies_exact_rows() -> None:
    model = build("maskrcnn_resnet50_fpn")
    old_cls = model.roi_heads.box_predictor.cls_score
    old_box = model.roi_heads.box_predictor.bbox_pred
    old_mask = model.roi_heads.mask_predictor.mask_fcn_logits
    conv5 = model.roi_heads.mask_predictor.conv5_mask
    change = surgery.set_num_classes(model, 4, keep=COCO_KEEP)
    assert isinstance(change, ClassChange)
    assert (change.old_num_classes, change.num_classes, change.kept) == (91, 4, {0: 0, 1: 1, 2: 3, 3: 18})
    assert change.rebuilt == {
        "roi_heads.box_predictor.cls_score": "Linear(1024, 91) → Linear(1024, 4)",
        "roi_heads.box_predictor.bbox_pred": "Linear(1024, 364) → Linear(1024, 16)",
        "roi_heads.mask_predictor.mask_fcn_logits": "Conv2d(256, 91, kernel_size=(1, 1)) → Conv2d(256, 4, kernel_size=(1, 1))",
    }
    cls, box, mask = model.roi_heads.box_predictor.cls_score, model.roi_heads.box_predictor.bbox_pred, model.roi_heads.mask_predictor.mask_fcn_logits
    assert (cls.out_features, box.out_features, mask.out_channels) == (4, 16, 4)
    assert torch.equal(cls.weight, rows(old_cls.weight, COCO_KEEP))
    assert torch.equal(cls.bias, rows(old_cls.bias, COCO_KEEP))
    assert torch.equal(box.weight, rows(old_box.weight, box_rows(COCO_KEEP)))  # 4 rows per class
    assert torch.equal(box.bias, rows(old_box.bias, box_rows(COCO_KEEP)))
    assert torch.equal(mask.weight, rows(old_mask.weight, COCO_KEEP))
    assert torch.equal(mask.bias, rows(old_mask.bias, COCO_KEEP))
    assert change.copied["roi_heads.box_predictor.bbox_pred.weight"] == list(zip(range(16), box_rows(COCO_KEEP), strict=True))
    assert change.copied["roi_heads.box_predictor.cls_score.bias"] == [(0, 0), (1, 1), (2, 3), (3, 18)]
    assert change.initialised["roi_heads.box_predictor.cls_score.weight"] == []
    assert model.roi_heads.mask_predictor.conv5_mask is conv5  # not class-dependent: untouched
    assert change.report is not None and change.report.ok
    assert surgery.check(model).findings == []


def test_forward_shapes_follow_the_new_class_count() -> None:
    model = light_maskrcnn()
    surgery.set_num_classes(model, 3, keep=[0, 1])
    predictor = model.roi_heads.box_predictor
    scores, deltas = meta_probe(predictor, meta_like((5, 1024))).output
    assert (tuple(scores.shape), tuple(deltas.shape)) == ((5, 3), (5, 12))
    masks = meta_probe(model.roi_heads.mask_predictor, meta_like((5, 256, 14, 14))).output
    assert tuple(masks.shape) == (5, 3, 28, 28)
    # one real train step on a tiny image: labels up to 2 are accepted, losses are finite
    model.transform.min_size, model.transform.max_size = (96,), 96
    torch.manual_seed(0)
    image = torch.rand(3, 96, 96)
    mask = torch.zeros(2, 96, 96, dtype=torch.uint8)
    mask[0, 10:50, 10:50] = 1
    mask[1, 40:90, 30:80] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [30.0, 40.0, 80.0, 90.0]]), "labels": torch.tensor([1, 2]), "masks": mask}
    model.train()
    losses = model([image], [target])
    assert sorted(losses) == ["loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]
    assert all(torch.isfinite(v) for v in losses.values())


def test_faster_rcnn_v2_keep_dict_and_fresh_rows() -> None:
    model = build("fasterrcnn_resnet50_fpn_v2")
    old = model.roi_heads.box_predictor.cls_score
    torch.manual_seed(0)
    change = surgery.set_num_classes(model, 40, keep={0: 0, 5: 1, 39: 90})
    cls = model.roi_heads.box_predictor.cls_score
    assert torch.equal(cls.weight[[0, 5, 39]], old.weight[[0, 1, 90]])
    fresh = [i for i in range(40) if i not in (0, 5, 39)]
    assert change.initialised["roi_heads.box_predictor.cls_score.weight"] == fresh
    assert change.initialised["roi_heads.box_predictor.bbox_pred.weight"] == [4 * k + j for k in fresh for j in range(4)]
    bound = 1 / math.sqrt(1024)  # nn.Linear's default initialisation
    assert cls.weight[fresh].abs().max().item() <= bound
    assert cls.bias[fresh].abs().max().item() <= bound
    assert set(change.rebuilt) == {"roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"}
    assert surgery.check(model).ok


def test_keep_none_keeps_every_class_when_growing() -> None:
    model = light_maskrcnn()
    old = model.roi_heads.mask_predictor.mask_fcn_logits.weight.detach().clone()
    change = surgery.set_num_classes(model, 95)
    assert change.kept == {i: i for i in range(91)}
    assert change.initialised["roi_heads.mask_predictor.mask_fcn_logits.weight"] == [91, 92, 93, 94]
    assert torch.equal(model.roi_heads.mask_predictor.mask_fcn_logits.weight[:91], old)


def test_empty_keep_copies_nothing_and_initialises_like_torchvision() -> None:
    model = light_maskrcnn()
    torch.manual_seed(0)
    change = surgery.set_num_classes(model, 40, keep=[])
    assert change.kept == {}
    assert change.copied["roi_heads.mask_predictor.mask_fcn_logits.weight"] == []
    weight = model.roi_heads.mask_predictor.mask_fcn_logits.weight
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / fan_out), fan_out = 40 output channels × 1 × 1
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 40), rel=0.05)
    assert weight.mean().item() == pytest.approx(0.0, abs=0.01)


def test_keypoint_rcnn_changes_the_box_predictor_only() -> None:
    model = build("keypointrcnn_resnet50_fpn")
    keypoint_predictor = model.roi_heads.keypoint_predictor
    change = surgery.set_num_classes(model, 3, keep=[0, 1])
    assert set(change.rebuilt) == {"roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"}
    assert model.roi_heads.keypoint_predictor is keypoint_predictor
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert surgery.check(model).findings == []


def test_retinanet_channels_are_grouped_per_anchor() -> None:
    model = build("retinanet_resnet50_fpn")
    head = model.head.classification_head
    old = head.cls_logits.weight.detach().clone()
    old_bias = head.cls_logits.bias.detach().clone()
    change = surgery.set_num_classes(model, 5, keep=[0, 2, 7])
    new = head.cls_logits
    assert head.num_classes == 5 and new.out_channels == 9 * 5
    for a in range(9):
        for new_k, old_k in enumerate([0, 2, 7]):
            assert torch.equal(new.weight[a * 5 + new_k], old[a * 91 + old_k])
            assert torch.equal(new.bias[a * 5 + new_k], old_bias[a * 91 + old_k])
    fresh = [a * 5 + k for a in range(9) for k in (3, 4)]
    assert change.initialised["head.classification_head.cls_logits.bias"] == fresh
    assert torch.equal(new.bias[fresh], torch.full((18,), -math.log(99.0)))
    assert change.notes[-1] == "head.classification_head.num_classes set to 5"
    logits = meta_probe(head, [meta_like((1, 256, 8, 8)), meta_like((1, 256, 4, 4))]).output
    assert tuple(logits.shape) == (1, (64 + 16) * 9, 5)
    assert surgery.check(model).findings == []


def test_fcos_single_anchor() -> None:
    model = build("fcos_resnet50_fpn")
    old = model.head.classification_head.cls_logits.weight.detach().clone()
    surgery.set_num_classes(model, 2, keep=[5, 6])
    head = model.head.classification_head
    assert (head.num_classes, head.cls_logits.out_channels) == (2, 2)
    assert torch.equal(head.cls_logits.weight, old[[5, 6]])
    assert surgery.check(model).ok


@pytest.mark.parametrize("name", ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large"])
def test_ssd_module_list_and_num_columns(name: str) -> None:
    model = build(name)
    head = model.head.classification_head
    lite = name.startswith("ssdlite")
    layers = [(m[1] if lite else m) for m in head.module_list]
    old = [(layer.weight.detach().clone(), layer.out_channels // 91) for layer in layers]
    change = surgery.set_num_classes(model, 3, keep=[0, 1])
    assert head.num_columns == 3
    new_layers = [(m[1] if lite else m) for m in head.module_list]
    for (weight, anchors), layer in zip(old, new_layers, strict=True):
        assert layer.out_channels == anchors * 3
        for a in range(anchors):
            assert torch.equal(layer.weight[a * 3], weight[a * 91])
            assert torch.equal(layer.weight[a * 3 + 1], weight[a * 91 + 1])
        assert torch.equal(layer.bias[[a * 3 + 2 for a in range(anchors)]], torch.zeros(anchors))
    suffix = ".1" if lite else ""
    assert list(change.rebuilt) == [f"head.classification_head.module_list.{i}{suffix}" for i in range(6)]
    assert surgery.check(model).findings == []


def test_layers_keep_mode_dtype_and_frozen_flags() -> None:
    model = light_maskrcnn().double().eval()
    surgery.freeze(model, "roi_heads.box_predictor.cls_score")
    surgery.set_num_classes(model, 4)
    cls = model.roi_heads.box_predictor.cls_score
    assert cls.weight.dtype == torch.float64 and cls.training is False
    assert (cls.weight.requires_grad, cls.bias.requires_grad) == (False, False)
    assert model.roi_heads.box_predictor.bbox_pred.weight.requires_grad is True


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 0}, ValueError, r"^num_classes must be an int >= 1, got 0$"),
        ({"num_classes": "3"}, ValueError, r"^num_classes must be an int >= 1, got '3'$"),
        ({"num_classes": True}, ValueError, r"^num_classes must be an int >= 1, got True$"),
        ({"num_classes": 3, "keep": [0, 91]}, ValueError,
         r"^keep: old class index for new class 1 \(the model has 91 classes\) must be an int in 0\.\.90, got 91$"),
        ({"num_classes": 3, "keep": {3: 0}}, ValueError, r"^keep: new class index \(num_classes=3\) must be an int in 0\.\.2, got 3$"),
        ({"num_classes": 2, "keep": [0, 1, 2]}, ValueError, r"keep lists 3 old classes but the model will have only num_classes=2"),
        ({"num_classes": 3, "keep": "012"}, TypeError, r"keep must be a dict \{new_index: old_index\} or a list of old indices"),
        ({"num_classes": 3, "keep": [0, 1.0]}, ValueError,
         r"^keep: old class index for new class 1 \(the model has 91 classes\) must be an int in 0\.\.90, got 1\.0$"),
        ({"num_classes": 3, "keep": {-1: 0}}, ValueError, r"^keep: new class index \(num_classes=3\) must be an int in 0\.\.2, got -1$"),
        ({"num_classes": 3, "keep": {True: 0}}, ValueError, r"^keep: new class index \(num_classes=3\) must be an int in 0\.\.2, got True$"),
    ],
)
def test_bad_arguments_change_nothing(kwargs: dict, error: type[Exception], match: str) -> None:
    model = light_maskrcnn()
    before = fingerprint(model)
    with pytest.raises(error, match=match):
        surgery.set_num_classes(model, **kwargs)
    assert fingerprint(model) == before


def test_unknown_predictor_or_family_is_refused() -> None:
    model = light_maskrcnn()
    surgery.replace(model, "roi_heads.mask_predictor", nn.Sequential(nn.ConvTranspose2d(256, 256, 2, 2), nn.ReLU(), nn.Conv2d(256, 91, 1)))
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"rebuilds roi_heads.mask_predictor.mask_fcn_logits as MaskRCNNPredictor's 1×1 class conv, "
                       r"but roi_heads.mask_predictor \(Sequential\) has no 'mask_fcn_logits' layer"):
        surgery.set_num_classes(model, 3)
    assert fingerprint(model) == before
    with pytest.raises(ValueError, match=r"set_num_classes\(\) knows the class-dependent layers of .*; Sequential is none of these"):
        surgery.set_num_classes(nn.Sequential(nn.Linear(2, 3)), 3)


def test_class_count_mismatch_is_repaired() -> None:
    model = light_maskrcnn()
    surgery.replace(model, "roi_heads.mask_predictor", MaskRCNNPredictor(256, 256, 20), check=False)
    change = surgery.set_num_classes(model, 20)
    assert change.notes[0] == ("the class layers disagreed before the change (roi_heads.box_predictor.cls_score: 91, "
                               "roi_heads.box_predictor.bbox_pred: 91, roi_heads.mask_predictor.mask_fcn_logits: 20); all now have 20")
    assert surgery.check(model).findings == []


def test_failed_check_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the check after the change finds a new error, every layer and attribute goes back."""
    edit_module = importlib.import_module("surgery.edit.transaction")  # `surgery.edit` itself is the edit() function
    real_check = edit_module._run_check

    def check_that_rejects_three_classes(model: nn.Module, **kwargs: object) -> Report:
        report = real_check(model, **kwargs)
        if model.head.classification_head.num_classes == 3:
            report.extend([Finding("error", "num-classes-mismatch", ("head.classification_head",), "three is not allowed here")])
        return report

    model = build("retinanet_resnet50_fpn")
    before = fingerprint(model)
    monkeypatch.setattr(edit_module, "_run_check", check_that_rejects_three_classes)
    with pytest.raises(IncompatibleError, match=r"(?s)set_num_classes\(3\) was rolled back .*three is not allowed here"):
        surgery.set_num_classes(model, 3, keep=[0, 1])
    assert model.head.classification_head.num_classes == 91
    assert fingerprint(model) == before
