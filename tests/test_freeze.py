"""``surgery.freeze`` / ``unfreeze`` by glob, ``trainable_summary`` and ``freeze_backbone_layers``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor, resnet_fpn_backbone

import surgery
from surgery import PathError, TrainableSummary
from tests.helpers import build

FAMILIES = ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn", "retinanet_resnet50_fpn"]
SUMMARY_ROWS = {
    "maskrcnn_resnet50_fpn": ["backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor",
                              "roi_heads.mask_head", "roi_heads.mask_predictor"],
    "fasterrcnn_resnet50_fpn_v2": ["backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"],
    "keypointrcnn_resnet50_fpn": ["backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor",
                                  "roi_heads.keypoint_head", "roi_heads.keypoint_predictor"],
    "retinanet_resnet50_fpn": ["backbone.body", "backbone.fpn", "head.classification_head", "head.regression_head"],
}


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


# --------------------------------------------------------------------------- freeze / unfreeze


@pytest.fixture
def model() -> nn.Module:
    return build("maskrcnn_resnet50_fpn")


def test_freeze_glob_over_module_paths(model: nn.Module) -> None:
    changed = surgery.freeze(model, "backbone.body.layer[12]*")
    expected = [n for n, _ in model.named_parameters() if n.startswith(("backbone.body.layer1.", "backbone.body.layer2."))]
    assert changed == expected
    assert len(changed) == 30 + 39  # ResNet-50 layer1 and layer2 parameter tensors
    assert [n for n, f in flags(model).items() if not f] == expected
    assert surgery.freeze(model, "backbone.body.layer[12]*") == []  # nothing left to change


def test_freeze_a_module_path_takes_everything_under_it(model: nn.Module) -> None:
    assert surgery.freeze(model, "roi_heads.box_head") == [
        "roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc6.bias", "roi_heads.box_head.fc7.weight", "roi_heads.box_head.fc7.bias",
    ]


def test_freeze_parameter_glob_and_unfreeze(model: nn.Module) -> None:
    frozen = surgery.freeze(model, "roi_heads.*_predictor.*.bias")
    assert frozen == [
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_predictor.conv5_mask.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
    ]
    assert surgery.unfreeze(model, "*") == frozen
    assert all(flags(model).values())


def test_a_matched_module_without_parameters_is_not_an_error(model: nn.Module) -> None:
    assert surgery.freeze(model, "rpn.anchor_generator", "roi_heads.box_roi_pool") == []


def test_pattern_matching_nothing_raises_with_suggestions_and_changes_nothing(model: nn.Module) -> None:
    before = flags(model)
    with pytest.raises(PathError, match=r"pattern 'backbone.body.layr4\*' matches no module or parameter path of MaskRCNN. "
                                        r"Did you mean 'backbone.body.layer4'") as info:
        surgery.freeze(model, "roi_heads.box_head", "backbone.body.layr4*")
    assert info.value.suggestions[0] == "backbone.body.layer4"
    with pytest.raises(PathError, match=r"pattern 'roi_heads.mask_hed' matches no .*Did you mean 'roi_heads.mask_head'"):
        surgery.unfreeze(model, "roi_heads.mask_hed")
    assert flags(model) == before


@pytest.mark.parametrize(
    ("patterns", "error", "match"),
    [
        ((), ValueError, r"freeze\(\) needs at least one pattern, e.g. freeze\(model, 'backbone.body.layer\[12\]\*'\)"),
        (("",), TypeError, r"freeze\(\) patterns must be non-empty strings like 'backbone.body.layer\[12\]\*', got ''"),
        ((3,), TypeError, r"patterns must be non-empty strings .*, got 3"),
    ],
)
def test_freeze_argument_errors(model: nn.Module, patterns: tuple, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        surgery.freeze(model, *patterns)


@pytest.mark.parametrize("name", FAMILIES)
def test_freeze_and_summary_on_each_family(name: str) -> None:
    model = build(name)
    changed = surgery.freeze(model, "backbone.body.layer4*")
    assert changed == [n for n, _ in model.named_parameters() if n.startswith("backbone.body.layer4.")]
    summary = surgery.trainable_summary(model)
    assert isinstance(summary, TrainableSummary)
    assert [r.path for r in summary.rows] == SUMMARY_ROWS[name]
    layer4 = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.body.layer4."))
    body = summary.row("backbone.body")
    assert (body.frozen, body.frozen_tensors) == (layer4, len(changed))
    assert summary.frozen == layer4
    assert summary.trainable + summary.frozen == sum(p.numel() for p in model.parameters())
    assert all(r.frozen == 0 for r in summary.rows if r.path != "backbone.body")


def test_summary_text_and_dict(model: nn.Module) -> None:
    surgery.freeze_backbone_layers(model, 3)
    summary = surgery.trainable_summary(model)
    body = summary.row("backbone.body")
    assert (body.type, body.frozen, body.frozen_tensors) == ("IntermediateLayerGetter", 9408 + 128 + 215_808, 33)
    text = str(summary).splitlines()
    assert text[0] == f"MaskRCNN: {summary.trainable:,} trainable, 225,344 frozen parameters"
    assert text[1].split() == ["component", "trainable", "frozen", "tensors", "(trainable/frozen)"]
    assert text[2].split() == ["backbone.body", f"{body.trainable:,}", "225,344", f"{body.trainable_tensors}/33"]
    data = summary.to_dict()
    assert data["frozen"] == 225_344 and data["components"][0]["path"] == "backbone.body"
    with pytest.raises(KeyError, match="no component 'roi_heads.mask_hed' in the summary"):
        summary.row("roi_heads.mask_hed")


def test_summary_counts_parameters_outside_slots_by_top_level_name() -> None:
    model = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), 91)
    model.extra = nn.Linear(4, 2)
    row = surgery.trainable_summary(model).row("extra")
    assert (row.type, row.trainable, row.frozen, row.trainable_tensors) == ("Linear", 10, 0, 2)


# --------------------------------------------------------------------------- torchvision's trainable_backbone_layers


@pytest.fixture(scope="module")
def resnet_reference() -> dict[int, dict[str, bool]]:
    """Body flags of torchvision's own extractor (what the builders call) for 0..5 trainable layers.

    The builders only honour ``trainable_backbone_layers`` with pretrained weights, so the
    reference calls the extractor they use, with the same norm layer (BatchNorm2d without weights).
    """
    out = {}
    for k in range(6):
        backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=nn.BatchNorm2d), k)
        out[k] = {n.removeprefix("body."): p.requires_grad for n, p in backbone.named_parameters() if n.startswith("body.")}
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_freeze_backbone_layers_matches_torchvision_resnet(name: str, resnet_reference: dict[int, dict[str, bool]]) -> None:
    model = build(name)
    others = {n: f for n, f in flags(model).items() if not n.startswith("backbone.body.")}
    for k in (3, 0, 5, 1, 4, 2):  # scrambled: the result must not depend on earlier calls
        before = flags(model)
        changed = surgery.freeze_backbone_layers(model, k)
        body = {n.removeprefix("backbone.body."): f for n, f in flags(model).items() if n.startswith("backbone.body.")}
        assert body == resnet_reference[k], f"trainable_layers={k}"
        assert changed == [n for n, f in flags(model).items() if f != before[n]]
        assert {n: f for n, f in flags(model).items() if not n.startswith("backbone.body.")} == others


def test_freeze_backbone_layers_matches_resnet_fpn_backbone_with_frozen_batchnorm() -> None:
    model = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), 91)
    for k in range(6):
        reference = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=k)
        surgery.freeze_backbone_layers(model, k)
        assert {n: p.requires_grad for n, p in model.backbone.named_parameters()} == \
               {n: p.requires_grad for n, p in reference.named_parameters()}, f"trainable_layers={k}"


def test_freeze_backbone_layers_matches_torchvision_mobilenet() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_fpn")
    for k in (6, 0, 3, 1, 5, 2, 4):
        reference = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d), True, k)
        surgery.freeze_backbone_layers(model, k)
        assert {n: p.requires_grad for n, p in model.backbone.named_parameters()} == \
               {n: p.requires_grad for n, p in reference.named_parameters()}, f"trainable_layers={k}"
    with pytest.raises(ValueError, match=r"^trainable_layers for this MobileNet backbone \(6 trains every stage\) must be an int in 0\.\.6, got 7$"):
        surgery.freeze_backbone_layers(model, 7)


class _OddBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Sequential(nn.Conv2d(3, 8, 3))


@pytest.mark.parametrize(
    ("make", "value", "error", "match"),
    [
        (lambda: build("maskrcnn_resnet50_fpn"), 6, ValueError,
         r"^trainable_layers for a ResNet backbone \(5 trains every layer\) must be an int in 0\.\.5, got 6$"),
        (lambda: build("maskrcnn_resnet50_fpn"), -1, ValueError,
         r"^trainable_layers for a ResNet backbone \(5 trains every layer\) must be an int in 0\.\.5, got -1$"),
        (lambda: build("maskrcnn_resnet50_fpn"), True, ValueError, r"^trainable_layers must be an int, got True$"),
        (lambda: nn.Sequential(nn.Linear(2, 2)), 3, ValueError, r"works on models with a 'backbone.body' .*; Sequential has none"),
        (_OddBody, 3, ValueError, r"knows torchvision's ResNet and MobileNet bodies; backbone.body is a Sequential"),
    ],
)
def test_freeze_backbone_layers_errors_change_nothing(make: Callable[[], nn.Module], value: object, error: type[Exception], match: str) -> None:
    model = make()
    before = flags(model)
    with pytest.raises(error, match=match):
        surgery.freeze_backbone_layers(model, value)  # type: ignore[arg-type]
    assert flags(model) == before


def test_freeze_inside_a_failed_edit_is_undone(model: nn.Module) -> None:
    before = flags(model)
    with pytest.raises(surgery.IncompatibleError, match="was rolled back"):
        with surgery.edit(model) as e:
            assert e.freeze_backbone_layers(2)
            assert e.unfreeze("backbone.body.conv1") == ["backbone.body.conv1.weight"]
            e.freeze("roi_heads.mask_head")
            model.roi_heads.mask_predictor = nn.Conv2d(512, 91, 1)  # incompatible on purpose
    assert flags(model) == before
