"""The segmentation family: DeepLabV3, FCN and LRASPP slots, contracts, class counts, smoke test."""

from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

import surgery
from surgery.anatomy import anatomy_for
from surgery.anatomy.segmentation import SegmentationAnatomy
from tests.helpers import build, state_bytes

SEGMENTATION = sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def test_components_list_the_slots_with_roles() -> None:
    model = build("deeplabv3_mobilenet_v3_large", aux_loss=True)
    got = [(c.path, c.role, c.type) for c in surgery.components(model)]
    assert got == [
        ("backbone", "backbone: image → {'out': features[, 'aux': features]}", "IntermediateLayerGetter"),
        ("classifier", "classifier: backbone 'out' features → per-pixel class logits", "DeepLabHead"),
        ("aux_classifier", "auxiliary classifier: backbone 'aux' features → per-pixel class logits (a training loss)", "FCNHead"),
    ]
    lraspp = build("lraspp_mobilenet_v3_large")
    assert [(c.path, c.role) for c in surgery.components(lraspp)] == [
        ("backbone", "backbone: image → {'low': stride-8 features, 'high': stride-16 features}"),
        ("classifier", "LR-ASPP head: 'low' + 'high' features → per-pixel class logits"),
    ]
    report = surgery.check(model)
    assert report.ok and report.findings == []
    assert report.coverage is not None and report.coverage.family == "segmentation" and report.coverage.unchecked == []


def test_classifier_of_the_wrong_input_width() -> None:
    model = build("deeplabv3_mobilenet_v3_large")
    model.classifier = DeepLabHead(1024, 21)
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths) == ("channel-mismatch", ("backbone", "classifier"))
    assert f.message == ("the backbone's 'out' map has 960 channels but classifier (DeepLabHead) expects 1024 "
                         "(in classifier.0.convs.0.0)")
    assert f.fix == "model.classifier = DeepLabHead(960, 21)"
    exec(f.fix, {"model": model, "DeepLabHead": DeepLabHead})  # the fix is valid Python and repairs the model
    assert surgery.check(model).ok


def test_lraspp_classifier_of_the_wrong_low_channels() -> None:
    model = build("lraspp_mobilenet_v3_large")
    model.classifier = LRASPPHead(24, 960, 21, 128)
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths) == ("channel-mismatch", ("backbone", "classifier"))
    assert f.message == ("the backbone's 'low' map has 40 channels but classifier.low_classifier expects 24 "
                         "(low_channels of LRASPPHead)")
    assert f.fix == "model.classifier = LRASPPHead(40, 960, 21, 128)"


def test_classifier_and_aux_head_that_disagree_on_classes() -> None:
    model = build("deeplabv3_mobilenet_v3_large", aux_loss=True)
    model.aux_classifier = FCNHead(40, 5)
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths) == ("num-classes-mismatch", ("classifier", "aux_classifier"))
    assert f.message == ("classifier predicts 21 classes but aux_classifier predicts 5; both are trained on the same "
                         "per-pixel labels, so they must agree")
    assert f.fix == "model.aux_classifier = FCNHead(40, 21)"


def test_set_num_classes_keeps_the_kept_rows_of_both_heads() -> None:
    model = build("deeplabv3_mobilenet_v3_large", aux_loss=True)
    keep = [0, 7, 15]
    old_main, old_aux = model.classifier[4], model.aux_classifier[4]
    change = surgery.set_num_classes(model, 3, keep=keep)
    assert change.rebuilt == {
        "classifier.4": "Conv2d(256, 21, kernel_size=(1, 1)) → Conv2d(256, 3, kernel_size=(1, 1))",
        "aux_classifier.4": "Conv2d(10, 21, kernel_size=(1, 1)) → Conv2d(10, 3, kernel_size=(1, 1))",
    }
    for new, old in ((model.classifier[4], old_main), (model.aux_classifier[4], old_aux)):
        assert torch.equal(new.weight, old.weight.detach()[keep])
        assert torch.equal(new.bias, old.bias.detach()[keep])
    assert change.report is not None and change.report.ok
    assert anatomy_for(model).num_classes(model) == 3


