"""``surgery.render``: component and module diagrams, before/after colouring, output formats."""

from __future__ import annotations

import copy
import inspect
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

import surgery
from surgery import Graph, NotAModuleError, RenderError, SurgeryError
from surgery.cli import main
from surgery.render import brief, module_changes, slot_changes
from tests.helpers import MASKRCNN_SLOTS, build, fingerprint

GOLDEN = Path(__file__).parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"
RED = "#d32f2f"



def broken(model: nn.Module) -> nn.Module:
    """The motivating recipe's broken step: a deeper, wider mask head and the stock predictor."""
    out = copy.deepcopy(model)
    out.roi_heads.mask_head = MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1)
    return out


def fixed(model: nn.Module) -> nn.Module:
    """The recipe done right: the deeper head and a predictor rebuilt for 1024 channels."""
    out = broken(model)
    out.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 91)
    return out


def check_golden(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"missing golden file {path}; run pytest with --update-golden to create it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs from its golden file; inspect the change, then run pytest --update-golden"


def parse_svg(path: Path) -> tuple[dict[str, ET.Element], dict[str, ET.Element]]:
    """(nodes by id, edges by id) of a Graphviz SVG."""
    root = ET.parse(path).getroot()
    nodes = {g.get("id", ""): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    edges = {g.get("id", ""): g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"}
    return nodes, edges


def texts(element: ET.Element) -> list[str]:
    return [(t.text or "").strip() for t in element.iter(f"{SVG}text")]


def stroke(edge: ET.Element) -> str | None:
    path = edge.find(f".//{SVG}path")
    assert path is not None
    return path.get("stroke")


def tooltip(element: ET.Element) -> str | None:
    a = element.find(f".//{SVG}a")
    return None if a is None else a.get(f"{XLINK}title")


# --------------------------------------------------------------------------- fixtures


def quick_maskrcnn() -> nn.Module:
    """Stock Mask R-CNN structure with few proposals and detections, so a traced forward is short.

    The thresholds change no module, parameter count or per-RoI shape: its diagram is the
    stock model's, byte for byte.
    """
    return build("maskrcnn_resnet50_fpn", rpn_post_nms_top_n_test=50, box_detections_per_img=4)


@pytest.fixture(scope="module")
def traced_graph() -> Graph:
    """Mask R-CNN, edges labelled from a traced forward (the default fixed synthetic input)."""
    model = quick_maskrcnn()
    before = fingerprint(model)
    graph = surgery.render(model)
    assert fingerprint(model) == before
    return graph


@pytest.fixture(scope="module")
def broken_model(maskrcnn: nn.Module) -> nn.Module:
    return broken(maskrcnn)


@pytest.fixture(scope="module")
def fixed_model(maskrcnn: nn.Module) -> nn.Module:
    return fixed(maskrcnn)


# --------------------------------------------------------------------------- golden DOT files


def test_golden_maskrcnn_traced(traced_graph: Graph, update_golden: bool) -> None:
    assert traced_graph.flow == "trace"
    check_golden("components_maskrcnn_resnet50_fpn.dot", traced_graph.source, update_golden)


@pytest.mark.parametrize(
    "name",
    ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "ssd300_vgg16"],
)
def test_golden_components_static(name: str, shared: Callable[..., nn.Module], update_golden: bool) -> None:
    model = shared(name)
    graph = surgery.render(model, trace=False)
    assert graph.flow == "static"
    assert [n.path for n in graph.nodes] == [c.path for c in surgery.components(model)]
    check_golden(f"components_{name}.static.dot", graph.source, update_golden)


def test_golden_broken_recipe(broken_model: nn.Module, update_golden: bool) -> None:
    check_golden("broken_mask_head.static.dot", surgery.render(broken_model, trace=False).source, update_golden)


def test_golden_before_after(maskrcnn: nn.Module, fixed_model: nn.Module, update_golden: bool) -> None:
    graph = surgery.render(fixed_model, before=maskrcnn, trace=False)
    check_golden("deeper_mask_head_diff.static.dot", graph.source, update_golden)


def test_golden_modules_depth2(maskrcnn: nn.Module, update_golden: bool) -> None:
    graph = surgery.render(maskrcnn, level="modules", depth=2, trace=False)
    check_golden("modules_maskrcnn_resnet50_fpn_depth2.static.dot", graph.source, update_golden)


def test_dot_is_deterministic(maskrcnn: nn.Module) -> None:
    a = surgery.render(maskrcnn, trace=False).source
    b = surgery.render(copy.deepcopy(maskrcnn), trace=False).source
    assert a == b
    assert "0x" not in a


# --------------------------------------------------------------------------- component diagrams


def test_traced_labels_are_shapes(traced_graph: Graph) -> None:
    labels = {(e.src, e.dst): e.label for e in traced_graph.edges}
    assert labels[("transform", "backbone.body")] == "3×320×320"
    assert labels[("backbone.body", "backbone.fpn")] == "4 maps: 256,512,1024,2048 ch"
    assert labels[("backbone.fpn", "rpn.head")] == "5 maps × 256 ch"
    assert labels[("roi_heads.box_roi_pool", "roi_heads.box_head")] == "256×7×7"
    assert labels[("roi_heads.box_head", "roi_heads.box_predictor")] == "1024 feat"
    assert labels[("roi_heads.mask_roi_pool", "roi_heads.mask_head")] == "256×14×14"
    assert labels[("roi_heads.mask_head", "roi_heads.mask_predictor")] == "256×14×14"
    assert labels[("rpn.head", "roi_heads.box_roi_pool")] == "proposals"
    assert labels[("roi_heads.box_predictor", "roi_heads.mask_roi_pool")] == "detections"


def test_static_labels_are_channels(maskrcnn: nn.Module) -> None:
    graph = surgery.render(maskrcnn, trace=False)
    labels = {(e.src, e.dst): e.label for e in graph.edges}
    assert labels[("backbone.fpn", "rpn.head")] == "256 ch"
    assert labels[("roi_heads.box_head", "roi_heads.box_predictor")] == "1024 feat"
    assert labels[("roi_heads.mask_roi_pool", "roi_heads.mask_head")] == "256×14×14"
    # the pooler's channels come from the feature maps, not from rpn.head's 3 objectness channels
    assert labels[("roi_heads.box_roi_pool", "roi_heads.box_head")] == "256×7×7"
    assert labels[("rpn.anchor_generator", "roi_heads.box_roi_pool")] == "anchors"
    assert [n.path for n in graph.nodes] == MASKRCNN_SLOTS
    head = graph.node("roi_heads.mask_head")
    assert head.label == ("roi_heads.mask_head", "MaskRCNNHeads", "2.4M params, trainable")
    assert (head.type, head.params, head.trainable, head.cluster) == ("MaskRCNNHeads", 2_360_320, 2_360_320, "cluster_roi_heads")
    assert [c.path for c in graph.clusters] == ["backbone", "rpn", "roi_heads"]
    assert graph.findings == [] and graph.legend == ()


def test_traced_diagram_equals_the_stock_one_statically(traced_graph: Graph, maskrcnn: nn.Module) -> None:
    static = surgery.render(maskrcnn, trace=False)
    assert [n.label for n in traced_graph.nodes] == [n.label for n in static.nodes]
    assert [(e.src, e.dst) for e in traced_graph.edges] == [(e.src, e.dst) for e in static.edges]


def test_svg_has_every_slot_and_the_traced_labels(traced_graph: Graph, maskrcnn: nn.Module, tmp_path: Path) -> None:
    out = traced_graph.save(tmp_path / "maskrcnn.svg")
    nodes, edges = parse_svg(out)
    assert set(nodes) == set(MASKRCNN_SLOTS)
    for path in MASKRCNN_SLOTS:
        assert texts(nodes[path])[0] == path
        assert texts(nodes[path])[1] == type(maskrcnn.get_submodule(path)).__name__
    assert texts(edges["roi_heads.mask_roi_pool->roi_heads.mask_head"]) == ["256×14×14"]
    assert texts(edges["backbone.fpn->rpn.head"]) == ["5 maps × 256 ch"]
    assert all(stroke(e) != RED for e in edges.values())


def test_broken_recipe_draws_the_red_edge(broken_model: nn.Module, tmp_path: Path) -> None:
    report = surgery.check(broken_model)
    (finding,) = report.errors
    assert finding.paths == ("roi_heads.mask_head", "roi_heads.mask_predictor")
    graph = surgery.render(broken_model, tmp_path / "broken.svg", trace=False)
    edge = graph.edge("roi_heads.mask_head", "roi_heads.mask_predictor")
    assert (edge.severity, edge.message, edge.label) == ("error", finding.message, "1024 ch\nexpects 256 ch")
    assert graph.legend == ("error",)
    nodes, edges = parse_svg(tmp_path / "broken.svg")
    assert set(nodes) == set(MASKRCNN_SLOTS) | {"legend"}
    red = [eid for eid, e in edges.items() if stroke(e) == RED]
    assert red == ["roi_heads.mask_head->roi_heads.mask_predictor"]
    assert texts(edges[red[0]]) == ["✗ 1024 ch", "expects 256 ch"]
    assert tooltip(edges[red[0]]) == finding.message
    assert "broken contract" in texts(nodes["legend"])


@pytest.mark.slow
def test_broken_recipe_with_a_partial_trace() -> None:
    model = broken(quick_maskrcnn())
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))]
    before = fingerprint(model)
    graph = surgery.render(model, input=images)
    assert fingerprint(model) == before
    assert graph.flow == "partial trace"
    edge = graph.edge("roi_heads.mask_head", "roi_heads.mask_predictor")
    assert (edge.severity, edge.label) == ("error", "1024×14×14\nexpects 256 ch")
    with pytest.raises(surgery.IncompatibleError, match=r"roi_heads\.mask_predictor"):
        surgery.render(model, input=images, trace=True)
    assert fingerprint(model) == before


