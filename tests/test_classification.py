"""The classification family: slots, the body → head contract, set_num_classes, the smoke test."""

from __future__ import annotations

import copy
import gc
import warnings

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery.anatomy import anatomy_for
from surgery.anatomy.classification import ClassificationAnatomy
from tests.helpers import build

CLASSIFICATION = sorted(torchvision.models.list_models(module=torchvision.models))
QUANTIZABLE = sorted(torchvision.models.list_models(module=torchvision.models.quantization))


def _build(name: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet/Inception's init_weights notice
        return build(name, quantize=False) if name.startswith("quantized_") else build(name)


def _errors(report: surgery.Report) -> list[tuple[str, tuple[str, ...], str | None]]:
    return [(f.code, f.paths, f.fix) for f in report.errors]


def test_resnet34_with_a_2048_wide_fc_is_a_channel_mismatch() -> None:
    model = build("resnet34", num_classes=10)
    model.fc = nn.Linear(2048, 10)
    report = surgery.check(model)
    assert _errors(report) == [
        ("channel-mismatch", ("layer4", "fc"), "model.fc = nn.Linear(512, 10)  # or make layer4 produce 2048 features"),
    ]
    assert report.errors[0].message == "layer4 (Sequential) produces 512 features but fc (Linear) expects 2048 (weight (10, 2048)); it received 2×512"


def test_vgg11_with_a_narrow_last_layer_names_the_layer_inside_the_head() -> None:
    model = build("vgg11", num_classes=10)
    model.classifier[6] = nn.Linear(1024, 10)
    report = surgery.check(model)
    assert _errors(report) == [
        ("channel-mismatch", ("classifier.3", "classifier.6"),
         "model.classifier[6] = nn.Linear(4096, 10)  # or make classifier.3 produce 1024 features"),
    ]
    fixed = copy.deepcopy(model)
    exec(report.errors[0].fix.split("  #")[0], {"model": fixed, "nn": nn})  # noqa: S102 - the fix is valid Python
    assert surgery.check(fixed).ok


def test_squeezenet_conv_head_mismatch_is_counted_in_channels() -> None:
    model = build("squeezenet1_1", num_classes=4)
    model.classifier[1] = nn.Conv2d(256, 4, kernel_size=1)
    assert _errors(surgery.check(model)) == [
        ("channel-mismatch", ("features", "classifier.1"),
         "model.classifier[1] = nn.Conv2d(512, 4, kernel_size=1)  # or make features produce 256 channels"),
    ]


def test_googlenet_aux_head_is_checked_in_train_mode_layout() -> None:
    model = _build("googlenet")
    model.aux2.fc1 = nn.Linear(1024, 1024)
    model.aux2.conv = nn.Sequential()  # now aux2 flattens 528×4×4 = 8448 features, not 2048
    report = surgery.check(model)
    codes = [(f.code, f.paths) for f in report.errors]
    assert ("channel-mismatch", ("aux2", "aux2.fc1")) not in codes  # the producer is inside the aux head
    assert codes == [("channel-mismatch", ("inception4d", "aux2.fc1"))]
    assert report.errors[0].message == "inception4d (Inception) produces 8448 features but aux2.fc1 (Linear) expects 1024 (weight (1024, 1024)); it received 2×8448"


def test_components_list_body_and_head_with_roles() -> None:
    listed = surgery.components(build("resnet18"))
    assert [(c.path, c.role) for c in listed] == [
        ("conv1", "body (1 of 6): image → features"),
        ("bn1", "body (2 of 6): features → features"),
        ("layer1", "body (3 of 6): features → features"),
        ("layer2", "body (4 of 6): features → features"),
        ("layer3", "body (5 of 6): features → features"),
        ("layer4", "body (6 of 6): features → features for the head"),
        ("fc", "head: features → class logits (fc)"),
    ]
    heads = {name: [c.path for c in surgery.components(build(name)) if c.role.startswith("head")]
             for name in ("vgg11", "vit_b_32", "swin_t", "densenet121")}
    assert heads == {"vgg11": ["classifier"], "vit_b_32": ["heads"], "swin_t": ["head"], "densenet121": ["classifier"]}


def test_matching_covers_quantizable_models_and_nothing_else() -> None:
    assert isinstance(anatomy_for(_build("quantized_mobilenet_v2")), ClassificationAnatomy)
    body = build("resnet18")
    assert anatomy_for(nn.Sequential(body.conv1, body.layer1)).name == "generic"
    assert anatomy_for(build("fcn_resnet50", weights_backbone=None, aux_loss=False)).name != "classification"
    assert anatomy_for(build("r3d_18")).name == "video classification"


def test_set_num_classes_keeps_the_kept_rows() -> None:
    model = build("mobilenet_v3_small", num_classes=5)
    old = model.classifier[3]
    change = surgery.set_num_classes(model, 3, keep=[4, 1])
    new = model.classifier[3]
    assert (new.in_features, new.out_features) == (1024, 3)
    assert torch.equal(new.weight[:2], old.weight[[4, 1]]) and torch.equal(new.bias[:2], old.bias[[4, 1]])
    assert torch.equal(new.bias[2], torch.tensor(0.0))  # MobileNetV3 zeroes a Linear's bias
    assert change.rebuilt == {"classifier.3": "Linear(1024, 5) → Linear(1024, 3)"}
    assert "normal_(0, 0.01) weights, zero bias" in change.notes[-1]
    assert surgery.check(model).ok


def test_set_num_classes_rebuilds_aux_heads_and_the_stored_count() -> None:
    model = _build("inception_v3")
    surgery.set_num_classes(model, 7)
    assert (model.fc.out_features, model.AuxLogits.fc.out_features) == (7, 7)
    squeeze = build("squeezenet1_0", num_classes=6)
    surgery.set_num_classes(squeeze, 2, keep={1: 5})
    assert (squeeze.num_classes, squeeze.classifier[1].out_channels) == (2, 2)


def test_vit_new_rows_are_zero_as_torchvision_initialises_them() -> None:
    model = build("vit_b_32", num_classes=3)
    with torch.no_grad():
        model.heads.head.weight.normal_()
    kept = model.heads.head.weight[2].clone()
    surgery.set_num_classes(model, 5, keep={0: 2})
    assert torch.equal(model.heads.head.weight[0], kept)
    assert torch.equal(model.heads.head.weight[1:], torch.zeros(4, 768))
    assert model.num_classes == 5


def test_smoke_test_trains_with_cross_entropy() -> None:
    model = build("resnet18", num_classes=4)
    result = surgery.smoke_test(model, device="cpu", image_size=32)
    assert result.ok, result
    assert result.family == "classification"
    assert list(result.losses) == ["loss_classifier"]


def test_smoke_test_of_googlenet_adds_the_aux_loss() -> None:
    model = _build("googlenet")
    result = surgery.smoke_test(model, device="cpu", image_size=64, check=False)
    assert result.ok, result
    assert list(result.losses) == ["loss_classifier", "loss_aux"]


def test_synthetic_batch_fits_the_model() -> None:
    images, labels = surgery.synthetic_batch(build("resnet18", num_classes=3), batch_size=4, image_size=40)
    assert images.shape == (4, 3, 40, 40)
    assert labels.dtype == torch.int64 and labels.shape == (4,) and int(labels.min()) >= 0 and int(labels.max()) < 3
    vit_images, _ = surgery.synthetic_batch(build("vit_b_32"), batch_size=1, image_size=64)
    assert vit_images.shape == (1, 3, 224, 224)  # ViT takes its image_size only


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFICATION + QUANTIZABLE)
def test_every_classification_builder_checks_clean(name: str) -> None:
    model = _build(name)
    try:
        report = surgery.check(model)
        assert isinstance(anatomy_for(model), ClassificationAnatomy)
        assert [str(f) for f in report.findings if f.severity == "error"] == []
        if name not in QUANTIZABLE:  # quantizable ones keep parameter-free ReLUs they never call: warnings
            assert report.findings == [], str(report)
        assert report.coverage is not None and report.coverage.probe == "ran"
        comps = surgery.components(model)
        assert comps and all(c.role for c in comps)
    finally:
        del model
        gc.collect()


class _DictHead(nn.Module):
    """A head that returns a dict where the family expects logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x)}


def test_a_head_that_returns_nonsense_is_caught_by_check() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.fc = _DictHead()
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths) == ("shape-error", ("fc",))
    assert f.message == "the model, run whole on meta, returned dict; expected logits of shape (2, num_classes)"
    assert f.fix == "make fc return a tensor of logits of shape (B, num_classes)"


def test_sliced_logits_are_read_from_the_weight_not_the_stale_attribute() -> None:
    model = torchvision.models.efficientnet_b0(weights=None)
    layer = model.classifier[1]
    layer.weight = nn.Parameter(layer.weight.detach()[:10].clone())
    layer.bias = nn.Parameter(layer.bias.detach()[:10].clone())
    assert anatomy_for(model).num_classes(model) == 10
    (f,) = surgery.check(model).errors  # only the stale attribute, not a class-count disagreement
    assert (f.code, f.paths, f.fix) == ("channel-mismatch", ("classifier.1",), "model.classifier[1] = nn.Linear(1280, 10)")
