"""Dotted paths: every kind of segment, get/set/delete/exists/iter_paths, and no silent typo."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from surgery import NotAModuleError, PathError, SurgeryError, paths
from tests.helpers import build

# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def scratch(maskrcnn: nn.Module) -> nn.Module:
    """A private copy of the default Mask R-CNN for tests that must not touch the shared one
    (only failing operations run on it, so it stays equal to the shared model)."""
    return copy.deepcopy(maskrcnn)


@pytest.fixture
def faster() -> nn.Module:
    """A fresh, small Faster R-CNN (no mask branch: its mask slots are ``None``)."""
    return build("fasterrcnn_mobilenet_v3_large_320_fpn")


@pytest.fixture
def own_maskrcnn(maskrcnn: nn.Module) -> nn.Module:
    """A copy of the default Mask R-CNN that a test may change."""
    return copy.deepcopy(maskrcnn)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """The registered modules (names and ids) and the attribute names of every module."""
    named = list(model.named_modules(remove_duplicate=False))
    return {
        "modules": [(name, id(m)) for name, m in named],
        "slots": [(name, [(k, id(v)) for k, v in m._modules.items()]) for name, m in named],
        "dict_keys": [(name, sorted(m.__dict__)) for name, m in named],
    }


def is_empty_slot(model: nn.Module, path: str) -> bool:
    """True when ``path`` ends in a ``None`` attribute or ``None`` registered slot of an existing module."""
    parent_path, _, last = path.rpartition(".")
    if not paths.exists(model, parent_path) and parent_path:
        return False
    parent = paths.get(model, parent_path)
    if last in parent._modules:
        return parent._modules[last] is None
    return last in parent.__dict__ and parent.__dict__[last] is None


# --------------------------------------------------------------------------- every kind of segment


def test_attribute_children_resolve(maskrcnn: nn.Module) -> None:
    assert paths.get(maskrcnn, "roi_heads") is maskrcnn.roi_heads
    assert paths.get(maskrcnn, "roi_heads.mask_head") is maskrcnn.roi_heads.mask_head
    assert paths.get(maskrcnn, "rpn.anchor_generator") is maskrcnn.rpn.anchor_generator
    assert paths.get(maskrcnn, "backbone.body.layer4.0.conv1") is maskrcnn.backbone.body.layer4[0].conv1


def test_empty_path_is_the_model(maskrcnn: nn.Module) -> None:
    assert paths.get(maskrcnn, "") is maskrcnn


def test_integer_index_into_sequential(maskrcnn: nn.Module) -> None:
    layer4 = maskrcnn.backbone.body.layer4
    assert isinstance(layer4, nn.Sequential) and len(layer4) == 3
    assert paths.get(maskrcnn, "backbone.body.layer4.0") is layer4[0]
    assert paths.get(maskrcnn, "backbone.body.layer4.2") is layer4[2]
    assert paths.get(maskrcnn, "backbone.body.layer4.-1") is layer4[2]
    assert paths.get(maskrcnn, "backbone.body.layer4.-3") is layer4[0]
    assert paths.get(maskrcnn, "backbone.body.layer4.-1.conv3") is layer4[2].conv3
    # MaskRCNNHeads is a Sequential of four conv blocks
    assert paths.get(maskrcnn, "roi_heads.mask_head.-1") is maskrcnn.roi_heads.mask_head[3]


def test_integer_index_into_modulelist(maskrcnn: nn.Module) -> None:
    inner = maskrcnn.backbone.fpn.inner_blocks
    assert isinstance(inner, nn.ModuleList) and len(inner) == 4
    assert paths.get(maskrcnn, "backbone.fpn.inner_blocks.1") is inner[1]
    assert paths.get(maskrcnn, "backbone.fpn.inner_blocks.-1") is inner[3]
    assert paths.get(maskrcnn, "backbone.fpn.inner_blocks.-4") is inner[0]


@pytest.mark.parametrize("segment", ["3", "-4", "-0", "01", "-01", " -1", "-1 ", "+1", "-١"])
def test_index_out_of_range_or_not_plain_is_an_error(maskrcnn: nn.Module, segment: str) -> None:
    with pytest.raises(PathError, match=r"is not a submodule of 'backbone.body.layer4' \(Sequential\)") as info:
        paths.get(maskrcnn, f"backbone.body.layer4.{segment}")
    assert info.value.segment == segment
    assert info.value.parent == "backbone.body.layer4"


def test_negative_index_with_underscores_is_not_an_index() -> None:
    model = nn.Sequential(*[nn.Identity() for _ in range(12)])
    assert paths.get(model, "-10") is model[2]
    with pytest.raises(PathError, match=r"'-1_0' is not a submodule of the root \(Sequential\)"):
        paths.get(model, "-1_0")


def test_moduledict_key_in_intermediate_layer_getter(maskrcnn: nn.Module) -> None:
    body = maskrcnn.backbone.body
    assert isinstance(body, IntermediateLayerGetter) and isinstance(body, nn.ModuleDict)
    assert paths.get(maskrcnn, "backbone.body.layer1") is body["layer1"]
    assert paths.get(maskrcnn, "backbone.body.layer1.0.downsample.0") is body["layer1"][0].downsample[0]


def test_moduledict_keys_are_not_indices() -> None:
    model = nn.ModuleDict({"p3": nn.Conv2d(1, 1, 1), "7": nn.ReLU()})
    assert paths.get(model, "p3") is model["p3"]
    assert paths.get(model, "7") is model["7"]
    with pytest.raises(PathError, match=r"'-1' is not a submodule of the root \(ModuleDict\)"):
        paths.get(model, "-1")


def test_empty_slot_get_raises_set_fills(faster: nn.Module) -> None:
    roi = faster.roi_heads
    assert roi.mask_head is None and "mask_head" not in roi._modules
    with pytest.raises(PathError, match=r"'roi_heads.mask_head' is an empty slot \(None\) of RoIHeads") as info:
        paths.get(faster, "roi_heads.mask_head")
    assert (info.value.segment, info.value.parent, info.value.path) == ("mask_head", "roi_heads", "roi_heads.mask_head")
    assert "surgery.paths.set(model, 'roi_heads.mask_head', module)" in str(info.value)
    assert not paths.exists(faster, "roi_heads.mask_head")
    with pytest.raises(PathError, match=r"'roi_heads.mask_head' is an empty slot \(None\) in path 'roi_heads.mask_head.0'"):
        paths.get(faster, "roi_heads.mask_head.0")
    with pytest.raises(PathError, match="empty slot"):
        paths.delete(faster, "roi_heads.mask_head")

    head = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
    assert paths.set(faster, "roi_heads.mask_head", head) is None
    assert paths.get(faster, "roi_heads.mask_head") is head
    assert roi.mask_head is head
    assert roi._modules["mask_head"] is head
    assert "mask_head" not in roi.__dict__
    assert paths.exists(faster, "roi_heads.mask_head.0")
    assert ("roi_heads.mask_head", head) in list(faster.named_modules())


# --------------------------------------------------------------------------- get / set / delete / exists / iter_paths


def test_set_returns_old_and_registers_new(own_maskrcnn: nn.Module) -> None:
    old = own_maskrcnn.roi_heads.mask_predictor
    new = nn.Conv2d(256, 91, 1)
    assert paths.set(own_maskrcnn, "roi_heads.mask_predictor", new) is old
    assert own_maskrcnn.roi_heads.mask_predictor is new
    assert paths.get(own_maskrcnn, "roi_heads.mask_predictor") is new
    names = dict(own_maskrcnn.named_modules())
    assert names["roi_heads.mask_predictor"] is new
    assert "roi_heads.mask_predictor.conv5_mask" not in names
    assert "mask_predictor" not in own_maskrcnn.roi_heads.__dict__


def test_set_by_negative_index_keeps_the_key(own_maskrcnn: nn.Module) -> None:
    head = own_maskrcnn.roi_heads.mask_head
    old = head[3]
    new = nn.Identity()
    assert paths.set(own_maskrcnn, "roi_heads.mask_head.-1", new) is old
    assert list(head._modules) == ["0", "1", "2", "3"]
    assert head[3] is new


def test_set_moduledict_key(own_maskrcnn: nn.Module) -> None:
    old = own_maskrcnn.backbone.body["layer1"]
    new = nn.Identity()
    assert paths.set(own_maskrcnn, "backbone.body.layer1", new) is old
    assert own_maskrcnn.backbone.body["layer1"] is new
    assert list(own_maskrcnn.backbone.body) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def test_delete_in_sequential_shifts_later_entries(own_maskrcnn: nn.Module) -> None:
    head = own_maskrcnn.roi_heads.mask_head
    blocks = list(head)
    assert paths.delete(own_maskrcnn, "roi_heads.mask_head.1") is blocks[1]
    assert list(head._modules) == ["0", "1", "2"]
    assert list(head) == [blocks[0], blocks[2], blocks[3]]
    assert paths.get(own_maskrcnn, "roi_heads.mask_head.1") is blocks[2]
    assert paths.delete(own_maskrcnn, "roi_heads.mask_head.-1") is blocks[3]
    assert list(head) == [blocks[0], blocks[2]]


def test_delete_in_modulelist_and_moduledict() -> None:
    a, b, c = nn.Linear(1, 1), nn.Linear(1, 2), nn.Linear(1, 3)
    model = nn.Module()
    model.blocks = nn.ModuleList([a, b, c])
    model.maps = nn.ModuleDict({"p3": nn.ReLU(), "p4": nn.Tanh()})
    assert paths.delete(model, "blocks.0") is a
    assert list(model.blocks) == [b, c]
    assert list(model.blocks._modules) == ["0", "1"]
    tanh = model.maps["p4"]
    assert paths.delete(model, "maps.p4") is tanh
    assert list(model.maps) == ["p3"]


def test_delete_attribute_slot_becomes_none(own_maskrcnn: nn.Module) -> None:
    roi = own_maskrcnn.roi_heads
    predictor = roi.mask_predictor
    assert roi.has_mask()
    assert paths.delete(own_maskrcnn, "roi_heads.mask_predictor") is predictor
    assert hasattr(roi, "mask_predictor") and roi.mask_predictor is None
    assert "mask_predictor" in roi._modules and roi._modules["mask_predictor"] is None
    assert not roi.has_mask()
    assert not paths.exists(own_maskrcnn, "roi_heads.mask_predictor")
    assert "roi_heads.mask_predictor" not in list(paths.iter_paths(own_maskrcnn))
    with pytest.raises(PathError, match="empty slot"):
        paths.get(own_maskrcnn, "roi_heads.mask_predictor")
    # the empty slot can be filled again
    assert paths.set(own_maskrcnn, "roi_heads.mask_predictor", predictor) is None
    assert roi.mask_predictor is predictor and roi.has_mask()


def test_exists(maskrcnn: nn.Module, faster: nn.Module) -> None:
    assert paths.exists(maskrcnn, "")
    assert paths.exists(maskrcnn, "roi_heads.mask_predictor")
    assert paths.exists(maskrcnn, "backbone.body.layer4.-1.conv3")
    assert paths.exists(maskrcnn, "backbone.fpn.inner_blocks.0")
    assert not paths.exists(maskrcnn, "roi_heads.mask_hed")
    assert not paths.exists(maskrcnn, "backbone.body.layer4.3")
    assert not paths.exists(maskrcnn, "roi_heads.score_thresh")  # a float attribute, not a module
    assert not paths.exists(maskrcnn, "roi_heads..mask_head")
    assert not paths.exists(faster, "roi_heads.mask_head")  # empty slot
    assert paths.exists(faster, "roi_heads.box_head")


def test_iter_paths(maskrcnn: nn.Module) -> None:
    got = list(paths.iter_paths(maskrcnn))
    assert got == [name for name, _ in maskrcnn.named_modules() if name]
    assert got[:6] == ["transform", "backbone", "backbone.body", "backbone.body.conv1", "backbone.body.bn1", "backbone.body.relu"]
    assert "" not in got
    assert got[-3:] == ["roi_heads.mask_predictor.conv5_mask", "roi_heads.mask_predictor.relu", "roi_heads.mask_predictor.mask_fcn_logits"]
    assert all(paths.exists(maskrcnn, p) for p in got)


def test_iter_paths_yields_a_shared_module_once() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert list(paths.iter_paths(model)) == ["0", "1"]


# --------------------------------------------------------------------------- typos at every depth

TYPOS = [
    # path, segment, parent, suggestions, parent description, children listed
    ("roi_head", "roi_head", "", ("roi_heads", "roi_heads.box_head"), "the root (MaskRCNN)",
     "Submodules of the root: transform, backbone, rpn, roi_heads."),
    ("roi_heads.mask_hed", "mask_hed", "roi_heads", ("roi_heads.mask_head", "roi_heads.mask_predictor"), "'roi_heads' (RoIHeads)",
     "Submodules of 'roi_heads': box_roi_pool, box_head, box_predictor, mask_roi_pool, mask_head, mask_predictor."),
    ("backbone.body.layer9", "layer9", "backbone.body", ("backbone.body.layer4", "backbone.body.layer3", "backbone.body.layer2"),
     "'backbone.body' (IntermediateLayerGetter)",
     "Submodules of 'backbone.body': conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4."),
    ("backbone.body.layer4.7", "7", "backbone.body.layer4", (), "'backbone.body.layer4' (Sequential)",
     "Submodules of 'backbone.body.layer4': 0, 1, 2."),
    ("backbone.body.layer4.0.conv9", "conv9", "backbone.body.layer4.0",
     ("backbone.body.layer4.0.conv3", "backbone.body.layer4.0.conv2", "backbone.body.layer4.0.conv1"),
     "'backbone.body.layer4.0' (Bottleneck)",
     "Submodules of 'backbone.body.layer4.0': conv1, bn1, conv2, bn2, conv3, bn3, relu, downsample."),
]


@pytest.mark.parametrize(("path", "segment", "parent", "suggestions", "where", "children"), TYPOS, ids=[t[0] for t in TYPOS])
@pytest.mark.parametrize("operation", ["get", "set", "delete"])
def test_typo_at_every_depth(
    scratch: nn.Module,
    operation: str,
    path: str,
    segment: str,
    parent: str,
    suggestions: tuple[str, ...],
    where: str,
    children: str,
) -> None:
    before = snapshot(scratch)
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: paths.get(scratch, path),
        "set": lambda: paths.set(scratch, path, nn.Identity()),
        "delete": lambda: paths.delete(scratch, path),
    }
    with pytest.raises(PathError, match=rf"^{segment!r} is not a submodule of ") as info:
        calls[operation]()
    err = info.value
    assert isinstance(err, AttributeError) and isinstance(err, SurgeryError)
    assert err.path == path
    assert err.segment == segment
    assert err.parent == parent
    assert err.suggestions == suggestions
    msg = str(err)
    assert f"{segment!r} is not a submodule of {where} in path {path!r}." in msg
    if suggestions:
        assert "Did you mean " + " or ".join(repr(s) for s in suggestions) + "?" in msg
    else:
        assert "Did you mean" not in msg
    assert children in msg
    assert snapshot(scratch) == before


def test_path_error_is_caught_as_attribute_error(maskrcnn: nn.Module) -> None:
    with pytest.raises(AttributeError, match="'mask_hed' is not a submodule"):
        paths.get(maskrcnn, "roi_heads.mask_hed")


def test_misplaced_name_at_root_suggests_its_real_path(scratch: nn.Module) -> None:
    with pytest.raises(PathError, match=r"Did you mean 'roi_heads.mask_predictor'\?") as info:
        paths.set(scratch, "mask_predictor", nn.Conv2d(256, 91, 1))
    assert info.value.suggestions == ("roi_heads.mask_predictor",)
    assert (info.value.segment, info.value.parent) == ("mask_predictor", "")
    assert "mask_predictor" not in scratch._modules and "mask_predictor" not in scratch.__dict__


def test_non_module_attribute_is_named(scratch: nn.Module) -> None:
    with pytest.raises(PathError, match=r"\('score_thresh' exists there, but as a float, not a module\.\)"):
        paths.get(scratch, "roi_heads.score_thresh")
    before = scratch.roi_heads.score_thresh
    with pytest.raises(PathError, match="'score_thresh' is not a submodule of 'roi_heads'"):
        paths.set(scratch, "roi_heads.score_thresh", nn.Identity())
    assert scratch.roi_heads.score_thresh == before and "score_thresh" not in scratch.roi_heads._modules


def test_leaf_has_no_submodules_message(maskrcnn: nn.Module) -> None:
    with pytest.raises(PathError, match=r"'weight' is not a submodule of 'roi_heads.box_head.fc6' \(Linear\).*has no submodules"):
        paths.get(maskrcnn, "roi_heads.box_head.fc6.weight")


@pytest.mark.parametrize("bad", ["roi_heads..mask_head", ".roi_heads", "roi_heads."])
def test_empty_segment(maskrcnn: nn.Module, bad: str) -> None:
    with pytest.raises(PathError, match=rf"path {bad!r} has an empty segment"):
        paths.get(maskrcnn, bad)


@pytest.mark.parametrize("operation", ["set", "delete"])
def test_root_cannot_be_set_or_deleted(scratch: nn.Module, operation: str) -> None:
    with pytest.raises(PathError, match="the empty path names the model itself"):
        if operation == "set":
            paths.set(scratch, "", nn.Identity())
        else:
            paths.delete(scratch, "")


def test_non_string_path_and_non_module_model(maskrcnn: nn.Module) -> None:
    with pytest.raises(TypeError, match=r"path must be a str like 'roi_heads.mask_head', got int 3"):
        paths.get(maskrcnn, 3)  # type: ignore[arg-type]
    with pytest.raises(NotAModuleError, match=r"paths: model must be an nn.Module, got dict"):
        paths.get({"roi_heads": 1}, "roi_heads")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- non-module replacement, contrast with setattr


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(torch.zeros(3), "torch.Tensor"), (3, "int"), (None, "NoneType"), (nn.Conv2d, "type")],
)
def test_non_module_replacement_is_a_type_error(scratch: nn.Module, value: object, type_name: str) -> None:
    before = snapshot(scratch)
    with pytest.raises(NotAModuleError, match=rf"paths.set\(\): the replacement for 'roi_heads.mask_head' must be an nn.Module, got {type_name}$") as info:
        paths.set(scratch, "roi_heads.mask_head", value)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert snapshot(scratch) == before


def test_paths_set_refuses_a_typo_that_setattr_would_create(own_maskrcnn: nn.Module) -> None:
    roi = own_maskrcnn.roi_heads
    new_head = nn.Conv2d(256, 256, 3, padding=1)

    # The plain-PyTorch way silently creates a new, never-called submodule.
    contrast = copy.deepcopy(roi)
    contrast.set_submodule("mask_hed", new_head)
    assert "mask_hed" in contrast._modules
    setattr(contrast, "box_hed", new_head)  # noqa: B010 - the typo being illustrated
    assert "box_hed" in contrast._modules

    before = snapshot(own_maskrcnn)
    with pytest.raises(PathError, match=r"Did you mean 'roi_heads.mask_head'"):
        paths.set(own_maskrcnn, "roi_heads.mask_hed", new_head)
    assert "mask_hed" not in roi._modules and "mask_hed" not in roi.__dict__
    assert snapshot(own_maskrcnn) == before


# --------------------------------------------------------------------------- property: random bad paths change nothing


def _segment_names(model: nn.Module) -> list[str]:
    return sorted({name.rpartition(".")[2] for name, _ in model.named_modules() if name})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_bad_paths_raise_and_change_nothing(scratch: nn.Module, data: st.DataObject) -> None:
    segments = st.one_of(
        st.sampled_from(_segment_names(scratch)),  # real names, so bad paths reach every depth
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
        st.integers(min_value=-12, max_value=12).map(str),
    )
    random_path = st.lists(segments, min_size=1, max_size=6).map(".".join)
    # an existing prefix (of any depth) followed by random segments
    extended = st.tuples(st.sampled_from(["", *paths.iter_paths(scratch)]), st.lists(segments, min_size=1, max_size=3)).map(
        lambda pair: paths.join(pair[0], *pair[1])
    )
    path = data.draw(st.one_of(random_path, extended), label="path")
    assume(not paths.exists(scratch, path) and not is_empty_slot(scratch, path))
    before = snapshot(scratch)
    with pytest.raises(PathError, match="is not a submodule of|is an empty slot"):
        paths.get(scratch, path)
    with pytest.raises(PathError, match="is not a submodule of|is an empty slot"):
        paths.set(scratch, path, nn.Identity())
    with pytest.raises(PathError, match="is not a submodule of|is an empty slot"):
        paths.delete(scratch, path)
    assert snapshot(scratch) == before


def test_helpers_split_join_parent_of() -> None:
    assert paths.split("") == []
    assert paths.split("backbone.body.layer4.-1") == ["backbone", "body", "layer4", "-1"]
    assert paths.join("roi_heads", "", "mask_head") == "roi_heads.mask_head"
    assert paths.parent_of("roi_heads.mask_head") == ("roi_heads", "mask_head")
    assert paths.parent_of("roi_heads") == ("", "roi_heads")
    with pytest.raises(PathError, match="the root has no parent"):
        paths.parent_of("")
