"""``surgery.trace``: calls, data-flow edges, uncalled modules, gradient-less parameters,
leaving no trace, and the ``check --trace`` / ``surgery trace`` commands."""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import textwrap
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

import surgery
from surgery.cli import main
from tests.helpers import build, fingerprint

SIZE = 128

# --------------------------------------------------------------------------- helpers


@contextmanager
def light(model: Any, proposals: int = 50, detections: int = 4) -> Iterator[nn.Module]:
    """Fewer RPN proposals and detections: the same modules run, on less data (restored after)."""
    rpn, heads = model.rpn, model.roi_heads
    old = (dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n), heads.detections_per_img)
    rpn._pre_nms_top_n = {"training": proposals, "testing": proposals}
    rpn._post_nms_top_n = {"training": proposals, "testing": proposals}
    heads.detections_per_img = detections
    try:
        yield model
    finally:
        rpn._pre_nms_top_n, rpn._post_nms_top_n, heads.detections_per_img = old


def resnet18_maskrcnn() -> MaskRCNN:
    """The motivating recipe's model, without the misplaced predictor."""
    return MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=4), 20)


def recipe_model() -> MaskRCNN:
    """The motivating recipe: a new mask predictor attached to the model root."""
    model = resnet18_maskrcnn()
    model.mask_predictor = MaskRCNNPredictor(1024, 256, 20)
    return model


def pairs(edges: list[surgery.TraceEdge]) -> set[tuple[str, str]]:
    return {e.pair for e in edges}


