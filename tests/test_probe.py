"""The whole-model meta probe and the coverage every report carries."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

import surgery
from surgery.anatomy import anatomy_for
from surgery.anatomy.generic import GenericAnatomy
from surgery.probe import probe_model
from tests.helpers import fingerprint


class _Reshapes(nn.Module):
    """A small custom module whose own forward reshapes wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).view(3, -1, 7)


class _NoLayers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_broken_sequential_names_the_layer_the_shape_and_the_producer() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(32, 4))
    report = surgery.check(model)
    assert not report.ok
    (f,) = report.errors
    assert (f.code, f.paths) == ("channel-mismatch", ("0", "2"))
    assert f.message == "0 (Linear) produces 16 features but 2 (Linear) expects 32 (weight (4, 32)); it received 2×16"
    assert f.fix == "model[2] = nn.Linear(16, 4)  # or make 0 produce 32 features"
    assert report.coverage is not None and report.coverage.probe == "raised"


def test_conv_then_wrong_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(16))
    (f,) = surgery.check(model).errors
    assert (f.code, f.paths, f.fix) == ("channel-mismatch", ("0", "1"), "model[1] = nn.BatchNorm2d(8)  # or make 0 produce 16 channels")
    assert f.message == "0 (Conv2d) produces 8 channels but 1 (BatchNorm2d) expects 16 (weight (16,)); it received 2×8×318×318"


def test_a_custom_forward_that_raises_is_a_shape_error_naming_what_ran_before() -> None:
    (f,) = surgery.check(_Reshapes()).errors
    assert (f.code, f.paths) == ("shape-error", ("a",))
    assert f.message == "_Reshapes's own forward raised RuntimeError, after a (Linear) completed: shape '[3, -1, 7]' is invalid for input of size 8"
    assert f.fix == "look at _Reshapes.forward where it uses the output of a"


def test_resnet_with_a_too_wide_fc_is_caught_by_the_probe_alone() -> None:
    model = torchvision.models.resnet34(weights=None)
    model.fc = nn.Linear(2048, 10)
    before = fingerprint(model)
    probe = probe_model(model, GenericAnatomy())  # no family knowledge: the probe by itself
    f = probe.finding
    assert probe.status == "raised" and probe.raised_in == "fc" and f is not None
    assert (f.code, f.paths) == ("channel-mismatch", ("layer4", "fc"))
    assert f.message == "layer4 (Sequential) produces 512 features but fc (Linear) expects 2048 (weight (10, 2048)); it received 2×512"
    assert f.fix == "model.fc = nn.Linear(512, 10)  # or make layer4 produce 2048 features"
    assert fingerprint(model) == before
    (error,) = surgery.check(model).errors  # the classification family's contract says the same once
    assert (error.code, error.paths[-1], error.fix) == ("channel-mismatch", "fc", "model.fc = nn.Linear(512, 10)  # or make layer4 produce 2048 features")


def test_fcn_with_a_head_for_the_wrong_width_is_caught_by_the_probe_alone() -> None:
    model = torchvision.models.segmentation.fcn_resnet101(weights=None, weights_backbone=None, aux_loss=False)
    model.classifier = FCNHead(1024, 5)
    f = probe_model(model, GenericAnatomy()).finding
    assert f is not None
    assert (f.code, f.paths) == ("channel-mismatch", ("backbone", "classifier.0"))
    assert f.message == ("backbone (IntermediateLayerGetter) produces 2048 channels but classifier.0 (Conv2d) expects 1024 "
                         "(weight (256, 1024, 3, 3)); it received 2×2048×40×40")
    assert f.fix == "model.classifier[0] = nn.Conv2d(2048, 256, kernel_size=3, padding=1, bias=False)  # or make backbone produce 1024 channels"
    # check reports it once: the segmentation contract explains the probe's failure
    (error,) = surgery.check(model).errors
    assert (error.code, error.paths, error.fix) == ("channel-mismatch", ("backbone", "classifier"), "model.classifier = FCNHead(2048, 5)")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_a_healthy_model_is_probed_end_to_end_and_says_so() -> None:
    model = _mlp()
    report = surgery.check(model)
    assert report.ok and report.findings == []
    cov = report.coverage
    assert cov is not None and cov.probe == "ran" and cov.unchecked == [] and cov.specific
    assert cov.by("probe") == ["0", "1", "2", "3", "4"]
    assert "whole-model meta probe (2×3×320×320)" in report.checked
    assert str(report).splitlines()[-1] == (
        "coverage: 5 slots (generic anatomy): 0 by contracts, 5 by the whole-model probe; every slot checked; probe ran end to end"
    )


