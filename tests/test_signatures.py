"""Signatures read from parameter shapes, the layer attribute check every model gets, and the
predictor contracts that read weights rather than attributes."""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import surgery
from surgery import paths, signature
from surgery.anatomy._base import LAYER_CONTRACT
from surgery.findings import Finding
from surgery.signature import (
    MultiSignature,
    Signature,
    attribute_mismatches,
    in_width,
    input_signature,
    layer_widths,
    meta_like,
    meta_probe,
    out_width,
    output_signature,
)


def slice_rows(layer: nn.Module, n: int, dim: int = 0) -> None:
    """Cut ``layer``'s weight (and bias) to ``n`` entries along ``dim`` in place, attributes untouched."""
    weight = layer.weight.detach()
    layer.weight = nn.Parameter(weight.narrow(dim, 0, n).clone())
    if getattr(layer, "bias", None) is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[:n].clone())


def triples(findings: list[Finding]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(f.severity, f.code, f.paths) for f in findings]


# --------------------------------------------------------------------------- widths from parameters


@pytest.mark.parametrize(
    ("layer", "widths"),
    [
        (nn.Linear(7, 3), (7, 3)),
        (nn.Conv1d(4, 6, 3), (4, 6)),
        (nn.Conv2d(8, 12, 3, groups=4), (8, 12)),
        (nn.Conv3d(2, 5, 1), (2, 5)),
        (nn.ConvTranspose2d(6, 10, 2, groups=2), (6, 10)),
        (nn.ConvTranspose1d(3, 4, 2), (3, 4)),
        (nn.BatchNorm2d(9), (9, 9)),
        (nn.BatchNorm1d(5, affine=False), (5, 5)),
        (nn.GroupNorm(2, 6), (6, 6)),
        (nn.LayerNorm((4, 11)), (11, 11)),
        (nn.Embedding(30, 16), (30, 16)),
        (nn.ReLU(), None),
        (nn.BatchNorm2d(4, affine=False, track_running_stats=False), None),
    ],
)
def test_layer_widths_come_from_parameter_shapes(layer: nn.Module, widths: tuple[int, int] | None) -> None:
    assert layer_widths(layer) == widths


def test_sliced_weight_wins_over_the_stale_attribute() -> None:
    layer = nn.Linear(1024, 91)
    slice_rows(layer, 2)
    assert layer.out_features == 91
    assert (in_width(layer), out_width(layer)) == (1024, 2)
    assert output_signature(nn.Sequential(nn.Linear(4, 1024), layer)) == Signature("features", 2, "1")


def test_transposed_conv_reads_in_by_out_over_groups() -> None:
    layer = nn.ConvTranspose2d(512, 17, 4, stride=2, padding=1)
    slice_rows(layer, 5, dim=1)
    assert (in_width(layer), out_width(layer)) == (512, 5)
    assert input_signature(layer) == Signature("channels", 512, "")


def test_lazy_layer_falls_back_to_its_attributes() -> None:
    layer = nn.LazyLinear(8)
    assert layer_widths(layer) is None
    assert (in_width(layer), out_width(layer)) == (0, 8)
    assert attribute_mismatches(layer) == []


def test_width_of_a_module_that_is_no_layer_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="layer must be a Conv/ConvTranspose, Linear, .* got ReLU"):
        in_width(nn.ReLU())


def test_meta_probe_sees_the_sliced_weight_and_names_the_raising_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    slice_rows(model[0], 6)
    result = meta_probe(model, meta_like((2, 4)))
    assert not result.ok
    assert result.where == "1"
    assert not result.inconclusive


# --------------------------------------------------------------------------- one type for size


def test_signature_strings_and_dicts_are_unchanged() -> None:
    one = Signature("channels", 256, "conv")
    many = MultiSignature("channels", (256, 512, 1024, 2048), "return_layers")
    assert (str(one), str(Signature("features", 1024))) == ("256 ch", "1024 feat")
    assert str(many) == "256,512,1024,2048 ch"
    assert one.to_dict() == {"kind": "channels", "size": 256, "source": "conv"}
    assert many.to_dict() == {"kind": "channels", "size": [256, 512, 1024, 2048], "source": "return_layers"}


def test_multi_scale_slots_get_one_width_per_map(maskrcnn: nn.Module) -> None:
    by_path = {c.path: c for c in surgery.components(maskrcnn)}
    assert by_path["backbone.body"].out_sig == MultiSignature("channels", (256, 512, 1024, 2048), "return_layers")
    assert by_path["backbone.fpn"].in_sig == MultiSignature("channels", (256, 512, 1024, 2048), "inner_blocks")
    assert by_path["roi_heads.box_predictor"].out_sig == Signature("features", 91, "cls_score")
    assert by_path["rpn.head"].out_sig == Signature("channels", 3, "cls_logits")