def no_tensors(obj: Any, seen: set[int] | None = None) -> bool:
    """True when nothing reachable from ``obj`` (dataclasses, containers) is a tensor."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return True
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return False
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(no_tensors(getattr(obj, f.name), seen) for f in dataclasses.fields(obj) if f.name != "_exception")
    if isinstance(obj, dict):
        return all(no_tensors(k, seen) and no_tensors(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return all(no_tensors(v, seen) for v in obj)
    return True


BOX_CHAIN = {
    ("transform", "backbone.body"),
    ("backbone.body", "backbone.fpn"),
    ("backbone.fpn", "rpn.head"),
    ("backbone.fpn", "rpn.anchor_generator"),
    ("transform", "rpn.anchor_generator"),
    ("backbone.fpn", "roi_heads.box_roi_pool"),
    ("rpn.head", "roi_heads.box_roi_pool"),  # proposals: decoded, top-k'd and NMS'd between the modules
    ("rpn.anchor_generator", "roi_heads.box_roi_pool"),
    ("roi_heads.box_roi_pool", "roi_heads.box_head"),
    ("roi_heads.box_head", "roi_heads.box_predictor"),
}


def branch_chain(kind: str) -> set[tuple[str, str]]:
    pool, head, predictor = (f"roi_heads.{kind}_{p}" for p in ("roi_pool", "head", "predictor"))
    return {
        ("backbone.fpn", pool),
        ("rpn.head", pool),
        ("rpn.anchor_generator", pool),
        ("roi_heads.box_predictor", pool),  # eval: the detections' boxes
        (pool, head),
        (head, predictor),
    }


RCNN_BUILDERS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": BOX_CHAIN,
    "fasterrcnn_mobilenet_v3_large_fpn": BOX_CHAIN,
    "fasterrcnn_resnet50_fpn": BOX_CHAIN,
    "fasterrcnn_resnet50_fpn_v2": BOX_CHAIN,
    "maskrcnn_resnet50_fpn": BOX_CHAIN | branch_chain("mask"),
    "maskrcnn_resnet50_fpn_v2": BOX_CHAIN | branch_chain("mask"),
    "keypointrcnn_resnet50_fpn": BOX_CHAIN | branch_chain("keypoint"),
}

DENSE_CHAIN = {
    ("transform", "backbone.body"),
    ("backbone.body", "backbone.fpn"),
    ("backbone.fpn", "head.classification_head"),
    ("backbone.fpn", "head.regression_head"),
    ("backbone.fpn", "anchor_generator"),
    ("transform", "anchor_generator"),
}
SSD_CHAIN = {
    ("transform", "backbone"),
    ("backbone", "head.classification_head"),
    ("backbone", "head.regression_head"),
    ("backbone", "anchor_generator"),
    ("transform", "anchor_generator"),
}
ONE_STAGE = {
    "retinanet_resnet50_fpn": DENSE_CHAIN,
    "retinanet_resnet50_fpn_v2": DENSE_CHAIN,
    "fcos_resnet50_fpn": DENSE_CHAIN,
    "ssdlite320_mobilenet_v3_large": SSD_CHAIN,
}


# --------------------------------------------------------------------------- component flow on every family


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RCNN_BUILDERS))
def test_rcnn_component_flow(shared: Callable[..., nn.Module], name: str) -> None:
    model = shared(name)
    with light(model):
        t = surgery.trace(model, image_size=SIZE, batch_size=1)
    assert t.family == "R-CNN" and t.modes == ("eval",)
    assert pairs(t.component_edges()) == RCNN_BUILDERS[name]
    assert t.uncalled == [] and t.findings == [] and t.ok


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ONE_STAGE))
def test_one_stage_component_flow(shared: Callable[..., nn.Module], name: str) -> None:
    model = shared(name)
    t = surgery.trace(model, image_size=SIZE, batch_size=1)
    assert pairs(t.component_edges()) == ONE_STAGE[name]
    assert t.uncalled == [] and t.findings == []


def test_mask_rcnn_both_modes(maskrcnn: nn.Module) -> None:
    grads_before = [p.grad for p in maskrcnn.parameters()]
    rng = torch.get_rng_state()
    before = fingerprint(maskrcnn)
    with light(maskrcnn):
        t = surgery.trace(maskrcnn, mode="both", image_size=SIZE)
    assert fingerprint(maskrcnn) == before
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(a is b for a, b in zip(grads_before, (p.grad for p in maskrcnn.parameters()), strict=True))

    assert t.modes == ("eval", "train") and t.backward
    edges = {e.pair: e for e in t.component_edges()}
    assert set(edges) == BOX_CHAIN | branch_chain("mask") | {
        ("transform", "roi_heads.box_roi_pool"),  # train: ground-truth boxes join the proposals
        ("transform", "roi_heads.mask_roi_pool"),
    }
    assert edges[("backbone.body", "backbone.fpn")].modes == ("eval", "train")
    assert edges[("roi_heads.box_predictor", "roi_heads.mask_roi_pool")].modes == ("eval",)
    assert edges[("transform", "roi_heads.box_roi_pool")].modes == ("train",)
    assert edges[("backbone.body", "backbone.fpn")].shapes == ((2, 256, 32, 32), (2, 512, 16, 16), (2, 1024, 8, 8), (2, 2048, 4, 4))
    assert edges[("backbone.fpn", "rpn.head")].shapes == ((2, 256, 32, 32), (2, 256, 16, 16), (2, 256, 8, 8), (2, 256, 4, 4), (2, 256, 2, 2))
    assert edges[("roi_heads.box_roi_pool", "roi_heads.box_head")].shapes[0][1:] == (256, 7, 7)
    assert edges[("roi_heads.box_head", "roi_heads.box_predictor")].shapes[0][1:] == (1024,)
    assert edges[("roi_heads.mask_head", "roi_heads.mask_predictor")].shapes[0][1:] == (256, 14, 14)

    # the call table: order, nesting, shapes through tuples, dicts and ImageList
    first = [(c.index, c.path, c.type, c.mode, c.level) for c in t.calls[:5]]
    assert first == [
        (0, "", "MaskRCNN", "eval", 0),
        (1, "transform", "GeneralizedRCNNTransform", "eval", 1),
        (2, "backbone", "BackboneWithFPN", "eval", 1),
        (3, "backbone.body", "IntermediateLayerGetter", "eval", 2),
        (4, "backbone.body.conv1", "Conv2d", "eval", 3),
    ]
    assert t.calls[0].inputs == (surgery.TensorInfo("0.0", (3, SIZE, SIZE), "float32"), surgery.TensorInfo("0.1", (3, SIZE, SIZE), "float32"))
    assert t.calls[1].outputs == (surgery.TensorInfo("0.tensors", (2, 3, SIZE, SIZE), "float32"),)
    fpn = next(c for c in t.calls if c.path == "backbone.fpn")
    assert [(i.key, i.shape) for i in fpn.outputs] == [
        ("0", (2, 256, 32, 32)), ("1", (2, 256, 16, 16)), ("2", (2, 256, 8, 8)), ("3", (2, 256, 4, 4)), ("pool", (2, 256, 2, 2)),
    ]
    train_root = next(c for c in t.calls if c.mode == "train")
    assert train_root.path == "" and [i.key for i in train_root.inputs][2:5] == ["1.0.boxes", "1.0.labels", "1.0.masks"]
    assert all(c.finished for c in t.calls)

    assert sorted(t.losses) == ["loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]
    assert all(v == v and abs(v) != float("inf") for v in t.losses.values())
    assert t.uncalled == [] and t.no_grad_params == [] and t.non_finite == [] and t.findings == []
    assert no_tensors(t)
    json.dumps(t.to_dict())
    text = str(t)
    assert re.search(r"backbone\.body\s+→ backbone\.fpn  \[2×256×32×32, 2×512×16×16, 2×1024×8×8, 2×2048×4×4\]", text)
    assert re.search(r"roi_heads\.box_predictor\s+→ roi_heads\.mask_roi_pool .*\(eval only\)", text)
    assert "Never called: none" in text and "Trainable parameters without a gradient: none" in text


def test_depth_limits_the_calls_but_keeps_the_components(maskrcnn: nn.Module) -> None:
    with light(maskrcnn):
        t = surgery.trace(maskrcnn, image_size=SIZE, batch_size=1, depth=1)
    paths = [c.path for c in t.calls]
    assert paths[:4] == ["", "transform", "backbone", "backbone.body"]
    assert all(p.count(".") == 0 or p in t.components for p in paths)
    assert "backbone.body.conv1" not in paths
    assert pairs(t.component_edges()) == RCNN_BUILDERS["maskrcnn_resnet50_fpn"]


# --------------------------------------------------------------------------- small user models


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(x)))


class TrainOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.aux = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.training:
            x = x + self.aux(x)
        return x


class Loop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.layer = nn.Linear(8, 8)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for _ in range(3):
            x = torch.relu(self.layer(x))
        y = torch.cat([x, x * 2], dim=1)[:, :4]  # functional ops between two modules
        return self.head(y)


class Pooled(nn.Module):
    """A conv, torchvision's roi_align as a plain function, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        boxes = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [1, 2.0, 2.0, 10.0, 10.0]])
        return self.fc(torchvision.ops.roi_align(f, boxes, (2, 2)).flatten(1))