def test_nothing_checkable_is_never_a_bare_ok() -> None:
    report = surgery.check(_NoLayers())
    assert report.ok  # no error: the exit code does not change
    text = str(report)
    assert "ok" not in text.splitlines()[0]
    assert text.splitlines()[0] == "surgery check: _NoLayers: no findings, but nothing specific was checked (2 generic checks ran)"
    assert text.splitlines()[1] == (
        "coverage: nothing specific to this model could be checked: no family knows it (generic anatomy) and the whole-model "
        "probe skipped: no input could be inferred: the model has no Conv, Linear or Embedding layer to read one from"
    )
    assert report.coverage is not None and report.coverage.specific is False


def test_detection_coverage_names_the_slots_no_contract_covers(shared: Any) -> None:
    model = shared("fasterrcnn_mobilenet_v3_large_320_fpn")
    report = surgery.check(model)
    cov = report.coverage
    assert cov is not None and cov.probe == "stopped" and cov.family == "R-CNN"
    assert cov.unchecked == []
    assert set(cov.by("contracts")) == {s.path for s in anatomy_for(model).slots(model)}
    # the probe ran everything before the post-processing: the transform, the backbone and the RPN's parts
    assert cov.by("probe") == ["transform", "backbone.body", "backbone.fpn", "rpn.anchor_generator", "rpn.head"]


def test_coverage_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    from surgery.cli import main

    code = main(["check", "torchvision.models:resnet18", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    assert payload["coverage"]["probe"] == "ran" and payload["coverage"]["unchecked"] == []
    assert payload["coverage"]["family"] == "classification"
    assert payload["coverage"]["slots"]["fc"] == ["contracts", "probe"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (nn.Sequential(nn.Conv1d(5, 4, 3)), (2, 5, 320)),
        (nn.Sequential(nn.Conv3d(3, 4, 3)), (2, 3, 8, 320, 320)),
        (nn.Sequential(nn.Conv2d(6, 12, 3, groups=3)), (2, 6, 320, 320)),
        (nn.Sequential(nn.Linear(7, 2)), (2, 7)),
    ],
)
def test_the_input_of_an_unknown_model_comes_from_its_first_layer(model: nn.Module, expected: tuple[int, ...]) -> None:
    (x,) = anatomy_for(model).probe_inputs(model, 320) or ()
    assert tuple(x.shape) == expected and x.device.type == "meta"


def test_an_embedding_model_gets_token_ids() -> None:
    model = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 2))
    (x,) = anatomy_for(model).probe_inputs(model, 320) or ()
    assert x.dtype == torch.long and tuple(x.shape) == (2, 16)
    assert probe_model(model, anatomy_for(model)).status == "ran"


def test_the_probe_leaves_no_trace() -> None:
    model = torchvision.models.resnet18(weights=None).train()
    before = fingerprint(model)
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    probe_model(model, anatomy_for(model))
    assert fingerprint(model) == before
    assert model.training
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks


def test_replace_rolls_back_a_head_the_probe_rejects() -> None:
    model = _mlp()
    old = model[4]
    with pytest.raises(surgery.IncompatibleError, match=r"0 \(Conv2d\) produces 8 features but 4 \(Linear\) expects 16"):
        surgery.replace(model, "4", nn.Linear(16, 10))
    assert model[4] is old


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]

    def hook(_m: nn.Module, _args: Any) -> None:
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


