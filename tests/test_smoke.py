"""surgery.smoke_test: phases, findings for each failure mode, leave-no-trace, CLI.

Most tests use tiny models (a three-conv backbone, 128×128 images) so that a smoke test
takes about a second; the test over every torchvision builder is marked slow.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

import surgery
from surgery import SmokeResult, SmokeTestError, smoke_test
from surgery.cli import main
from surgery.smoke import resolve_amp, resolve_device
from surgery.trace import unused_parameter_findings
from tests.conftest import DETECTION_BUILDERS
from tests.helpers import build, fingerprint

SIZE = 128
RCNN_MASK_LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"}


# --------------------------------------------------------------------------- tiny models (also used by test_ddp / test_plugin)


class TinyBackbone(nn.Module):
    """Three strided convs, one feature map ``"0"`` at stride 8."""

    def __init__(self, out_channels: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, out_channels, 3, 2, 1), nn.ReLU()
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict([("0", self.body(x))])


def _anchors() -> AnchorGenerator:
    return AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),))


def tiny_maskrcnn(num_classes: int = 5) -> MaskRCNN:
    """A Mask R-CNN small enough for a one-second smoke test at 128×128."""
    torch.manual_seed(0)
    return MaskRCNN(
        TinyBackbone(32), None, min_size=SIZE, max_size=SIZE, rpn_anchor_generator=_anchors(),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(32 * 7 * 7, 64), box_predictor=FastRCNNPredictor(64, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), mask_head=MaskRCNNHeads(32, (32, 32), 1),
        mask_predictor=MaskRCNNPredictor(32, 32, num_classes),
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=64, box_detections_per_img=10,
    )


def motivating_recipe() -> MaskRCNN:
    """DESIGN.md's recipe on the tiny model: a new predictor hung off the model root."""
    model = tiny_maskrcnn()
    model.mask_predictor = MaskRCNNPredictor(64, 32, 5)  # attached to the wrong object: never called
    return model


def unfixed_mask_head() -> MaskRCNN:
    """A deeper mask head attached at its slot, the predictor (32 in) not rebuilt for its 64 channels."""
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = MaskRCNNHeads(32, (32, 64), 1)
    return model


class NaNMaskHead(nn.Module):
    """A mask head whose output is NaN: log of a negative number."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(-torch.relu(self.conv(x)) - 1.0)


class OOMMaskHead(MaskRCNNHeads):
    """A mask head that runs out of memory (as a CUDA OOM would) after its first conv."""

    def forward(self, x: Tensor) -> Tensor:
        self[0](x)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


class WideClassificationHead(RetinaNetClassificationHead):
    """Declares ``num_classes`` but scores ``extra`` more columns, biased to win."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, extra: int) -> None:
        super().__init__(in_channels, num_anchors, num_classes + extra)
        self.columns = num_classes + extra
        self.num_classes = num_classes
        with torch.no_grad():
            bias = self.cls_logits.bias.view(num_anchors, self.columns)
            bias[:, num_classes:] = 5.0

    def forward(self, x: list[Tensor]) -> Tensor:
        out = []
        for features in x:
            logits = self.cls_logits(self.conv(features))
            n, _, h, w = logits.shape
            out.append(logits.view(n, -1, self.columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.columns))
        return torch.cat(out, dim=1)


class BrokenPostprocess(GeneralizedRCNNTransform):
    """Replaces image 0's detections with one box that leaves the image, and drops image 1's scores."""

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: Any, original_image_sizes: Any) -> list[dict[str, Tensor]]:
        result = super().postprocess(result, image_shapes, original_image_sizes)
        if not self.training:
            h, w = original_image_sizes[0]
            result[0] = {"boxes": torch.tensor([[10.0, 10.0, w + 40.0, 50.0]]), "labels": torch.tensor([1]),
                         "scores": torch.tensor([0.9]), "masks": torch.zeros(1, 1, h, w)}
            del result[1]["scores"]
        return result


