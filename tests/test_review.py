"""``surgery.review``: the self-contained review page, checked as text and in a real browser
(headless Chromium: the DOM it builds and a screenshot that is not blank)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

import surgery
from surgery import NotAModuleError, Recipe, ReviewResult
from surgery.render import dot_binary
from tests.helpers import fingerprint
from tests.test_display import tiny_maskrcnn

DOCS_IMAGE = Path(__file__).resolve().parent.parent / "docs" / "img" / "review.png"
RECIPE = """\
description = "a wider two-layer mask head; adapt rebuilds the predictor for 512 channels"

[[step]]
replace = "roi_heads.mask_head"
module = "torchvision.models.detection.mask_rcnn:MaskRCNNHeads"
kwargs = { in_channels = 256, layers = [256, 512], dilation = 1 }
adapt = true
"""

needs_dot = pytest.mark.skipif(dot_binary() is None, reason="Graphviz's dot is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def before() -> nn.Module:
    return tiny_maskrcnn()


@pytest.fixture(scope="module")
def broken(before: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[ReviewResult, bool]:
    """A review of the classic mistake: a wider mask head attached by hand, the predictor kept.
    Returns the result and whether both models were left exactly as they were."""
    after = copy.deepcopy(before)
    after.roi_heads.mask_head = MaskRCNNHeads(256, (256, 512), 1)
    prints = fingerprint(before), fingerprint(after)
    path = tmp_path_factory.mktemp("review") / "pages" / "review.html"
    result = surgery.review(before, after, path, title="Wider mask head, predictor not rebuilt", image_size=64)
    return result, (fingerprint(before), fingerprint(after)) == prints


@pytest.fixture(scope="module")
def fixed(before: nn.Module) -> ReviewResult:
    """A review of the same edit done by a recipe (replace with adapt), costs not measured."""
    recipe = Recipe.parse(RECIPE, source="wider_mask_head.toml")
    after = copy.deepcopy(before)
    recipe.apply(after)
    return surgery.review(before, after, recipe=recipe, cost=False, image_size=64)


def test_a_broken_edit_fails_with_its_findings_and_fix(broken: tuple[ReviewResult, bool]) -> None:
    result, untouched = broken
    assert untouched
    assert result.ok is False
    assert result.verdict == "fails: 1 check error, smoke test failed (1 error)"
    assert result.report.codes() == ["channel-mismatch"]
    assert result.smoke is not None and result.smoke.codes() == ["shape-error"]
    assert str(result) == f"surgery review: Wider mask head, predictor not rebuilt: {result.verdict}; page written to {result.path}"
    assert result.path is not None and result.path.read_text(encoding="utf-8") == result.html
    html = result.html
    assert html.startswith("<!DOCTYPE html>")
    assert '<div class="sg-verdict" id="verdict" style="background:#d32f2f">✗ Fails: 1 check error, smoke test failed (1 error)</div>' in html
    assert '<table class="sg-findings" id="findings">' in html
    assert "<code>model.roi_heads.mask_predictor = MaskRCNNPredictor(512, 256, 3)</code>" in html
    assert '<table id="slot-changes">' in html and '<table id="cost">' in html and '<table id="smoke-phases">' in html
    assert "Recipe</h2>" not in html


def test_the_page_needs_nothing_from_the_network(broken: tuple[ReviewResult, bool]) -> None:
    html = broken[0].html
    assert re.findall(r"<(?:script|link|img|iframe)\b", html) == []
    assert re.findall(r"(?:src|href)=\"(?:https?:)?//", html) == []
    assert "@import" not in html and "url(" not in html
    # the only URLs left are the XML namespaces of the inline SVG
    assert set(re.findall(r"https?://[^\"' )]+", html)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


@needs_dot
def test_the_diagram_is_inline_svg_with_the_broken_edge(broken: tuple[ReviewResult, bool]) -> None:
    html = broken[0].html
    start = html.index('<div class="sg-diagram" id="diagram"><svg')
    svg = html[start: html.index("</svg>", start)]
    assert 'id="roi_heads.mask_head&#45;&gt;roi_heads.mask_predictor"' in svg
    assert 'stroke="#d32f2f"' in svg


def test_a_clean_edit_passes_and_shows_its_recipe(fixed: ReviewResult) -> None:
    assert fixed.ok is True
    assert fixed.verdict == "passes: no error, smoke test ok"
    assert fixed.path is None
    assert fixed.title == "MaskRCNN → MaskRCNN"
    assert fixed.recipe is not None and fixed.recipe.source == "wider_mask_head.toml"
    assert [c.path for c in fixed.diff.changed_slots] == ["roi_heads.mask_head", "roi_heads.mask_predictor"]
    assert fixed.diff.flops is None
    html = fixed.html
    assert '<p class="sg-muted" id="findings">No findings.</p>' in html
    assert "<h2>Recipe</h2><p><code>wider_mask_head.toml</code> — a wider two-layer mask head; adapt rebuilds" in html
    assert "<li><code>replace roi_heads.mask_head with torchvision.models.detection.mask_rcnn:MaskRCNNHeads (adapt)</code></li>" in html
    assert "kwargs = { in_channels = 256, layers = [256, 512], dilation = 1 }" in html
    assert "Cost (parameters only)" in html
    assert repr(fixed) == "<ReviewResult MaskRCNN → MaskRCNN: passes: no error, smoke test ok>"
    assert 'id="verdict" style="background:#2e7d32">✓ Passes: no error, smoke test ok</div>' in fixed._repr_html_()


def test_review_names_the_bad_argument(before: nn.Module) -> None:
    with pytest.raises(NotAModuleError, match=r"review\(\)"):
        surgery.review(before, "model.pt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"image_size must be .*>= 32.*got 16"):
        surgery.review(before, before, image_size=16)
    with pytest.raises(TypeError, match=r"recipe must be a surgery.Recipe, the path of a recipe file or None, got int"):
        surgery.review(before, before, recipe=3)  # type: ignore[arg-type]
    with pytest.raises(surgery.RecipeError, match=r"cannot read the recipe"):
        surgery.review(before, before, recipe="no/such/recipe.toml")


# --------------------------------------------------------------------------- in a real browser


def chromium() -> str:
    """The Chromium binary; skips without one, except under CI=true, where it fails."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed but CI=true: `make setup` installs Debian's chromium package")
    pytest.skip("chromium is not installed (`make setup` installs it, or `apt-get install chromium`)")


