"""``check`` finds no error on any torchvision builder (weights None, default arguments).

Every detection, segmentation and classification builder is built one at a time and freed
right after its check, so peak memory stays at the largest single model. The train-mode
detection sweep is marked slow; the sweeps over the other families' builders live in their
own test files (``test_classification.py``, ``test_video.py``, ...).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import surgery
from tests.helpers import build

DETECTION = sorted(torchvision.models.list_models(module=torchvision.models.detection))
SEGMENTATION = sorted(torchvision.models.list_models(module=torchvision.models.segmentation))
CLASSIFICATION = sorted(torchvision.models.list_models(module=torchvision.models))

#: The stock MobileNetV3 FPN detectors pool maps '2' and '3' that their backbone never makes:
#: torchvision's MultiScaleRoIAlign drops them silently. A warning, by design.
MOBILENET_POOLER_WARNING = (
    "warning",
    "featmap-missing",
    ("backbone", "roi_heads.box_roi_pool"),
    "roi_heads.box_roi_pool pools feature maps ['0', '1', '2', '3'] but the backbone produces ['0', '1', 'pool']; "
    "['2', '3'] are silently ignored",
)
EXPECTED_WARNINGS = {
    "fasterrcnn_mobilenet_v3_large_fpn": [MOBILENET_POOLER_WARNING],
    "fasterrcnn_mobilenet_v3_large_320_fpn": [MOBILENET_POOLER_WARNING],
}


@pytest.fixture
def built(request: pytest.FixtureRequest) -> Iterator[nn.Module]:
    """The builder named by the test's ``name`` parameter, freed after the test."""
    model = build(request.node.callspec.params["name"])
    yield model
    del model
    gc.collect()


def findings_of(model: nn.Module) -> list[tuple[str, str, tuple[str, ...], str]]:
    return [(f.severity, f.code, f.paths, f.message) for f in surgery.check(model).findings]


def test_the_sweeps_cover_every_builder() -> None:
    assert len(DETECTION) == 12
    assert len(SEGMENTATION) == 6
    assert len(CLASSIFICATION) >= 80
    assert not set(DETECTION) & set(CLASSIFICATION)
    assert set(EXPECTED_WARNINGS) <= set(DETECTION)


@pytest.mark.parametrize("name", DETECTION)
def test_detection_builder_is_clean(built: nn.Module, name: str) -> None:
    assert findings_of(built) == EXPECTED_WARNINGS.get(name, [])


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTION)
def test_detection_builder_in_train_mode_with_other_classes_is_clean(name: str) -> None:
    model = build(name, num_classes=3).train()
    try:
        assert [f for f in findings_of(model) if f[0] == "error"] == []
    finally:
        del model
        gc.collect()


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_builder_is_clean(built: nn.Module, name: str) -> None:
    assert findings_of(built) == []


def test_every_torchvision_builder_is_swept_by_its_family() -> None:
    """Each family's test file sweeps its builders (check clean, the family's anatomy, slots with
    roles); together they cover every builder torchvision lists, none left to the generic anatomy."""
    from tests import test_classification, test_optical_flow, test_segmentation, test_video

    swept = set(DETECTION) | set(test_classification.CLASSIFICATION) | set(test_classification.QUANTIZABLE)
    swept |= set(test_segmentation.SEGMENTATION) | set(test_video.VIDEO) | set(test_optical_flow.OPTICAL_FLOW)
    assert set(torchvision.models.list_models()) <= swept
    assert len(torchvision.models.list_models()) >= 121


# --------------------------------------------------------------------------- user modules that read oddly but fit


class Reordered(nn.Module):
    """A user block whose layers are registered in another order than they run."""

    def __init__(self, in_channels: int = 256) -> None:
        super().__init__()
        self.post = nn.Conv2d(512, 256, 1)  # registered first, runs last
        self.pre = nn.Conv2d(in_channels, 512, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(torch.relu(self.pre(x)))


@pytest.fixture(scope="module")
def small_maskrcnn() -> Iterator[nn.Module]:
    model = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), 5)
    yield model
    del model
    gc.collect()


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "inside-sequential"])
def test_a_user_block_is_probed_not_read_by_registration_order(small_maskrcnn: nn.Module, wrap: bool) -> None:
    stock_head = small_maskrcnn.roi_heads.mask_head
    try:
        fits = Reordered()
        small_maskrcnn.roi_heads.mask_head = nn.Sequential(fits, nn.ReLU()) if wrap else fits
        assert surgery.check(small_maskrcnn).findings == []  # static reading alone would say "expects 512"
        wrong = Reordered(in_channels=128)
        small_maskrcnn.roi_heads.mask_head = nn.Sequential(wrong, nn.ReLU()) if wrap else wrong
        report = surgery.check(small_maskrcnn)
        assert [(f.code, f.paths) for f in report.errors] == [("channel-mismatch", ("roi_heads.mask_roi_pool", "roi_heads.mask_head"))]
    finally:
        small_maskrcnn.roi_heads.mask_head = stock_head
