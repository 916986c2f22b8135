"""``surgery.replace``, ``adapt`` and ``edit`` transactions: checked, all-or-nothing edits."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.models.detection.rpn import RPNHead

import surgery
from surgery import EditResult, IncompatibleError, NotAModuleError, PathError, paths
from surgery.signature import meta_like, meta_probe
from tests.helpers import build, fingerprint

WIDE_LAYERS = (256, 256, 512, 512, 1024)


def light_maskrcnn() -> nn.Module:
    """A ResNet-18 Mask R-CNN: the same slots as the stock one, built in a fraction of the time."""
    return MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), 91)


class WideningHead(nn.Module):
    """A custom mask head (not a torchvision class): its width is found by a meta probe."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(256, 320, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(320, width, 1)
        self.extra_scale = 2  # not a layer: nothing static says the output width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.body(x))
        return torch.cat([y] * self.extra_scale, dim=1)


def error_keys(err: IncompatibleError) -> list[tuple[str, tuple[str, ...]]]:
    return [(f.code, f.paths) for f in err.findings]


# --------------------------------------------------------------------------- replace


def test_replace_returns_old_module_and_checks_clean() -> None:
    model = light_maskrcnn()
    old = model.roi_heads.mask_head
    head = MaskRCNNHeads(256, (256, 256), 1)
    returned = surgery.replace(model, "roi_heads.mask_head", head)
    assert returned is old
    assert model.roi_heads.mask_head is head
    assert surgery.check(model).findings == []


@pytest.mark.parametrize(
    ("name", "path", "make", "expected"),
    [
        ("maskrcnn", "roi_heads.mask_head", lambda: MaskRCNNHeads(256, WIDE_LAYERS, 1),
         [("channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"))]),
        ("fasterrcnn_resnet50_fpn_v2", "roi_heads.box_predictor", lambda: FastRCNNPredictor(512, 91),
         [("channel-mismatch", ("roi_heads.box_head", "roi_heads.box_predictor"))]),
        ("keypointrcnn_resnet50_fpn", "roi_heads.keypoint_head", lambda: KeypointRCNNHeads(256, (512, 768)),
         [("channel-mismatch", ("roi_heads.keypoint_head", "roi_heads.keypoint_predictor"))]),
        ("retinanet_resnet50_fpn", "head.classification_head", lambda: RetinaNetClassificationHead(256, 6, 91),
         [("anchor-mismatch", ("anchor_generator", "head.classification_head"))]),
    ],
)
def test_incompatible_replace_rolls_back_exactly(name: str, path: str, make: Callable[[], nn.Module],
                                                 expected: list[tuple[str, tuple[str, ...]]]) -> None:
    model = light_maskrcnn() if name == "maskrcnn" else build(name)
    before = fingerprint(model)
    old = paths.get(model, path)
    with pytest.raises(IncompatibleError, match=rf"replace\('{path}', \w+\) was rolled back and the model is unchanged") as info:
        surgery.replace(model, path, make())
    assert error_keys(info.value) == expected
    assert paths.get(model, path) is old
    assert fingerprint(model) == before


def test_replace_bad_path_suggests_and_changes_nothing() -> None:
    model = light_maskrcnn()
    before = fingerprint(model)
    with pytest.raises(PathError, match=r"'mask_hed' is not a submodule of 'roi_heads'.*Did you mean 'roi_heads.mask_head'") as info:
        surgery.replace(model, "roi_heads.mask_hed", MaskRCNNHeads(256, (256,), 1))
    assert info.value.suggestions[0] == "roi_heads.mask_head"
    assert not hasattr(model.roi_heads, "mask_hed")
    assert fingerprint(model) == before


def test_replace_rejects_non_module() -> None:
    model = light_maskrcnn()
    before = fingerprint(model)
    with pytest.raises(NotAModuleError, match=r"replace\(\): the replacement for 'roi_heads.mask_head' must be an nn.Module, got int"):
        surgery.replace(model, "roi_heads.mask_head", 3)  # type: ignore[arg-type]
    assert fingerprint(model) == before


def test_replace_without_check_keeps_a_broken_swap() -> None:
    model = light_maskrcnn()
    head = MaskRCNNHeads(256, WIDE_LAYERS, 1)
    surgery.replace(model, "roi_heads.mask_head", head, check=False)
    assert model.roi_heads.mask_head is head
    assert [(f.code, f.paths) for f in surgery.check(model).errors] == [
        ("channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"))
    ]