def test_orphan_gets_its_own_node(maskrcnn: nn.Module) -> None:
    model = copy.deepcopy(maskrcnn)
    model.mask_predictor = MaskRCNNPredictor(1024, 256, 20)
    graph = surgery.render(model, trace=False)
    node = graph.node("mask_predictor")
    assert (node.kind, node.type, node.cluster) == ("orphan", "MaskRCNNPredictor", None)
    assert node.label == ("mask_predictor", "MaskRCNNPredictor", "never called by forward")
    edge = graph.edge("mask_predictor", "roi_heads.mask_predictor")
    assert (edge.kind, edge.severity, edge.label) == ("orphan", "error", "meant for?")
    assert "it was probably meant for roi_heads.mask_predictor" in edge.message
    assert graph.legend == ("orphan",)


def test_before_after_colours(maskrcnn: nn.Module, fixed_model: nn.Module, tmp_path: Path) -> None:
    fp = (fingerprint(maskrcnn), fingerprint(fixed_model))
    graph = surgery.render(fixed_model, tmp_path / "diff.svg", before=maskrcnn, trace=False)
    assert (fingerprint(maskrcnn), fingerprint(fixed_model)) == fp
    status = {n.path: n.status for n in graph.nodes}
    assert status == {p: "changed" if p in ("roi_heads.mask_head", "roi_heads.mask_predictor") else "unchanged" for p in MASKRCNN_SLOTS}
    assert graph.node("roi_heads.mask_head").label == (
        "roi_heads.mask_head", "MaskRCNNHeads", "2.4M → 9.4M params", "out 256 ch → 1024 ch"
    )
    assert graph.node("roi_heads.mask_predictor").label == (
        "roi_heads.mask_predictor", "MaskRCNNPredictor", "285.8k → 1.1M params", "in 256 ch → 1024 ch"
    )
    assert graph.legend == ("added", "removed", "changed", "unchanged")
    nodes, _ = parse_svg(tmp_path / "diff.svg")
    shape = nodes["roi_heads.mask_head"].find(f".//{SVG}path")
    assert shape is not None and (shape.get("stroke"), shape.get("fill")) == ("#ef6c00", "#fff0dc")
    shape = nodes["backbone.body"].find(f".//{SVG}path")
    assert shape is not None and (shape.get("stroke"), shape.get("fill")) == ("#9e9e9e", "#f2f2f2")
    assert texts(nodes["legend"]) == ["legend", "added", "removed", "changed", "unchanged"]


