"""Static orphan detection: what counts as used, what is followed, and when nothing is ever reported."""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

import surgery
from surgery._orphans import find_orphans, used_attribute_names


def orphan_paths(model: nn.Module) -> list[tuple[str, ...]]:
    return [f.paths for f in find_orphans(model)]


def lin() -> nn.Linear:
    return nn.Linear(4, 4)


# --------------------------------------------------------------------------- basic reporting


class OneUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = lin()
        self.spare = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_unused_child_is_reported_with_its_parameter_count_and_a_fix() -> None:
    (finding,) = find_orphans(OneUnused())
    assert finding.code == "orphan-module"
    assert finding.severity == "error"
    assert finding.paths == ("spare",)
    assert finding.message == (
        "spare (Linear, 40 parameters) is registered on OneUnused, but OneUnused.forward never uses it, "
        "so it never runs and its parameters never train"
    )
    assert finding.fix == "del model.spare  # or call it from OneUnused.forward"


def test_check_reports_orphans_on_any_module() -> None:
    report = surgery.check(OneUnused())
    assert report.codes() == ["orphan-module"]
    assert report.errors[0].paths == ("spare",)
    assert "static orphan detection" in report.checked


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = OneUnused()
        self.spare_block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_nested_orphan_proposes_a_module_of_the_same_name_elsewhere() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = Holder()
            self.used = lin()  # same name as head.inner.used, but that one is used too

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    findings = find_orphans(Model())
    by_path = {f.paths[0]: f for f in findings}
    assert sorted(by_path) == ["head.inner.spare", "head.spare_block", "used"]
    assert by_path["used"].paths == ("used", "head.inner.used")
    assert by_path["used"].message.endswith("; it was probably meant for head.inner.used")
    assert by_path["used"].fix == "model.head.inner.used = model.used; del model.used"
    assert by_path["head.inner.spare"].message.startswith("head.inner.spare (Linear, 40 parameters) is registered on head.inner (OneUnused)")


def test_only_the_top_most_orphan_is_reported() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = lin()
            self.dead = Holder()  # its own child spare_block is unused too, and inner.spare below it

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    assert orphan_paths(Model()) == [("dead",)]


# --------------------------------------------------------------------------- containers


