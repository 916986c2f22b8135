"""The detector fits together, trains one step, evaluates, and works under DDP."""

from __future__ import annotations

import pytest
from surgery.testing import assert_compatible, assert_smoke

from detector import WideMaskHead, build_model


@pytest.fixture(scope="module")
def model():
    return build_model(num_classes=3)


def test_components_fit(model) -> None:
    assert_compatible(model)  # channels, classes, anchors, feature maps, orphans: before any forward
    assert isinstance(model.roi_heads.mask_head, WideMaskHead)
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 512


def test_train_step_and_eval_pass(model, surgery_smoke) -> None:
    result = surgery_smoke(model, image_size=256)  # asserts; the device comes from --surgery-device
    assert set(result.losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"}


@pytest.mark.slow
def test_ready_for_distributed_data_parallel(model) -> None:
    assert_smoke(model, image_size=128, batch_size=1, ddp=2)


@pytest.mark.cuda
def test_mixed_precision_on_gpu(model) -> None:
    result = assert_smoke(model, device="cuda", amp=True, image_size=800)
    print(result)  # timings and peak GPU memory, shown with pytest -s