def test_added_and_removed_slots(shared: Callable[..., nn.Module]) -> None:
    faster, mask = shared("fasterrcnn_resnet50_fpn"), shared("maskrcnn_resnet50_fpn")
    triple = MASKRCNN_SLOTS[-3:]
    grown = surgery.render(mask, before=faster, trace=False)
    assert {n.path: n.status for n in grown.nodes if n.status != "unchanged"} == dict.fromkeys(triple, "added")
    assert {(e.src, e.dst) for e in grown.edges if e.status == "added"} == {
        ("backbone.fpn", "roi_heads.mask_roi_pool"),
        ("roi_heads.mask_roi_pool", "roi_heads.mask_head"),
        ("roi_heads.mask_head", "roi_heads.mask_predictor"),
        ("roi_heads.box_predictor", "roi_heads.mask_roi_pool"),
    }
    shrunk = surgery.render(faster, before=mask, trace=False)
    assert [n.path for n in shrunk.nodes] == MASKRCNN_SLOTS
    assert {n.path: n.status for n in shrunk.nodes if n.status != "unchanged"} == dict.fromkeys(triple, "removed")
    assert 'style="rounded,filled,dashed"' in shrunk.source
    assert len([e for e in shrunk.edges if e.status == "removed"]) == 4


def test_slot_changes_of_the_fixed_recipe(maskrcnn: nn.Module, fixed_model: nn.Module) -> None:
    changed = [c for c in slot_changes(maskrcnn, fixed_model) if c.status != "unchanged"]
    assert [(c.path, c.what, c.params_before, c.params_after) for c in changed] == [
        ("roi_heads.mask_head", ("signature", "params"), 2_360_320, 9_439_744),
        ("roi_heads.mask_predictor", ("signature", "params"), 285_787, 1_072_219),
    ]


