"""Honest ok: smoke, trace and diff prove that every slot ran, and say so when one did not.

* ``not-exercised``: a slot with parameters that ran on no data in a pass is named, with why;
* the eval pass of smoke runs inside ``Anatomy.exercised`` (score thresholds at 0), which puts
  every threshold back, also when the pass raises;
* ``exploding``: a loss above ``LOSS_BOUND`` is named with the first module whose output explodes;
* ``diff`` notes a head that never ran during the cost measurement instead of a silent ΔFLOPs 0.

The heavy case (a ResNet-101 Mask R-CNN with random weights, whose FrozenBatchNorm layers are
the identity, so its activations explode and its RPN keeps no box) is built and smoke-tested
once per module at 96×96.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

import surgery
from surgery import SmokeResult
from surgery._util import ModuleStack
from surgery.anatomy import anatomy_for
from surgery.findings import CODES
from surgery.smoke.step import ACTIVATION_BOUND, LOSS_BOUND
from tests.test_smoke import SIZE, fingerprint, smoke, tiny_maskrcnn, tiny_retinanet

HEAVY = 96


# --------------------------------------------------------------------------- the heavy model, once per module


@pytest.fixture(scope="module")
def r101() -> MaskRCNN:
    """ResNet-101 FPN Mask R-CNN with random weights, shrunk to 96×96 images. Do not modify it."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=5)
    return MaskRCNN(backbone, 91, min_size=HEAVY, max_size=HEAVY)


@pytest.fixture(scope="module")
def r101_smoke(r101: MaskRCNN) -> tuple[SmokeResult, dict[str, Any], dict[str, Any]]:
    before = fingerprint(r101)
    result = smoke(r101, image_size=HEAVY, check=False)
    return result, before, fingerprint(r101)


def test_r101_is_no_longer_a_silent_ok(r101_smoke: tuple[SmokeResult, dict[str, Any], dict[str, Any]]) -> None:
    result, before, after = r101_smoke
    assert after == before
    assert result.ok  # warnings, not errors: the model runs and trains, it just proves little
    assert result.codes() == ["exploding", "not-exercised"]
    assert str(result).splitlines()[0] == "surgery smoke: MaskRCNN (R-CNN) on cpu: ok, 2 warning(s)"
    assert all(v > LOSS_BOUND for k, v in result.losses.items() if k in ("loss_classifier", "loss_box_reg", "loss_mask"))


def test_r101_exploding_names_the_losses_and_the_first_exploding_module(
    r101_smoke: tuple[SmokeResult, dict[str, Any], dict[str, Any]],
) -> None:
    result, _, _ = r101_smoke
    loud = result.findings[0]
    assert (loud.severity, loud.code, loud.paths) == ("warning", "exploding", ("backbone.body.layer3.16.conv1",))
    assert re.fullmatch(
        r"losses 'loss_classifier' = [\d.e+]+, 'loss_box_reg' = [\d.e+]+, 'loss_mask' = [\d.e+]+ in train step 1 are above 1000; "
        r"the first module whose output explodes \(\|x\| > 10000\) is backbone\.body\.layer3\.16\.conv1 \(Conv2d\), "
        r"with \|x\| up to 1\.\d\de\+04",
        loud.message,
    ), loud.message
    assert loud.fix is not None and loud.fix.startswith("keep activations near 1 for random inputs")


def test_r101_eval_says_which_heads_never_ran_and_why(r101_smoke: tuple[SmokeResult, dict[str, Any], dict[str, Any]]) -> None:
    result, _, _ = r101_smoke
    idle = result.findings[1]
    assert (idle.severity, idle.code) == ("warning", "not-exercised")
    assert idle.paths == ("roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head", "roi_heads.mask_predictor")
    assert re.fullmatch(
        r"the eval pass returned 0 detections for 2 images, even with every score threshold at 0: roi_heads\.box_head, "
        r"roi_heads\.box_predictor, roi_heads\.mask_head and roi_heads\.mask_predictor never ran on any data, so the eval pass "
        r"proved nothing about them; the data ran out in rpn \(RegionProposalNetwork\), which returned only empty tensors from "
        r"non-empty inputs; activations explode: the output of backbone\.body\.layer3\.16\.conv1 \(Conv2d\) already reaches "
        r"\|x\| = 1\.\d\de\+04",
        idle.message,
    ), idle.message


