"""The package's shape: family knowledge lives in ``surgery/anatomy/`` alone, modules stay
small, and the import graph has no cycle."""

from __future__ import annotations

import ast
import importlib
import inspect as _inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import surgery

PACKAGE = Path(surgery.__file__).parent
ANATOMY = PACKAGE / "anatomy"
MAX_LINES = 600

#: torchvision packages that hold model families; only the anatomy may import them.
FAMILY_PACKAGES = (
    "torchvision.models.detection",
    "torchvision.models.segmentation",
    "torchvision.models.optical_flow",
    "torchvision.models.video",
    "torchvision.models.quantization",
)
#: Family names and slot paths a module outside the anatomy must not spell in code.
FAMILY_STRINGS = {"R-CNN", "RetinaNet", "FCOS", "SSD", "generic"}
SLOT_PREFIXES = ("roi_heads", "rpn.", "head.classification_head", "head.regression_head", "backbone.body", "backbone.fpn")
SLOT_NAMES = {"rpn", "roi_heads", "box_predictor", "mask_predictor", "keypoint_predictor", "box_head", "mask_head",
              "keypoint_head", "anchor_generator", "classification_head", "regression_head", "aux_classifier"}
#: Strings outside the anatomy allowed to name a family, each with its reason.
EXEMPT_STRINGS = {
    "torchvision.models.detection:maskrcnn_resnet50_fpn",  # the default model spec (DESIGN.md: CLI contract)
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _family_classes() -> set[str]:
    names: set[str] = set()
    for package in FAMILY_PACKAGES:
        root = importlib.import_module(package)
        for info in __import__("pkgutil").iter_modules(root.__path__):
            module = importlib.import_module(f"{package}.{info.name}")
            for name, obj in vars(module).items():
                if _inspect.isclass(obj) and obj.__module__.startswith(package) and not name.startswith("_"):
                    names.add(name)
    return names


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def _outside_anatomy() -> list[tuple[str, Path]]:
    return [(name, path) for name, path in _modules() if not path.is_relative_to(ANATOMY)]


def _violations(path: Path, classes: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(FAMILY_PACKAGES):
                found.append(f"{where}: imports {node.module}")
            if node.module.startswith("surgery.anatomy.") and not node.module.split(".")[2].startswith("_"):
                found.append(f"{where}: imports the family file {node.module}")
        elif isinstance(node, ast.Import):
            found.extend(f"{where}: imports {a.name}" for a in node.names if a.name.startswith(FAMILY_PACKAGES))
        elif isinstance(node, ast.Name) and node.id in classes:
            found.append(f"{where}: names the family class {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append(f"{where}: names the family class {node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if text in EXEMPT_STRINGS or " " in text:  # prose (messages, help) may give examples
                continue
            if text in FAMILY_STRINGS or text in SLOT_NAMES or text.startswith(SLOT_PREFIXES):
                found.append(f"{where}: spells the family string {text!r}")
    return found


def test_no_module_outside_the_anatomy_names_a_family() -> None:
    classes = _family_classes()
    assert {"GeneralizedRCNN", "MaskRCNNPredictor", "RetinaNet", "ImageList", "FCN"} <= classes
    found = [v for _, path in _outside_anatomy() for v in _violations(path, classes)]
    assert found == []


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docstrings may say roi_heads.box_predictor and GeneralizedRCNN."""\n'
        "from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN\n"
        "from surgery.anatomy.rcnn import RCNNAnatomy\n"
        "def f(model):\n"
        '    """MaskRCNNPredictor in a docstring is fine."""\n'
        '    if anatomy.name == "R-CNN":\n'
        '        return model.get_submodule("roi_heads.box_predictor"), isinstance(model, GeneralizedRCNN)\n'
        '    raise ValueError("e.g. \'roi_heads.mask_head\'")\n'
    )
    found = _violations(bad, _family_classes())
    assert [v.split(": ", 1)[1] for v in found] == [
        "imports torchvision.models.detection.generalized_rcnn",
        "imports the family file surgery.anatomy.rcnn",
        "spells the family string 'R-CNN'",
        "spells the family string 'roi_heads.box_predictor'",
        "names the family class GeneralizedRCNN",
    ]


@pytest.mark.parametrize(("name", "path"), list(_modules()), ids=[n for n, _ in _modules()])
def test_no_module_is_over_600_lines(name: str, path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def _import_graph() -> dict[str, set[str]]:
    """Module-level imports between the package's modules (imports inside functions and under
    ``TYPE_CHECKING`` run later or never, so they cannot make an import cycle)."""
    known = dict(_modules())
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                # ``from pkg import submodule`` depends on the submodule; ``from pkg import name`` on pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("surgery"):
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = _import_graph()
    assert "surgery.anatomy._base" in graph["surgery.anatomy.rcnn"]
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_public_name_resolves() -> None:
    for name in surgery.__all__:
        assert getattr(surgery, name) is not None, name