# --------------------------------------------------------------------------- module level


def test_module_level_full_depth(maskrcnn: nn.Module) -> None:
    graph = surgery.render(maskrcnn, level="modules", trace=False)
    leaves = [p for p, m in maskrcnn.named_modules() if p and not m._modules]
    containers = [p for p, m in maskrcnn.named_modules() if p and m._modules]
    assert [n.path for n in graph.nodes] == leaves
    assert [c.path for c in graph.clusters] == containers
    assert graph.node("roi_heads.mask_head.2.0").label == ("0", "Conv2d 256→256 3×3")
    assert graph.node("backbone.body.conv1").label == ("conv1", "Conv2d 3→64 7×7 s2")
    assert graph.node("roi_heads.box_head.fc6").label == ("fc6", "Linear 12544→1024")
    assert graph.node("backbone.body.maxpool").label == ("maxpool", "MaxPool2d 3×3 s2")
    layer1 = next(c for c in graph.clusters if c.path == "backbone.body.layer1")
    assert (layer1.label, layer1.parent) == ("layer1 · Sequential · 215.8k", "cluster_backbone.body")
    flow = [(e.src, e.dst) for e in graph.edges if e.kind == "flow"]
    assert ("roi_heads.mask_head.0.0", "roi_heads.mask_head.0.1") in flow  # inside a Sequential
    assert ("roi_heads.mask_head.3.1", "roi_heads.mask_predictor.conv5_mask") in flow  # anatomy flow between slots