# --------------------------------------------------------------------------- attribute vs parameter


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (nn.Linear(4, 3, bias=False), [("out_features", 3, "weight", (2, 4), "nn.Linear(4, 2, bias=False)")]),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), [("out_channels", 6, "weight", (2, 2, 3, 3),
                                                     "nn.Conv2d(4, 2, kernel_size=3, padding=1, groups=2)"),
                                                    ("bias", (6,), "weight", (2, 2, 3, 3),
                                                     "nn.Conv2d(4, 2, kernel_size=3, padding=1, groups=2)")]),
        (nn.Embedding(10, 3), [("num_embeddings", 10, "weight", (2, 3), "nn.Embedding(2, 3)")]),
    ],
)
def test_attribute_mismatches_name_the_attribute_and_the_weight(layer: nn.Module, expected: list[tuple]) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[:2].clone())
    found = [(m.attribute, m.value, m.tensor, m.shape, m.rebuild) for m in attribute_mismatches(layer)]
    assert found == expected


def test_norm_layers_compare_statistics_with_their_weight() -> None:
    bn = nn.BatchNorm2d(8)
    bn.weight = nn.Parameter(torch.ones(4))
    found = [(m.attribute, m.value, m.tensor, m.shape, m.rebuild) for m in attribute_mismatches(bn)]
    assert found == [
        ("num_features", 8, "weight", (4,), "nn.BatchNorm2d(4)"),
        ("bias", (8,), "weight", (4,), "nn.BatchNorm2d(4)"),
        ("running_mean", (8,), "weight", (4,), "nn.BatchNorm2d(4)"),
        ("running_var", (8,), "weight", (4,), "nn.BatchNorm2d(4)"),
    ]
    ln = nn.LayerNorm(6)
    ln.weight = nn.Parameter(torch.ones(5))
    ln.bias = nn.Parameter(torch.zeros(5))
    assert [(m.attribute, m.value, m.shape, m.rebuild) for m in attribute_mismatches(ln)] == [
        ("normalized_shape", (6,), (5,), "nn.LayerNorm(5)")
    ]
    gn = nn.GroupNorm(2, 6)
    assert attribute_mismatches(gn) == []


def test_consistent_stock_models_have_no_attribute_mismatch(maskrcnn: nn.Module) -> None:
    assert [p for p, m in maskrcnn.named_modules() if attribute_mismatches(m)] == []


def test_generic_model_gets_the_layer_check_with_an_indexed_fix() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3)))
    slice_rows(model[2][1], 2)
    report = surgery.check(model)
    assert LAYER_CONTRACT in report.checked
    assert triples(report.findings) == [("error", "channel-mismatch", ("2.1",))]
    (finding,) = report.findings
    assert finding.message == (
        "2.1.out_features says 3 but its weight has shape (2, 8); the layer (Linear) was resized without "
        "being rebuilt, and code that reads out_features will size things wrongly"
    )
    assert finding.fix == "model[2][1] = nn.Linear(8, 2)"
    ast.parse(finding.fix)


def test_bias_left_at_the_old_size_is_reported() -> None:
    model = nn.Sequential(nn.Linear(4, 8))
    model[0].weight = nn.Parameter(model[0].weight.detach()[:5].clone())
    (finding,) = surgery.check(model).findings
    assert finding.paths == ("0",)
    assert finding.message.startswith("0.out_features says 8 but its weight has shape (5, 4); ")
    finding2 = attribute_mismatches(model[0])[1]
    assert (finding2.attribute, finding2.value) == ("bias", (8,))


def test_layer_check_follows_check_paths(maskrcnn: nn.Module) -> None:
    model = copy.deepcopy(maskrcnn)
    slice_rows(model.roi_heads.box_predictor.cls_score, 2)
    scoped = surgery.check(model, paths=["roi_heads.mask_head"])
    assert LAYER_CONTRACT in scoped.checked
    assert ("error", "channel-mismatch", ("roi_heads.box_predictor.cls_score",)) in triples(scoped.findings)


# --------------------------------------------------------------------------- predictors sliced in place


@pytest.fixture(scope="module")
def fresh(shared: Callable[..., nn.Module]) -> Callable[[str], nn.Module]:
    """``fresh(name)``: a private copy of a shared model, safe to cut."""
    return lambda name: copy.deepcopy(shared(name))