def test_replace_moves_new_module_to_old_dtype_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = light_maskrcnn()
    head = MaskRCNNHeads(256, (256, 256), 1).double()
    caplog.set_level(logging.INFO, logger="surgery")
    surgery.replace(model, "roi_heads.mask_head", head)
    assert {p.dtype for p in head.parameters()} == {torch.float32}
    note = "moved the new MaskRCNNHeads from cpu/float64 to cpu/float32 to match roi_heads.mask_head"
    assert note in caplog.messages
    result = surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (256,), 1).half(), adapt=True)
    assert result.notes[0] == "moved the new MaskRCNNHeads from cpu/float16 to cpu/float32 to match roi_heads.mask_head"


def test_replace_into_empty_slot_needs_the_whole_triple() -> None:
    model = build("fasterrcnn_resnet50_fpn")
    before = fingerprint(model)
    with pytest.raises(IncompatibleError, match="RoIHeads.has_mask\\(\\) is False") as info:
        surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (256,), 1))
    assert error_keys(info.value) == [("orphan-module", ("roi_heads.mask_head",))]
    assert model.roi_heads.mask_head is None
    assert fingerprint(model) == before


def test_replace_on_retinanet_class_head_with_new_class_count() -> None:
    model = build("retinanet_resnet50_fpn")
    head = RetinaNetClassificationHead(256, 9, 5)
    surgery.replace(model, "head.classification_head", head)
    assert model.head.classification_head is head
    assert surgery.check(model).ok


def test_existing_errors_do_not_block_an_unrelated_replace() -> None:
    model = light_maskrcnn()
    surgery.replace(model, "rpn.head", RPNHead(256, 5), check=False)  # anchor mismatch, left in place
    head = MaskRCNNHeads(256, (256,), 1)
    old = surgery.replace(model, "roi_heads.mask_head", head)
    assert model.roi_heads.mask_head is head and old is not head
    result = surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (256, 256), 1), adapt=True)
    assert result.report is not None
    assert result.report.ok  # the scoped check does not touch rpn.head
    assert not surgery.check(model).ok  # the earlier anchor mismatch is still there


# --------------------------------------------------------------------------- adapt


def test_adapt_deeper_mask_head_in_one_call() -> None:
    model = build("maskrcnn_resnet50_fpn")
    old_head, old_predictor = model.roi_heads.mask_head, model.roi_heads.mask_predictor
    head = MaskRCNNHeads(256, WIDE_LAYERS, 1)
    result = surgery.replace(model, "roi_heads.mask_head", head, adapt=True)
    assert isinstance(result, EditResult)
    assert result.path == "roi_heads.mask_head" and result.old is old_head and result.new is head
    assert result.rebuilt == {"roi_heads.mask_predictor": "MaskRCNNPredictor(256, 256, 91) → MaskRCNNPredictor(1024, 256, 91)"}
    assert result.copied == [
        "roi_heads.mask_predictor.conv5_mask.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
    ]
    assert result.initialised == ["roi_heads.mask_predictor.conv5_mask.weight"]
    predictor = model.roi_heads.mask_predictor
    assert type(predictor) is MaskRCNNPredictor
    assert (predictor.conv5_mask.in_channels, predictor.conv5_mask.out_channels, predictor.mask_fcn_logits.out_channels) == (1024, 256, 91)
    assert torch.equal(predictor.conv5_mask.bias, old_predictor.conv5_mask.bias)
    assert torch.equal(predictor.mask_fcn_logits.weight, old_predictor.mask_fcn_logits.weight)
    assert torch.equal(predictor.mask_fcn_logits.bias, old_predictor.mask_fcn_logits.bias)
    assert result.report is not None and result.report.ok
    assert surgery.check(model).findings == []
    probe = meta_probe(nn.Sequential(model.roi_heads.mask_head, model.roi_heads.mask_predictor), meta_like((2, 256, 14, 14)))
    assert probe.ok
    assert tuple(probe.output.shape) == (2, 91, 28, 28)