def test_r101_modules_that_ran_on_nothing_are_told_from_those_that_worked(r101: MaskRCNN) -> None:
    model = copy.deepcopy(r101).eval()
    watch = ModuleStack(model, record=True)
    with torch.no_grad(), watch:
        model([torch.rand(3, HEAVY, HEAVY)])
    # every head was called (torchvision runs them on 0 boxes), only the RPN and backbone did work
    assert {"roi_heads.mask_head", "roi_heads.mask_predictor", "roi_heads.box_head"} <= watch.called
    assert not {"roi_heads.mask_head", "roi_heads.mask_predictor", "roi_heads.box_head"} & watch.worked
    assert {"backbone", "rpn.head"} <= watch.worked
    assert watch.emptied == "rpn"


def test_r101_trace_shows_the_heads_ran_on_nothing(r101: MaskRCNN) -> None:
    result = surgery.trace(r101, image_size=HEAVY)
    assert result.uncalled == [] and result.findings == []
    mask_head = next(c for c in result.calls if c.path == "roi_heads.mask_head")
    assert [i.shape for i in mask_head.outputs] == [(0, 256, 14, 14)]  # the trace records the 0 RoIs it got


def test_r101_diff_states_why_it_could_not_measure_the_bigger_mask_head(r101: MaskRCNN) -> None:
    bigger = copy.deepcopy(r101)
    bigger.roi_heads.mask_head = MaskRCNNHeads(256, (256,) * 16, 1)  # 4× the parameters of the 4-layer head
    d = surgery.diff(r101, bigger, image_size=HEAVY, runs=1)
    assert d.flops is not None and d.flops.delta == 0  # the mask head ran on nothing in either model ...
    expected = [  # ... and the diff says so instead of a silent 0
        f"{name} model: roi_heads.box_head, roi_heads.box_predictor, roi_heads.mask_head and roi_heads.mask_predictor never "
        "ran on any data during the measurement (the eval forward returned 0 detections for 1 image, even with every score "
        "threshold at 0), so their cost is missing from FLOPs, latency and memory; the data ran out in rpn "
        "(RegionProposalNetwork), which returned only empty tensors from non-empty inputs"
        for name in ("before", "after")
    ]
    assert d.notes == expected
    assert d.to_dict()["notes"] == expected
    assert [line for line in str(d).splitlines() if line.startswith("  note: ")] == [f"  note: {n}" for n in expected]


# --------------------------------------------------------------------------- the diff when the heads run


def test_diff_counts_a_four_times_larger_mask_head() -> None:
    before = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    after = copy.deepcopy(before)
    after.roi_heads.mask_head = MaskRCNNHeads(256, (256,) * 16, 1)
    d = surgery.diff(before, after, image_size=128, runs=1)
    assert d.notes == [] and d.problems == []
    assert d.params.delta == 12 * (256 * 256 * 9 + 256)  # 12 more 3×3 convs of 256 → 256
    assert d.flops is not None and d.flops.delta is not None
    # 100 detections per image at score threshold 0, each a 14×14 RoI through 12 more convs (2 FLOPs per MAC)
    assert d.flops.delta == 100 * 12 * 2 * 256 * 256 * 9 * 14 * 14


# --------------------------------------------------------------------------- thresholds put back


def _thresholds(model: nn.Module) -> dict[str, float]:
    return {name: m.__dict__["score_thresh"] for name, m in model.named_modules() if isinstance(m.__dict__.get("score_thresh"), float)}


class RaisingMaskHead(MaskRCNNHeads):
    """Raises in eval mode only."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            raise RuntimeError("mask head fails in eval")
        return super().forward(x)


def test_exercised_lowers_every_threshold_and_puts_each_back_exactly() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.score_thresh = 0.37
    model.rpn.score_thresh = 0.125
    assert _thresholds(model) == {"rpn": 0.125, "roi_heads": 0.37}
    with pytest.raises(RuntimeError, match="inside the block"), anatomy_for(model).exercised(model):
        assert _thresholds(model) == {"rpn": 0.0, "roi_heads": 0.0}
        raise RuntimeError("inside the block")
    assert _thresholds(model) == {"rpn": 0.125, "roi_heads": 0.37}


def test_smoke_puts_thresholds_back_also_when_the_eval_pass_raises() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.score_thresh = 0.37
    result = smoke(model, check=False)
    assert result.ok and result.findings == []
    assert _thresholds(model) == {"rpn": 0.0, "roi_heads": 0.37}
    model.roi_heads.mask_head = RaisingMaskHead(32, (32, 32), 1)
    result = smoke(model, check=False)
    assert [(f.code, f.paths) for f in result.findings] == [("shape-error", ("roi_heads.mask_head",))]
    assert result.findings[0].message.startswith("the eval pass raised RuntimeError in roi_heads.mask_head (RaisingMaskHead)")
    assert _thresholds(model) == {"rpn": 0.0, "roi_heads": 0.37}


def test_high_thresholds_no_longer_hide_the_heads() -> None:
    model = tiny_retinanet()
    model.score_thresh = 0.99  # nothing of a random model passes this
    result = smoke(model, check=False)
    assert result.ok and result.findings == []
    assert model.score_thresh == 0.99


# --------------------------------------------------------------------------- not-exercised, exact messages


def test_eval_with_no_detection_slot_gets_the_exact_warning() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.detections_per_img = 0  # thresholds at 0 cannot help: every image keeps 0 boxes
    result = smoke(model, check=False)
    assert result.ok
    assert [(f.severity, f.code, f.paths) for f in result.findings] == [
        ("warning", "not-exercised", ("roi_heads.mask_head", "roi_heads.mask_predictor"))]
    assert result.findings[0].message == (
        "the eval pass returned 0 detections for 2 images, even with every score threshold at 0: roi_heads.mask_head and "
        "roi_heads.mask_predictor never ran on any data, so the eval pass proved nothing about them; the data ran out in "
        "roi_heads (RoIHeads), which returned only empty tensors from non-empty inputs")
    assert model.roi_heads.detections_per_img == 0


class TrainOnlyAux(nn.Module):
    """A classifier with an auxiliary head that its forward skips in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)
        self.aux = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        features = self.body(x)
        out = self.head(features)
        return out + self.aux(features) if self.training else out