def test_box_cls_score_sliced_in_place(fresh: Callable[[str], nn.Module]) -> None:
    model = fresh("fasterrcnn_resnet50_fpn")
    slice_rows(model.roi_heads.box_predictor.cls_score, 2)
    report = surgery.check(model)
    assert not report.ok
    assert triples(report.findings) == [
        ("error", "channel-mismatch", ("roi_heads.box_predictor.cls_score",)),
        ("error", "num-classes-mismatch", ("roi_heads.box_predictor",)),
    ]
    layer, classes = report.findings
    assert layer.message == (
        "roi_heads.box_predictor.cls_score.out_features says 91 but its weight has shape (2, 1024); the layer "
        "(Linear) was resized without being rebuilt, and code that reads out_features will size things wrongly"
    )
    assert layer.fix == "model.roi_heads.box_predictor.cls_score = nn.Linear(1024, 2)"
    assert classes.message == (
        "roi_heads.box_predictor scores 2 classes but predicts 364 box deltas; it needs 4 × 2 = 8 (one box per class)"
    )
    assert classes.fix == "model.roi_heads.box_predictor = FastRCNNPredictor(1024, 2)"


def test_mask_fcn_logits_sliced_in_place(fresh: Callable[[str], nn.Module]) -> None:
    model = fresh("maskrcnn_resnet50_fpn")
    slice_rows(model.roi_heads.mask_predictor.mask_fcn_logits, 3)
    report = surgery.check(model)
    assert triples(report.findings) == [
        ("error", "channel-mismatch", ("roi_heads.mask_predictor.mask_fcn_logits",)),
        ("error", "num-classes-mismatch", ("roi_heads.box_predictor", "roi_heads.mask_predictor")),
    ]
    layer, classes = report.findings
    assert layer.message.startswith(
        "roi_heads.mask_predictor.mask_fcn_logits.out_channels says 91 but its weight has shape (3, 256, 1, 1); "
    )
    assert layer.fix == "model.roi_heads.mask_predictor.mask_fcn_logits = nn.Conv2d(256, 3, kernel_size=1)"
    assert classes.message == (
        "roi_heads.box_predictor has 91 classes but roi_heads.mask_predictor predicts 3 mask channels; "
        "masks are picked by the box's class label, so they must agree"
    )
    assert classes.fix == "model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 91)"


def test_dense_cls_logits_sliced_in_place(fresh: Callable[[str], nn.Module]) -> None:
    model = fresh("retinanet_resnet50_fpn")
    slice_rows(model.head.classification_head.cls_logits, 27)
    report = surgery.check(model)
    assert triples(report.findings) == [
        ("error", "channel-mismatch", ("head.classification_head.cls_logits",)),
        ("error", "num-classes-mismatch", ("anchor_generator", "head.classification_head")),
    ]
    layer, classes = report.findings
    assert layer.message.startswith(
        "head.classification_head.cls_logits.out_channels says 819 but its weight has shape (27, 256, 3, 3); "
    )
    assert layer.fix == "model.head.classification_head.cls_logits = nn.Conv2d(256, 27, kernel_size=3, padding=1)"
    assert classes.message == (
        "head.classification_head.cls_logits has 27 output channels but 9 anchors × 91 classes "
        "(head.classification_head.num_classes) = 819; it predicts 3 classes per anchor"
    )
    assert classes.fix == "model.head = RetinaNetHead(256, 9, 91)"


def test_fcos_cls_logits_sliced_in_place(fresh: Callable[[str], nn.Module]) -> None:
    model = fresh("fcos_resnet50_fpn")
    slice_rows(model.head.classification_head.cls_logits, 4)
    report = surgery.check(model)
    assert triples(report.findings) == [
        ("error", "channel-mismatch", ("head.classification_head.cls_logits",)),
        ("error", "num-classes-mismatch", ("anchor_generator", "head.classification_head")),
    ]
    assert report.findings[1].message == (
        "head.classification_head.cls_logits has 4 output channels but 1 anchor × 91 classes "
        "(head.classification_head.num_classes) = 91; it predicts 4 classes per anchor"
    )
    assert report.findings[1].fix == "model.head = FCOSHead(256, 1, 91)"