def test_adapt_box_head_on_faster_rcnn_v2() -> None:
    model = build("fasterrcnn_resnet50_fpn_v2")
    old = model.roi_heads.box_predictor
    result = surgery.replace(model, "roi_heads.box_head", TwoMLPHead(256 * 7 * 7, 512), adapt=True)
    assert result.rebuilt == {"roi_heads.box_predictor": "FastRCNNPredictor(1024, 91) → FastRCNNPredictor(512, 91)"}
    assert result.copied == ["roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.bbox_pred.bias"]
    assert result.initialised == ["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"]
    new = model.roi_heads.box_predictor
    assert (new.cls_score.in_features, new.cls_score.out_features, new.bbox_pred.out_features) == (512, 91, 364)
    assert torch.equal(new.bbox_pred.bias, old.bbox_pred.bias)
    assert surgery.check(model).findings == []
    probe = meta_probe(nn.Sequential(model.roi_heads.box_head), meta_like((2, 256, 7, 7)))
    scores, deltas = meta_probe(new, probe.output).output
    assert (tuple(scores.shape), tuple(deltas.shape)) == ((2, 91), (2, 364))


def test_adapt_keypoint_head() -> None:
    model = build("keypointrcnn_resnet50_fpn")
    result = surgery.replace(model, "roi_heads.keypoint_head", KeypointRCNNHeads(256, (512, 768)), adapt=True)
    assert result.rebuilt == {"roi_heads.keypoint_predictor": "KeypointRCNNPredictor(512, 17) → KeypointRCNNPredictor(768, 17)"}
    assert result.copied == ["roi_heads.keypoint_predictor.kps_score_lowres.bias"]
    assert result.initialised == ["roi_heads.keypoint_predictor.kps_score_lowres.weight"]
    assert type(model.roi_heads.keypoint_predictor) is KeypointRCNNPredictor
    assert surgery.check(model).findings == []
    probe = meta_probe(nn.Sequential(model.roi_heads.keypoint_head, model.roi_heads.keypoint_predictor), meta_like((2, 256, 14, 14)))
    assert tuple(probe.output.shape) == (2, 17, 56, 56)


def test_adapt_reads_a_custom_head_by_meta_probe() -> None:
    model = light_maskrcnn()
    result = surgery.replace(model, "roi_heads.mask_head", WideningHead(384), adapt=True)
    # the last layer says 384, the probe sees the concatenation: 768
    assert result.rebuilt == {"roi_heads.mask_predictor": "MaskRCNNPredictor(256, 256, 91) → MaskRCNNPredictor(768, 256, 91)"}
    assert surgery.check(model).findings == []


def test_adapt_keeps_frozen_flags_and_mode_of_the_consumer() -> None:
    model = light_maskrcnn()
    model.eval()
    surgery.freeze(model, "roi_heads.mask_predictor")
    surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (512,), 1), adapt=True)
    predictor = model.roi_heads.mask_predictor
    assert [p.requires_grad for p in predictor.parameters()] == [False, False, False, False]
    assert predictor.training is False


def test_adapt_with_same_width_rebuilds_nothing() -> None:
    model = light_maskrcnn()
    predictor = model.roi_heads.mask_predictor
    result = surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (256, 256), 1), adapt=True)
    assert result.rebuilt == {} and result.copied == [] and result.initialised == []
    assert result.notes == ["roi_heads.mask_predictor already takes 256 from roi_heads.mask_head; nothing rebuilt"]
    assert model.roi_heads.mask_predictor is predictor


def test_standalone_adapt_repairs_a_mismatch() -> None:
    model = light_maskrcnn()
    surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (512,), 1), check=False)
    adaptation = surgery.adapt(model, "roi_heads.mask_predictor")
    assert adaptation.rebuilt == {"roi_heads.mask_predictor": "MaskRCNNPredictor(256, 256, 91) → MaskRCNNPredictor(512, 256, 91)"}
    assert adaptation.report is not None and adaptation.report.ok
    assert adaptation.to_dict()["rebuilt"] == adaptation.rebuilt


def test_adapt_without_a_rule_raises_before_changing_anything() -> None:
    model = light_maskrcnn()
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"'backbone.fpn' of MaskRCNN has no such rule"):
        surgery.replace(model, "backbone.fpn", nn.Identity(), adapt=True)
    assert fingerprint(model) == before
    retina = build("retinanet_resnet50_fpn")
    with pytest.raises(ValueError, match=r"'head.classification_head' of RetinaNet has no such rule"):
        surgery.adapt(retina, "head.classification_head")