def test_module_level_depth_collapses(maskrcnn: nn.Module) -> None:
    graph = surgery.render(maskrcnn, level="modules", depth=2, trace=False)
    body = graph.node("backbone.body")
    n_desc = sum(1 for _ in maskrcnn.backbone.body.modules()) - 1
    assert (body.kind, body.label) == ("collapsed", ("body", "IntermediateLayerGetter", f"{n_desc} modules, 23.5M params, trainable"))
    assert [c.path for c in graph.clusters] == ["backbone", "rpn", "roi_heads"]
    assert "roi_heads.mask_head.0" not in [n.path for n in graph.nodes]


def test_module_level_before_after(maskrcnn: nn.Module, fixed_model: nn.Module) -> None:
    graph = surgery.render(fixed_model, before=maskrcnn, level="modules", trace=False)
    changed = {n.path: n.status for n in graph.nodes if n.status not in ("unchanged", None)}
    assert changed == {
        "roi_heads.mask_head.2.0": "changed",
        "roi_heads.mask_head.3.0": "changed",
        "roi_heads.mask_head.4.0": "added",
        "roi_heads.mask_head.4.1": "added",
        "roi_heads.mask_predictor.conv5_mask": "changed",
    }
    assert graph.node("roi_heads.mask_head.2.0").label == ("0", "Conv2d 256→256 3×3 →", "Conv2d 256→512 3×3")
    assert next(c for c in graph.clusters if c.path == "roi_heads.mask_head.4").status == "added"
    assert graph.legend == ("added", "removed", "changed", "unchanged")