def browse(page: Path, profile: Path, *args: str) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


class Dom(HTMLParser):
    """For each element Chromium serialized: its tag, id, class, the ids around it, and its text."""

    VOID = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[tuple[str, str]] = []
        self.elements: list[tuple[str, dict[str, str | None], tuple[str, ...]]] = []
        self.texts: dict[str, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.elements.append((tag, found, tuple(i for _, i in self.open if i)))
        if tag not in self.VOID:
            self.open.append((tag, found.get("id") or ""))

    def handle_endtag(self, tag: str) -> None:
        while self.open and self.open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, ident in self.open:
            if ident:
                self.texts.setdefault(ident, []).append(data)

    def text(self, ident: str) -> str:
        return "".join(self.texts.get(ident, []))


@needs_dot
def test_chromium_shows_the_diagram_and_the_findings(broken: tuple[ReviewResult, bool], tmp_path: Path, update_golden: bool) -> None:
    result = broken[0]
    assert result.path is not None
    dom = Dom(browse(result.path, tmp_path / "profile", "--dump-dom"))
    svgs = [ancestors for tag, _, ancestors in dom.elements if tag == "svg"]
    assert len(svgs) == 1 and "diagram" in svgs[0]
    assert dom.text("verdict") == "✗ Fails: 1 check error, smoke test failed (1 error)"
    rows = [(tag, ancestors) for tag, _, ancestors in dom.elements if tag == "tr" and "findings" in ancestors]
    assert len(rows) == 2  # the header and the channel-mismatch finding
    assert "channel-mismatch" in dom.text("findings")
    assert "model.roi_heads.mask_predictor = MaskRCNNPredictor(512, 256, 3)" in dom.text("findings")

    shot = tmp_path / "review.png"
    browse(result.path, tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,1900", f"--screenshot={shot}")
    with Image.open(shot) as png:  # Pillow comes with torchvision
        assert png.format == "PNG" and png.size == (1280, 1900)
        pixels = torch.frombuffer(bytearray(png.convert("RGB").tobytes()), dtype=torch.uint8).reshape(-1, 3).to(torch.int32)
    assert pixels.float().var(dim=0).min().item() > 500.0  # far from blank in every channel
    red = (pixels - torch.tensor([211, 47, 47])).abs().amax(dim=1) <= 2
    assert red.sum().item() > 20_000  # the verdict banner, drawn with the page's style sheet
    if update_golden:
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)