def test_module_called_twice() -> None:
    t = surgery.trace(Twice(), torch.rand(3, 4))
    assert [(c.path, c.level) for c in t.calls] == [("", 0), ("block", 1), ("block", 1), ("head", 1)]
    assert [(e.src, e.dst, e.shapes) for e in t.edges] == [("block", "block", ((3, 4),)), ("block", "head", ((3, 4),))]
    assert t.calls[3].outputs == (surgery.TensorInfo("", (3, 2), "float32"),)
    assert t.uncalled == [] and t.family == "generic"
    assert pairs(t.component_edges()) == {("block", "head")}  # a component feeding itself is not a flow


def test_module_used_only_in_train_mode() -> None:
    model = TrainOnly()
    x = torch.rand(2, 4)
    eval_only = surgery.trace(model, x)
    assert eval_only.uncalled == ["aux"]
    assert [(f.severity, f.code, f.paths) for f in eval_only.findings] == [("warning", "orphan-module", ("aux",))]
    assert "trace with mode='both'" in eval_only.findings[0].message
    assert surgery.trace(model, x, train=True).uncalled == []
    both = surgery.trace(model, x, mode="both")
    assert both.uncalled == [] and both.no_grad_params == [] and both.findings == []
    assert [c.path for c in both.calls] == ["", "body", "", "body", "aux"]
    assert {e.pair: e.modes for e in both.edges} == {("body", "aux"): ("train",)}
    assert list(both.losses) == ["mean(output)"]


