"""``surgery.check``: every statically found code on broken models (and its absence on the fixed ones),
the report API, leaving no trace, and ``surgery check`` on the command line."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

import surgery
from surgery.cli import main
from tests.helpers import build, fingerprint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "deeper_mask_head.py"
SCRIPT = Path(sys.executable).with_name("surgery")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deeper_mask_head_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


# --------------------------------------------------------------------------- user-defined modules


class ConvStack(nn.Module):
    """A user's mask head: 3×3 convs with ReLU."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
            in_channels = width
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvStackWithSpare(ConvStack):
    """A user's mask head that registers a refinement conv and forgets to call it."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__(in_channels, widths)
        self.refine = nn.Conv2d(widths[-1], widths[-1], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvStackRefined(ConvStackWithSpare):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.body(x))


class FlatBoxHead(nn.Module):
    """A user's box head: flatten, one Linear."""

    def __init__(self, in_features: int, representation: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, representation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))


class PairPredictor(nn.Module):
    """A user's box predictor returning (scores, deltas), each sized on its own."""

    def __init__(self, in_features: int, classes: int, box_classes: int) -> None:
        super().__init__()
        self.scores = nn.Linear(in_features, classes)
        self.deltas = nn.Linear(in_features, 4 * box_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.scores(x), self.deltas(x)


class UpsampleMaskPredictor(nn.Module):
    """A user's mask predictor: 2× transposed conv, then per-class logits."""

    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, 256, 2, stride=2)
        self.logits = nn.Conv2d(256, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.relu(self.up(x)))


