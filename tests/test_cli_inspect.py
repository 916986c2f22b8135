"""``surgery inspect``: JSON on the default model, ``.py`` specs, exit codes and help."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from surgery.cli import main
from surgery.loading import DEFAULT_SPEC

SCRIPT = Path(sys.executable).with_name("surgery")

SMALL_MODEL_FILE = """
    import torchvision

    def build(num_classes=91):
        return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
"""


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def by_path(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["path"]: c for c in payload["components"]}


def size(side: dict[str, Any] | None) -> tuple[str, Any] | None:
    return None if side is None else (side["kind"], side["size"])


def assert_default_model_json(payload: dict[str, Any]) -> None:
    assert payload["model"] == DEFAULT_SPEC
    assert payload["ok"] is True
    assert payload["findings"] == []
    assert payload["family"] == "R-CNN"
    assert payload["class"] == "MaskRCNN"
    comps = by_path(payload)
    assert list(comps) == [
        "transform", "backbone.body", "backbone.fpn", "rpn.anchor_generator", "rpn.head",
        "roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor",
        "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor",
    ]
    assert (size(comps["roi_heads.box_predictor"]["in"]), size(comps["roi_heads.box_predictor"]["out"])) == (("features", 1024), ("features", 91))
    assert (size(comps["roi_heads.mask_head"]["in"]), size(comps["roi_heads.mask_head"]["out"])) == (("channels", 256), ("channels", 256))
    assert (size(comps["roi_heads.mask_predictor"]["in"]), size(comps["roi_heads.mask_predictor"]["out"])) == (("channels", 256), ("channels", 91))
    assert comps["roi_heads.mask_predictor"]["type"] == "MaskRCNNPredictor"
    assert comps["roi_heads.mask_head"]["params"] == 2_360_320
    assert payload["params"] == sum(c["params"] for c in payload["components"]) == 44_454_513  # every parameter sits in a slot
    assert payload["tree"][0] == "MaskRCNN"


def test_inspect_json_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "inspect", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert_default_model_json(payload)
    assert payload["depth"] == 2


@pytest.mark.slow  # a fresh interpreter imports torch and builds Mask R-CNN
def test_console_script_inspect_json() -> None:
    assert SCRIPT.is_file(), f"the console script {SCRIPT} is not installed (pip install -e .)"
    done = subprocess.run([str(SCRIPT), "inspect", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert_default_model_json(json.loads(done.stdout))


def test_inspect_text_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "inspect", "--depth", "1")
    assert code == 0, err
    assert out.startswith("MaskRCNN (R-CNN): 44,454,513 parameters")
    assert "Components" in out and "roi_heads.mask_predictor" in out
    assert "Module tree (depth 1)" in out and "└─ roi_heads: RoIHeads" in out


def test_inspect_py_spec_with_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "small_model.py"
    file.write_text(textwrap.dedent(SMALL_MODEL_FILE))
    spec = f"{file}:build"
    code, out, err = run_main(capsys, "inspect", spec, "--arg", "num_classes=3", "--json", "--depth", "1")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["model"] == spec
    assert payload["class"] == "FasterRCNN" and payload["family"] == "R-CNN"
    comps = by_path(payload)
    assert size(comps["roi_heads.box_predictor"]["out"]) == ("features", 3)
    assert "roi_heads.mask_head" not in comps
    assert payload["depth"] == 1 and len(payload["tree"]) == 5


def test_inspect_input_size_prints_layer_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "small_model.py"
    file.write_text(textwrap.dedent(SMALL_MODEL_FILE))
    code, out, err = run_main(capsys, "inspect", f"{file}:build", "--input-size", "3,128,128", "--depth", "1")
    assert code == 0, err
    assert "Layers (torchinfo)" in out and "Total params:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "no_colon_here"], "cannot load the model: model spec 'no_colon_here' must be 'pkg.module:callable'"),
        (["inspect", "no_such_package_xyz:build"], "cannot load the model: cannot import module 'no_such_package_xyz'"),
        (["inspect", "torchvision.models.detection:maskrcnn_resnet50_fp"], "Did you mean maskrcnn_resnet50_fpn"),
        (["inspect", "--arg", "num_classes=three"], "--arg num_classes='three': 'three' is not a Python literal"),
        (["inspect", "--arg", "num_classes"], "--arg 'num_classes' is not key=value"),
    ],
    ids=["malformed", "missing-module", "missing-callable", "bad-literal", "bad-key-value"],
)
def test_inspect_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("surgery: ")
    assert message in err


def test_missing_py_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.py"
    code, out, err = run_main(capsys, "inspect", f"{missing}:build")
    assert code == 2 and out == ""
    assert f"spec file {str(missing)!r} does not exist" in err


def test_console_script_bad_spec_exits_2() -> None:
    done = subprocess.run([str(SCRIPT), "inspect", "no_colon_here"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "model spec 'no_colon_here' must be 'pkg.module:callable'" in done.stderr


def test_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inspect", "--no-such-option"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: surgery")
    assert "examples:" in out
    assert "  surgery inspect --depth 3" in out
    assert "inspect" in out and "check" in out
    assert DEFAULT_SPEC in out


def test_inspect_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inspect", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: surgery inspect")
    assert "examples:" in out
    assert "  surgery inspect --depth 4 --input-size 3,320,320" in out
    for option in ("--json", "--depth", "--arg KEY=VALUE", "--weights FILE", "--trust", "--input-size"):
        assert option in out, option
