"""``surgery.diff``: structural changes and costs of an edit."""

from __future__ import annotations

import ast
import copy
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

import surgery
from surgery import Diff, NotAModuleError
from surgery.cli import main
from surgery.diff import Change, Measure, ProgressBar, module_changes, slot_changes
from surgery.diff.cost import _PeakTensorMemory
from tests.helpers import build, fingerprint

DEEPER = (256, 256, 512, 512, 1024)


def conv(cin: int, cout: int, k: int) -> int:
    """Parameters of a k×k convolution (or transposed convolution) with bias."""
    return cin * cout * k * k + cout


def deeper(model: nn.Module) -> nn.Module:
    """The motivating recipe done right: a deeper, wider mask head and a predictor that fits it."""
    out = copy.deepcopy(model)
    out.roi_heads.mask_head = MaskRCNNHeads(256, DEEPER, 1)
    out.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 91)
    return out


@pytest.fixture(scope="module")
def structural(maskrcnn: nn.Module) -> tuple[nn.Module, Diff]:
    after = deeper(maskrcnn)
    fp = (fingerprint(maskrcnn), fingerprint(after))
    result = surgery.diff(maskrcnn, after, cost=False)
    assert (fingerprint(maskrcnn), fingerprint(after)) == fp
    return after, result


def test_exact_module_changes(structural: tuple[nn.Module, Diff]) -> None:
    _, d = structural
    assert [(c.path, c.status, c.before, c.after, c.params_before, c.params_after, c.what, c.modules) for c in d.modules] == [
        ("roi_heads.mask_head.2.0", "changed", "Conv2d 256→256 3×3", "Conv2d 256→512 3×3",
         conv(256, 256, 3), conv(256, 512, 3), ("hyperparameters", "params"), 1),
        ("roi_heads.mask_head.3.0", "changed", "Conv2d 256→256 3×3", "Conv2d 512→512 3×3",
         conv(256, 256, 3), conv(512, 512, 3), ("hyperparameters", "params"), 1),
        ("roi_heads.mask_head.4", "added", None, "Conv2dNormActivation", None, conv(512, 1024, 3), (), 3),
        ("roi_heads.mask_predictor.conv5_mask", "changed", "ConvTranspose2d 256→256 2×2 s2", "ConvTranspose2d 1024→256 2×2 s2",
         conv(256, 256, 2), conv(1024, 256, 2), ("hyperparameters", "params"), 1),
    ]


def test_exact_slot_changes_and_params(structural: tuple[nn.Module, Diff], maskrcnn: nn.Module) -> None:
    _, d = structural
    head_before = 4 * conv(256, 256, 3)
    head_after = conv(256, 256, 3) + conv(256, 256, 3) + conv(256, 512, 3) + conv(512, 512, 3) + conv(512, 1024, 3)
    logits = conv(256, 91, 1)
    predictor_before, predictor_after = conv(256, 256, 2) + logits, conv(1024, 256, 2) + logits
    expected = (head_after - head_before) + (predictor_after - predictor_before)
    assert expected == 7_865_856
    assert [(c.path, c.status, c.params_before, c.params_after, c.what) for c in d.changed_slots] == [
        ("roi_heads.mask_head", "changed", head_before, head_after, ("signature", "params")),
        ("roi_heads.mask_predictor", "changed", predictor_before, predictor_after, ("signature", "params")),
    ]
    assert d.changed_slots[0].before == "MaskRCNNHeads (in 256 ch, out 256 ch)"
    assert d.changed_slots[0].after == "MaskRCNNHeads (in 256 ch, out 1024 ch)"
    total = sum(p.numel() for p in maskrcnn.parameters())
    assert (d.params.before, d.params.after, d.params.delta) == (total, total + expected, expected)
    assert (d.trainable.before, d.trainable.delta) == (total, expected)
    assert d.params.ratio == pytest.approx((total + expected) / total)
    assert (d.flops, d.latency, d.memory, d.problems) == (None, None, None, [])


def test_text_and_dict(structural: tuple[nn.Module, Diff], maskrcnn: nn.Module) -> None:
    _, d = structural
    total = sum(p.numel() for p in maskrcnn.parameters())
    text = str(d)
    assert text.splitlines()[0] == "surgery diff: MaskRCNN → MaskRCNN"
    assert "Slots: 2 changed, 0 added, 0 removed" in text
    assert "Modules: 3 changed, 1 added, 0 removed" in text
    assert "  + roi_heads.mask_head.4: Conv2dNormActivation, 4,719,616 params (3 modules)" in text
    assert "  ~ roi_heads.mask_head.2.0: Conv2d 256→256 3×3 → Conv2d 256→512 3×3, params 590,080 → 1,180,160 [hyperparameters, params]" in text
    assert "Cost (parameters only)" in text
    params_row = next(line for line in text.splitlines() if line.strip().startswith("params"))
    assert params_row.split() == ["params", f"{total:,}", f"{total + 7_865_856:,}", "+7,865,856", "1.18×"]
    body = json.loads(json.dumps(d.to_dict()))
    assert list(body) == ["before", "after", "slots", "modules", "cost", "settings", "problems", "notes"]
    assert body["notes"] == []
    assert body["cost"]["params"] == {"name": "params", "before": total, "after": total + 7_865_856, "delta": 7_865_856,
                                      "ratio": pytest.approx((total + 7_865_856) / total), "unit": "count"}
    assert [m["path"] for m in body["modules"]] == ["roi_heads.mask_head.2.0", "roi_heads.mask_head.3.0", "roi_heads.mask_head.4",
                                                    "roi_heads.mask_predictor.conv5_mask"]