class ListRPNHead(nn.Module):
    """A user's RPN head: one shared conv, objectness and deltas per map."""

    def __init__(self, in_channels: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * anchors, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hidden = [torch.relu(self.conv(f)) for f in features]
        return [self.objectness(h) for h in hidden], [self.deltas(h) for h in hidden]


class DictMaskHead(nn.Module):
    """A user's head written for a dict of feature maps, put where one RoI tensor arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(256, 256, 3, padding=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat([v for _, v in features.items()], 1))


class TinyBackbone(nn.Module):
    """A user's two-map backbone with its own map names."""

    def __init__(self, names: tuple[str, str] = ("c3", "c4")) -> None:
        super().__init__()
        self.names = names
        self.stem = nn.Conv2d(3, 64, 7, stride=4, padding=3)
        self.down = nn.Conv2d(64, 64, 3, stride=2, padding=1)
        self.out_channels = 64

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        a = torch.relu(self.stem(x))
        b = torch.relu(self.down(a))
        return OrderedDict([(self.names[0], a), (self.names[1], b)])


class MisnamedBackbone(TinyBackbone):
    """A user's backbone that asks its own feature dict for a key it never made."""

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = super().forward(x)
        return OrderedDict([("0", feats["c5"])])


class NamedPooler(MultiScaleRoIAlign):
    """A user's pooler subclass with its feature-map names fixed."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(featmap_names=names, output_size=7, sampling_ratio=2)


# --------------------------------------------------------------------------- models, built once per module


def small_rcnn(cls: type[nn.Module] = MaskRCNN, num_classes: int = 5) -> nn.Module:
    return cls(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), num_classes)


def tiny_faster(pooler: MultiScaleRoIAlign | None = None, backbone: nn.Module | None = None) -> FasterRCNN:
    anchors = AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    return FasterRCNN(backbone or TinyBackbone(), num_classes=3, rpn_anchor_generator=anchors, box_roi_pool=pooler)


BASES: dict[str, Callable[[], nn.Module]] = {
    "maskrcnn": lambda: small_rcnn(MaskRCNN),
    "fasterrcnn": lambda: small_rcnn(FasterRCNN),
    "retinanet": lambda: build("retinanet_resnet50_fpn", num_classes=5),
    "retinanet_v2": lambda: build("retinanet_resnet50_fpn_v2", num_classes=5),
    "fcos": lambda: build("fcos_resnet50_fpn", num_classes=5),
    "ssd": lambda: build("ssd300_vgg16", num_classes=5),
}


@pytest.fixture(scope="module")
def bases() -> Iterator[Callable[[str], nn.Module]]:
    """``bases(name)``: a model built once for this module; cases swap parts in and back out."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = BASES[name]()
        return cache[name]

    yield get
    cache.clear()


_MISSING = object()


@contextmanager
def swapped(model: nn.Module, changes: Mapping[str, Any]) -> Iterator[nn.Module]:
    """Set each dotted path to a value (a module or a plain attribute), then put everything back."""
    undo: list[tuple[nn.Module, str, Any]] = []
    try:
        for path, value in changes.items():
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            old = parent._modules[name] if name in parent._modules else getattr(parent, name, _MISSING)
            undo.append((parent, name, old))
            if isinstance(parent, (nn.ModuleList, nn.Sequential)):
                parent[int(name)] = value
            else:
                setattr(parent, name, value)
        yield model
    finally:
        for parent, name, old in reversed(undo):
            if old is _MISSING:
                delattr(parent, name)
            elif isinstance(parent, (nn.ModuleList, nn.Sequential)):
                parent[int(name)] = old
            else:
                setattr(parent, name, old)


Expected = tuple[str, str, tuple[str, ...], "str | re.Pattern[str]", "str | None"]


def rows(report: surgery.Report) -> list[tuple[str, str, tuple[str, ...], str, str | None]]:
    return [(f.severity, f.code, f.paths, f.message, f.fix) for f in report.findings]


def assert_findings(report: surgery.Report, expected: list[Expected]) -> None:
    actual = rows(report)
    assert len(actual) == len(expected), f"expected {len(expected)} findings, got:\n{report}"
    for got, want in zip(actual, expected, strict=True):
        assert got[:3] == want[:3], report
        message = want[3]
        if isinstance(message, re.Pattern):
            assert message.fullmatch(got[3]), got[3]
        else:
            assert got[3] == message
        assert got[4] == want[4]


# --------------------------------------------------------------------------- the cases

Changes = Callable[[nn.Module], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    base: str
    broken: Changes
    fixed: Changes
    expected: list[Expected]
    custom: bool = False  # the broken part is a user-defined module


CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- channel-mismatch
    "channel/mask-predictor-not-rebuilt": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_head": MaskRCNNHeads(256, (256, 512, 1024), 1)},
        lambda m: {"roi_heads.mask_head": MaskRCNNHeads(256, (256, 512, 1024), 1),
                   "roi_heads.mask_predictor": MaskRCNNPredictor(1024, 256, 5)},
        [("error", "channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"),
          "roi_heads.mask_head produces 1024 channels but roi_heads.mask_predictor (MaskRCNNPredictor) expects 256 "
          "(in roi_heads.mask_predictor.conv5_mask)",
          "model.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 5)")],
    ),
    "channel/custom-mask-head-input": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_head": ConvStack(512, (256, 256))},
        lambda m: {"roi_heads.mask_head": ConvStack(256, (256, 256))},
        [("error", "channel-mismatch", ("roi_heads.mask_roi_pool", "roi_heads.mask_head"),
          "roi_heads.mask_roi_pool produces 256 channels but roi_heads.mask_head (ConvStack) expects 512 (in roi_heads.mask_head.body.0)",
          "model.roi_heads.mask_head = MaskRCNNHeads(256, (256, 256), 1)")],
        custom=True,
    ),
    "channel/custom-mask-head-output": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_head": ConvStack(256, (256, 384))},
        lambda m: {"roi_heads.mask_head": ConvStack(256, (256, 384)), "roi_heads.mask_predictor": MaskRCNNPredictor(384, 256, 5)},
        [("error", "channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"),
          "roi_heads.mask_head produces 384 channels but roi_heads.mask_predictor (MaskRCNNPredictor) expects 256 "
          "(in roi_heads.mask_predictor.conv5_mask)",
          "model.roi_heads.mask_predictor = MaskRCNNPredictor(384, 256, 5)")],
        custom=True,
    ),
    "channel/custom-box-head-to-predictor": Case(
        "maskrcnn",
        lambda m: {"roi_heads.box_head": FlatBoxHead(256 * 7 * 7, 512)},
        lambda m: {"roi_heads.box_head": FlatBoxHead(256 * 7 * 7, 512), "roi_heads.box_predictor": FastRCNNPredictor(512, 5)},
        [("error", "channel-mismatch", ("roi_heads.box_head", "roi_heads.box_predictor"),
          "roi_heads.box_head produces 512 features but roi_heads.box_predictor (FastRCNNPredictor) expects 1024 "
          "(in roi_heads.box_predictor.cls_score)",
          "model.roi_heads.box_predictor = FastRCNNPredictor(512, 5)")],
        custom=True,
    ),
    "channel/custom-box-predictor-input": Case(
        "maskrcnn",
        lambda m: {"roi_heads.box_predictor": PairPredictor(512, 5, 5)},
        lambda m: {"roi_heads.box_predictor": PairPredictor(1024, 5, 5)},
        [("error", "channel-mismatch", ("roi_heads.box_head", "roi_heads.box_predictor"),
          re.compile(r"roi_heads\.box_head produces 1024 features but roi_heads\.box_predictor \(PairPredictor\) raised on them: "
                     r"RuntimeError in roi_heads\.box_predictor\.scores: .*"),
          "model.roi_heads.box_predictor = FastRCNNPredictor(1024, num_classes)")],
        custom=True,
    ),
    "channel/box-head-input-size": Case(
        "maskrcnn",
        lambda m: {"roi_heads.box_head.fc6": nn.Linear(256 * 14 * 14, 1024)},
        lambda m: {"roi_heads.box_head.fc6": nn.Linear(256 * 7 * 7, 1024)},
        [("error", "channel-mismatch", ("roi_heads.box_roi_pool", "roi_heads.box_head"),
          "roi_heads.box_roi_pool produces 256×7×7 = 12544 features but roi_heads.box_head (TwoMLPHead) expects 50176 "
          "(in roi_heads.box_head.fc6)",
          "model.roi_heads.box_head = TwoMLPHead(256 * 7 * 7, 1024)")],
    ),
    "channel/rpn-head-input": Case(
        "maskrcnn",
        lambda m: {"rpn.head": RPNHead(512, 3)},
        lambda m: {"rpn.head": RPNHead(256, 3)},
        [("error", "channel-mismatch", ("backbone", "rpn.head"),
          "backbone produces 256 channels but rpn.head (RPNHead) expects 512 (in rpn.head.conv.0.0)",
          "model.rpn.head = RPNHead(256, 3)")],
    ),
    "channel/custom-rpn-head-input": Case(
        "maskrcnn",
        lambda m: {"rpn.head": ListRPNHead(128, 3)},
        lambda m: {"rpn.head": ListRPNHead(256, 3)},
        [("error", "channel-mismatch", ("backbone", "rpn.head"),
          re.compile(r"backbone produces 256 channels but rpn\.head \(ListRPNHead\) expects 128 \(in rpn\.head\.conv\) and raised: "
                     r"RuntimeError in rpn\.head\.conv: .*"),
          "model.rpn.head = RPNHead(256, 3)")],
        custom=True,
    ),
    "channel/fpn-for-another-body": Case(
        "maskrcnn",
        lambda m: {"backbone.fpn": FeaturePyramidNetwork([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool())},
        lambda m: {"backbone.fpn": FeaturePyramidNetwork([64, 128, 256, 512], 256, extra_blocks=LastLevelMaxPool())},
        [("error", "channel-mismatch", ("backbone.body", "backbone.fpn"),
          "backbone.body.layer1 (feature map '0') produces 64 channels but backbone.fpn.inner_blocks.0 expects 256",
          "model.backbone.fpn = FeaturePyramidNetwork([64, 128, 256, 512], 256, extra_blocks=model.backbone.fpn.extra_blocks)")],
    ),
    "channel/out-channels-attribute": Case(
        "maskrcnn",
        lambda m: {"backbone.out_channels": 512},
        lambda m: {"backbone.out_channels": 256},
        [("error", "channel-mismatch", ("backbone",),
          "backbone.out_channels says 512 but its feature maps have 256 channels; builders and heads that read "
          "out_channels will be sized wrongly",
          "model.backbone.out_channels = 256")],
    ),
    "channel/retinanet-head-input": Case(
        "retinanet",
        lambda m: {"head": RetinaNetHead(512, 9, 5)},
        lambda m: {"head": RetinaNetHead(256, 9, 5)},
        [("error", "channel-mismatch", ("backbone", "head.classification_head"),
          "backbone produces 256 channels but head.classification_head.conv (Sequential) expects 512 "
          "(in head.classification_head.conv.0.0)",
          "model.head = RetinaNetHead(256, 9, 5)"),
         ("error", "channel-mismatch", ("backbone", "head.regression_head"),
          "backbone produces 256 channels but head.regression_head.conv (Sequential) expects 512 (in head.regression_head.conv.0.0)",
          "model.head = RetinaNetHead(256, 9, 5)")],
    ),
    "channel/ssd-class-head-input": Case(
        "ssd",
        lambda m: {"head.classification_head.module_list.1": nn.Conv2d(512, 30, 3, padding=1)},
        lambda m: {"head.classification_head.module_list.1": nn.Conv2d(1024, 30, 3, padding=1)},
        [("error", "channel-mismatch", ("backbone", "head.classification_head.module_list.1"),
          "feature map '1': backbone produces 1024 channels but head.classification_head.module_list.1 (Conv2d) expects 512 "
          "(in head.classification_head.module_list.1)",
          "model.head.classification_head.module_list[1] = nn.Conv2d(1024, 30, kernel_size=3, padding=1)")],
    ),
    # ---------------------------------------------------------------- num-classes-mismatch
    "classes/box-vs-mask-predictor": Case(
        "maskrcnn",
        lambda m: {"roi_heads.box_predictor": FastRCNNPredictor(1024, 7)},
        lambda m: {"roi_heads.box_predictor": FastRCNNPredictor(1024, 7), "roi_heads.mask_predictor": MaskRCNNPredictor(256, 256, 7)},
        [("error", "num-classes-mismatch", ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
          "roi_heads.box_predictor has 7 classes but roi_heads.mask_predictor predicts 5 mask channels; masks are picked "
          "by the box's class label, so they must agree",
          "model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 7)")],
    ),
    "classes/custom-mask-predictor": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_predictor": UpsampleMaskPredictor(256, 3)},
        lambda m: {"roi_heads.mask_predictor": UpsampleMaskPredictor(256, 5)},
        [("error", "num-classes-mismatch", ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
          "roi_heads.box_predictor has 5 classes but roi_heads.mask_predictor predicts 3 mask channels; masks are picked "
          "by the box's class label, so they must agree",
          "model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 5)")],
        custom=True,
    ),
    "classes/custom-box-predictor-deltas": Case(
        "fasterrcnn",
        lambda m: {"roi_heads.box_predictor": PairPredictor(1024, 5, 6)},
        lambda m: {"roi_heads.box_predictor": PairPredictor(1024, 5, 5)},
        [("error", "num-classes-mismatch", ("roi_heads.box_predictor",),
          "roi_heads.box_predictor scores 5 classes but predicts 24 box deltas; it needs 4 × 5 = 20 (one box per class)",
          "model.roi_heads.box_predictor = FastRCNNPredictor(1024, 5)")],
        custom=True,
    ),
    "classes/bbox-pred-replaced": Case(
        "fasterrcnn",
        lambda m: {"roi_heads.box_predictor.bbox_pred": nn.Linear(1024, 4 * 7)},
        lambda m: {"roi_heads.box_predictor.bbox_pred": nn.Linear(1024, 4 * 5)},
        [("error", "num-classes-mismatch", ("roi_heads.box_predictor",),
          "roi_heads.box_predictor scores 5 classes but predicts 28 box deltas; it needs 4 × 5 = 20 (one box per class)",
          "model.roi_heads.box_predictor = FastRCNNPredictor(1024, 5)")],
    ),
    "classes/retinanet-cls-logits": Case(
        "retinanet",
        lambda m: {"head.classification_head.cls_logits": nn.Conv2d(256, 9 * 6, 3, padding=1)},
        lambda m: {"head.classification_head.cls_logits": nn.Conv2d(256, 9 * 6, 3, padding=1), "head.classification_head.num_classes": 6},
        [("error", "num-classes-mismatch", ("anchor_generator", "head.classification_head"),
          "head.classification_head.cls_logits has 54 output channels but 9 anchors × 5 classes "
          "(head.classification_head.num_classes) = 45; it predicts 6 classes per anchor",
          "model.head = RetinaNetHead(256, 9, 5)")],
    ),
    "classes/ssd-class-head-columns": Case(
        "ssd",
        lambda m: {"head.classification_head.module_list.2": nn.Conv2d(512, 6 * 6, 3, padding=1)},
        lambda m: {"head.classification_head.module_list.2": nn.Conv2d(512, 6 * 5, 3, padding=1)},
        [("error", "num-classes-mismatch", ("head.classification_head", "head.classification_head.module_list.2"),
          "head.classification_head.num_columns is 5 classes but head.classification_head.module_list.2 predicts "
          "36 / 6 = 6 classes per default box",
          "model.head.classification_head.module_list[2] = nn.Conv2d(512, 30, kernel_size=3, padding=1)")],
    ),
    # ---------------------------------------------------------------- anchor-mismatch
    "anchors/rpn-generator-vs-head": Case(
        "maskrcnn",
        lambda m: {"rpn.anchor_generator": AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.25, 0.5, 1.0, 2.0, 4.0),) * 5)},
        lambda m: {"rpn.anchor_generator": AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.25, 0.5, 1.0, 2.0, 4.0),) * 5),
                   "rpn.head": RPNHead(256, 5)},
        [("error", "anchor-mismatch", ("rpn.anchor_generator", "rpn.head"),
          "rpn.anchor_generator makes 5 anchors per location but rpn.head predicts 3 objectness scores per location "
          "(rpn.head.cls_logits)",
          "model.rpn.head = RPNHead(256, 5)")],
    ),
    "anchors/custom-rpn-head": Case(
        "maskrcnn",
        lambda m: {"rpn.head": ListRPNHead(256, 5)},
        lambda m: {"rpn.head": ListRPNHead(256, 3)},
        [("error", "anchor-mismatch", ("rpn.anchor_generator", "rpn.head"),
          "rpn.anchor_generator makes 3 anchors per location but rpn.head predicts 5 objectness scores per location "
          "(first output of rpn.head)",
          "model.rpn.head = RPNHead(256, 3)")],
        custom=True,
    ),
    "anchors/sizes-vs-feature-maps": Case(
        "maskrcnn",
        lambda m: {"rpn.anchor_generator": AnchorGenerator(((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3)},
        lambda m: {"rpn.anchor_generator": AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)},
        [("error", "anchor-mismatch", ("backbone", "rpn.anchor_generator"),
          "backbone produces 5 feature maps ['0', '1', '2', '3', 'pool'] but rpn.anchor_generator has 3 sizes tuples; "
          "it needs one per feature map",
          "model.rpn.anchor_generator = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), "
          "aspect_ratios=((0.5, 1.0, 2.0),) * 5)")],
    ),
    "anchors/retinanet-head-num-anchors": Case(
        "retinanet",
        lambda m: {"head": RetinaNetHead(256, 3, 5)},
        lambda m: {"head": RetinaNetHead(256, 9, 5)},
        [("error", "anchor-mismatch", ("anchor_generator", "head.classification_head"),
          "anchor_generator makes 9 anchors per location but head.classification_head.num_anchors is 3",
          "model.head = RetinaNetHead(256, 9, 5)"),
         ("error", "anchor-mismatch", ("anchor_generator", "head.regression_head.bbox_reg"),
          "anchor_generator makes 9 anchors per location, so head.regression_head.bbox_reg must output 4 × 9 = 36 channels, "
          "but it outputs 12",
          "model.head = RetinaNetHead(256, 9, 5)")],
    ),
    "anchors/retinanet-v2-bbox-reg": Case(
        "retinanet_v2",
        lambda m: {"head.regression_head.bbox_reg": nn.Conv2d(256, 4 * 3, 3, padding=1)},
        lambda m: {"head.regression_head.bbox_reg": nn.Conv2d(256, 4 * 9, 3, padding=1)},
        [("error", "anchor-mismatch", ("anchor_generator", "head.regression_head.bbox_reg"),
          "anchor_generator makes 9 anchors per location, so head.regression_head.bbox_reg must output 4 × 9 = 36 channels, "
          "but it outputs 12",
          "model.head = RetinaNetHead(256, 9, 5, norm_layer=partial(nn.GroupNorm, 32))")],
    ),
    "anchors/fcos-head-num-anchors": Case(
        "fcos",
        lambda m: {"head": FCOSHead(256, 2, 5)},
        lambda m: {"head": FCOSHead(256, 1, 5)},
        [("error", "anchor-mismatch", ("anchor_generator", "head.classification_head"),
          "anchor_generator makes 1 anchor per location but head.classification_head.num_anchors is 2",
          "model.head = FCOSHead(256, 1, 5)"),
         ("error", "anchor-mismatch", ("anchor_generator", "head.regression_head.bbox_reg"),
          "anchor_generator makes 1 anchor per location, so head.regression_head.bbox_reg must output 4 × 1 = 4 channels, "
          "but it outputs 8",
          "model.head = FCOSHead(256, 1, 5)"),
         ("error", "anchor-mismatch", ("anchor_generator", "head.regression_head.bbox_ctrness"),
          "anchor_generator makes 1 anchor per location, so head.regression_head.bbox_ctrness must output 1 × 1 = 1 channels, "
          "but it outputs 2",
          "model.head = FCOSHead(256, 1, 5)")],
    ),
    "anchors/ssd-regression-head": Case(
        "ssd",
        lambda m: {"head.regression_head.module_list.1": nn.Conv2d(1024, 4 * 4, 3, padding=1)},
        lambda m: {"head.regression_head.module_list.1": nn.Conv2d(1024, 4 * 6, 3, padding=1)},
        [("error", "anchor-mismatch", ("anchor_generator", "head.regression_head.module_list.1"),
          "anchor_generator makes 6 default boxes per location on map '1', so head.regression_head.module_list.1 must "
          "output 4 × 6 = 24 channels, but it outputs 16",
          "model.head.regression_head.module_list[1] = nn.Conv2d(1024, 24, kernel_size=3, padding=1)")],
    ),
    # ---------------------------------------------------------------- featmap-missing
    "featmaps/some-mask-names-missing": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_roi_pool": MultiScaleRoIAlign(["0", "p5"], 14, 2)},
        lambda m: {"roi_heads.mask_roi_pool": MultiScaleRoIAlign(["0"], 14, 2)},
        [("warning", "featmap-missing", ("backbone", "roi_heads.mask_roi_pool"),
          "roi_heads.mask_roi_pool pools feature maps ['0', 'p5'] but the backbone produces ['0', '1', '2', '3', 'pool']; "
          "['p5'] is silently ignored",
          "model.roi_heads.mask_roi_pool = MultiScaleRoIAlign(featmap_names=['0'], output_size=14, sampling_ratio=2)")],
    ),
    "featmaps/custom-pooler-some-missing": Case(
        "fasterrcnn",
        lambda m: {"roi_heads.box_roi_pool": NamedPooler(["0", "1", "2", "3", "p6"])},
        lambda m: {"roi_heads.box_roi_pool": NamedPooler(["0", "1", "2", "3"])},
        [("warning", "featmap-missing", ("backbone", "roi_heads.box_roi_pool"),
          "roi_heads.box_roi_pool pools feature maps ['0', '1', '2', '3', 'p6'] but the backbone produces "
          "['0', '1', '2', '3', 'pool']; ['p6'] is silently ignored",
          "model.roi_heads.box_roi_pool = MultiScaleRoIAlign(featmap_names=['0', '1', '2', '3'], output_size=7, sampling_ratio=2)")],
        custom=True,
    ),
    "featmaps/no-box-name-matches": Case(
        "maskrcnn",
        lambda m: {"roi_heads.box_roi_pool": MultiScaleRoIAlign(["p2", "p3"], 7, 2)},
        lambda m: {"roi_heads.box_roi_pool": MultiScaleRoIAlign(["0", "1"], 7, 2)},
        [("error", "featmap-missing", ("backbone", "roi_heads.box_roi_pool"),
          "roi_heads.box_roi_pool pools feature maps ['p2', 'p3'] but the backbone produces ['0', '1', '2', '3', 'pool']; "
          "['p2', 'p3'] are silently ignored, so no map at all is pooled",
          "model.roi_heads.box_roi_pool = MultiScaleRoIAlign(featmap_names=['0', '1', '2', '3'], output_size=7, sampling_ratio=2)")],
    ),
    # ---------------------------------------------------------------- orphan-module
    "orphans/custom-head-unused-conv": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_head": ConvStackWithSpare(256, (256, 256))},
        lambda m: {"roi_heads.mask_head": ConvStackRefined(256, (256, 256))},
        [("error", "orphan-module", ("roi_heads.mask_head.refine",),
          "roi_heads.mask_head.refine (Conv2d, 590,080 parameters) is registered on roi_heads.mask_head (ConvStackWithSpare), "
          "but ConvStackWithSpare.forward never uses it, so it never runs and its parameters never train",
          "del model.roi_heads.mask_head.refine  # or call it from ConvStackWithSpare.forward")],
        custom=True,
    ),
    "orphans/mask-branch-without-pooler": Case(
        "fasterrcnn",
        lambda m: {"roi_heads.mask_head": MaskRCNNHeads(256, (256, 256), 1), "roi_heads.mask_predictor": MaskRCNNPredictor(256, 256, 5)},
        lambda m: {"roi_heads.mask_roi_pool": MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2),
                   "roi_heads.mask_head": MaskRCNNHeads(256, (256, 256), 1), "roi_heads.mask_predictor": MaskRCNNPredictor(256, 256, 5)},
        [("error", "orphan-module", ("roi_heads.mask_head",),
          "roi_heads.mask_head is set but roi_heads.mask_roi_pool is None, so RoIHeads.has_mask() is False and the mask "
          "branch never runs",
          "set roi_heads.mask_roi_pool too, or remove roi_heads.mask_head"),
         ("error", "orphan-module", ("roi_heads.mask_predictor",),
          "roi_heads.mask_predictor is set but roi_heads.mask_roi_pool is None, so RoIHeads.has_mask() is False and the mask "
          "branch never runs",
          "set roi_heads.mask_roi_pool too, or remove roi_heads.mask_predictor")],
    ),
    "orphans/predictor-on-the-root": Case(
        "maskrcnn",
        lambda m: {"mask_predictor": MaskRCNNPredictor(256, 256, 5)},
        lambda m: {},
        [("error", "orphan-module", ("mask_predictor", "roi_heads.mask_predictor"),
          "mask_predictor (MaskRCNNPredictor, 263,685 parameters) is registered on MaskRCNN, but MaskRCNN.forward never "
          "uses it, so it never runs and its parameters never train; it was probably meant for roi_heads.mask_predictor",
          "model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor")],
    ),
    # ---------------------------------------------------------------- shape-error
    "shape/custom-head-wants-a-dict": Case(
        "maskrcnn",
        lambda m: {"roi_heads.mask_head": DictMaskHead()},
        lambda m: {"roi_heads.mask_head": ConvStack(256, (256,))},
        [("error", "shape-error", ("roi_heads.mask_roi_pool", "roi_heads.mask_head"),
          "roi_heads.mask_head (DictMaskHead) raised when fed roi_heads.mask_roi_pool's output of shape 256×14×14: "
          "AttributeError in roi_heads.mask_head: 'Tensor' object has no attribute 'items'",
          "model.roi_heads.mask_head = MaskRCNNHeads(256, (256,), 1)")],
        custom=True,
    ),
    "shape/custom-rpn-head-wants-a-dict": Case(
        "maskrcnn",
        lambda m: {"rpn.head": DictMaskHead()},
        lambda m: {"rpn.head": ListRPNHead(256, 3)},
        [("error", "shape-error", ("backbone", "rpn.head"),
          "backbone produces 256 channels but rpn.head (DictMaskHead) raised: "
          "AttributeError in rpn.head: 'list' object has no attribute 'items'",
          "model.rpn.head = RPNHead(256, 3)")],
        custom=True,
    ),
}


