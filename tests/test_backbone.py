"""Backbone surgery: ``replace(model, "backbone", new, adapt=True)`` and ``surgery.detection_backbone``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery.anatomy._backbone import spread_sizes
from tests.helpers import build, fingerprint, state_bytes

#: Small sample counts so that a CPU smoke test of an R-CNN stays quick.
RCNN_FAST: dict[str, Any] = dict(
    rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
    rpn_batch_size_per_image=32, box_batch_size_per_image=16, box_detections_per_img=8,
)
DENSE_FAST: dict[str, Any] = dict(topk_candidates=50, detections_per_img=8)
STOCK = ((32,), (64,), (128,), (256,), (512,))


def _fits(model: nn.Module) -> None:
    report = surgery.check(model)
    assert report.ok, str(report)
    result = surgery.smoke_test(model, device="cpu", image_size=160)
    assert result.ok, str(result)


# --------------------------------------------------------------------------- the anchor rule


@pytest.mark.parametrize(("levels", "expected"), [
    (1, ((32, 64, 128, 256, 512),)),
    (2, ((32, 64, 128), (256, 362, 512))),
    (3, ((32, 64), (128, 256), (362, 512))),
    (4, ((32, 64), (91, 128), (181, 256), (362, 512))),
    (5, STOCK),
])
def test_spread_keeps_every_stock_size(levels: int, expected: tuple[tuple[int, ...], ...]) -> None:
    assert spread_sizes(STOCK, levels) == expected


def test_spread_repeats_identical_levels_and_fills_a_short_range() -> None:
    assert spread_sizes(((32, 64, 128, 256, 512),) * 3, 2) == ((32, 64, 128, 256, 512),) * 2
    assert spread_sizes(((32,), (64,), (128,)), 5) == STOCK


def test_anchor_fix_text_keeps_every_size() -> None:
    model = build("fasterrcnn_resnet50_fpn")
    model.rpn.anchor_generator = torchvision.models.detection.anchor_utils.AnchorGenerator(((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3)
    fixes = [f.fix for f in surgery.check(model).errors if f.code == "anchor-mismatch" and "sizes tuples" in f.message]
    assert fixes == ["model.rpn.anchor_generator = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), "
                     "aspect_ratios=((0.5, 1.0, 2.0),) * 5)"]


# --------------------------------------------------------------------------- R-CNN


def test_same_backbone_is_a_no_op() -> None:
    model = build("maskrcnn_resnet50_fpn", **RCNN_FAST)
    before = state_bytes(model)
    rpn_head = model.rpn.head
    result = surgery.replace(model, "backbone", copy.deepcopy(model.backbone), adapt=True)
    assert result.rebuilt == {}
    assert result.copied == [] and result.initialised == []
    assert "everything after backbone already fits its feature maps; nothing rebuilt" in result.notes
    assert model.rpn.head is rpn_head
    assert state_bytes(model) == before


def test_one_map_into_mask_rcnn() -> None:
    model = build("maskrcnn_resnet50_fpn", **RCNN_FAST)
    box_head, mask_head = model.roi_heads.box_head, model.roi_heads.mask_head
    conv = model.rpn.head.conv[0][0].weight.detach().clone()
    backbone = surgery.detection_backbone("mobilenet_v3_small", fpn=False)
    result = surgery.replace(model, "backbone", backbone, adapt=True)
    assert result.rebuilt == {
        "rpn.anchor_generator": "AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5) → "
                                "AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),) * 1)",
        "rpn.head": "RPNHead(256, 3) → RPNHead(256, 15)",
        "roi_heads.box_roi_pool": "MultiScaleRoIAlign(['0', '1', '2', '3'], 7, 2) → MultiScaleRoIAlign(['0'], 7, 2)",
        "roi_heads.mask_roi_pool": "MultiScaleRoIAlign(['0', '1', '2', '3'], 14, 2) → MultiScaleRoIAlign(['0'], 14, 2)",
    }
    assert result.copied == ["rpn.head.conv.0.0.weight", "rpn.head.conv.0.0.bias"]
    assert result.initialised == ["rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias",
                                  "rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.bias"]
    assert result.notes[0] == "backbone produces 1 feature map(s): 0 (256 ch, stride 32)"
    assert torch.equal(model.rpn.head.conv[0][0].weight, conv)
    assert model.roi_heads.box_head is box_head and model.roi_heads.mask_head is mask_head  # 256 channels still
    assert model.backbone.out_channels == 256
    assert model.roi_heads.box_roi_pool.sampling_ratio == 2 and model.roi_heads.mask_roi_pool.output_size == (14, 14)
    _fits(model)


def test_three_maps_of_128_channels_into_faster_rcnn() -> None:
    model = build("fasterrcnn_resnet50_fpn", **RCNN_FAST)
    fc7 = model.roi_heads.box_head.fc7.weight.detach().clone()
    backbone = surgery.detection_backbone("resnet18", layers=2, out_channels=128)
    result = surgery.replace(model, "backbone", backbone, adapt=True)
    assert result.rebuilt == {
        "rpn.anchor_generator": "AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5) → "
                                "AnchorGenerator(((32, 64), (128, 256), (362, 512)), ((0.5, 1.0, 2.0),) * 3)",
        "rpn.head": "RPNHead(256, 3) → RPNHead(128, 6)",
        "roi_heads.box_roi_pool": "MultiScaleRoIAlign(['0', '1', '2', '3'], 7, 2) → MultiScaleRoIAlign(['0', '1'], 7, 2)",
        "roi_heads.box_head": "TwoMLPHead taking 256×7×7 (fc6) → TwoMLPHead taking 128×7×7 (fc6)",
    }
    assert model.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    assert torch.equal(model.roi_heads.box_head.fc7.weight, fc7)
    assert "roi_heads.box_head.fc7.weight" in result.copied and "roi_heads.box_head.fc6.weight" in result.initialised
    assert model.rpn.anchor_generator.sizes == ((32, 64), (128, 256), (362, 512))
    _fits(model)


def test_five_maps_into_keypoint_rcnn() -> None:
    model = build("keypointrcnn_resnet50_fpn", **RCNN_FAST)
    generator = model.rpn.anchor_generator
    second = model.roi_heads.keypoint_head[2].weight.detach().clone()
    backbone = surgery.detection_backbone("resnet18", out_channels=128)
    result = surgery.replace(model, "backbone", backbone, adapt=True)
    assert set(result.rebuilt) == {"rpn.head", "roi_heads.box_head", "roi_heads.keypoint_head"}
    assert result.rebuilt["rpn.head"] == "RPNHead(256, 3) → RPNHead(128, 3)"
    assert result.rebuilt["roi_heads.keypoint_head"] == "KeypointRCNNHeads taking 256 (0) → KeypointRCNNHeads taking 128 (0)"
    assert model.rpn.anchor_generator is generator  # five maps as before: anchors and poolers kept
    assert torch.equal(model.roi_heads.keypoint_head[2].weight, second)
    _fits(model)


def test_adapt_through_edit_and_after_a_plain_replace() -> None:
    model = build("fasterrcnn_resnet50_fpn", **RCNN_FAST)
    with surgery.edit(model) as e:
        result = e.replace("backbone", surgery.detection_backbone("resnet18", layers=1, out_channels=64), adapt=True)
    assert result.rebuilt["rpn.head"] == "RPNHead(256, 3) → RPNHead(64, 9)"  # one map + pool: (32, 64, 128), (256, 362, 512)
    assert e.report is not None and e.report.ok
    other = build("fasterrcnn_resnet50_fpn", **RCNN_FAST)
    with surgery.edit(other) as e2:
        e2.set("backbone", surgery.detection_backbone("resnet18", layers=1, out_channels=64))
        adaptation = e2.adapt("backbone")
    assert adaptation.rebuilt == result.rebuilt


def test_recipe_step_builds_and_adapts(tmp_path: Any) -> None:
    recipe = surgery.Recipe.parse(
        '[[step]]\nreplace = "backbone"\nmodule = "surgery:detection_backbone"\n'
        'args = ["resnet18"]\nkwargs = { layers = 2, out_channels = 128 }\nadapt = true\n'
    )
    model = build("fasterrcnn_resnet50_fpn", **RCNN_FAST)
    result = recipe.apply(model)
    assert result.report is not None and result.report.ok
    assert "rebuilt rpn.head: RPNHead(256, 3) → RPNHead(128, 6)" in result.steps[0].summary
    assert type(model.backbone).__name__ == "DetectionBackbone"


# --------------------------------------------------------------------------- all or nothing


def test_maps_of_different_widths_are_refused_and_nothing_changes() -> None:
    model = build("maskrcnn_resnet50_fpn", **RCNN_FAST)
    before = fingerprint(model)
    backbone = surgery.detection_backbone("resnet18", layers=2, fpn=False, out_channels=None)
    with pytest.raises(ValueError, match=r"different channel counts \{'0': 256, '1': 512\}.*fpn=True"):
        surgery.replace(model, "backbone", backbone, adapt=True)
    assert fingerprint(model) == before


def test_a_head_adapt_cannot_rebuild_rolls_everything_back() -> None:
    model = build("fasterrcnn_resnet50_fpn", **RCNN_FAST)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flat = nn.Flatten()
            self.fc = nn.Linear(256 * 7 * 7 + 1, 1024)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([self.flat(x), x.new_ones(x.shape[0], 1)], 1))

    model.roi_heads.box_head = Head()
    before = fingerprint(model)
    modules = dict(model.named_modules())
    backbone = surgery.detection_backbone("resnet18", layers=2, out_channels=128)
    with pytest.raises(surgery.IncompatibleError, match=r"rolled back and the model is unchanged"):
        surgery.replace(model, "backbone", backbone, adapt=True)
    assert fingerprint(model) == before
    assert all(modules[name] is m for name, m in model.named_modules())


# --------------------------------------------------------------------------- one-stage families


def test_retinanet_three_maps() -> None:
    model = build("retinanet_resnet50_fpn", **DENSE_FAST)
    backbone = surgery.detection_backbone("resnet18", layers=2, out_channels=128)
    result = surgery.replace(model, "backbone", backbone, adapt=True)
    assert result.rebuilt["head"] == "RetinaNetHead(256, 9, 91) → RetinaNetHead(128, 15, 91)"
    assert len(model.anchor_generator.sizes) == 3
    assert {s for level in model.anchor_generator.sizes for s in level} >= {32, 40, 50, 64, 80, 101, 128, 161, 203, 256, 322, 406, 512, 645, 812}
    assert model.head.classification_head.num_anchors == 15
    _fits(model)


def test_fcos_anchor_sizes_follow_the_strides() -> None:
    model = build("fcos_resnet50_fpn", **DENSE_FAST)
    backbone = surgery.detection_backbone("resnet18", layers=3, out_channels=128)
    result = surgery.replace(model, "backbone", backbone, adapt=True)
    assert result.rebuilt["anchor_generator"] == ("AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5) → "
                                                  "AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)")
    assert result.rebuilt["head"] == "FCOSHead(256, 1, 91) → FCOSHead(128, 1, 91, num_convs=4)"
    _fits(model)


def test_ssd_head_rebuilt_for_new_widths() -> None:
    model = build("ssd300_vgg16", detections_per_img=8, topk_candidates=50)

    class Narrow(nn.Module):
        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body
            self.squeeze = nn.ModuleList([nn.Conv2d(c, c // 2, 1) for c in (512, 1024, 512, 256, 256, 256)])

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {k: conv(v) for (k, v), conv in zip(self.body(x).items(), self.squeeze, strict=True)}

    result = surgery.replace(model, "backbone", Narrow(copy.deepcopy(model.backbone)), adapt=True)
    assert result.rebuilt == {"head": "SSDHead([512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4], 91) → "
                                      "SSDHead([256, 512, 256, 128, 128, 128], [4, 6, 6, 6, 4, 4], 91)"}
    assert len(result.initialised) == 12 and len(result.copied) == 12  # weights by map; biases fit
    _fits(model)


def test_ssdlite_with_another_map_count_says_what_to_do() -> None:
    model = build("ssdlite320_mobilenet_v3_large")
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"produces 5 feature maps but anchor_generator makes default boxes for 6.*"
                                         r"SSDHead\(\[256, 256, 256, 256, 256\], \[6\] \* 5, 91\)"):
        surgery.replace(model, "backbone", surgery.detection_backbone("resnet18"), adapt=True)
    assert fingerprint(model) == before


# --------------------------------------------------------------------------- the builder


def test_builder_trainable_layers_mean_what_torchvision_means() -> None:
    backbone = surgery.detection_backbone("resnet18", trainable_layers=3)
    frozen = sorted({n.split(".")[0] for n, p in backbone.body.named_parameters() if not p.requires_grad})
    trained = sorted({n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad})
    assert frozen == ["bn1", "conv1", "layer1"]
    assert trained == ["layer2", "layer3", "layer4"]
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    none = surgery.detection_backbone("resnet18", trainable_layers=0)
    assert not any(p.requires_grad for p in none.body.parameters())


def test_builder_swin_maps_come_out_channels_first() -> None:
    backbone = surgery.detection_backbone("swin_t", layers=2, fpn=False, out_channels=None)
    out = backbone(torch.rand(1, 3, 128, 160))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"0": (1, 384, 8, 10), "1": (1, 768, 4, 5)}
    assert backbone.channels_last == ["0"]  # features.5 is N×H×W×C; the last stage comes through swin's own permute
    assert backbone.out_channels is None


@pytest.mark.parametrize(("source", "kwargs", "error", "match"), [
    ("resnet_nine", {}, ValueError, r"model_or_name 'resnet_nine' is not a torchvision classification model"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)), {}, ValueError, r"Sequential produces no feature maps"),
    ("resnet18", {"layers": 5}, ValueError, r"layers must be an int in 1\.\.4, got 5"),
    ("resnet18", {"layers": ["layer9"]}, ValueError, r"layers \['layer9'\] of resnet18 output no N×C×H×W map"),
    ("resnet18", {"trainable_layers": 6}, ValueError, r"trainable_layers must be an int in 0\.\.5, got 6"),
    ("resnet18", {"out_channels": 0}, ValueError, r"out_channels must be an int >= 1, got 0"),
    (3, {}, TypeError, r"model_or_name must be a torchvision model name \(str\) or an nn.Module, got int"),
])
def test_builder_errors(source: Any, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        surgery.detection_backbone(source, **kwargs)


def test_a_module_that_is_no_backbone_is_named() -> None:
    model = build("fasterrcnn_resnet50_fpn", **RCNN_FAST)
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"the backbone at 'backbone' \(Flatten\) produces no feature maps"):
        surgery.replace(model, "backbone", nn.Flatten(), adapt=True)
    assert fingerprint(model) == before


# --------------------------------------------------------------------------- showing the configuration


def test_inspect_diff_and_render_show_anchors_and_poolers() -> None:
    before = build("maskrcnn_resnet50_fpn", **RCNN_FAST)
    after = copy.deepcopy(before)
    surgery.replace(after, "backbone", surgery.detection_backbone("resnet18", layers=2, out_channels=256), adapt=True)
    table = surgery.inspect(after, depth=0).components_table()
    assert "sizes 32,64 | 128,256 | 362,512; ratios 0.5,1,2" in table
    assert "maps 0,1 → 14×14, sampling 2" in table
    changes = {c.path: c for c in surgery.diff(before, after, cost=False).slots}
    generator = changes["rpn.anchor_generator"]
    assert (generator.status, generator.what) == ("changed", ("config",))
    assert str(generator) == ("~ rpn.anchor_generator: AnchorGenerator [sizes 32 | 64 | 128 | 256 | 512; ratios 0.5,1,2] → "
                              "AnchorGenerator [sizes 32,64 | 128,256 | 362,512; ratios 0.5,1,2] [config]")
    assert changes["roi_heads.box_roi_pool"].status == "changed"
    assert changes["roi_heads.mask_head"].status == "unchanged"
    graph = surgery.render(after, before=before)
    nodes = {n.path: n for n in graph.nodes}
    assert nodes["roi_heads.box_roi_pool"].status == "changed"
    assert nodes["roi_heads.box_roi_pool"].label[-2:] == ("maps 0,1,2,3 → 7×7, sampling 2 →", "maps 0,1 → 7×7, sampling 2")


# --------------------------------------------------------------------------- every builder × every family


#: Classifiers a detector cannot use as they are: ViT and MaxViT take one fixed image size,
#: Inception's aux head rejects small maps, SqueezeNet and AlexNet make no strided maps.
NO_MAPS = ("vit_", "maxvit", "inception", "squeezenet", "alexnet")


def _classifiers() -> list[str]:
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return [n for n in names if not n.startswith(NO_MAPS)]


@pytest.mark.parametrize("source", ["vit_b_16", "maxvit_t", "inception_v3", "squeezenet1_0", "alexnet"])
def test_a_classifier_without_usable_maps_is_a_clear_error(source: str) -> None:
    with pytest.raises(ValueError, match=rf"^{source} (raised on a 2×3×256×320 image batch|produces no feature maps)"):
        surgery.detection_backbone(source, layers=2, out_channels=64)


FAMILIES = {
    "fasterrcnn_resnet50_fpn": RCNN_FAST,
    "maskrcnn_resnet50_fpn": RCNN_FAST,
    "keypointrcnn_resnet50_fpn": RCNN_FAST,
    "retinanet_resnet50_fpn": DENSE_FAST,
    "fcos_resnet50_fpn": DENSE_FAST,
}
FAST_SUBSET = [("regnet_x_400mf", "retinanet_resnet50_fpn")]


def _swap(source: str, family: str) -> None:
    model = build(family, **FAMILIES[family])
    backbone = surgery.detection_backbone(source, layers=2, out_channels=64)
    result = surgery.replace(model, "backbone", backbone, adapt=True)
    assert result.report is not None and result.report.ok, str(result.report)
    smoke = surgery.smoke_test(model, device="cpu", image_size=160)
    assert smoke.ok, str(smoke)


@pytest.mark.parametrize(("source", "family"), FAST_SUBSET)
def test_swap_fast_subset(source: str, family: str) -> None:
    _swap(source, family)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("source", _classifiers())
def test_swap_every_classifier(source: str, family: str) -> None:
    _swap(source, family)


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_a_backbone_whose_maps_differ_in_width_is_an_error(name: str) -> None:
    model = build(name)
    backbone = surgery.detection_backbone("resnet18", layers=3, out_channels=128)
    surgery.replace(model, "backbone", backbone, adapt=True)
    backbone.fpn.layer_blocks[2][0] = nn.Conv2d(128, 64, 3, padding=1)  # map '2' (and 'pool' after it) now 64 wide
    (error,) = surgery.check(model).errors
    assert (error.code, error.paths) == ("channel-mismatch", ("backbone",))
    assert error.message == (
        "backbone produces feature maps with different channel counts ('0': 128, '1': 128, '2': 64, 'pool': 64); the heads "
        "after it run one set of convs over every map, so the forward raises at the first map whose count they do not take"
    )
    assert error.fix == ("make model.backbone produce 128 channels on every map (maps ['2', 'pool'] differ), "
                         "e.g. with surgery.detection_backbone(..., out_channels=128)")


def test_the_check_ending_an_adapt_reads_the_maps_the_adapt_probed() -> None:
    model = build("fasterrcnn_resnet50_fpn")
    backbone = surgery.detection_backbone("resnet18", layers=3, out_channels=128)
    calls = [0]
    backbone.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    surgery.replace(model, "backbone", backbone, adapt=True)
    # once by the adapt, once inside the check's whole-model probe; the contracts read the adapt's maps
    assert calls == [2]


def test_a_backbone_changed_after_its_adapt_is_probed_again() -> None:
    model = build("fasterrcnn_resnet50_fpn")
    before = fingerprint(model)
    backbone = surgery.detection_backbone("resnet18", layers=3, out_channels=128)
    with pytest.raises(surgery.IncompatibleError, match="different channel counts") as caught:
        with surgery.edit(model) as e:
            e.replace("backbone", backbone, adapt=True)
            backbone.fpn.layer_blocks[2][0] = nn.Conv2d(128, 64, 3, padding=1)  # after the adapt's probe
    assert [(f.code, f.paths) for f in caught.value.findings] == [("channel-mismatch", ("backbone",))]
    assert fingerprint(model) == before
