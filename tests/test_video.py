"""The video classification family: slots, the body → head contract, set_num_classes, the smoke test."""

from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery.anatomy import anatomy_for
from surgery.anatomy.video import VideoAnatomy
from tests.helpers import build

VIDEO = sorted(torchvision.models.list_models(module=torchvision.models.video))


def test_r3d_18_with_a_wrong_fc_is_a_channel_mismatch() -> None:
    model = build("r3d_18", num_classes=5)
    model.fc = nn.Linear(256, 5)
    report = surgery.check(model)
    assert [(f.code, f.paths, f.fix) for f in report.errors] == [
        ("channel-mismatch", ("layer4", "fc"), "model.fc = nn.Linear(512, 5)  # or make layer4 produce 256 features"),
    ]
    assert report.errors[0].message == "layer4 (Sequential) produces 512 features but fc (Linear) expects 256 (weight (5, 256)); it received 2×512"


def test_s3d_conv3d_head_mismatch() -> None:
    model = build("s3d", num_classes=5)
    model.classifier[1] = nn.Conv3d(512, 5, kernel_size=1)
    assert [(f.code, f.paths, f.fix) for f in surgery.check(model).errors] == [
        ("channel-mismatch", ("features", "classifier.1"),
         "model.classifier[1] = nn.Conv3d(1024, 5, kernel_size=1)  # or make features produce 512 channels"),
    ]


def test_components_list_body_and_head_with_roles() -> None:
    listed = surgery.components(build("r2plus1d_18"))
    assert [(c.path, c.role) for c in listed] == [
        ("stem", "body (1 of 5): clip → features"),
        ("layer1", "body (2 of 5): features → features"),
        ("layer2", "body (3 of 5): features → features"),
        ("layer3", "body (4 of 5): features → features"),
        ("layer4", "body (5 of 5): features → features for the head"),
        ("fc", "head: features → class logits (fc)"),
    ]


def test_set_num_classes_keeps_the_kept_rows() -> None:
    model = build("mc3_18", num_classes=6)
    old = model.fc
    surgery.set_num_classes(model, 4, keep={0: 5, 3: 2})
    assert (model.fc.in_features, model.fc.out_features) == (512, 4)
    assert torch.equal(model.fc.weight[[0, 3]], old.weight[[5, 2]]) and torch.equal(model.fc.bias[[0, 3]], old.bias[[5, 2]])
    assert torch.equal(model.fc.bias[[1, 2]], torch.zeros(2))


def test_set_num_classes_rebuilds_a_conv3d_class_layer() -> None:
    model = build("s3d", num_classes=6)
    old = model.classifier[1]
    surgery.set_num_classes(model, 2, keep=[3])
    new = model.classifier[1]
    assert isinstance(new, nn.Conv3d) and (new.in_channels, new.out_channels) == (1024, 2)
    assert torch.equal(new.weight[0], old.weight[3])


def test_synthetic_batch_is_a_clip() -> None:
    clips, labels = surgery.synthetic_batch(build("r3d_18", num_classes=3), batch_size=2, image_size=32)
    assert clips.shape == (2, 3, 4, 32, 32) and labels.shape == (2,)
    mvit, _ = surgery.synthetic_batch(build("mvit_v2_s"), batch_size=1, image_size=32)
    assert mvit.shape == (1, 3, 16, 224, 224)  # MViT takes one clip size


def test_smoke_test_trains_with_cross_entropy() -> None:
    result = surgery.smoke_test(build("r3d_18", num_classes=3), device="cpu", image_size=32)
    assert result.ok, result
    assert result.family == "video classification"
    assert list(result.losses) == ["loss_classifier"]


@pytest.mark.slow
@pytest.mark.parametrize("name", VIDEO)
def test_every_video_builder_checks_clean(name: str) -> None:
    model = build(name)
    try:
        report = surgery.check(model)
        assert isinstance(anatomy_for(model), VideoAnatomy)
        assert [str(f) for f in report.findings if f.severity == "error"] == []
        assert report.coverage is not None and report.coverage.probe == "ran"
        comps = surgery.components(model)
        assert comps and all(c.role for c in comps)
    finally:
        del model
        gc.collect()