def test_every_static_code_has_two_cases_one_with_a_custom_module() -> None:
    static = {"channel-mismatch", "num-classes-mismatch", "anchor-mismatch", "featmap-missing", "orphan-module", "shape-error"}
    per_code: dict[str, list[Case]] = {}
    for case in CASES.values():
        for code in {e[1] for e in case.expected}:
            per_code.setdefault(code, []).append(case)
    assert set(per_code) == static
    for code, cases in per_code.items():
        assert len(cases) >= 2, code
        assert any(c.custom for c in cases), code


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_model_is_reported_and_fixed_one_is_clean(bases: Callable[[str], nn.Module], name: str) -> None:
    case = CASES[name]
    model = bases(case.base)
    before = fingerprint(model)
    with swapped(model, case.broken(model)):
        report = surgery.check(model)
        assert_findings(report, case.expected)
        assert report.ok is (not any(e[0] == "error" for e in case.expected))
    with swapped(model, case.fixed(model)):
        fixed = surgery.check(model)
        assert rows(fixed) == [], fixed
        assert fixed.ok
    assert fingerprint(model) == before


# --------------------------------------------------------------------------- the motivating recipe (DESIGN.md)


@pytest.mark.parametrize("backbone_name", ["resnet18", "resnet50"])
def test_recipe_predictor_on_the_root_is_an_orphan(backbone_name: str) -> None:
    report = surgery.check(example.broken_orphan(backbone_name))
    assert_findings(report, [
        ("error", "orphan-module", ("mask_predictor", "roi_heads.mask_predictor"),
         "mask_predictor (MaskRCNNPredictor, 1,053,972 parameters) is registered on MaskRCNN, but MaskRCNN.forward never "
         "uses it, so it never runs and its parameters never train; it was probably meant for roi_heads.mask_predictor; "
         "moving it there alone would not fit: roi_heads.mask_head produces 256 channels but roi_heads.mask_predictor "
         "(MaskRCNNPredictor) expects 1024 (in roi_heads.mask_predictor.conv5_mask)",
         "model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor"
         "  # and first: model.roi_heads.mask_head = <a module producing 1024 ch, such as the head built for it>"),
    ])