class UsesFirstOfList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([lin(), lin(), lin()])
        self.table = nn.ModuleDict({"a": lin(), "b": lin()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table["a"](self.layers[0](x))


def test_containers_count_as_using_all_their_children() -> None:
    assert find_orphans(UsesFirstOfList()) == []
    assert find_orphans(nn.Sequential(lin(), nn.ReLU(), lin())) == []


def test_children_of_a_sequential_are_analysed_as_called() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(lin(), OneUnused())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    assert orphan_paths(Model()) == [("body.1.spare",)]


def test_elements_of_a_module_list_are_never_reported_inside() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([OneUnused()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:  # any method of block may be called: no telling
                x = block(x)
            return x

    assert find_orphans(Model()) == []


# --------------------------------------------------------------------------- what is followed


class WithHelpers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = lin()
        self.b = lin()
        self.c = lin()
        self.never = lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_b():
            x = self._branch(x)
        return self.gate(x)

    def has_b(self) -> bool:
        return self.b is not None

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))

    @property
    def gate(self) -> nn.Module:
        return self.c

    def unused_method(self, x: torch.Tensor) -> torch.Tensor:
        return self.never(x)


def test_methods_and_properties_called_from_forward_are_followed() -> None:
    assert used_attribute_names(WithHelpers) >= {"a", "b", "c", "has_b", "_branch", "gate"}
    assert "never" not in used_attribute_names(WithHelpers)
    assert orphan_paths(WithHelpers()) == [("never",)]


def test_roi_heads_has_mask_is_followed() -> None:
    names = used_attribute_names(RoIHeads)
    assert names is not None
    assert {"has_mask", "has_keypoint", "mask_roi_pool", "mask_head", "mask_predictor", "keypoint_predictor"} <= names


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


class Extended(Base):
    def __init__(self) -> None:
        super().__init__()
        self.b = lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(super().forward(x))


class ExtendedOldStyle(Base):
    def __init__(self) -> None:
        super().__init__()
        self.b = lin()
        self.spare = lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(super(ExtendedOldStyle, self).forward(x))  # noqa: UP008 - the explicit form is what is tested


def test_super_forward_is_followed() -> None:
    assert used_attribute_names(Extended) >= {"a", "b"}
    assert find_orphans(Extended()) == []
    assert orphan_paths(ExtendedOldStyle()) == [("spare",)]


def test_a_staticmethod_helper_does_not_blind_the_analysis() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = lin()
            self.spare = lin()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._apply_to(x, self.used)

        @staticmethod
        def _apply_to(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
            return layer(x)

    assert orphan_paths(Model()) == [("spare",)]


class WithLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = lin()
        self.aux = lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(x).sum()


def test_a_method_the_parent_calls_on_a_child_counts_as_running() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = WithLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x) + self.head.loss(x)

    class OnlyForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = WithLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    assert find_orphans(Model()) == []
    assert orphan_paths(OnlyForward()) == [("head.aux",)]


def test_a_grandchild_called_directly_by_the_parent_is_used() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = WithLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head.aux(self.head(x))

    assert find_orphans(Model()) == []


def test_a_child_that_escapes_into_a_variable_is_never_reported_inside() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = WithLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            head = self.head
            return head(x) + head.loss(x)

    assert find_orphans(Model()) == []


def test_a_custom_call_is_analysed_too() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extra = lin()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return self.extra(x)

    assert find_orphans(Model()) == []


# --------------------------------------------------------------------------- shared and hidden references


def test_a_module_registered_under_two_names_is_used_when_one_name_is() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = lin()
            self.alias = self.encoder  # same object, never read under this name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x)

    model = Model()
    assert [n for n, _ in model.named_modules(remove_duplicate=False)] == ["", "encoder", "alias"]
    assert find_orphans(model) == []


def test_a_module_held_by_a_plain_attribute_is_not_an_orphan() -> None:
    class InList(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extra = lin()
            self._stages = [self.extra]  # a plain list: not registered again

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._stages[0](x)

    class InPartial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extra = lin()
            self.step = functools.partial(self.extra)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.step(x)

    assert find_orphans(InList()) == []
    assert find_orphans(InPartial()) == []


def test_modules_with_hooks_are_never_reported() -> None:
    model = OneUnused()
    handle = model.register_forward_hook(lambda m, inp, out: m.spare(out))
    try:
        assert find_orphans(model) == []
    finally:
        handle.remove()
    assert orphan_paths(model) == [("spare",)]


def test_a_hook_elsewhere_that_closes_over_a_module_uses_it() -> None:
    model = OneUnused()
    spare = model.spare
    handle = model.used.register_forward_hook(lambda _m, _inp, out: spare(out))
    try:
        assert find_orphans(model) == []
    finally:
        handle.remove()


# --------------------------------------------------------------------------- when the analysis cannot know


class ByChildren(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = lin(), lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


class ByComputedGetattr(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1, self.layer2 = lin(), lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2):
            x = getattr(self, f"layer{i}")(x)
        return x


class ByModulesDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = lin(), lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._modules["b"](x)  # type: ignore[misc]


class ByGetSubmodule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = lin(), lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_submodule("b")(x)


class BySuperGetattr(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = lin(), lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().__getattr__("b")(x)


class PassesSelf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = lin(), lin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_b(self, x)


def _run_b(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.b(x)


@pytest.mark.parametrize("cls", [ByChildren, ByComputedGetattr, ByModulesDict, ByGetSubmodule, BySuperGetattr, PassesSelf])
def test_dynamic_access_is_never_reported(cls: type[nn.Module]) -> None:
    assert used_attribute_names(cls) is None
    assert find_orphans(cls()) == []


def test_a_constant_getattr_is_an_ordinary_use() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.spare = lin(), lin()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return getattr(self, "a")(x)  # noqa: B009

    assert orphan_paths(Model()) == [("spare",)]


def test_forward_patched_on_the_instance_is_never_reported() -> None:
    model = OneUnused()
    model.forward = lambda x: model.spare(x)  # type: ignore[method-assign]
    assert find_orphans(model) == []


def test_a_class_without_source_is_never_reported() -> None:
    namespace: dict[str, object] = {"nn": nn}
    exec(  # noqa: S102 - a class whose source inspect cannot find
        "class NoSource(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a = nn.Linear(4, 4)\n"
        "        self.spare = nn.Linear(4, 4)\n"
        "    def forward(self, x):\n"
        "        return self.a(x)\n",
        namespace,
    )
    cls = namespace["NoSource"]
    assert isinstance(cls, type)
    assert used_attribute_names(cls) is None
    assert find_orphans(cls()) == []


@pytest.mark.parametrize(
    "name",
    ["maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"],
)
def test_stock_detection_models_have_no_orphans(shared: Callable[..., nn.Module], name: str) -> None:
    assert find_orphans(shared(name)) == []


# --------------------------------------------------------------------------- parameter-free orphans, python fix texts


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = lin()
        self.act = nn.ReLU()  # registered, never called
        self.extra = nn.Linear(4, 2)  # registered, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def test_orphan_without_parameters_is_a_warning_and_indexed_fixes_are_python() -> None:
    model = nn.Sequential(Block(), Block())
    findings = {f.paths[0]: f for f in find_orphans(model)}
    assert sorted(findings) == ["0.act", "0.extra", "1.act", "1.extra"]
    act, extra = findings["1.act"], findings["1.extra"]
    assert (act.severity, act.code, act.paths) == ("warning", "orphan-module", ("1.act",))
    assert act.message == (
        "1.act (ReLU, 0 parameters) is registered on 1 (Block), but Block.forward never uses it, so it never runs"
    )
    assert act.fix == "del model[1].act  # or call it from Block.forward"
    # a twin with parameters elsewhere is proposed; a stateless one never is
    assert (extra.severity, extra.paths) == ("error", ("1.extra", "0.extra"))
    assert extra.fix == "model[0].extra = model[1].extra; del model[1].extra"
    for finding in findings.values():
        assert finding.fix is not None
        ast.parse(finding.fix)
    report = surgery.check(model)
    assert [f.severity for f in report.findings if f.code == "orphan-module"].count("warning") == 2


@pytest.mark.parametrize("builder", ["resnet18", "resnet50", "resnext101_32x8d"])
def test_quantizable_resnets_check_without_errors(builder: str) -> None:
    model = getattr(torchvision.models.quantization, builder)(quantize=False, weights=None)
    report = surgery.check(model)
    assert report.errors == []
    orphans = [f for f in report.findings if f.code == "orphan-module"]
    # the inherited ``relu`` of each bottleneck (the quantizable block calls relu1..relu3 instead)
    assert len(orphans) == {"resnet18": 0, "resnet50": 16, "resnext101_32x8d": 33}[builder]
    assert {f.severity for f in orphans} <= {"warning"}
    if orphans:
        assert orphans[0].paths == ("layer1.0.relu",)
        assert orphans[0].fix == "del model.layer1[0].relu  # or call it from QuantizableBottleneck.forward"
        ast.parse(orphans[0].fix)


def test_a_traced_feature_extractor_is_read_from_its_graph() -> None:
    backbone = surgery.detection_backbone("resnet18", layers=3, out_channels=128)
    assert find_orphans(backbone) == []
    backbone.body.extra = nn.Conv2d(3, 3, 1)  # registered, but no node of either graph calls it
    (found,) = find_orphans(backbone)
    assert (found.severity, found.code, found.paths) == ("error", "orphan-module", ("body.extra",))
    assert found.fix == "del model.body.extra  # or call it from ResNet.forward"