def test_adapt_cannot_rebuild_a_custom_predictor_and_says_why() -> None:
    model = light_maskrcnn()

    class OwnPredictor(nn.Sequential):
        pass

    custom = OwnPredictor(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(256, 256, 2, 2), nn.Conv2d(256, 91, 1))
    surgery.replace(model, "roi_heads.mask_predictor", custom)
    before = fingerprint(model)
    with pytest.raises(IncompatibleError, match=r"notes from the undone steps:\n  adapt rebuilds torchvision's .*roi_heads.mask_predictor is a OwnPredictor"):
        surgery.replace(model, "roi_heads.mask_head", MaskRCNNHeads(256, (512,), 1), adapt=True)
    assert fingerprint(model) == before


# --------------------------------------------------------------------------- transactions


def test_edit_two_steps_checked_once() -> None:
    model = light_maskrcnn()
    head, predictor = MaskRCNNHeads(256, WIDE_LAYERS, 1), MaskRCNNPredictor(1024, 256, 91)
    with surgery.edit(model) as e:
        old_head = e.replace("roi_heads.mask_head", head)
        e.replace("roi_heads.mask_predictor", predictor)
    assert isinstance(old_head, MaskRCNNHeads) and old_head is not head
    assert model.roi_heads.mask_head is head and model.roi_heads.mask_predictor is predictor
    assert e.report is not None and e.report.findings == []
    assert "static orphan detection" in e.report.checked


def test_edit_rolls_back_every_kind_of_change() -> None:
    model = light_maskrcnn()
    model.eval()
    before = fingerprint(model)
    transform_sizes = (model.transform.min_size, model.transform.max_size)
    with pytest.raises(IncompatibleError, match=r"surgery.edit\(\) was rolled back") as info:
        with surgery.edit(model) as e:
            e.freeze("backbone.body.layer[12]*")
            e.set_num_classes(5, keep=[0, 1])
            model.roi_heads.box_head = TwoMLPHead(256 * 7 * 7, 512)  # direct attribute change, incompatible
            model.transform.min_size = (128,)
            model.extra = nn.Linear(2, 2)  # a new attribute: must disappear
            model.train()
    assert error_keys(info.value) == [("channel-mismatch", ("roi_heads.box_head", "roi_heads.box_predictor")),
                                      ("orphan-module", ("extra",))]
    assert e.report is not None and not e.report.ok
    assert not hasattr(model, "extra")
    assert (model.transform.min_size, model.transform.max_size) == transform_sizes
    assert fingerprint(model) == before


def test_edit_exception_rolls_back_and_propagates() -> None:
    model = light_maskrcnn()
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="^boom$"):
        with surgery.edit(model) as e:
            e.replace("roi_heads.mask_head", MaskRCNNHeads(256, WIDE_LAYERS, 1), adapt=True)
            e.set_num_classes(3)
            raise RuntimeError("boom")
    assert e.report is None
    assert fingerprint(model) == before


def test_edit_catches_an_orphan_attached_at_the_root() -> None:
    model = light_maskrcnn()
    before = fingerprint(model)
    with pytest.raises(IncompatibleError, match=r"mask_predictor \(MaskRCNNPredictor, .*probably meant for roi_heads.mask_predictor"):
        with surgery.edit(model):
            model.mask_predictor = MaskRCNNPredictor(1024, 256, 20)
    assert fingerprint(model) == before


def test_edit_deleting_the_mask_branch_gives_a_clean_faster_rcnn() -> None:
    model = light_maskrcnn()
    with surgery.edit(model) as e:
        for path in ("roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"):
            e.delete(path)
    assert not model.roi_heads.has_mask()
    assert e.report is not None and e.report.ok


def test_edit_without_check_only_rolls_back_on_exceptions() -> None:
    model = light_maskrcnn()
    with surgery.edit(model, check=False) as e:
        e.set("roi_heads.mask_head", MaskRCNNHeads(256, WIDE_LAYERS, 1))
    assert e.report is None
    assert not surgery.check(model).ok


def test_transaction_methods_only_inside_the_block() -> None:
    model = light_maskrcnn()
    tx = surgery.edit(model)
    with pytest.raises(RuntimeError, match=r"replace\(\) is only available inside `with surgery.edit\(model\) as e:`"):
        tx.replace("roi_heads.mask_head", MaskRCNNHeads(256, (256,), 1))
    with tx:
        pass
    with pytest.raises(RuntimeError, match="can be used for one with-block only"):
        with tx:
            pass
    with pytest.raises(NotAModuleError, match=r"edit\(\): model must be an nn.Module, got str"):
        surgery.edit("model")  # type: ignore[arg-type]