def test_keypoint_heatmaps_sliced_in_place(fresh: Callable[[str], nn.Module]) -> None:
    model = fresh("keypointrcnn_resnet50_fpn")
    slice_rows(model.roi_heads.keypoint_predictor.kps_score_lowres, 5, dim=1)
    report = surgery.check(model)
    assert triples(report.findings) == [
        ("error", "channel-mismatch", ("roi_heads.keypoint_predictor.kps_score_lowres",)),
        ("error", "channel-mismatch", ("roi_heads.keypoint_predictor",)),
    ]
    layer, count = report.findings
    assert layer.fix == (
        "model.roi_heads.keypoint_predictor.kps_score_lowres = "
        "nn.ConvTranspose2d(512, 5, kernel_size=4, stride=2, padding=1)"
    )
    assert count.message == (
        "roi_heads.keypoint_predictor.out_channels says 17 keypoints but its kps_score_lowres outputs 5 heatmaps; "
        "targets and the keypoint loss are sized by out_channels"
    )
    assert count.fix == "model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(512, 5)"


def test_keypoint_predictor_input_is_read_from_its_weight(fresh: Callable[[str], nn.Module]) -> None:
    model = fresh("keypointrcnn_resnet50_fpn")
    slice_rows(model.roi_heads.keypoint_predictor.kps_score_lowres, 256)  # in × out/groups: rows are inputs
    report = surgery.check(model)
    assert ("error", "channel-mismatch", ("roi_heads.keypoint_head", "roi_heads.keypoint_predictor")) in triples(report.findings)
    feed = next(f for f in report.findings if f.paths == ("roi_heads.keypoint_head", "roi_heads.keypoint_predictor"))
    assert feed.message == (
        "roi_heads.keypoint_head produces 512 channels but roi_heads.keypoint_predictor (KeypointRCNNPredictor) "
        "expects 256 (in roi_heads.keypoint_predictor.kps_score_lowres)"
    )
    assert feed.fix == "model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(512, 17)"


# --------------------------------------------------------------------------- python paths in fix texts


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "model"),
        ("roi_heads.box_predictor", "model.roi_heads.box_predictor"),
        ("layer1.0.relu", "model.layer1[0].relu"),
        ("blocks.-1", "model.blocks[-1]"),
        ("heads.my-key", "model.heads['my-key']"),
        ("heads.class", "model.heads['class']"),
    ],
)
def test_expression_writes_indexed_paths_as_python(path: str, expected: str) -> None:
    assert paths.expression(path) == expected
    ast.parse(expected)


def test_expression_knows_module_dict_keys_from_the_model() -> None:
    model = nn.Module()
    model.maps = nn.ModuleDict({"0": nn.ReLU()})
    model.seq = nn.Sequential(nn.ReLU())
    assert paths.expression("maps.0", model) == "model.maps['0']"
    assert paths.expression("seq.0", model, root="net") == "net.seq[0]"


def _edited_layers() -> list[nn.Module]:
    """Stock layers, and the same layers with a tensor swapped or sliced in place."""
    layers: list[nn.Module] = [nn.Conv2d(8, 16, 3), nn.Conv2d(8, 16, 3, groups=4, bias=False), nn.Conv1d(4, 6, 1),
                               nn.Conv3d(2, 4, 1), nn.Linear(10, 5), nn.Linear(10, 5, bias=False), nn.BatchNorm2d(7),
                               nn.BatchNorm1d(3), nn.BatchNorm2d(7, affine=False), nn.BatchNorm2d(7, track_running_stats=False)]
    conv = nn.Conv2d(8, 16, 3)
    conv.weight = nn.Parameter(conv.weight.data[:12])
    layers.append(conv)
    conv_bias = nn.Conv2d(8, 16, 3)
    conv_bias.bias = nn.Parameter(conv_bias.bias.data[:3])
    layers.append(conv_bias)
    conv_in = nn.Conv2d(8, 16, 3)
    conv_in.weight.data = conv_in.weight.data[:, :5]
    layers.append(conv_in)
    linear = nn.Linear(10, 5)
    linear.weight.data = linear.weight.data[:2]
    layers.append(linear)
    norm = nn.BatchNorm2d(7)
    norm.running_mean = norm.running_mean[:4]
    layers.append(norm)
    norm_w = nn.BatchNorm2d(7)
    norm_w.weight = nn.Parameter(norm_w.weight.data[:2])
    layers.append(norm_w)
    flat = nn.Conv2d(8, 16, 3)
    flat.weight = nn.Parameter(torch.zeros(16))  # a rank the fast path must not index blindly
    layers.append(flat)
    return layers


def test_the_fast_path_for_stock_layers_agrees_with_the_full_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = [attribute_mismatches(layer) for layer in _edited_layers()]
    monkeypatch.setattr(signature, "_plainly_consistent", lambda layer: False)
    full = [attribute_mismatches(layer) for layer in _edited_layers()]
    assert fast == full
    assert [bool(f) for f in fast] == [False] * 10 + [True] * 6 + [bool(full[-1])]