def test_submodule_called_in_a_loop_and_functional_ops_between_modules() -> None:
    t = surgery.trace(Loop(), torch.rand(2, 4))
    assert [c.path for c in t.calls] == ["", "stem", "layer", "layer", "layer", "head"]
    assert [(e.src, e.dst, e.shapes) for e in t.edges] == [
        ("stem", "layer", ((2, 8),)),
        ("layer", "layer", ((2, 8),)),
        ("layer", "head", ((2, 4),)),
    ]
    assert [c.producers for c in t.calls] == [(), (), ("stem",), ("layer",), ("layer",), ("layer",)]


def test_flow_goes_through_roi_align() -> None:
    t = surgery.trace(Pooled(), torch.rand(2, 3, 12, 12))
    assert [(e.src, e.dst, e.shapes) for e in t.edges] == [("conv", "fc", ((2, 16),))]


def test_trace_keeps_no_activation_alive() -> None:
    made: list[weakref.ref[torch.Tensor]] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            made.append(weakref.ref(h))
            out = self.b(torch.relu(h))
            made.append(weakref.ref(out))
            return out

    t = surgery.trace(Spy(), torch.rand(2, 4), mode="both")
    gc.collect()
    assert len(made) == 4 and all(r() is None for r in made)
    assert no_tensors(t)


# --------------------------------------------------------------------------- uncalled modules and parameters without gradient


def test_motivating_recipe_exact() -> None:
    model = recipe_model()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.body.conv1.weight"]  # trainable_layers=4 freezes the stem
    with light(model):
        t = surgery.trace(model, mode="both", image_size=SIZE)
    assert t.uncalled == ["mask_predictor"]
    assert t.no_grad_params == [
        "mask_predictor.conv5_mask.weight",
        "mask_predictor.conv5_mask.bias",
        "mask_predictor.mask_fcn_logits.weight",
        "mask_predictor.mask_fcn_logits.bias",
    ]
    assert [(f.severity, f.code, f.paths) for f in t.findings] == [
        ("error", "orphan-module", ("mask_predictor", "roi_heads.mask_predictor")),
        ("error", "unused-parameter", ("mask_predictor",)),
    ]
    assert t.findings[0].fix == "model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor"
    assert t.findings[1].message == (
        "4 trainable parameter tensor(s) (1,053,972 values) of mask_predictor (MaskRCNNPredictor) got no gradient from "
        "the train step: conv5_mask.weight, conv5_mask.bias, mask_fcn_logits.weight, mask_fcn_logits.bias. "
        "DistributedDataParallel(find_unused_parameters=False) fails on this model. mask_predictor never runs."
    )
    assert t.findings[1].fix == "model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor"


def test_check_with_trace_does_not_repeat_a_statically_explained_forward_failure() -> None:
    model = resnet18_maskrcnn()
    model.roi_heads.mask_head = MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1)  # predictor not rebuilt
    with light(model):
        traced = surgery.trace(model, mode="eval", image_size=SIZE, strict=False)
        report = surgery.check(model, trace=True, probe_image_size=SIZE)
    # the forward really fails there, and the trace alone says so ...
    assert [(f.code, f.paths) for f in traced.findings] == [("shape-error", ("roi_heads.mask_head", "roi_heads.mask_predictor"))]
    # ... but check already explains it with both numbers, so it is reported once
    assert [(f.code, f.paths) for f in report.errors] == [("channel-mismatch", ("roi_heads.mask_head", "roi_heads.mask_predictor"))]
    assert "roi_heads.mask_head produces 1024 channels" in report.errors[0].message