def test_rollback_warns_about_in_place_writes() -> None:
    model = light_maskrcnn()
    with pytest.warns(RuntimeWarning, match=r"1 parameter/buffer tensor\(s\) of the model were written in place"):
        with pytest.raises(ValueError, match="stop"):
            with surgery.edit(model):
                with torch.no_grad():
                    model.roi_heads.box_predictor.cls_score.bias.add_(1.0)
                raise ValueError("stop")


# --------------------------------------------------------------------------- atomicity property


def _classes(model: nn.Module) -> int:
    return int(model.roi_heads.box_predictor.cls_score.out_features)


def _edit_then_fail(model: nn.Module) -> None:
    with surgery.edit(model) as e:
        e.replace("roi_heads.mask_head", MaskRCNNHeads(256, (256, 512), 1), adapt=True)
        e.freeze("backbone.body.layer1*")
        raise RuntimeError("user code failed mid-edit")


def _edit_fix_pair(model: nn.Module) -> None:
    classes = _classes(model)
    with surgery.edit(model) as e:
        e.replace("roi_heads.mask_head", MaskRCNNHeads(256, (384,), 1))
        e.replace("roi_heads.mask_predictor", MaskRCNNPredictor(384, 128, classes))


def _edit_orphan(model: nn.Module) -> None:
    with surgery.edit(model):
        model.mask_predictor = MaskRCNNPredictor(256, 256, _classes(model))


def _edit_direct_mismatch(model: nn.Module) -> None:
    with surgery.edit(model) as e:
        e.set_num_classes(6, keep=[0, 1])
        model.roi_heads.box_predictor = FastRCNNPredictor(1024, 7)


OPS: dict[str, Callable[[nn.Module], object]] = {
    "narrow head, adapt": lambda m: surgery.replace(m, "roi_heads.mask_head", MaskRCNNHeads(256, (256,), 1), adapt=True),
    "wide head, adapt": lambda m: surgery.replace(m, "roi_heads.mask_head", MaskRCNNHeads(256, (256, 512), 1), adapt=True),
    "wide head, no adapt": lambda m: surgery.replace(m, "roi_heads.mask_head", MaskRCNNHeads(256, (256, 512), 1)),
    "box head 512, adapt": lambda m: surgery.replace(m, "roi_heads.box_head", TwoMLPHead(256 * 7 * 7, 512), adapt=True),
    "box predictor with other classes": lambda m: surgery.replace(
        m, "roi_heads.box_predictor", FastRCNNPredictor(m.roi_heads.box_predictor.cls_score.in_features, 7)),
    "rpn head with 5 anchors": lambda m: surgery.replace(m, "rpn.head", RPNHead(256, 5)),
    "typo path": lambda m: surgery.replace(m, "roi_heads.mask_hed", MaskRCNNHeads(256, (256,), 1)),
    "classes 4 keep [0, 2, 1]": lambda m: surgery.set_num_classes(m, 4, keep=[0, 2, 1]),
    "classes keep out of range": lambda m: surgery.set_num_classes(m, 3, keep=[0, 999]),
    "freeze layer1-2": lambda m: surgery.freeze(m, "backbone.body.layer[12]*"),
    "freeze typo": lambda m: surgery.freeze(m, "backbone.body.layr*"),
    "edit raises mid-way": _edit_then_fail,
    "edit fixes a pair": _edit_fix_pair,
    "edit orphan": _edit_orphan,
    "edit direct mismatch": _edit_direct_mismatch,
}
EXPECTED_FAILURES = (IncompatibleError, PathError, ValueError, RuntimeError)


def lighter_maskrcnn() -> nn.Module:
    """ResNet-18 Mask R-CNN with a 256-wide box head: state_bytes of it is quick enough to take after every edit."""
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None)
    return MaskRCNN(backbone, None, box_head=TwoMLPHead(256 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, 91),
                    mask_predictor=MaskRCNNPredictor(256, 256, 91))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=4))
def test_edits_are_all_or_nothing(ops: list[str]) -> None:
    model = lighter_maskrcnn()
    assert surgery.check(model).findings == []
    state = fingerprint(model)
    modules = {id(m) for m in model.modules()}
    for name in ops:
        try:
            OPS[name](model)
        except EXPECTED_FAILURES:
            assert fingerprint(model) == state, f"{name!r} failed but left the model changed"
            assert {id(m) for m in model.modules()} == modules
            continue
        report = surgery.check(model)
        assert report.ok, f"{name!r} succeeded but left errors: {report.errors}"
        state = fingerprint(model)
        modules = {id(m) for m in model.modules()}
