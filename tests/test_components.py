"""``surgery.components`` and ``surgery.inspect`` on every torchvision detection builder."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import surgery
from surgery import Component, NotAModuleError, Overview, components, inspect, paths
from surgery.signature import MultiSignature
from tests.conftest import DETECTION_BUILDERS
from tests.helpers import DENSE_SLOTS, KEYPOINT_TRIPLE, MASK_TRIPLE, RCNN_BASE, SSD_SLOTS, build, fingerprint


def expected_slots(name: str) -> tuple[str, list[str]]:
    """(family, exact component paths) of a torchvision detection builder."""
    if name.startswith("maskrcnn"):
        return "R-CNN", RCNN_BASE + MASK_TRIPLE
    if name.startswith("keypointrcnn"):
        return "R-CNN", RCNN_BASE + KEYPOINT_TRIPLE
    if name.startswith("fasterrcnn"):
        return "R-CNN", RCNN_BASE
    if name.startswith("retinanet"):
        return "RetinaNet", DENSE_SLOTS
    if name.startswith("fcos"):
        return "FCOS", DENSE_SLOTS
    if name.startswith("ssd"):
        return "SSD", SSD_SLOTS
    raise AssertionError(f"no expectation written for builder {name!r}")


def sig(value: surgery.Signature | MultiSignature | None) -> tuple[str, int | tuple[int, ...]] | None:
    if isinstance(value, MultiSignature):
        return (value.kind, value.sizes)
    return None if value is None else (value.kind, value.size)


def test_every_detection_builder_is_covered() -> None:
    assert len(DETECTION_BUILDERS) >= 12
    for name in DETECTION_BUILDERS:
        expected_slots(name)


@pytest.mark.parametrize("name", DETECTION_BUILDERS)
def test_components_of_every_detection_builder(shared: Callable[..., nn.Module], name: str) -> None:
    model = shared(name)
    family, expected = expected_slots(name)
    listed = components(model)
    assert [c.path for c in listed] == expected
    assert inspect(model, depth=0).family == family
    for c in listed:
        assert isinstance(c, Component)
        module = paths.get(model, c.path)
        assert c.type == type(module).__name__
        assert c.params == sum(p.numel() for p in module.parameters())
        assert c.trainable == sum(p.numel() for p in module.parameters() if p.requires_grad)
        assert c.role and c.accepts
    if name.startswith("fasterrcnn"):
        assert model.roi_heads.mask_head is None and model.roi_heads.keypoint_head is None
        assert not {c.path for c in listed} & set(MASK_TRIPLE + KEYPOINT_TRIPLE)


def test_maskrcnn_signatures(maskrcnn: nn.Module) -> None:
    by_path = {c.path: c for c in components(maskrcnn)}
    assert sig(by_path["roi_heads.mask_head"].in_sig) == ("channels", 256)
    assert sig(by_path["roi_heads.mask_head"].out_sig) == ("channels", 256)
    assert sig(by_path["roi_heads.mask_predictor"].in_sig) == ("channels", 256)
    assert sig(by_path["roi_heads.mask_predictor"].out_sig) == ("channels", 91)
    assert sig(by_path["roi_heads.box_head"].in_sig) == ("features", 256 * 7 * 7)
    assert sig(by_path["roi_heads.box_head"].out_sig) == ("features", 1024)
    assert sig(by_path["roi_heads.box_predictor"].in_sig) == ("features", 1024)
    assert sig(by_path["roi_heads.box_predictor"].out_sig) == ("features", 91)
    assert sig(by_path["rpn.head"].in_sig) == ("channels", 256)
    assert sig(by_path["backbone.body"].out_sig) == ("channels", (256, 512, 1024, 2048))
    assert sig(by_path["backbone.fpn"].in_sig) == ("channels", (256, 512, 1024, 2048))
    assert sig(by_path["backbone.fpn"].out_sig) == ("channels", 256)
    for path in ("transform", "rpn.anchor_generator", "roi_heads.box_roi_pool", "roi_heads.mask_roi_pool"):
        assert by_path[path].in_sig is None and by_path[path].out_sig is None, path


def test_maskrcnn_param_counts(maskrcnn: nn.Module) -> None:
    by_path = {c.path: c for c in components(maskrcnn)}
    conv3x3 = 256 * 256 * 9 + 256
    assert by_path["roi_heads.mask_head"].params == 4 * conv3x3 == 2_360_320
    deconv = 256 * 256 * 2 * 2 + 256
    logits = 256 * 91 + 91
    assert by_path["roi_heads.mask_predictor"].params == deconv + logits == 285_787
    assert by_path["roi_heads.box_head"].params == (12544 * 1024 + 1024) + (1024 * 1024 + 1024)
    assert by_path["roi_heads.box_predictor"].params == (1024 * 91 + 91) + (1024 * 364 + 364)
    assert by_path["transform"].params == 0
    assert all(c.trainable == c.params for c in by_path.values())


def test_trainable_counts_follow_requires_grad(shared: Callable[..., nn.Module]) -> None:
    model = copy.deepcopy(shared("fasterrcnn_mobilenet_v3_large_320_fpn"))
    model.roi_heads.box_predictor.cls_score.requires_grad_(False)
    predictor = {c.path: c for c in components(model)}["roi_heads.box_predictor"]
    assert predictor.params == (1024 * 91 + 91) + (1024 * 364 + 364)
    assert predictor.trainable == 1024 * 364 + 364


def test_component_listing_follows_edits(maskrcnn: nn.Module) -> None:
    model = copy.deepcopy(maskrcnn)
    paths.set(model, "roi_heads.mask_head", nn.Sequential(nn.Conv2d(256, 128, 3, padding=1), nn.ReLU()))
    head = {c.path: c for c in components(model)}["roi_heads.mask_head"]
    assert (head.type, sig(head.in_sig), sig(head.out_sig)) == ("Sequential", ("channels", 256), ("channels", 128))
    assert head.params == 256 * 128 * 9 + 128


def test_generic_model_lists_its_top_level_children() -> None:
    # a user's own network: no family knows it, so its top-level children are its components
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    listed = components(model)
    assert [c.path for c in listed] == ["0", "1", "2", "3", "4", "5"]
    assert [c.type for c in listed] == ["Conv2d", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    by_path = {c.path: c for c in listed}
    assert by_path["5"].params == 64 * 10 + 10
    assert sig(by_path["5"].in_sig) == ("features", 64) and sig(by_path["5"].out_sig) == ("features", 10)
    assert sig(by_path["0"].in_sig) == ("channels", 3) and sig(by_path["0"].out_sig) == ("channels", 64)
    assert sum(c.params for c in listed) == sum(p.numel() for p in model.parameters())
    assert inspect(model, depth=0).family == "generic"


def test_resnet18_lists_its_body_and_head(shared: Callable[..., nn.Module]) -> None:
    listed = components(shared("resnet18"))
    assert [c.path for c in listed] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert {c.path: sig(c.in_sig) for c in listed}["fc"] == ("features", 512)
    assert inspect(shared("resnet18"), depth=0).family == "classification"


def test_component_to_dict_and_str(maskrcnn: nn.Module) -> None:
    predictor = {c.path: c for c in components(maskrcnn)}["roi_heads.mask_predictor"]
    d = predictor.to_dict()
    assert d["path"] == "roi_heads.mask_predictor"
    assert d["type"] == "MaskRCNNPredictor"
    assert d["params"] == d["trainable"] == 285_787
    assert (d["in"]["kind"], d["in"]["size"], d["out"]["kind"], d["out"]["size"]) == ("channels", 256, "channels", 91)
    assert d["role"] == predictor.role and d["accepts"] == predictor.accepts
    text = str(predictor)
    assert text.startswith("roi_heads.mask_predictor: MaskRCNNPredictor")
    assert "256 ch" in text and "91 ch" in text


def test_components_rejects_a_non_module() -> None:
    with pytest.raises(NotAModuleError, match=r"components\(\): model must be an nn.Module, got dict"):
        components({"backbone": None})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- inspect


def test_inspect_shows_components_and_tree(maskrcnn: nn.Module) -> None:
    overview = inspect(maskrcnn)
    assert isinstance(overview, Overview)
    assert (overview.model, overview.family, overview.depth, overview.layer_table) == ("MaskRCNN", "R-CNN", 2, None)
    total = sum(p.numel() for p in maskrcnn.parameters())
    assert overview.params == overview.trainable == total
    assert [c.path for c in overview.components] == RCNN_BASE + MASK_TRIPLE
    text = str(overview)
    assert text.startswith("MaskRCNN (R-CNN): ")
    assert "\nComponents\n" in text
    table = overview.components_table()
    assert table in text
    for c in overview.components:
        assert c.path in table and c.type in table
    assert "\nModule tree (depth 2)\n" in text
    assert overview.tree[0] == "MaskRCNN"
    assert [line.split(":")[0] for line in overview.tree[1:3]] == ["├─ transform", "├─ backbone"]
    assert any(line.startswith("│  ├─ body: IntermediateLayerGetter") for line in overview.tree)
    assert any(line.startswith("└─ roi_heads: RoIHeads") for line in overview.tree)
    assert any(line.startswith("   └─ mask_predictor: MaskRCNNPredictor") for line in overview.tree)
    assert "\n".join(overview.tree) in text
    assert "torchinfo" not in text


@pytest.mark.parametrize(("depth", "lines"), [(0, 1), (1, 5), (2, 15)])
def test_inspect_tree_depth(maskrcnn: nn.Module, depth: int, lines: int) -> None:
    overview = inspect(maskrcnn, depth=depth)
    assert len(overview.tree) == lines
    assert overview.tree[0] == "MaskRCNN"


def test_inspect_deeper_tree_reaches_backbone_layers(maskrcnn: nn.Module) -> None:
    tree = inspect(maskrcnn, depth=3).tree
    levels = [line.index("─ ") // 3 for line in tree[1:]]  # 0 for the model's children
    assert max(levels) == 2
    assert "│  │  └─ layer4: Sequential" in [line.split(" (")[0] for line in tree]
    assert "│  │  ├─ conv1: Conv2d" in [line.split(" (")[0] for line in tree]


def test_inspect_to_dict(maskrcnn: nn.Module) -> None:
    d = inspect(maskrcnn, depth=1).to_dict()
    assert d["model"] == "MaskRCNN" and d["family"] == "R-CNN" and d["depth"] == 1
    assert [c["path"] for c in d["components"]] == RCNN_BASE + MASK_TRIPLE
    assert d["params"] == sum(p.numel() for p in maskrcnn.parameters())
    assert d["layer_table"] is None
    assert len(d["tree"]) == 5


def _dirty_state(model: nn.Module) -> None:
    """A non-default state that inspect must leave exactly as it is."""
    model.train()
    model.backbone.eval()
    model.rpn.head.requires_grad_(False)
    model.roi_heads.box_predictor.cls_score.weight.grad = torch.ones_like(model.roi_heads.box_predictor.cls_score.weight)
    model.roi_heads.box_head.register_forward_hook(lambda module, args, output: None)
    model.backbone.body.register_forward_pre_hook(lambda module, args: None)


@pytest.mark.parametrize("mode", ["mixed", "eval"])
def test_inspect_with_input_size_includes_torchinfo_and_leaves_no_trace(mode: str) -> None:
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    _dirty_state(model)
    if mode == "eval":
        model.eval()
    before = fingerprint(model)
    sizes = (model.transform.min_size, model.transform.max_size)
    overview = inspect(model, input_size=(3, 128, 128), depth=2)
    assert fingerprint(model) == before
    assert (model.transform.min_size, model.transform.max_size) == sizes == ((320,), 640)
    assert overview.layer_table is not None
    text = str(overview)
    assert "\nLayers (torchinfo)\n" in text
    assert overview.layer_table in text
    assert "FasterRCNN" in overview.layer_table
    assert f"Total params: {sum(p.numel() for p in model.parameters()):,}" in overview.layer_table
    assert overview.to_dict()["layer_table"] == overview.layer_table


def test_inspect_with_input_size_on_a_generic_model(shared: Callable[..., nn.Module]) -> None:
    model = copy.deepcopy(shared("resnet18"))
    model.eval()
    before = fingerprint(model)
    overview = inspect(model, input_size=(1, 3, 64, 64), depth=1)
    assert fingerprint(model) == before
    assert overview.layer_table is not None
    assert "[1, 1000]" in overview.layer_table
    assert "Total params: 11,689,512" in overview.layer_table


def test_inspect_without_input_leaves_no_trace(maskrcnn: nn.Module) -> None:
    before = fingerprint(maskrcnn)
    inspect(maskrcnn, depth=3)
    assert fingerprint(maskrcnn) == before


@pytest.mark.parametrize("depth", [-1, 1.5, "2", None])
def test_inspect_bad_depth(maskrcnn: nn.Module, depth: object) -> None:
    with pytest.raises(ValueError, match=rf"depth must be an int >= 0, got {depth!r}"):
        inspect(maskrcnn, depth=depth)  # type: ignore[arg-type]


@pytest.mark.parametrize("input_size", [(3, 0, 128), (3, -1, 128), (), "3,128,128", (3.0, 128, 128), 128])
def test_inspect_bad_input_size(shared: Callable[..., nn.Module], input_size: object) -> None:
    model = shared("fasterrcnn_mobilenet_v3_large_320_fpn")
    before = fingerprint(model)
    expected = f"got {input_size!r}".replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    with pytest.raises(ValueError, match=rf"input_size must be a tuple of positive ints such as \(3, 320, 320\), {expected}"):
        inspect(model, input_size=input_size)  # type: ignore[arg-type]
    assert fingerprint(model) == before


def test_inspect_rejects_a_non_module() -> None:
    with pytest.raises(NotAModuleError, match=r"inspect\(\): model must be an nn.Module, got str"):
        inspect("maskrcnn")  # type: ignore[arg-type]