def tiny_retinanet(wide: bool = False) -> RetinaNet:
    torch.manual_seed(0)
    backbone = TinyBackbone(32)
    head = RetinaNetHead(32, 9, 5)
    if wide:
        head.classification_head = WideClassificationHead(32, 9, 5, extra=3)
    return RetinaNet(backbone, 5, min_size=SIZE, max_size=SIZE, anchor_generator=_anchors(), head=head, detections_per_img=10)


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


class WithSpareLayer(nn.Module):
    """A generic model with a registered layer its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_classifier()
        self.spare = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def smoke(model: nn.Module, **kw: Any) -> SmokeResult:
    kw.setdefault("image_size", SIZE)
    kw.setdefault("device", "cpu")
    return smoke_test(model, **kw)


def noop_hook(module: nn.Module, args: Any, output: Any) -> None:
    """A forward hook that does nothing (module level, so a stamped model still pickles)."""


def stamped(model: nn.Module) -> tuple[nn.Module, dict[str, Any], list[Tensor | None]]:
    """Give the model state worth protecting (.grad, frozen params, eval mode, a hook) and fingerprint it."""
    params = list(model.parameters())
    params[0].requires_grad_(False)
    for p in params[1:4]:
        p.grad = torch.full_like(p, 0.5)
    model.eval()
    leaf = next(m for m in model.modules() if not list(m.children()))  # a hook on a leaf leaves orphan detection alone
    leaf.register_forward_hook(noop_hook)
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    return model, fingerprint(model), grads


def assert_restored(model: nn.Module, fp: dict[str, Any], grads: list[Tensor | None]) -> None:
    assert fingerprint(model) == fp
    for p, g in zip(model.parameters(), grads, strict=True):
        if g is None:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.equal(p.grad, g)


# --------------------------------------------------------------------------- passing models


def test_tiny_maskrcnn_passes_with_every_phase_measured() -> None:
    model, fp, grads = stamped(tiny_maskrcnn())
    result = smoke(model)
    assert result.ok, str(result)
    assert result.findings == []
    assert [p.name for p in result.phases] == ["check", "train", "eval"]
    assert [p.status for p in result.phases] == ["ok", "ok", "ok"]
    assert set(result.losses) == RCNN_MASK_LOSSES
    assert all(math.isfinite(v) for v in result.losses.values())
    assert (result.device, result.family, result.batch_size, result.image_size, result.steps, result.amp) == ("cpu", "R-CNN", 2, SIZE, 1, None)
    assert set(result.timings) == {"check", "train", "eval"} and all(t > 0 for t in result.timings.values())
    assert set(result.memory) == {"train", "eval"} and all(isinstance(m, int) and m >= 0 for m in result.memory.values())
    assert set(result.throughput) == {"train", "eval"}
    assert result.throughput["train"] == pytest.approx(2 / result.timings["train"])
    assert "ru_maxrss" in result.memory_source
    assert_restored(model, fp, grads)


def test_result_to_dict_is_json_and_str_lists_phases_and_findings() -> None:
    result = smoke(motivating_recipe())
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ok"] is False
    assert data["model"] == "MaskRCNN"
    assert [p["name"] for p in data["phases"]] == ["check", "train", "eval"]
    assert [(f["code"], f["paths"]) for f in data["findings"]] == [
        ("orphan-module", ["mask_predictor", "roi_heads.mask_predictor"]),
        ("unused-parameter", ["mask_predictor"]),
    ]
    assert set(data["losses"]) == RCNN_MASK_LOSSES
    assert data["ddp"] is None
    text = str(result)
    assert text.startswith("surgery smoke: MaskRCNN (R-CNN) on cpu: FAILED, 2 error(s)")
    for line in ("check  failed", "train  failed", "eval   ok", "error [unused-parameter] mask_predictor: "):
        assert line in text
    with pytest.raises(SmokeTestError, match=r"unused-parameter\] mask_predictor"):
        result.raise_for_errors()


def test_retinanet_and_generic_models_pass() -> None:
    result = smoke(tiny_retinanet())
    assert result.ok, str(result)
    assert set(result.losses) == {"classification", "bbox_regression"}
    generic = smoke(tiny_classifier(), batch_size=3, image_size=32)
    assert generic.ok, str(generic)
    assert generic.family == "generic"
    assert list(generic.losses) == ["output"]


def test_steps_and_amp_bfloat16_on_cpu() -> None:
    model, fp, grads = stamped(tiny_maskrcnn())
    result = smoke(model, amp=True, steps=2)
    assert result.ok, str(result)
    assert result.amp == "bfloat16"
    assert result.steps == 2
    assert result.phase("train").note.startswith("2 step(s)")
    assert_restored(model, fp, grads)


def test_parameter_values_are_restored_after_the_optimizer_step() -> None:
    model = tiny_maskrcnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smoke(model, steps=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_global_rng_state_is_left_alone() -> None:
    model = tiny_maskrcnn()  # seeds the global generator itself, so build it first
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    smoke(model)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- failure modes


def test_motivating_recipe_fails_with_unused_parameters_grouped_by_module() -> None:
    model, fp, grads = stamped(motivating_recipe())
    result = smoke(model)
    assert not result.ok
    assert result.codes() == ["orphan-module", "unused-parameter"]
    unused = result.findings[1]
    assert unused.paths == ("mask_predictor",)
    assert unused.message.startswith("4 trainable parameter tensor(s) (")
    assert "of mask_predictor (MaskRCNNPredictor) got no gradient from the train step: conv5_mask.weight, conv5_mask.bias, " \
           "mask_fcn_logits.weight, mask_fcn_logits.bias." in unused.message
    assert unused.fix is not None and "model.get_submodule('mask_predictor').requires_grad_(False)" in unused.fix
    assert [p.status for p in result.phases] == ["failed", "failed", "ok"]
    assert_restored(model, fp, grads)


def test_unused_parameters_found_without_check_too() -> None:
    result = smoke(motivating_recipe(), check=False)
    assert [p.name for p in result.phases] == ["train", "eval"]
    assert [(f.code, f.paths) for f in result.findings] == [("unused-parameter", ("mask_predictor",))]


def test_unfixed_mask_head_is_a_channel_mismatch_before_any_forward() -> None:
    model, fp, grads = stamped(unfixed_mask_head())
    result = smoke(model)
    assert not result.ok
    first = result.findings[0]
    assert (first.code, first.paths) == ("channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"))
    assert result.phase("check").status == "failed"
    raised = [f for f in result.findings if f.code == "shape-error"]
    assert [f.paths for f in raised] == [("roi_heads.mask_predictor.conv5_mask",)]
    assert "the forward pass of train step 1 raised RuntimeError in roi_heads.mask_predictor.conv5_mask (ConvTranspose2d)" in raised[0].message
    assert result.phase("train").status == "failed" and result.phase("eval").status == "failed"
    assert_restored(model, fp, grads)


def test_nan_head_is_non_finite_naming_the_loss_and_the_module() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = NaNMaskHead()
    model, fp, grads = stamped(model)
    result = smoke(model, check=False)
    assert not result.ok
    loss = [f for f in result.findings if f.code == "non-finite" and "loss" in f.message]
    assert len(loss) == 1
    assert loss[0].paths == ("roi_heads.mask_head", "roi_heads.mask_predictor")
    assert loss[0].message.startswith("loss 'loss_mask' is nan in train step 1; the first module whose output is not finite is "
                                      "roi_heads.mask_head (NaNMaskHead)")
    assert result.phase("train").status == "failed"
    assert_restored(model, fp, grads)


def test_nan_under_amp_says_so() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = NaNMaskHead()
    result = smoke(model, check=False, amp="bf16")
    loss = next(f for f in result.findings if f.code == "non-finite")
    assert "loss 'loss_mask' is nan in train step 1 under autocast(bfloat16)" in loss.message
    assert "try amp=False" in loss.message


def test_labels_beyond_num_classes_are_reported_against_the_classifier() -> None:
    model, fp, grads = stamped(tiny_retinanet(wide=True))
    result = smoke(model, check=False)
    assert not result.ok
    assert result.phase("train").status == "ok"
    assert result.phase("eval").status == "failed"
    wrong = [f for f in result.findings if f.code == "num-classes-mismatch"]
    assert [f.paths for f in wrong] == [("head.classification_head",)]
    assert "but the model has num_classes=5 (read from head.classification_head), so labels must lie in [0, 5)" in wrong[0].message
    assert re.search(r"image 0 has labels in \[[0-7], [5-7]\]", wrong[0].message)
    assert_restored(model, fp, grads)


def test_eval_outputs_are_checked_for_keys_and_box_ranges() -> None:
    model = tiny_maskrcnn()
    old = model.transform
    model.transform = BrokenPostprocess(old.min_size, old.max_size, old.image_mean, old.image_std)
    model, fp, grads = stamped(model)
    result = smoke(model, check=False)
    assert result.phase("train").status == "ok" and result.phase("eval").status == "failed"
    assert [(f.code, f.paths) for f in result.findings] == [("shape-error", ("roi_heads.box_predictor",)), ("shape-error", ())]
    assert result.findings[0].message == ("the eval pass: image 0: 1 of 1 boxes are not inside the 128×128 image or have x2<x1/y2<y1, "
                                          "e.g. [10.0, 10.0, 168.0, 50.0]")
    assert result.findings[1].message == ("the eval pass: image 1's result has keys ['boxes', 'labels', 'masks']; "
                                          "the R-CNN family also needs ['scores']")
    assert_restored(model, fp, grads)


def test_out_of_memory_in_a_head_is_reported_and_the_model_restored() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = OOMMaskHead(32, (32, 32), 1)
    model, fp, grads = stamped(model)
    result = smoke(model, check=False)
    assert result.codes() == ["shape-error"]
    finding = result.findings[0]
    assert finding.paths == ("roi_heads.mask_head",)
    assert finding.message.startswith("the forward pass of train step 1 ran out of memory in roi_heads.mask_head (OOMMaskHead): "
                                      "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    assert finding.fix == "lower batch_size or image_size, or use amp=True"
    assert [p.status for p in result.phases] == ["failed", "failed"]
    assert_restored(model, fp, grads)


def test_generic_model_with_a_spare_layer_has_unused_parameters() -> None:
    model, fp, grads = stamped(WithSpareLayer())
    result = smoke(model, image_size=32, check=False)
    assert [(f.code, f.paths) for f in result.findings] == [("unused-parameter", ("spare",))]
    assert "4 trainable parameter tensor(s) (24 values) of spare (Sequential)" in result.findings[0].message
    assert_restored(model, fp, grads)


def test_unused_parameter_grouping() -> None:
    model = nn.Module()
    model.a = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model.b = nn.Linear(2, 2)
    names = ["a.0.weight", "a.0.bias", "a.1.weight", "a.1.bias", "b.bias"]
    found = unused_parameter_findings(model, names)
    assert [(f.code, f.paths) for f in found] == [("unused-parameter", ("a",)), ("unused-parameter", ("b",))]
    assert found[0].message.startswith("4 trainable parameter tensor(s) (12 values) of a (Sequential) got no gradient from the train step: "
                                       "0.weight, 0.bias, 1.weight, 1.bias.")
    assert found[1].fix == "freeze them: model.get_parameter('b.bias').requires_grad_(False)"
    assert unused_parameter_findings(model, []) == []


# --------------------------------------------------------------------------- arguments and devices


def test_auto_device_without_gpu_picks_cpu_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == (torch.device("cpu"), "auto: no CUDA GPU, using cpu")
    result = smoke(tiny_classifier(), device="auto", image_size=32)
    assert (result.device, result.device_note) == ("cpu", "auto: no CUDA GPU, using cpu")


def test_cuda_without_gpu_is_a_smoke_test_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = tiny_classifier()
    fp = fingerprint(model)
    with pytest.raises(SmokeTestError, match=r"device='cuda' was asked for, but torch sees no CUDA GPU") as info:
        smoke_test(model, device="cuda")
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, surgery.SurgeryError)
    assert fingerprint(model) == fp


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"ddp": 1}, r"ddp must be 0 \(no DDP phase\) or a world size >= 2, got 1"),
        ({"amp": "int8"}, r"amp must be False, True, 'bf16' or 'fp16'.*got 'int8'"),
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"image_size": 16}, r"image_size must be an int >= 32, got 16"),
        ({"steps": 0}, r"steps must be an int >= 1, got 0"),
        ({"ddp_timeout": 0}, r"ddp_timeout must be a positive number of seconds, got 0"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        smoke_test(tiny_classifier(), **kwargs)


def test_not_a_module() -> None:
    with pytest.raises(surgery.NotAModuleError, match=r"smoke_test\(\): model must be an nn.Module, got dict"):
        smoke_test({})  # type: ignore[arg-type]


def test_resolve_amp() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_amp(False, cpu) is None
    assert resolve_amp(True, cpu) is torch.bfloat16
    assert resolve_amp(True, cuda) is torch.float16
    assert resolve_amp("fp16", cpu) is torch.float16
    assert resolve_amp(torch.bfloat16, cpu) is torch.bfloat16


def test_progress_gets_one_line_per_phase() -> None:
    lines: list[str] = []
    smoke(tiny_maskrcnn(), progress=lines.append)
    assert lines[0] == "surgery smoke: MaskRCNN (R-CNN) on cpu [cpu, as asked], batch 2 × 128×128, amp off"
    assert [line.split()[0] for line in lines[1:]] == ["check", "train", "eval"]


# --------------------------------------------------------------------------- CLI


def test_cli_smoke_ok_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["smoke", "tests.test_smoke:tiny_maskrcnn", "--device", "cpu", "--image-size", "128"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "surgery smoke: MaskRCNN (R-CNN) on cpu [cpu, as asked], batch 2 × 128×128, amp off"
    assert [line.split()[:2] for line in lines[1:4]] == [["check", "ok"], ["train", "ok"], ["eval", "ok"]]
    assert lines[-1] == "surgery smoke: tests.test_smoke:tiny_maskrcnn: ok"


def test_cli_smoke_failure_exits_1_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["smoke", "tests.test_smoke:motivating_recipe", "--device", "cpu", "--image-size", "128", "--json", "--batch-size", "1"])
    captured = capsys.readouterr()
    assert code == 1
    data = json.loads(captured.out)
    assert data["model"] == "tests.test_smoke:motivating_recipe"
    assert data["ok"] is False
    assert data["batch_size"] == 1
    assert [f["code"] for f in data["findings"]] == ["orphan-module", "unused-parameter"]
    assert "  train  failed" in captured.err  # phases go to stderr with --json


def test_cli_smoke_cuda_without_gpu_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["smoke", "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


# --------------------------------------------------------------------------- every torchvision builder

#: R-CNN builders get fewer proposals and sampled RoIs (same architecture): on CPU their cost is
#: mostly the RoI heads, and torchvision's defaults (2000 proposals, 512 RoIs per image) make a
#: single v2 train step take minutes on a 2-core machine.
RCNN_LIGHT = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150, "rpn_pre_nms_top_n_test": 150,
              "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 64, "box_detections_per_img": 20}


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTION_BUILDERS)
def test_every_detection_builder_passes(name: str) -> None:
    model = build(name, **(RCNN_LIGHT if "rcnn" in name else {}))
    fp = fingerprint(model)
    result = smoke_test(model, device="cpu", image_size=160, batch_size=2)
    assert result.ok, str(result)
    expected = {
        "R-CNN": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
        "RetinaNet": {"classification", "bbox_regression"},
        "FCOS": {"classification", "bbox_regression", "bbox_ctrness"},
        "SSD": {"bbox_regression", "classification"},
    }[result.family]
    if name.startswith("maskrcnn"):
        expected.add("loss_mask")
    if name.startswith("keypointrcnn"):
        expected.add("loss_keypoint")
    assert set(result.losses) == expected
    assert [p.status for p in result.phases] == ["ok", "ok", "ok"]
    assert fingerprint(model) == fp