def test_a_slot_the_whole_probe_ran_is_not_probed_again_in_the_same_mode() -> None:
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True).eval()
    calls = _count_calls(model.backbone)
    report = surgery.check(model, probe_image_size=64)
    assert report.ok and calls == [1]  # the contracts read the backbone's maps from the whole-model probe
    model.train()  # the whole probe runs in eval mode: a backbone in train mode is probed on its own as it is
    calls[0] = 0
    assert surgery.check(model, probe_image_size=64).ok and calls == [2]


def test_what_a_slot_received_is_reused_only_when_it_is_exactly_what_was_asked() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    probe = probe_model(model, GenericAnatomy(), 32)
    assert probe.status == "ran"
    out = probe.slot_output(model, "2", [(2, 8, 30, 30)])
    assert out is not None and tuple(out.shape) == (2, 4, 30, 30) and out.device.type == "meta"
    assert probe.slot_output(model, "2", [(2, 8, 31, 30)]) is None  # other shapes
    assert probe.slot_output(model, "2", [(2, 8, 30, 30), (1,)]) is None  # other arguments
    model[2].train()
    assert probe.slot_output(model, "2", [(2, 8, 30, 30)]) is None  # another mode than the probe ran in
    shared = nn.ReLU()
    twice = nn.Sequential(nn.Conv2d(3, 8, 3), shared, nn.Conv2d(8, 8, 1), shared).eval()
    again = probe_model(twice, GenericAnatomy(), 32)
    assert again.status == "ran" and again.slot_output(twice, "1", [(2, 8, 30, 30)]) is None  # called twice: which call?


class _Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).view(-1, 7)  # 7 never divides 2×8×30×30


@pytest.mark.parametrize("kind", ["raises", "parametrized", "scripted"])
def test_the_stand_ins_are_always_swapped_back(kind: str) -> None:
    if kind == "raises":
        model: nn.Module = _Raises()
    elif kind == "parametrized":
        model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 8, 3)), nn.ReLU(), nn.Conv2d(8, 2, 1))
    else:
        model = nn.Sequential(torch.jit.script(nn.Conv2d(3, 8, 3)), nn.ReLU(), nn.Conv2d(8, 2, 1))
    tensors = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    before = fingerprint(model)
    probe = probe_model(model, GenericAnatomy(), 32)
    assert probe.status == ("raised" if kind == "raises" else "ran")
    assert fingerprint(model) == before
    after = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    assert after.keys() == tensors.keys() and all(after[k] is tensors[k] for k in tensors)  # the very same objects


def test_a_weight_normed_layer_of_the_wrong_width_names_its_real_producer_and_a_torch_class() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.utils.parametrizations.weight_norm(nn.Linear(256, 10))
    (error,) = surgery.check(model).errors
    assert (error.code, error.paths) == ("channel-mismatch", ("layer4", "fc"))
    assert error.message == ("layer4 (Sequential) produces 512 features but fc (ParametrizedLinear) expects 256 "
                             "(weight (10, 256)); it received 2×512")
    assert error.fix == "model.fc = nn.Linear(512, 10)  # or make layer4 produce 256 features"


def test_a_healthy_weight_normed_model_checks_clean() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.utils.parametrizations.weight_norm(model.fc)
    model.conv1 = nn.utils.parametrizations.spectral_norm(model.conv1)
    report = surgery.check(model)
    assert report.ok and report.findings == [] and report.coverage is not None and report.coverage.probe == "ran"


class _Caches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = torch.ones(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x  # a new attribute
        self.scale = self.scale.to(x.device)  # an attribute moved to the input's device
        return self.conv(x) * self.scale


def test_attributes_a_forward_assigns_are_put_back_after_a_probe(shared: Any) -> None:
    model = _Caches()
    scale = model.scale
    assert probe_model(model, GenericAnatomy(), 32).status == "ran"
    assert "last" not in model.__dict__ and model.scale is scale and model.scale.device.type == "cpu"
    detector = shared("retinanet_resnet50_fpn")
    anchors = detector.anchor_generator.cell_anchors
    probe_model(detector, anatomy_for(detector), 64)  # stops at post-processing, after the anchors moved to meta
    assert detector.anchor_generator.cell_anchors is anchors
    assert {a.device.type for a in anchors} == {"cpu"}