def test_recipe_head_attached_predictor_not_rebuilt() -> None:
    report = surgery.check(example.broken_unfixed("resnet18"))
    assert_findings(report, [
        ("error", "channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"),
         "roi_heads.mask_head produces 1024 channels but roi_heads.mask_predictor (MaskRCNNPredictor) expects 256 "
         "(in roi_heads.mask_predictor.conv5_mask)",
         "model.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 20)"),
    ])


def test_recipe_both_mistakes_and_the_fixed_version() -> None:
    broken = surgery.check(example.broken("resnet18"))
    assert [(f.code, f.paths) for f in broken.findings] == [
        ("channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor")),
        ("orphan-module", ("mask_predictor", "roi_heads.mask_predictor")),
    ]
    fixed = example.fixed("resnet18")
    assert surgery.check(fixed).findings == []
    assert isinstance(fixed.roi_heads.mask_head, MaskRCNNHeads)
    assert fixed.roi_heads.mask_predictor.conv5_mask.in_channels == 1024


def test_recipe_fix_lines_really_fix_the_model() -> None:
    orphan = example.broken_orphan("resnet18")
    model = orphan  # the fix lines are written against a variable named `model`
    exec(surgery.check(orphan).errors[0].fix, {"model": model})  # noqa: S102 - running the printed fix line
    assert "mask_predictor" not in dict(model.named_children())
    unfixed = example.broken_unfixed("resnet18")
    exec(surgery.check(unfixed).errors[0].fix, {"model": unfixed, "MaskRCNNPredictor": MaskRCNNPredictor})  # noqa: S102
    assert surgery.check(unfixed).findings == []