def test_identical_models(maskrcnn: nn.Module) -> None:
    d = surgery.diff(maskrcnn, copy.deepcopy(maskrcnn), cost=False)
    assert d.modules == [] and d.changed_slots == [] and d.params.delta == 0
    assert "Slots: none changed" in str(d) and "Modules: none changed" in str(d)


def test_added_and_removed_slots(shared: Callable[..., nn.Module]) -> None:
    d = surgery.diff(shared("maskrcnn_resnet50_fpn"), shared("fasterrcnn_resnet50_fpn"), cost=False)
    assert [(c.path, c.status) for c in d.changed_slots] == [
        ("roi_heads.mask_roi_pool", "removed"),
        ("roi_heads.mask_head", "removed"),
        ("roi_heads.mask_predictor", "removed"),
    ]
    assert [(c.path, c.status, c.modules) for c in d.modules] == [
        ("roi_heads.mask_roi_pool", "removed", 1),
        ("roi_heads.mask_head", "removed", 13),
        ("roi_heads.mask_predictor", "removed", 4),
    ]
    assert d.params.delta == -(4 * conv(256, 256, 3) + conv(256, 256, 2) + conv(256, 91, 1))


@pytest.mark.slow
def test_costs_of_the_deeper_mask_head() -> None:
    # Few proposals and detections keep the forwards short. The thresholds set by diff make
    # the mask head run on exactly box_detections_per_img boxes, so ΔFLOPs is exact.
    detections = 4
    before = build("maskrcnn_resnet50_fpn", rpn_post_nms_top_n_test=50, box_detections_per_img=detections)
    after = deeper(before)
    fp = (fingerprint(before), fingerprint(after))
    thresholds = (before.roi_heads.score_thresh, after.roi_heads.score_thresh)
    calls: list[tuple[int, int, str]] = []
    d = surgery.diff(before, after, image_size=128, runs=1, progress=lambda *a: calls.append(a))
    assert (fingerprint(before), fingerprint(after)) == fp
    assert (before.roi_heads.score_thresh, after.roi_heads.score_thresh) == thresholds == (0.05, 0.05)
    assert d.problems == []
    assert d.flops is not None and d.flops.before is not None and d.flops.after is not None
    assert 0 < d.flops.before < d.flops.after
    assert d.flops.ratio is not None and d.flops.ratio > 1
    # FlopCounterMode counts 2·cin·cout·k·k MACs per output pixel; mask features are 14×14,
    # the transposed conv reads 14×14 inputs.
    def flops(cin: int, cout: int, k: int) -> int:
        return 2 * cin * cout * k * k * 14 * 14

    head = flops(256, 512, 3) + flops(512, 512, 3) + flops(512, 1024, 3) - 2 * flops(256, 256, 3)
    predictor = flops(1024, 256, 2) - flops(256, 256, 2)
    assert d.flops.delta == detections * (head + predictor)
    assert d.memory is not None and d.memory.before and d.memory.after and d.memory.after > d.memory.before
    assert d.latency is not None and d.latency.before and d.latency.after
    assert d.settings == {
        "image_size": 128, "batch_size": 1, "runs": 1, "device": "cpu",
        "memory_method": "peak bytes of tensors created by operators (TorchDispatchMode)", "score_thresh": 0.0,
    }
    assert [c[:2] for c in calls] == [(0, 6), (1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
    assert calls[-1][2] == "latency (after) 1/1"
    text = str(d)
    assert "Cost (eval forward, 1 image(s) 128×128, on cpu, latency median of 1 runs)" in text
    flops_row = next(line for line in text.splitlines() if line.strip().startswith("FLOPs"))
    assert flops_row.split()[-1] == f"{d.flops.ratio:.2f}×"


@pytest.mark.slow
def test_a_model_that_raises_is_reported_not_raised() -> None:
    before = build("maskrcnn_resnet50_fpn", rpn_post_nms_top_n_test=20, box_detections_per_img=2)
    after = copy.deepcopy(before)
    after.roi_heads.mask_head = MaskRCNNHeads(256, DEEPER, 1)  # the stock predictor no longer fits
    fp = fingerprint(after)
    d = surgery.diff(before, after, image_size=64, runs=1)
    assert fingerprint(after) == fp
    assert len(d.problems) == 1
    assert d.problems[0].startswith("after model: eval forward raised RuntimeError: ")
    assert d.flops is not None and d.flops.before is not None and d.flops.after is None and d.flops.ratio is None
    assert d.latency is not None and d.latency.after is None
    assert "  ! after model: eval forward raised RuntimeError" in str(d)


def test_peak_tensor_memory() -> None:
    tracker = _PeakTensorMemory()
    weight = torch.ones(256)  # made outside: never counted
    with tracker:
        a = torch.zeros(1024)  # 4 KiB
        b = a + 1  # 8 KiB live
        view = b.view(32, 32)  # a view allocates nothing
        b.add_(weight.sum())  # the 4-byte sum is live while a and b are; the in-place add allocates nothing
        del a
        c = view * 2  # a freed, c allocated: 8 KiB live again
        t = weight.t()  # a view of an outside tensor is not an allocation
    assert tracker.peak == 8192 + 4
    assert tracker.current == 8192  # b and c
    del b, c, view
    assert tracker.current == 0
    assert t.shape == (256,)


def test_measure_format() -> None:
    assert Measure("FLOPs", 170_700_000_000, 479_000_000_000, "flop").row() == ("FLOPs", "170.7 GFLOP", "479.0 GFLOP", "+308.3 GFLOP", "2.81×")
    assert Measure("latency", 0.5, 0.25, "s").row() == ("latency", "500.0 ms", "250.0 ms", "-250.0 ms", "0.50×")
    assert Measure("peak memory", 2**20, 3 * 2**20, "bytes").row() == ("peak memory", "1.0 MiB", "3.0 MiB", "+2.0 MiB", "3.00×")
    assert Measure("params", 0, 10).ratio is None
    assert Measure("FLOPs", None, 10, "flop").row() == ("FLOPs", "-", "10 FLOP", "-", "-")


def test_progress_bar() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, width=10)
    bar(3, 10, "FLOPs")
    bar(10, 10, "done")
    text = out.getvalue()
    assert text.startswith("\r  [███·······] 3/10 FLOPs")
    assert "\r  [██████████] 10/10 done" in text and text.endswith("\n")


def test_argument_errors(maskrcnn: nn.Module) -> None:
    with pytest.raises(NotAModuleError, match="diff\\(\\): after must be an nn.Module, got str"):
        surgery.diff(maskrcnn, "model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size must be an int >= 32, got 16"):
        surgery.diff(maskrcnn, maskrcnn, image_size=16)
    with pytest.raises(ValueError, match="runs must be an int >= 1, got 0"):
        surgery.diff(maskrcnn, maskrcnn, runs=0)


def test_cli_diff_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["diff", "torchvision.models.detection:maskrcnn_resnet50_fpn", "torchvision.models.detection:fasterrcnn_resnet50_fpn",
                 "--no-cost", "--json"])
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["model"], body["ok"], body["findings"]) == ("torchvision.models.detection:fasterrcnn_resnet50_fpn", True, [])
    assert (body["before"], body["classes"]) == ("torchvision.models.detection:maskrcnn_resnet50_fpn", ["MaskRCNN", "FasterRCNN"])
    assert [s["path"] for s in body["slots"] if s["status"] == "removed"] == [
        "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"]
    assert list(body["cost"]) == ["params", "trainable"]