class Tiny(nn.Module):
    """A model of no known family."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stem(x)).flatten(1))


def test_unknown_family_renders_at_module_level_with_traced_shapes() -> None:
    model = Tiny()
    before = fingerprint(model)
    graph = surgery.render(model, level="modules", input=torch.rand(2, 3, 16, 16))
    assert fingerprint(model) == before
    assert graph.flow == "trace"
    assert [n.path for n in graph.nodes] == ["stem.0", "stem.1", "stem.2", "pool", "fc"]
    assert [(e.src, e.dst, e.label) for e in graph.edges] == [
        ("stem.0", "stem.1", "8×16×16"),
        ("stem.1", "stem.2", "8×16×16"),
        ("stem.2", "pool", "8×16×16"),
        ("pool", "fc", "8 feat"),
    ]
    assert graph.node("stem.1").label == ("1", "BatchNorm2d 8")
    components = surgery.render(model, input=torch.rand(2, 3, 16, 16))
    assert [(e.src, e.dst, e.label) for e in components.edges] == [("stem", "pool", "8×16×16"), ("pool", "fc", "8 feat")]


def test_unknown_family_without_trace() -> None:
    graph = surgery.render(Tiny(), level="modules", trace=False)
    assert [(e.src, e.dst) for e in graph.edges if e.kind == "flow"] == [("stem.0", "stem.1"), ("stem.1", "stem.2")]
    assert [(e.src, e.dst, e.tail) for e in graph.edges if e.kind == "layout"] == [
        ("stem.2", "pool", "cluster_stem"),
        ("pool", "fc", None),
    ]
    seq = surgery.render(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), trace=False)
    assert [(e.src, e.dst, e.label) for e in seq.edges] == [("0", "1", "8 feat"), ("1", "2", "8 feat")]


def test_brief() -> None:
    assert brief(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4)) == "Conv2d 16→32 3×3 s2 g4"
    assert brief(nn.Conv2d(16, 32, (1, 3), dilation=2)) == "Conv2d 16→32 1×3 d2"
    assert brief(nn.ConvTranspose2d(1024, 256, 2, 2)) == "ConvTranspose2d 1024→256 2×2 s2"
    assert brief(nn.Linear(12544, 1024)) == "Linear 12544→1024"
    assert brief(nn.GroupNorm(32, 256)) == "GroupNorm 32/256"
    assert brief(nn.Dropout(0.25)) == "Dropout p=0.25"
    from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

    assert brief(FrozenBatchNorm2d(64)) == "FrozenBatchNorm2d 64"
    assert brief(MultiScaleRoIAlign(["0", "1"], 7, 2)) == "MultiScaleRoIAlign 0,1 → 7×7"
    assert brief(nn.ReLU()) == "ReLU"


def test_module_changes_fold_added_subtrees(maskrcnn: nn.Module, fixed_model: nn.Module) -> None:
    changes = module_changes(maskrcnn, fixed_model)
    assert [(c.path, c.status, c.modules) for c in changes] == [
        ("roi_heads.mask_head.2.0", "changed", 1),
        ("roi_heads.mask_head.3.0", "changed", 1),
        ("roi_heads.mask_head.4", "added", 3),
        ("roi_heads.mask_predictor.conv5_mask", "changed", 1),
    ]


# --------------------------------------------------------------------------- output formats and the dot binary


def test_formats_by_extension(maskrcnn: nn.Module, tmp_path: Path) -> None:
    graph = surgery.render(maskrcnn, trace=False)
    assert graph.save(tmp_path / "a.dot").read_text(encoding="utf-8") == graph.source
    assert (tmp_path / "a.dot").read_text(encoding="utf-8") == str(graph)
    assert graph.save(tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert graph.save(tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    assert graph.save(tmp_path / "a.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"extension must be one of \['\.dot', '\.pdf', '\.png', '\.svg'\]"):
        graph.save(tmp_path / "a.jpg")
    assert not (tmp_path / "a.jpg").exists()


@pytest.fixture
def no_dot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.mark.usefixtures("no_dot")
def test_missing_dot_binary(maskrcnn: nn.Module, tmp_path: Path) -> None:
    graph = surgery.render(maskrcnn, trace=False)
    with pytest.raises(RenderError, match=r"apt-get install graphviz.*brew install graphviz.*conda install graphviz") as info:
        graph.save(tmp_path / "out.svg")
    assert isinstance(info.value, SurgeryError) and isinstance(info.value, RuntimeError)
    assert str(tmp_path / "out.dot") in str(info.value)
    assert not (tmp_path / "out.svg").exists()
    assert (tmp_path / "out.dot").read_text(encoding="utf-8") == graph.source
    surgery.render(maskrcnn, tmp_path / "plain.dot", trace=False)  # DOT needs no binary
    assert (tmp_path / "plain.dot").read_text(encoding="utf-8") == graph.source


@pytest.mark.usefixtures("no_dot")
def test_cli_missing_dot_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["render", "-o", str(tmp_path / "cli.png"), "--no-trace"])
    assert code == 2
    err = capsys.readouterr().err
    assert "RenderError" in err and "apt-get install graphviz" in err and "brew install graphviz" in err
    assert (tmp_path / "cli.dot").read_text(encoding="utf-8").startswith('digraph "MaskRCNN" {')
    assert not (tmp_path / "cli.png").exists()


def test_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "faster.svg"
    code = main(["render", "torchvision.models.detection:fasterrcnn_resnet50_fpn", "-o", str(out), "--no-trace",
                 "--before", "torchvision.models.detection:maskrcnn_resnet50_fpn"])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"surgery render: wrote {out} (11 nodes,")
    nodes, _ = parse_svg(out)
    assert set(nodes) == set(MASKRCNN_SLOTS) | {"legend"}
    assert main(["render", "-o", str(tmp_path / "x.jpg")]) == 2
    assert "extension must be one of" in capsys.readouterr().err
    assert main(["render", "-o", str(tmp_path / "m.dot"), "--level", "modules", "--depth", "0", "--no-trace"]) == 2
    assert "depth must be an int >= 1" in capsys.readouterr().err


def test_cli_render_exits_1_on_a_broken_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "recipe.py"
    spec.write_text(
        "from torchvision.models.detection import maskrcnn_resnet50_fpn\n"
        "from torchvision.models.detection.mask_rcnn import MaskRCNNHeads\n"
        "def broken():\n"
        "    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)\n"
        "    model.roi_heads.mask_head = MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1)\n"
        "    return model\n",
        encoding="utf-8",
    )
    code = main(["render", f"{spec}:broken", "-o", str(tmp_path / "broken.dot"), "--no-trace"])
    assert code == 1
    out = capsys.readouterr().out
    assert "error [channel-mismatch] roi_heads.mask_head -> roi_heads.mask_predictor" in out


# --------------------------------------------------------------------------- argument errors and the Graph type


def test_argument_errors(maskrcnn: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(NotAModuleError, match=r"render\(\): model must be an nn.Module, got str"):
        surgery.render("model")  # type: ignore[arg-type]
    with pytest.raises(NotAModuleError, match="render\\(\\): before must be an nn.Module, got int"):
        surgery.render(maskrcnn, before=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"level must be one of \('components', 'modules'\), got 'layers'"):
        surgery.render(maskrcnn, level="layers")
    with pytest.raises(ValueError, match="depth applies to level='modules' only"):
        surgery.render(maskrcnn, depth=2)
    with pytest.raises(ValueError, match="depth must be an int >= 1 or None, got 0"):
        surgery.render(maskrcnn, level="modules", depth=0)
    with pytest.raises(ValueError, match="trace must be 'auto', True, False, None or a surgery.Trace, got 'yes'"):
        surgery.render(maskrcnn, trace="yes")
    with pytest.raises(ValueError, match=r"cannot tell the format of '.*diagram\.gif'"):
        surgery.render(maskrcnn, tmp_path / "diagram.gif", trace=False)
    assert list(tmp_path.iterdir()) == []


def test_graph_type(maskrcnn: nn.Module) -> None:
    graph = surgery.render(maskrcnn, trace=False)
    d = graph.to_dict()
    assert list(d) == ["title", "level", "flow", "nodes", "edges", "clusters", "legend", "findings", "dot"]
    assert d["title"] == "MaskRCNN" and d["level"] == "components" and d["dot"] == graph.source == str(graph)
    assert d["nodes"][0] == {
        "id": "transform", "path": "transform", "type": "GeneralizedRCNNTransform",
        "label": ["transform", "GeneralizedRCNNTransform", "no parameters"], "params": 0, "trainable": 0,
        "cluster": None, "status": None, "kind": "slot", "problem": None,
    }
    with pytest.raises(KeyError, match="no node for 'roi_heads.mask_hed'"):
        graph.node("roi_heads.mask_hed")
    with pytest.raises(KeyError, match="no edge transform -> rpn.head"):
        graph.edge("transform", "rpn.head")


def test_frozen_backbone_is_shown(maskrcnn: nn.Module) -> None:
    model = copy.deepcopy(maskrcnn)
    model.backbone.body.requires_grad_(False)
    model.backbone.body.layer4.requires_grad_(True)
    graph = surgery.render(model, trace=False)
    assert graph.node("backbone.body").label[-1] == "23.5M params, 15.0M trainable"
    model.backbone.body.requires_grad_(False)
    graph = surgery.render(model, before=maskrcnn, trace=False)
    body = graph.node("backbone.body")
    assert (body.status, body.label[-1]) == ("changed", "23.5M params, frozen")
    assert os.environ.get("PATH")  # the real PATH is untouched outside the no_dot fixture


def test_surgery_render_is_the_function_and_the_package_keeps_its_names() -> None:
    assert inspect.isfunction(surgery.render) and surgery.render.__module__ == "surgery.render"
    assert inspect.isfunction(surgery.diff) and surgery.diff.__module__ == "surgery.diff"
    package = sys.modules["surgery.render"]
    assert package.__path__ == [str(Path(surgery.__file__).parent / "render")]
    assert [name for name in package.__all__ if not hasattr(package, name)] == []
    assert (package.render, package.Graph) == (surgery.render, Graph)
    from surgery.render import Graph as Imported

    assert Imported is Graph and Graph.__module__ == "surgery.render.graph"