def test_example_script_prints_the_findings(capsys: pytest.CaptureFixture[str]) -> None:
    assert example.main() == 0
    out = capsys.readouterr().out
    assert out.count("error [orphan-module] mask_predictor -> roi_heads.mask_predictor") == 2
    assert out.count("error [channel-mismatch] roi_heads.mask_head -> roi_heads.mask_predictor") == 2
    assert "surgery check: examples/deeper_mask_head.py:fixed: ok, no findings (13 checks ran)" in out


# --------------------------------------------------------------------------- featmap-missing on stock and custom backbones


def test_stock_mobilenet_fpn_pools_two_names_it_does_not_make(shared: Callable[..., nn.Module]) -> None:
    report = surgery.check(shared("fasterrcnn_mobilenet_v3_large_fpn"))
    assert report.ok
    assert_findings(report, [
        ("warning", "featmap-missing", ("backbone", "roi_heads.box_roi_pool"),
         "roi_heads.box_roi_pool pools feature maps ['0', '1', '2', '3'] but the backbone produces ['0', '1', 'pool']; "
         "['2', '3'] are silently ignored",
         "model.roi_heads.box_roi_pool = MultiScaleRoIAlign(featmap_names=['0', '1'], output_size=7, sampling_ratio=2)"),
    ])
    assert report.warnings == report.findings and report.errors == []