def test_lraspp_set_num_classes_resizes_both_class_convs() -> None:
    model = build("lraspp_mobilenet_v3_large")
    old_low = model.classifier.low_classifier.weight.detach().clone()
    change = surgery.set_num_classes(model, 2, keep={1: 4})
    assert sorted(change.rebuilt) == ["classifier.high_classifier", "classifier.low_classifier"]
    assert change.initialised["classifier.low_classifier.weight"] == [0]
    assert torch.equal(model.classifier.low_classifier.weight[1], old_low[4])


def test_failing_set_num_classes_changes_nothing() -> None:
    model = build("fcn_resnet50", aux_loss=True)
    model.aux_classifier = torch.nn.Sequential(torch.nn.Conv2d(1024, 21, 1), torch.nn.ReLU())  # no final class conv
    before = state_bytes(model)
    modules = [id(m) for m in model.modules()]
    with pytest.raises(ValueError, match=r"^set_num_classes\(\) rebuilds the 1×1 conv that ends aux_classifier .* but "
                                         r"aux_classifier is a Sequential that does not end in an nn.Conv2d"):
        surgery.set_num_classes(model, 4)
    assert state_bytes(model) == before and [id(m) for m in model.modules()] == modules
    # a keep index out of range is refused before anything changes
    model = build("fcn_resnet50", aux_loss=True)
    before = state_bytes(model)
    with pytest.raises(ValueError, match=r"^keep: old class index for new class 1 \(the model has 21 classes\) must be an int in 0\.\.20, got 21$"):
        surgery.set_num_classes(model, 3, keep=[0, 21])
    assert state_bytes(model) == before


def test_synthetic_batch_losses_and_smoke_test() -> None:
    model = build("lraspp_mobilenet_v3_large", num_classes=4)
    images, labels = surgery.synthetic_batch(model, batch_size=2, image_size=48, seed=0)
    assert (tuple(images.shape), tuple(labels.shape), labels.dtype) == ((2, 3, 48, 48), (2, 48, 48), torch.int64)
    assert 0 <= int(labels.min()) and int(labels.max()) < 4
    result = surgery.smoke_test(model, device="cpu", image_size=48)
    assert result.ok, str(result)
    assert result.family == "segmentation" and list(result.losses) == ["out"]


def test_train_losses_are_cross_entropy_of_out_plus_half_of_aux() -> None:
    anatomy = SegmentationAnatomy()
    gen = torch.Generator().manual_seed(0)
    out, aux = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 3, (2, 8, 8), generator=gen)
    model = build("fcn_resnet50", aux_loss=True, num_classes=3)
    losses = anatomy.train_losses(model, {"out": out, "aux": aux}, labels)
    assert isinstance(losses, dict) and list(losses) == ["out", "aux"]
    assert torch.equal(losses["out"], torch.nn.functional.cross_entropy(out, labels))
    assert torch.equal(losses["aux"], 0.5 * torch.nn.functional.cross_entropy(aux, labels))
    assert anatomy.loss_keys(model) == ("out", "aux")
    (f,) = anatomy.check_eval_output(model, {"out": out}, torch.zeros(2, 3, 16, 16), "the eval pass")
    assert (f.code, f.paths, f.message) == ("shape-error", ("classifier",),
                                            "the eval pass: 'out' is torch.float32 of shape (2, 3, 8, 8); expected float of shape (2, 3, 16, 16)")


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_segmentation_builder_checks_clean(name: str) -> None:
    model = build(name, aux_loss=True) if name != "lraspp_mobilenet_v3_large" else build(name)
    assert isinstance(anatomy_for(model), SegmentationAnatomy)
    report = surgery.check(model)
    assert report.errors == [] and report.findings == [], str(report)
    comps = surgery.components(model)
    assert comps and all(c.role for c in comps)
    del model
    gc.collect()
