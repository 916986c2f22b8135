"""``surgery.set_num_keypoints`` and the keypoint predictor's contracts (Keypoint R-CNN)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import KeypointRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor

import surgery
from surgery import IncompatibleError, KeypointChange
from tests.helpers import build, state_bytes

KEEP = [0, 5, 6, 16]  # nose, shoulders, right ankle of COCO's 17


def light_keypointrcnn(num_keypoints: int = 17) -> torch.nn.Module:
    return KeypointRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), 2, num_keypoints=num_keypoints)


def test_set_num_keypoints_keeps_the_kept_channels_exactly() -> None:
    model = light_keypointrcnn()
    old = model.roi_heads.keypoint_predictor.kps_score_lowres
    change = surgery.set_num_keypoints(model, 5, keep=KEEP)
    assert isinstance(change, KeypointChange)
    assert (change.old_num_keypoints, change.num_keypoints, change.kept) == (17, 5, {0: 0, 1: 5, 2: 6, 3: 16})
    path = "roi_heads.keypoint_predictor.kps_score_lowres"
    assert change.rebuilt == {path: "ConvTranspose2d(512, 17, kernel_size=(4, 4)) → ConvTranspose2d(512, 5, kernel_size=(4, 4))"}
    new = model.roi_heads.keypoint_predictor.kps_score_lowres
    assert (new.in_channels, new.out_channels, new.stride, new.padding) == (512, 5, (2, 2), (1, 1))
    assert torch.equal(new.weight[:, :4], old.weight.detach()[:, KEEP])  # a transposed conv's outputs are dim 1
    assert torch.equal(new.bias[:4], old.bias.detach()[KEEP])
    assert float(new.bias.detach()[4]) == 0.0
    assert change.copied[f"{path}.weight"] == [(0, 0), (1, 5), (2, 6), (3, 16)]
    assert change.initialised[f"{path}.bias"] == [4]
    assert model.roi_heads.keypoint_predictor.out_channels == 5
    assert change.notes == ["new keypoints initialised as torchvision does: kaiming_normal_(fan_out, relu) weights, zero bias",
                            "roi_heads.keypoint_predictor.out_channels set to 5"]
    assert change.report is not None and change.report.ok
    assert str(change).splitlines()[0] == "set_num_keypoints: 17 → 5 keypoints (kept new←old: 0←0, 1←5, 2←6, 3←16)"


def test_trains_on_the_new_keypoint_count() -> None:
    model = light_keypointrcnn()
    surgery.set_num_keypoints(model, 3, keep=[0, 1, 2])
    images, targets = surgery.synthetic_batch(model, batch_size=1, image_size=96)
    assert tuple(targets[0]["keypoints"].shape) == (2, 3, 3)
    model.transform.min_size, model.transform.max_size = (96,), 96
    model.train()
    losses = model(images, targets)
    assert bool(torch.isfinite(losses["loss_keypoint"]))


def test_a_failing_set_num_keypoints_changes_nothing() -> None:
    model = light_keypointrcnn()
    before = state_bytes(model)
    modules = [id(m) for m in model.modules()]
    with pytest.raises(ValueError, match=r"^keep: old keypoint index for new keypoint 1 \(the model has 17 keypoints\) "
                                         r"must be an int in 0\.\.16, got 17$"):
        surgery.set_num_keypoints(model, 3, keep=[0, 17])
    with pytest.raises(ValueError, match=r"^num_keypoints must be an int >= 1, got 0$"):
        surgery.set_num_keypoints(model, 0)
    assert state_bytes(model) == before and [id(m) for m in model.modules()] == modules
    # inside a transaction that fails its check, the resize is undone with the rest
    with pytest.raises(IncompatibleError, match=r"^surgery\.edit\(\) was rolled back and the model is unchanged"):
        with surgery.edit(model) as e:
            e.set_num_keypoints(4)
            e.set("roi_heads.keypoint_predictor", KeypointRCNNPredictor(256, 4))
    assert state_bytes(model) == before and [id(m) for m in model.modules()] == modules
    assert model.roi_heads.keypoint_predictor.out_channels == 17


def test_models_without_keypoints_are_refused() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(ValueError, match=r"^set_num_keypoints\(\) changes models that predict keypoints, but FasterRCNN has no "
                                         r"keypoint branch"):
        surgery.set_num_keypoints(model, 5)
    with pytest.raises(ValueError, match=r"^set_num_keypoints\(\) changes models that predict keypoints \(Keypoint R-CNN\); "
                                         r"ResNet \(classification family\) predicts none$"):
        surgery.set_num_keypoints(build("resnet18"), 5)


def test_keypoint_predictor_that_disagrees_with_its_head() -> None:
    model = light_keypointrcnn()
    model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(256, 17)
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths) == ("channel-mismatch", ("roi_heads.keypoint_head", "roi_heads.keypoint_predictor"))
    assert f.message == ("roi_heads.keypoint_head produces 512 channels but roi_heads.keypoint_predictor (KeypointRCNNPredictor) "
                         "expects 256 (in roi_heads.keypoint_predictor.kps_score_lowres)")
    assert f.fix == "model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(512, 17)"


def test_keypoint_predictor_that_disagrees_with_its_declared_count() -> None:
    model = light_keypointrcnn()
    model.roi_heads.keypoint_predictor.out_channels = 5
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths) == ("channel-mismatch", ("roi_heads.keypoint_predictor",))
    assert f.message == ("roi_heads.keypoint_predictor.out_channels says 5 keypoints but its kps_score_lowres outputs 17 heatmaps; "
                         "targets and the keypoint loss are sized by out_channels")
    assert f.fix == "model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(512, 17)"