def test_custom_backbone_whose_names_the_default_pooler_never_finds() -> None:
    report = surgery.check(tiny_faster())
    assert_findings(report, [
        ("error", "featmap-missing", ("backbone", "roi_heads.box_roi_pool"),
         "roi_heads.box_roi_pool pools feature maps ['0', '1', '2', '3'] but the backbone produces ['c3', 'c4']; "
         "['0', '1', '2', '3'] are silently ignored, so no map at all is pooled",
         "model.roi_heads.box_roi_pool = MultiScaleRoIAlign(featmap_names=['c3', 'c4'], output_size=7, sampling_ratio=2)"),
    ])
    assert surgery.check(tiny_faster(MultiScaleRoIAlign(["c3", "c4"], 7, 2))).findings == []


def test_custom_backbone_that_raises_is_a_shape_error() -> None:
    model = tiny_faster(MultiScaleRoIAlign(["0"], 7, 2), backbone=MisnamedBackbone())
    model.rpn.anchor_generator = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    before = fingerprint(model)
    report = surgery.check(model)
    assert_findings(report, [
        ("error", "shape-error", ("backbone",),
         "backbone (MisnamedBackbone) raised on a 2×3×320×320 batch: KeyError in backbone: 'c5'", None),
    ])
    assert fingerprint(model) == before
    model.backbone = TinyBackbone(("0", "1"))
    model.rpn.anchor_generator = AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    assert surgery.check(model).findings == []


# --------------------------------------------------------------------------- leave no trace