def test_generic_slot_skipped_in_eval_gets_the_exact_warning() -> None:
    result = smoke(TrainOnlyAux(), image_size=32, check=False)
    assert [(f.severity, f.code, f.paths) for f in result.findings] == [("warning", "not-exercised", ("aux",))]
    assert result.findings[0].message == "the eval pass: aux never ran on any data, so the eval pass proved nothing about it"


class SkipEmptyHead(MaskRCNNHeads):
    """Returns zeros without running its layers when it gets no RoI."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, 32, *x.shape[2:])
        return super().forward(x)


def test_trace_of_an_eval_with_no_detection_says_why_instead_of_calling_the_head_an_orphan() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.detections_per_img = 0
    model.roi_heads.mask_head = SkipEmptyHead(32, (32, 32), 1)
    result = surgery.trace(model, image_size=SIZE)
    assert result.uncalled == ["roi_heads.mask_head.0", "roi_heads.mask_head.1"]
    assert [(f.severity, f.code, f.paths) for f in result.findings] == [("warning", "not-exercised", ("roi_heads.mask_head",))]
    assert result.findings[0].message == (
        "the eval pass returned 0 detections for 2 images, at the model's own score thresholds: roi_heads.mask_head never "
        "ran on any data, so the eval pass proved nothing about it; trace with mode='both' to run them in a train step too")
    assert surgery.trace(model, image_size=SIZE, mode="both").findings == []
    model.roi_heads.detections_per_img = 10  # with detections, the same layers never running are orphans
    model.roi_heads.mask_head = SkipEmptyHead(32, (32, 32), 1)
    model.roi_heads.mask_head.forward = lambda x: x.new_zeros(x.shape[0], 32, *x.shape[2:])  # type: ignore[method-assign]
    orphans = surgery.trace(model, image_size=SIZE).findings
    assert [(f.code, f.paths[0]) for f in orphans] == [("orphan-module", "roi_heads.mask_head.0"),
                                                       ("orphan-module", "roi_heads.mask_head.1")]


# --------------------------------------------------------------------------- exploding


class LoudMaskHead(MaskRCNNHeads):
    """Scales its output by 1e5: the mask loss explodes, nothing is NaN."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 1e5


def test_a_loss_above_the_bound_names_the_module_whose_output_explodes() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = LoudMaskHead(32, (32, 32), 1)
    before = fingerprint(model)
    result = smoke(model, check=False)
    assert fingerprint(model) == before
    assert result.ok
    loud = [f for f in result.findings if f.code == "exploding"]
    assert [(f.severity, f.paths) for f in loud] == [("warning", ("roi_heads.mask_head",))]
    assert result.losses["loss_mask"] > LOSS_BOUND
    assert re.fullmatch(
        r"loss 'loss_mask' = [\d.e+]+ in train step 1 is above 1000; the first module whose output explodes "
        r"\(\|x\| > 10000\) is roi_heads\.mask_head \(LoudMaskHead\), with \|x\| up to [\d.e+]+",
        loud[0].message,
    ), loud[0].message
    shown = float(loud[0].message.rpartition("up to ")[2])
    assert shown > ACTIVATION_BOUND


def test_the_bounds_and_the_code() -> None:
    assert (LOSS_BOUND, ACTIVATION_BOUND) == (1e3, 1e4)
    assert "exploding" in CODES and "not-exercised" in CODES