def test_cli_diff_text_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "torchvision.models.detection:maskrcnn_resnet50_fpn"
    assert main(["diff", spec, spec, "--no-cost"]) == 0
    assert "Slots: none changed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["diff", spec])
    assert info.value.code == 2
    assert "the following arguments are required: SPEC_B" in capsys.readouterr().err


# --------------------------------------------------------------------------- package layout


def _module_level_imports(folder: Path) -> dict[str, list[str]]:
    """Each file of ``folder`` and the ``surgery`` modules it imports when it is loaded
    (imports inside functions and ``if TYPE_CHECKING:`` blocks left out)."""
    out: dict[str, list[str]] = {}
    for file in sorted(folder.glob("*.py")):
        names: list[str] = []
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                names.append(node.module)
            elif isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
        out[file.name] = sorted(n for n in names if n.startswith("surgery"))
    return out


def test_diff_never_imports_render_and_render_imports_only_the_structure() -> None:
    root = Path(surgery.__file__).parent
    diff_imports = _module_level_imports(root / "diff")
    assert sorted(diff_imports) == ["__init__.py", "cost.py", "structure.py"]
    assert {f: [n for n in names if n.startswith("surgery.render")] for f, names in diff_imports.items()} == {
        "__init__.py": [], "cost.py": [], "structure.py": []
    }
    render_imports = _module_level_imports(root / "render")
    assert sorted({n for names in render_imports.values() for n in names if n.startswith("surgery.diff")}) == ["surgery.diff.structure"]


def test_structural_diff_is_one_set_of_objects_under_both_names() -> None:
    from surgery.render import Change as RenderChange
    from surgery.render import module_changes as render_module_changes
    from surgery.render import slot_changes as render_slot_changes

    assert (RenderChange, render_module_changes, render_slot_changes) == (Change, module_changes, slot_changes)
    assert Change.__module__ == "surgery.diff.structure"