class Raising(nn.Module):
    """A head that updates a buffer, flips a flag and then raises inside its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(256, 256, 3, padding=1)
        self.norm = nn.BatchNorm2d(256)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        x = self.norm(self.conv(x))
        raise RuntimeError("custom head failed on purpose")


@pytest.mark.parametrize("train", [False, True])
def test_check_leaves_the_model_exactly_as_it_was(bases: Callable[[str], nn.Module], train: bool) -> None:
    model = bases("maskrcnn")
    with swapped(model, {"roi_heads.mask_head": Raising(), "rpn.head": ListRPNHead(256, 3)}):
        was_training = model.training
        model.train(train)
        model.backbone.body.layer1.requires_grad_(False)
        param = model.roi_heads.box_predictor.cls_score.weight
        param.grad = torch.ones_like(param)
        try:
            before = fingerprint(model)
            norm_stats = model.roi_heads.mask_head.norm.running_mean.clone()
            report = surgery.check(model)
            assert fingerprint(model) == before
            assert torch.equal(model.roi_heads.mask_head.norm.running_mean, norm_stats)
            assert model.roi_heads.mask_head.calls.item() == 0
            assert [(f.code, f.paths) for f in report.errors] == [("shape-error", ("roi_heads.mask_roi_pool", "roi_heads.mask_head"))]
            assert "RuntimeError in roi_heads.mask_head: custom head failed on purpose" in report.errors[0].message
        finally:
            param.grad = None
            model.backbone.body.layer1.requires_grad_(True)
            model.train(was_training)


def test_check_of_a_stock_model_leaves_no_trace(shared: Callable[..., nn.Module]) -> None:
    model = shared("retinanet_resnet50_fpn")
    before = fingerprint(model)
    assert surgery.check(model).findings == []
    assert fingerprint(model) == before


# --------------------------------------------------------------------------- the report API


@pytest.fixture(scope="module")
def mixed_report(bases: Callable[[str], nn.Module]) -> surgery.Report:
    """Two errors and one warning."""
    model = bases("maskrcnn")
    changes = {
        "rpn.head": RPNHead(512, 3),
        "roi_heads.mask_roi_pool": MultiScaleRoIAlign(["0", "p5"], 14, 2),
        "roi_heads.box_predictor": FastRCNNPredictor(1024, 7),
    }
    with swapped(model, changes):
        return surgery.check(model)


def test_report_errors_warnings_and_ok(mixed_report: surgery.Report) -> None:
    assert not mixed_report.ok
    assert [f.code for f in mixed_report.errors] == ["channel-mismatch", "num-classes-mismatch"]
    assert [f.code for f in mixed_report.warnings] == ["featmap-missing"]
    assert mixed_report.codes() == ["channel-mismatch", "num-classes-mismatch", "featmap-missing"]  # errors first
    assert mixed_report.model == "MaskRCNN"
    assert "static orphan detection" in mixed_report.checked
    assert "mask predictor classes vs box predictor classes" in mixed_report.checked


def test_raise_for_errors_carries_every_error(mixed_report: surgery.Report) -> None:
    with pytest.raises(surgery.IncompatibleError, match=r"^2 incompatibilities in MaskRCNN:\nerror \[channel-mismatch\]") as info:
        mixed_report.raise_for_errors()
    assert info.value.findings == mixed_report.errors
    assert isinstance(info.value, ValueError) and isinstance(info.value, surgery.SurgeryError)
    assert "rpn.head = RPNHead(256, 3)" in str(info.value)
    assert "featmap-missing" not in str(info.value)
    with pytest.raises(ValueError, match="num-classes-mismatch"):
        mixed_report.raise_for_errors()


def test_raise_for_errors_is_silent_with_warnings_only(shared: Callable[..., nn.Module]) -> None:
    report = surgery.check(shared("fasterrcnn_mobilenet_v3_large_fpn"))
    assert report.warnings and report.ok
    assert report.raise_for_errors() is None


def test_report_to_dict_is_json_ready(mixed_report: surgery.Report) -> None:
    payload = json.loads(json.dumps(mixed_report.to_dict()))
    assert set(payload) == {"model", "ok", "findings", "checked", "coverage"}
    assert payload["ok"] is False and payload["model"] == "MaskRCNN"
    assert payload["findings"][0] == {
        "severity": "error",
        "code": "channel-mismatch",
        "paths": ["backbone", "rpn.head"],
        "message": "backbone produces 256 channels but rpn.head (RPNHead) expects 512 (in rpn.head.conv.0.0)",
        "fix": "model.rpn.head = RPNHead(256, 3)",
    }
    assert [f["severity"] for f in payload["findings"]] == ["error", "error", "warning"]


def test_report_format_github_and_text(mixed_report: surgery.Report) -> None:
    lines = mixed_report.format("github").splitlines()
    assert lines == [
        "::error title=channel-mismatch::backbone produces 256 channels but rpn.head (RPNHead) expects 512 "
        "(in rpn.head.conv.0.0) Fix: model.rpn.head = RPNHead(256, 3)",
        "::error title=num-classes-mismatch::roi_heads.box_predictor has 7 classes but roi_heads.mask_predictor predicts "
        "5 mask channels; masks are picked by the box's class label, so they must agree "
        "Fix: model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 7)",
        "::warning title=featmap-missing::roi_heads.mask_roi_pool pools feature maps ['0', 'p5'] but the backbone produces "
        "['0', '1', '2', '3', 'pool']; ['p5'] is silently ignored "
        "Fix: model.roi_heads.mask_roi_pool = MultiScaleRoIAlign(featmap_names=['0'], output_size=14, sampling_ratio=2)",
    ]
    text = mixed_report.format("text")
    assert text == str(mixed_report)
    assert text.startswith("surgery check: MaskRCNN: 2 error(s), 1 warning(s)\n\nERRORS\n  error [channel-mismatch] backbone -> rpn.head: ")
    assert "\n      fix: model.rpn.head = RPNHead(256, 3)\n" in text
    with pytest.raises(ValueError, match="style must be 'text', 'github' or 'markdown', got 'xml'"):
        mixed_report.format("xml")


def test_github_format_escapes_newlines() -> None:
    report = surgery.Report([surgery.Finding("error", "shape-error", ("a",), "line one\nline two 100%", None)])
    assert report.format("github") == "::error title=shape-error::line one%0Aline two 100%25"


# --------------------------------------------------------------------------- check's own arguments


def test_paths_limits_the_contracts_run(bases: Callable[[str], nn.Module]) -> None:
    model = bases("maskrcnn")
    with swapped(model, {"rpn.head": RPNHead(512, 3), "roi_heads.box_predictor": FastRCNNPredictor(1024, 7)}):
        only_rpn = surgery.check(model, paths=["rpn.head"])
        only_masks = surgery.check(model, paths=["roi_heads.mask_predictor"])
    assert [(f.code, f.paths) for f in only_rpn.errors] == [("channel-mismatch", ("backbone", "rpn.head"))]
    assert [f.code for f in only_masks.errors] == ["num-classes-mismatch"]
    assert "backbone channels → RPN head input" not in only_masks.checked


def test_bad_arguments_are_refused(bases: Callable[[str], nn.Module]) -> None:
    model = bases("maskrcnn")
    with pytest.raises(surgery.PathError, match="mask_hed"):
        surgery.check(model, paths=["roi_heads.mask_hed"])
    with pytest.raises(surgery.NotAModuleError, match="check\\(\\): model must be an nn.Module, got dict"):
        surgery.check({"not": "a model"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe_image_size must be an int >= 32, got 8"):
        surgery.check(model, probe_image_size=8)


def test_a_contract_that_cannot_read_a_module_is_a_warning_not_a_crash(bases: Callable[[str], nn.Module]) -> None:
    class WeirdGenerator(nn.Module):
        sizes = ((32,),) * 5
        aspect_ratios = ((0.5, 1.0, 2.0),) * 5

        def num_anchors_per_location(self) -> list[int]:
            raise RuntimeError("no anchors today")

        def forward(self, *args: Any) -> Any:
            return args

    model = bases("maskrcnn")
    with swapped(model, {"rpn.anchor_generator": WeirdGenerator()}):
        report = surgery.check(model)
    # the contracts that ask it for anchors say they could not; the whole-model probe runs it and
    # finds that the RPN cannot use what it returns (the first real forward would raise the same)
    assert [(f.severity, f.code, f.paths) for f in report.findings] == [
        ("error", "shape-error", ("backbone", "rpn")),
        ("warning", "shape-error", ("backbone", "rpn.head")),
        ("warning", "shape-error", ("rpn.anchor_generator", "rpn.head")),
    ]
    assert report.findings[0].message.endswith("'ImageList' object has no attribute 'size'")
    assert report.findings[1].message.startswith("could not evaluate contract 'backbone channels → RPN head input': RuntimeError: no anchors today")


# --------------------------------------------------------------------------- the command line


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


SMALL = ("--arg", "backbone_name='resnet18'")


def test_cli_check_default_model_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "check")
    assert code == 0
    assert out.strip().splitlines() == [
        "surgery check: torchvision.models.detection:maskrcnn_resnet50_fpn: ok, no findings (13 checks ran)",
        "coverage: 11 slots (R-CNN anatomy): 11 by contracts, 5 by the whole-model probe; every slot checked; probe stopped: "
        "<model> ran torch.nonzero, which cannot run on meta (as expected: the post-processing keeps boxes by their scores, "
        "so its sizes depend on the data; the contracts probe each slot after it)",
    ]


def test_cli_check_json_on_the_recipe_exits_1_with_both_errors(capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{EXAMPLE}:broken"
    code, out, _ = run_main(capsys, "check", spec, "--json", *SMALL)
    assert code == 1
    payload = json.loads(out)
    assert payload["model"] == spec and payload["ok"] is False
    assert [(f["severity"], f["code"], f["paths"]) for f in payload["findings"]] == [
        ("error", "channel-mismatch", ["roi_heads.mask_head", "roi_heads.mask_predictor"]),
        ("error", "orphan-module", ["mask_predictor", "roi_heads.mask_predictor"]),
    ]
    assert [f["fix"] for f in payload["findings"]] == [
        "model.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 20)",
        "model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor",
    ]


def test_cli_check_github_format(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the annotation names the builder's file relative to the project
    code, out, _ = run_main(capsys, "check", f"{EXAMPLE}:broken_unfixed", "--format", "github", *SMALL)
    assert code == 1
    assert out.splitlines() == [
        "::error file=examples/deeper_mask_head.py,line=73,title=channel-mismatch::roi_heads.mask_head produces 1024 channels but roi_heads.mask_predictor "
        "(MaskRCNNPredictor) expects 256 (in roi_heads.mask_predictor.conv5_mask) "
        "Fix: model.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 20)",
        "surgery check: 1 error(s), 0 warning(s)",
    ]


def test_cli_check_fixed_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "check", f"{EXAMPLE}:fixed", *SMALL)
    assert code == 0
    assert out.strip().splitlines()[0].endswith(":fixed: ok, no findings (13 checks ran)")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("examples/no_such_file.py:build", "does not exist"),
        (f"{EXAMPLE}:brokn", "Did you mean broken"),
        ("no_such_package.models:build", "cannot import module 'no_such_package.models'"),
    ],
)
def test_cli_check_exits_2_when_the_model_cannot_be_loaded(capsys: pytest.CaptureFixture[str], spec: str, message: str) -> None:
    code, out, err = run_main(capsys, "check", spec)
    assert code == 2
    assert out == ""
    assert err.startswith("surgery: cannot load the model: ")
    assert message in err


def test_console_script_check_on_the_example() -> None:
    proc = subprocess.run(
        [str(SCRIPT), "check", "examples/deeper_mask_head.py:broken_unfixed", "--json", *SMALL],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    payload = json.loads(proc.stdout)
    assert [f["code"] for f in payload["findings"]] == ["channel-mismatch"]



def test_custom_predictor_starting_with_transposed_conv_is_checked(bases: Callable[[str], nn.Module]) -> None:
    """Meta kernels of conv_transpose do not validate input channels; the probe must."""
    model = bases("maskrcnn")
    with swapped(model, {"roi_heads.mask_head": MaskRCNNHeads(256, (256, 512), 1),
                         "roi_heads.mask_predictor": UpsampleMaskPredictor(256, 5)}):
        report = surgery.check(model)
        mismatches = [f for f in report.errors if f.code == "channel-mismatch"]
        assert [f.paths for f in mismatches] == [("roi_heads.mask_head", "roi_heads.mask_predictor")]
        assert "roi_heads.mask_head produces 512 channels" in mismatches[0].message
        assert "expects 256 (in roi_heads.mask_predictor.up)" in mismatches[0].message
    with swapped(model, {"roi_heads.mask_head": MaskRCNNHeads(256, (256, 512), 1),
                         "roi_heads.mask_predictor": UpsampleMaskPredictor(512, 5)}):
        assert surgery.check(model).ok


def test_transposed_conv_guard_raises_like_the_real_kernel_and_leaves_no_hook() -> None:
    from surgery.signature import meta_like, meta_probe

    predictor = UpsampleMaskPredictor(256, 5)
    result = meta_probe(predictor, meta_like((2, 512, 14, 14)))
    assert not result.ok and not result.inconclusive
    assert result.where == "up"
    with pytest.raises(RuntimeError, match="expected input.* to have 256 channels, but got 512"):
        predictor(torch.zeros(1, 512, 14, 14))  # the real CPU kernel agrees
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in predictor.modules())


def test_a_dense_head_layer_that_changes_the_map_size_is_an_anchor_mismatch(shared: Any) -> None:
    model = copy.deepcopy(shared("ssdlite320_mobilenet_v3_large"))
    old = model.head.classification_head.module_list[1][0][0]  # a depthwise 3×3 conv with padding 1
    model.head.classification_head.module_list[1][0][0] = nn.Conv2d(480, 480, 1, padding=1, groups=480, bias=False)
    assert (old.kernel_size, old.padding) == ((3, 3), (1, 1))
    (error,) = surgery.check(model).errors
    assert (error.code, error.paths) == ("anchor-mismatch", ("head.classification_head", "anchor_generator"))
    assert error.message.startswith(
        "head.classification_head makes 3498 predictions per image (output (2, 3498, 91)) but anchor_generator makes "
        "3234 anchors per image; the box decoding pairs each prediction with an anchor, so the forward raises"
    )