def test_check_with_trace_merges_static_and_traced_orphans() -> None:
    model = recipe_model()
    before = fingerprint(model)
    with light(model):
        static = surgery.check(model, probe_image_size=SIZE)
        report = surgery.check(model, trace=True, probe_image_size=SIZE)
    assert fingerprint(model) == before
    assert [(f.code, f.paths) for f in static.findings] == [("orphan-module", ("mask_predictor", "roi_heads.mask_predictor"))]
    assert [(f.code, f.paths) for f in report.findings] == [
        ("orphan-module", ("mask_predictor", "roi_heads.mask_predictor")),
        ("unused-parameter", ("mask_predictor",)),
    ]
    assert report.findings[0] == static.findings[0]
    assert report.checked[-1] == "trace (eval pass + train step with backward)"
    assert not report.ok


def test_frozen_backbone_layers_are_not_reported() -> None:
    model: Any = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    for name, p in model.backbone.body.named_parameters():
        if not name.startswith(("13.", "14.", "15.", "16.")):
            p.requires_grad_(False)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) > 50
    with light(model):
        t = surgery.trace(model, train=True, image_size=SIZE)
    assert t.backward and t.no_grad_params == [] and t.uncalled == [] and t.findings == []
    assert all(p.grad is None for p in model.parameters())


def test_gated_off_mask_branch() -> None:
    model = resnet18_maskrcnn()
    model.roi_heads.mask_predictor = None  # RoIHeads.has_mask() is now False
    with light(model):
        t = surgery.trace(model, mode="both", image_size=SIZE)
    assert t.uncalled == ["roi_heads.mask_roi_pool", "roi_heads.mask_head"]
    head_params = [f"roi_heads.mask_head.{n}" for n, _ in model.roi_heads.mask_head.named_parameters()]
    assert len(head_params) == 8 and t.no_grad_params == head_params
    assert [(f.code, f.paths) for f in t.findings] == [
        ("orphan-module", ("roi_heads.mask_roi_pool",)),
        ("orphan-module", ("roi_heads.mask_head",)),
        ("unused-parameter", ("roi_heads.mask_head",)),
    ]
    assert "8 trainable parameter tensor(s) (2,360,320 values) of roi_heads.mask_head (MaskRCNNHeads)" in t.findings[2].message
    # the static pass cannot see it (has_mask() reads all three), the trace does
    with light(model):
        report = surgery.check(model, trace=True, probe_image_size=SIZE)
    assert [(f.code, f.paths) for f in report.findings] == [(f.code, f.paths) for f in t.findings]


# --------------------------------------------------------------------------- failures leave no trace


