"""The command line where users are: specs in the current folder, GitHub annotations with
``file=`` and ``line=``, markdown, ``surgery review``, both sides of ``diff``/``render``/``review``
built with their own ``--arg``/``--weights``, saved recipe results as specs, progress lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli

SCRIPT = Path(sys.executable).with_name("surgery")

TINY = '''\
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def build(num_classes: int = 3) -> nn.Module:
    return Tiny(num_classes)


def broken() -> nn.Module:
    return Tiny(3, width=5)


def raising() -> nn.Module:
    model = Tiny()
    raise RuntimeError("no such layer")
'''

#: A Mask R-CNN whose mask head (a class defined in this file, line 7) takes 128 channels instead of 256.
HEADS = '''\
import torchvision
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor


class NarrowHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(128, 256, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def own_head():
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.roi_heads.mask_head = NarrowHead()
    return model


def stock_predictor():
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(128, 256, 91)
    return model
'''



@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current folder holding ``tiny_spec.py``; ``sys.path`` is restored afterwards."""
    (tmp_path / "tiny_spec.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def line_of(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


# --------------------------------------------------------------------------- specs in the current folder


def test_a_module_in_the_current_folder_is_a_spec_for_the_console_script(tmp_path: Path) -> None:
    (tmp_path / "detector_here.py").write_text(TINY)
    done = subprocess.run([str(SCRIPT), "inspect", "detector_here:build", "--json", "--depth", "0"], capture_output=True, text=True,
                          timeout=300, check=False, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert (body["model"], body["class"], body["params"]) == ("detector_here:build", "Tiny", 112 + 15)


# --------------------------------------------------------------------------- --format github


def test_github_points_at_the_class_defined_in_the_working_tree(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "heads.py").write_text(HEADS)
    code, out, err = run_cli(["check", "heads:own_head", "--format", "github"], capsys)
    assert code == 1, err
    line = line_of(HEADS, "class NarrowHead")
    assert out.splitlines() == [
        f"::error file=heads.py,line={line},title=channel-mismatch::roi_heads.mask_roi_pool produces 256 channels but "
        "roi_heads.mask_head (NarrowHead) expects 128 (in roi_heads.mask_head.conv) Fix: model.roi_heads.mask_head = MaskRCNNHeads(256, (256,), 1)",
        "surgery check: 1 error(s), 0 warning(s)",
    ]


def test_github_falls_back_to_the_builder_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "heads.py").write_text(HEADS)
    code, out, err = run_cli(["check", "heads.py:stock_predictor", "--format", "github"], capsys)
    assert code == 1, err
    first = out.splitlines()[0]
    assert first.startswith(f"::error file=heads.py,line={line_of(HEADS, 'def stock_predictor')},title=channel-mismatch::"), first


def test_github_leaves_out_files_outside_the_working_tree(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["check", "torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn", "--format", "github",
                              "--arg", "num_classes=3"], capsys)
    assert code == 0, err
    assert out.splitlines() == [  # torchvision's own file is not in the working tree: no location
        "::warning title=featmap-missing::roi_heads.box_roi_pool pools feature maps ['0', '1', '2', '3'] but the backbone produces "
        "['0', '1', 'pool']; ['2', '3'] are silently ignored Fix: model.roi_heads.box_roi_pool = "
        "MultiScaleRoIAlign(featmap_names=['0', '1'], output_size=7, sampling_ratio=2)",
        "surgery check: 0 error(s), 1 warning(s)",
    ]


@pytest.mark.parametrize(("spec", "where", "message"), [
    ("tiny_spec.py:raising", f"file=tiny_spec.py,line={line_of(TINY, 'raise RuntimeError')},",
     "surgery: cannot load the model: building 'tiny_spec.py:raising' raised RuntimeError: no such layer"),
    ("tiny_spec:nothing", "file=tiny_spec.py,",
     "surgery: cannot load the model: 'tiny_spec' has no attribute 'nothing' (spec 'tiny_spec:nothing'). It has: Tiny, broken, build, raising."),
    ("syntax.py:build", "file=syntax.py,line=2,", None),
    ("no_colon_here", "", "surgery: cannot load the model: model spec 'no_colon_here' must be 'pkg.module:callable' or "
                          "'path/to/file.py:callable' (or an existing file written by 'surgery apply -o'), e.g. "
                          "'torchvision.models.detection:maskrcnn_resnet50_fpn'"),
])
def test_load_errors_are_annotations(workdir: Path, capsys: pytest.CaptureFixture[str], spec: str, where: str, message: str | None) -> None:
    (workdir / "syntax.py").write_text("def build():\n    return (\n")
    code, out, err = run_cli(["check", spec, "--format", "github"], capsys)
    assert code == 2
    assert out.startswith(f"::error {where}title=surgery check::surgery: cannot load the model: "), out
    if message is not None:
        assert out == f"::error {where}title=surgery check::{message}\n"
    assert "Traceback" not in err


# --------------------------------------------------------------------------- --format markdown


def test_markdown_on_every_command_that_reports_findings(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tiny_spec:build"
    code, out, err = run_cli(["check", spec, "--format", "markdown"], capsys)
    assert (code, out.splitlines()[0]) == (0, f"**surgery check: {spec}**: ok, 0 warning(s), 3 checks ran"), err
    code, out, err = run_cli(["trace", spec, "--format", "markdown", "--image-size", "32"], capsys)
    assert (code, out.splitlines()[0]) == (0, f"**surgery trace: {spec}**: ok, 0 warning(s), 1 checks ran"), err
    code, out, err = run_cli(["smoke", spec, "--format", "markdown", "--image-size", "32", "--device", "cpu"], capsys)
    assert (code, out.splitlines()[0]) == (0, f"**surgery smoke: {spec}**: ok, 0 warning(s), 3 checks ran"), err
    code, out, err = run_cli(["render", spec, "-o", "tiny.dot", "--format", "markdown"], capsys)
    assert (code, out.splitlines()[0]) == (0, f"**surgery render: {spec}**: ok, 0 warning(s), 1 checks ran"), err
    assert out.splitlines()[-1].startswith("surgery render: wrote tiny.dot (")

    code, out, err = run_cli(["check", "tiny_spec:broken", "--format", "markdown"], capsys)
    lines = out.splitlines()
    assert (code, lines[0]) == (1, "**surgery check: tiny_spec:broken**: 1 error(s), 0 warning(s), 3 checks ran"), err
    assert lines[2:4] == ["| severity | code | modules | message | fix |", "| --- | --- | --- | --- | --- |"]
    assert lines[4] == ("| error | `channel-mismatch` | `conv` → `head` | conv (Conv2d) produces 4 features but head (Linear) expects 5 "
                        "(weight (3, 5)); it received 2×4 | `model.head = nn.Linear(4, 3)  # or make conv produce 5 features` |")


# --------------------------------------------------------------------------- review


def test_review_writes_the_page_and_a_json_summary(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["review", "tiny_spec:build", "tiny_spec:build", "--arg-before", "num_classes=5", "--arg", "num_classes=2",
                              "-o", "review.html", "--json", "--image-size", "32", "--no-cost"], capsys)
    assert code == 0, err
    body = json.loads(out)
    assert (body["ok"], body["verdict"], body["output"], body["before"], body["after"]) == (
        True, "passes: no error, smoke test ok", str(workdir / "review.html"), "tiny_spec:build", "tiny_spec:build")
    assert (body["findings"], body["smoke"], body["title"]) == ([], True, "Tiny → Tiny")
    assert [(c["path"], c["status"]) for c in body["slots_changed"]] == [("head", "changed")]
    page = (workdir / "review.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Passes: no error, smoke test ok" in page
    assert err.splitlines() == [
        "surgery review: loading the model before: tiny_spec:build",
        "surgery review: loading the model after: tiny_spec:build",
        "surgery review: reviewing: check, diagram, diff, smoke test at 32×32",
    ]


def test_review_of_a_broken_edit_exits_1(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["review", "tiny_spec:build", "tiny_spec:broken", "-o", "review.html", "--image-size", "32", "--no-cost",
                              "--no-smoke"], capsys)
    assert code == 1, err
    assert out.splitlines()[-1] == f"surgery review: Tiny → Tiny: fails: 1 check error; page written to {workdir / 'review.html'}"


@pytest.mark.parametrize(("output", "message"), [
    ("missing/review.html", "surgery: -o 'missing/review.html': the folder 'missing' does not exist; create it first"),
    ("review.txt", "surgery: -o 'review.txt': give a file ending in .html or .htm"),
])
def test_review_refuses_a_bad_output(workdir: Path, capsys: pytest.CaptureFixture[str], output: str, message: str) -> None:
    code, out, err = run_cli(["review", "tiny_spec:build", "tiny_spec:build", "-o", output], capsys)
    assert (code, out, err.splitlines()) == (2, "", [message])


# --------------------------------------------------------------------------- both sides


def test_diff_builds_each_side_with_its_own_args_and_weights(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tiny_spec import Tiny  # the current folder is on sys.path once a command ran there

    weights = Tiny(5).state_dict()
    weights["head.bias"].fill_(7.0)
    torch.save(weights, workdir / "five.pt")
    code, out, err = run_cli(["diff", "tiny_spec:build", "tiny_spec:build", "--arg-before", "num_classes=5", "--weights-before", "five.pt",
                              "--arg", "num_classes=2", "--no-cost", "--json"], capsys)
    assert code == 0, err
    body = json.loads(out)
    assert (body["cost"]["params"]["before"], body["cost"]["params"]["after"]) == (112 + 25, 112 + 10)
    code, out, err = run_cli(["diff", "tiny_spec:build", "tiny_spec:build", "--weights-before", "five.pt", "--no-cost"], capsys)
    assert code == 2
    assert "surgery: cannot load the model: weights do not match the model" in err


def test_render_before_takes_its_own_args(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["render", "tiny_spec:build", "--arg", "num_classes=2", "-o", "after.dot", "--before", "tiny_spec:build",
                              "--arg-before", "num_classes=5", "--json"], capsys)
    assert code == 0, err
    body = json.loads(out)
    assert (body["ok"], body["output"], body["before"]) == (True, "after.dot", "tiny_spec:build")
    assert "changed" in (workdir / "after.dot").read_text()
    code, out, err = run_cli(["render", "tiny_spec:build", "-o", "after.dot", "--arg-before", "num_classes=5"], capsys)
    assert (code, err.splitlines()[-1]) == (2, "surgery: --arg-before and --weights-before apply to the --before model; give --before SPEC too")


# --------------------------------------------------------------------------- a saved recipe result is a spec


def test_an_applied_recipe_is_a_spec_from_any_folder(workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "freeze.toml").write_text('[[step]]\nfreeze = "conv*"\n')
    code, out, err = run_cli(["apply", "freeze.toml", "tiny_spec.py:build", "--arg", "num_classes=4", "-o", "out.pt"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == "saved to out.pt (check it with: surgery check out.pt; rebuild it with surgery.rebuild('out.pt'))"
    payload = torch.load(workdir / "out.pt", weights_only=True)
    assert (payload["spec"], payload["args"]) == (f"{workdir / 'tiny_spec.py'}:build", {"num_classes": 4})

    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(["check", str(workdir / "out.pt"), "--json"], capsys)
    assert code == 0, err
    assert (json.loads(out)["model"], json.loads(out)["coverage"]["slots"]) == (str(workdir / "out.pt"), {"conv": ["probe"], "head": ["probe"]})
    code, out, err = run_cli(["inspect", "../out.pt", "--json", "--depth", "0"], capsys)
    assert (code, json.loads(out)["params"]) == (0, 112 + 20)

    code, out, err = run_cli(["check", "../out.pt", "--arg", "num_classes=2"], capsys)
    assert (code, err.splitlines()[-1]) == (2, "surgery: cannot load the model: '../out.pt' is a saved recipe result: it stores its own "
                                               "spec and args; it takes no --arg (got num_classes)")
    code, out, err = run_cli(["apply", "../freeze.toml", "../out.pt", "-o", "../out.pt"], capsys)
    assert (code, err.splitlines()[-1]) == (2, "surgery: cannot save to '../out.pt': it is the file the model was built from "
                                               "(spec '../out.pt'); write the result to another file")


# --------------------------------------------------------------------------- progress


def test_smoke_says_when_each_phase_starts_and_ends_on_stderr(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["smoke", "tiny_spec:build", "--json", "--image-size", "32", "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.endswith("phase running...")]
    ends = [i for i, line in enumerate(lines) if line.split()[:1] in (["check"], ["train"], ["eval"])]
    assert [lines[i] for i in starts] == [f"surgery smoke: {p} phase running..." for p in ("check", "train", "eval")]
    assert [lines[i].split()[:2] for i in ends] == [["check", "ok"], ["train", "ok"], ["eval", "ok"]]
    assert [i < j for i, j in zip(starts, ends, strict=True)] == [True, True, True]


def test_diff_prints_one_line_per_phase_without_a_terminal(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["diff", "tiny_spec:build", "tiny_spec:build", "--image-size", "32", "--runs", "1"], capsys)
    assert code == 0, err
    assert err.splitlines() == [
        "surgery diff: loading the model before: tiny_spec:build",
        "surgery diff: loading the model after: tiny_spec:build",
        "surgery diff: comparing the structure and measuring the cost",
        "surgery diff: measuring FLOPs and memory (0/6 steps done)",
        "surgery diff: measuring warm-up (3/6 steps done)",
        "surgery diff: measuring latency (5/6 steps done)",
    ]


def test_the_help_names_the_before_and_after_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("diff", "render", "review"):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0
        flat = " ".join(out.split())
        for option in ("--arg KEY=VALUE", "--weights FILE", "--arg-before KEY=VALUE", "--weights-before FILE"):
            assert option in flat, (command, option)
    _, out, _ = run_cli(["diff", "--help"], capsys)
    assert "keyword argument for the SPEC_A callable" in " ".join(out.split())