class Boom(nn.Module):
    """A box head that raises mid-forward (after its first layer ran)."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.fc = nn.Linear(256 * 7 * 7, 1024)
        self.when = when

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(x.flatten(1)))
        if self.when == "always" or (self.when == "train" and self.training):
            raise RuntimeError("boom: this head is broken")
        return x


@pytest.mark.parametrize("when", ["always", "train"])
def test_failure_mid_forward_leaves_no_trace(when: str) -> None:
    model = resnet18_maskrcnn()
    model.roi_heads.box_head = Boom(when)
    model.eval()
    model.roi_heads.train()  # a mixed mode must come back as it was
    stem = model.backbone.body.layer1[0].conv1.weight
    stem.grad = torch.full_like(stem, 3.0)
    grads = [p.grad for p in model.parameters()]
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    rng = torch.get_rng_state()
    user_calls: list[str] = []
    model.rpn.head.register_forward_hook(lambda *_: user_calls.append("rpn.head"))
    before = fingerprint(model)

    phase = "eval" if when == "always" else "train"
    with light(model), pytest.raises(surgery.IncompatibleError, match=rf"roi_heads\.box_head \(Boom\) raised RuntimeError during the {phase} forward: boom") as info:
        surgery.trace(model, mode="both", image_size=SIZE)

    assert fingerprint(model) == before
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch._C._len_torch_function_stack() == 0
    assert all(a is b for a, b in zip(grads, (p.grad for p in model.parameters()), strict=True))
    assert torch.equal(stem.grad, torch.full_like(stem, 3.0))
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    assert not model.training and model.roi_heads.training and not model.backbone.training
    assert user_calls == ["rpn.head"] * (1 if when == "always" else 2)  # the user's hook ran and stayed

    (finding,) = info.value.findings
    assert isinstance(info.value.__cause__, RuntimeError) and str(info.value.__cause__) == "boom: this head is broken"
    assert (finding.severity, finding.code, finding.paths) == ("error", "shape-error", ("roi_heads.box_roi_pool", "roi_heads.box_head"))
    assert re.search(r"it received 0: \d+×256×7×7 from roi_heads\.box_roi_pool\.", finding.message)
    assert re.search(r"module calls had completed before \(the last: .*roi_heads\.box_roi_pool, roi_heads\.box_head\.fc\)", finding.message)


def test_non_strict_trace_returns_the_partial_calls() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))
    t = surgery.trace(model, torch.rand(2, 4), strict=False)
    assert t.failure is not None and t.findings == [t.failure] and not t.ok
    assert [(c.path, c.finished) for c in t.calls] == [("", False), ("0", True), ("1", False)]
    assert t.failure.paths == ("0", "1")
    assert "1 (Linear) raised RuntimeError during the eval forward: mat1 and mat2 shapes cannot be multiplied" in t.failure.message
    assert "it received 0: 2×4 from 0" in t.failure.message


def test_non_finite_loss_is_named() -> None:
    model: Any = build("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.fill_(float("nan"))
    with light(model):
        t = surgery.trace(model, train=True, image_size=SIZE)
    assert t.non_finite == ["loss loss_classifier"]
    assert [(f.code, f.paths) for f in t.findings] == [("non-finite", ())]
    assert t.findings[0].message == "NaN or Inf in loss loss_classifier"


def test_non_finite_eval_output_is_named() -> None:
    class Inf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"ok": self.fc(x), "bad": self.fc(x) / 0.0 * 0.0}

    t = surgery.trace(Inf(), torch.rand(2, 2))
    assert t.non_finite == ["eval output bad"]


# --------------------------------------------------------------------------- determinism and arguments


def test_same_model_and_seed_give_the_same_trace(shared: Callable[..., nn.Module]) -> None:
    model = shared("fasterrcnn_mobilenet_v3_large_320_fpn")
    with light(model):  # the train pass samples proposals at random: the seed fixes them
        a = surgery.trace(model, mode="both", image_size=SIZE, seed=3).to_dict()
        b = surgery.trace(model, mode="both", image_size=SIZE, seed=3).to_dict()
    assert a == b
    assert sorted(a["losses"]) == ["loss_box_reg", "loss_classifier", "loss_objectness", "loss_rpn_box_reg"]
    assert a["modes"] == ["eval", "train"] and len(a["calls"]) > 100


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "test"}, ValueError, r"mode must be one of \('eval', 'train', 'both'\) or None, got 'test'"),
        ({"train": True, "mode": "eval"}, ValueError, r"train=True contradicts mode='eval'"),
        ({"backward": True}, ValueError, r"backward=True needs a train pass"),
        ({"depth": -1}, ValueError, r"depth must be an int >= 0, got -1"),
        ({"image_size": 8}, ValueError, r"image_size must be an int >= 32, got 8"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        surgery.trace(Twice(), torch.rand(2, 4), **kwargs)


def test_not_a_module() -> None:
    with pytest.raises(surgery.NotAModuleError, match=r"trace\(\): model must be an nn\.Module, got str"):
        surgery.trace("model")  # type: ignore[arg-type]


def test_user_images_get_synthetic_targets_for_a_train_step(shared: Callable[..., nn.Module]) -> None:
    model = shared("fasterrcnn_mobilenet_v3_large_320_fpn")
    images = torch.rand(2, 3, 96, 112)
    with light(model):
        t = surgery.trace(model, images, train=True)
    root = t.calls[0]
    assert [(i.key, i.shape) for i in root.inputs] == [
        ("0.0", (3, 96, 112)), ("0.1", (3, 96, 112)),
        ("1.0.boxes", (2, 4)), ("1.0.labels", (2,)), ("1.1.boxes", (2, 4)), ("1.1.labels", (2,)),
    ]
    assert t.calls[1].outputs[0] == surgery.TensorInfo("0.tensors", (2, 3, 96, 128), "float32")  # padded to 32
    assert sorted(t.losses) == ["loss_box_reg", "loss_classifier", "loss_objectness", "loss_rpn_box_reg"]


def test_bad_detection_inputs(maskrcnn: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"detection images must be a 3×H×W or N×3×H×W tensor .* got shape \(3, 4\)"):
        surgery.trace(maskrcnn, torch.rand(3, 4))


# --------------------------------------------------------------------------- command line


RECIPE = """
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor


def build():
    # the motivating recipe; the rpn/detection counts only keep the test fast on a CPU
    model = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=4), 20,
                     rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50, rpn_pre_nms_top_n_train=50,
                     rpn_post_nms_top_n_train=50, box_detections_per_img=4)
    head = MaskRCNNHeads(model.backbone.out_channels, (256, 256, 512, 512, 1024), 1)  # never attached
    model.mask_predictor = MaskRCNNPredictor(1024, 256, 20)
    return model
"""

SMALL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=4)
        self.head = nn.Conv2d(4, 2, 1)
        self.spare = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


def build():
    return Net()
"""


def test_cli_check_trace_on_the_motivating_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "recipe.py"
    spec.write_text(textwrap.dedent(RECIPE))
    assert main(["check", f"{spec}:build", "--trace"]) == 1
    out = capsys.readouterr().out
    assert "2 error(s), 0 warning(s)" in out
    assert "error [orphan-module] mask_predictor -> roi_heads.mask_predictor" in out
    assert (
        "error [unused-parameter] mask_predictor: 4 trainable parameter tensor(s) (1,053,972 values) of mask_predictor "
        "(MaskRCNNPredictor) got no gradient from the train step: conv5_mask.weight, conv5_mask.bias, "
        "mask_fcn_logits.weight, mask_fcn_logits.bias"
    ) in out


def test_cli_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "small.py"
    spec.write_text(textwrap.dedent(SMALL))
    assert main(["trace", f"{spec}:build", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("surgery trace: Net (generic), eval: 3 module calls")
    assert re.search(r"^stem → head  \[2×4×16×16\]$", out, re.M)
    assert "Never called: spare" in out

    assert main(["trace", f"{spec}:build", "--image-size", "64", "--mode", "both", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == f"{spec}:build" and data["class"] == "Net" and data["ok"] is False
    assert [(f["code"], f["paths"]) for f in data["findings"]] == [("orphan-module", ["spare"]), ("unused-parameter", ["spare"])]
    assert data["modes"] == ["eval", "train"] and data["uncalled"] == ["spare"]
    assert data["no_grad_params"] == ["spare.weight", "spare.bias"]
    assert [(e["src"], e["dst"]) for e in data["component_edges"]] == [("stem", "head")]
    assert len(data["calls"]) == 6

    assert main(["trace", f"{spec}:build", "--train", "--mode", "eval"]) == 2
    assert "--train means --mode train; it contradicts --mode eval" in capsys.readouterr().err
