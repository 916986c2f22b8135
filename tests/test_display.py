"""Rich display in notebooks: ``_repr_html_`` of the result classes, the diagram's
``_repr_mimebundle_``, short ``__repr__``s, HTML escaping and ``Report.format("markdown")``."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import pytest
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

import surgery
from surgery import Finding, Report
from surgery.render import graph as graph_module
from surgery.smoke.result import Phase


def tiny_maskrcnn() -> nn.Module:
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=3, min_size=64, max_size=64, box_detections_per_img=8)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """The stock tiny Mask R-CNN, the same with a wider mask head attached by hand (broken)
    and with the head swapped in by ``replace(adapt=True)`` (fixed)."""
    before = tiny_maskrcnn()
    broken = copy.deepcopy(before)
    broken.roi_heads.mask_head = MaskRCNNHeads(256, (256, 512), 1)
    fixed = copy.deepcopy(before)
    surgery.replace(fixed, "roi_heads.mask_head", MaskRCNNHeads(256, (256, 512), 1), adapt=True)
    return {"before": before, "broken": broken, "fixed": fixed}


class Tags(HTMLParser):
    """Start tags (with attributes) and the text of an HTML fragment; fails on mismatched tags."""

    VOID = {"br", "meta", "img", "hr", "input", "link"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.starts if t == tag)


def parsed(html: str) -> Tags:
    tags = Tags(html)
    assert tags.stack == [], f"unclosed tags: {tags.stack}"
    return tags


def test_report_html_shows_each_finding_with_its_fix(models: dict[str, nn.Module]) -> None:
    report = surgery.check(models["broken"])
    html = report._repr_html_()
    tags = parsed(html)
    text = "".join(tags.text)
    assert html.startswith('<div class="sg"><style>')
    assert ("table", {"class": "sg-findings", "id": "findings"}) in tags.starts
    assert tags.count("tr") == 2  # the header and the one finding
    assert "surgery check: MaskRCNN 1 error" in text
    assert "model.roi_heads.mask_predictor = MaskRCNNPredictor(512, 256, 3)" in text
    assert "coverage: 11 slots (R-CNN anatomy)" in text


def test_report_html_escapes_what_comes_from_the_model() -> None:
    finding = Finding("error", "channel-mismatch", ("head<b>", "pred&co"), "<script>alert(1)</script> expects \"256\"",
                      fix="model.x = Y('<i>')")
    html = Report(findings=[finding], model="<Model>")._repr_html_()
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; expects &quot;256&quot;" in html
    assert "<code>head&lt;b&gt;</code> → <code>pred&amp;co</code>" in html
    assert "<code>model.x = Y(&#x27;&lt;i&gt;&#x27;)</code>" in html
    assert "surgery check: &lt;Model&gt;" in html
    parsed(html)


def test_report_without_findings_says_so() -> None:
    html = Report(model="Net", checked=["a", "b"])._repr_html_()
    assert '<p class="sg-muted" id="findings">No findings.</p>' in html
    assert '<span class="sg-badge sg-ok">ok</span>' in html
    assert "2 checks ran" in html


def test_every_result_class_has_short_repr_and_html(models: dict[str, nn.Module]) -> None:
    before, fixed = models["before"], models["fixed"]
    results = {
        "report": surgery.check(fixed),
        "overview": surgery.inspect(fixed),
        "edit": surgery.replace(copy.deepcopy(before), "roi_heads.mask_head", MaskRCNNHeads(256, (256, 512), 1), adapt=True),
        "classes": surgery.set_num_classes(copy.deepcopy(before), 5, keep=[0, 2]),
        "trainable": surgery.trainable_summary(before),
        "trace": surgery.trace(fixed, mode="eval"),
        "diff": surgery.diff(before, fixed, cost=False),
    }
    reprs = {name: repr(r) for name, r in results.items()}
    assert reprs["report"] == "<Report MaskRCNN: ok, 0 warning(s), 13 checks>"
    assert reprs["overview"] == "<Overview MaskRCNN (R-CNN): 30,574,561 parameters, 11 components>"
    assert reprs["edit"] == ("<EditResult replace roi_heads.mask_head: MaskRCNNHeads → MaskRCNNHeads; rebuilt roi_heads.mask_predictor; "
                             "3 copied, 1 initialised; check ok>")
    assert reprs["classes"] == "<ClassChange 3 → 5 classes, 2 kept, 3 layer(s) rebuilt, check ok>"
    assert reprs["trainable"] == "<TrainableSummary MaskRCNN: 30,902,497 trainable, 0 frozen, 7 components>"
    assert re.fullmatch(r"<Trace MaskRCNN \(R-CNN\) eval: \d+ calls, \d+ edges, 0 finding\(s\)>", reprs["trace"])
    assert reprs["diff"] == "<Diff MaskRCNN → MaskRCNN: 2 slot(s) and 4 module(s) changed, params 30,902,497 → 30,574,561>"
    assert all(len(r) <= 300 for r in reprs.values())
    tables = {name: parsed(r._repr_html_()).count("table") for name, r in results.items()}
    # the clean report says "No findings."; a trace has its flow and its folded call table
    assert tables == {"report": 0, "overview": 1, "edit": 1, "classes": 1, "trainable": 1, "trace": 2, "diff": 3}
    assert "rebuilt roi_heads.mask_predictor" not in results["edit"]._repr_html_()  # a table row, not a sentence
    assert "<code>roi_heads.mask_predictor</code></td><td>MaskRCNNPredictor(256, 256, 3) → MaskRCNNPredictor(512, 256, 3)" \
        in results["edit"]._repr_html_()
    assert ('<td><code>roi_heads.box_predictor.bbox_pred</code></td><td>Linear(1024, 12) → Linear(1024, 20)</td>'
            '<td class="sg-num">8 of 20</td>') in results["classes"]._repr_html_()


def test_trace_repr_is_short_and_its_call_table_is_folded(models: dict[str, nn.Module]) -> None:
    t = surgery.trace(models["fixed"])
    assert len(str(t)) > 5000  # the text form keeps every call
    assert len(repr(t)) < 120
    html = t._repr_html_()
    folded = html[html.index("<details><summary>Calls ("):]
    assert folded.count("<tr>") == len(t.calls) + 1
    assert html.index("Component flow") < html.index("<details><summary>Calls (")
    assert "<code>backbone.body</code></td><td><code>backbone.fpn</code>" in html


def test_smoke_result_html_has_a_row_per_phase() -> None:
    finding = Finding("error", "shape-error", ("roi_heads.mask_predictor",), "train: expected 256 channels, got <512>")
    result = surgery.SmokeResult(
        ok=False, findings=[finding], device="cpu", device_note="cpu, as asked", model="Net", family="R-CNN", image_size=64,
        phases=[Phase("check", "ok", 0.01), Phase("train", "failed", 1.5, 2**20, 1.33, "1 step(s)"), Phase("eval", "skipped", 0.0)],
        losses={"loss_mask": 0.5},
    )
    assert repr(result) == "<SmokeResult Net on cpu: failed, 1 error(s) (check ok, train failed, eval skipped)>"
    html = result._repr_html_()
    parsed(html)
    assert '<span class="sg-badge sg-failed">failed, 1 error</span>' in html
    assert '<td>train</td><td><span class="sg-badge sg-failed">failed</span></td><td class="sg-num">1.50 s</td>' \
           '<td class="sg-num">1.00 MiB</td><td class="sg-num">1.33 img/s</td><td>1 step(s)</td>' in html
    assert "got &lt;512&gt;" in html
    assert "<code>loss_mask=0.5</code>" in html


def test_graph_shows_svg_with_dot_and_dot_text_without(models: dict[str, nn.Module], monkeypatch: pytest.MonkeyPatch) -> None:
    graph = surgery.render(models["fixed"], before=models["before"], trace=False)
    assert repr(graph) == "<Graph 'MaskRCNN: before → after' (components, static flow): 11 nodes, 13 edges>"
    if graph_module.dot_binary() is not None:
        bundle = graph._repr_mimebundle_()
        assert sorted(bundle) == ["image/svg+xml", "text/plain"]
        assert bundle["image/svg+xml"].startswith("<svg")
        assert 'id="roi_heads.mask_head"' in bundle["image/svg+xml"]
        assert bundle["text/plain"] == repr(graph)
    monkeypatch.setattr(graph_module, "dot_binary", lambda: None)
    assert graph._repr_mimebundle_() == {"text/plain": graph.source}
    with pytest.raises(surgery.RenderError, match=r"cannot draw the diagram as SVG: Graphviz's `dot` binary is not on PATH"):
        graph.svg()


def test_markdown_format_is_a_compact_table() -> None:
    findings = [
        Finding("error", "channel-mismatch", ("a.head", "a.pred"), "a.head produces 512 | 1024\nchannels <b>", fix="model.a.pred = P(512)"),
        Finding("warning", "orphan-module", ("extra",), "never called"),
    ]
    report = Report(findings=findings, model="Net", checked=["x", "y", "z"])
    assert report.format("markdown") == (
        "**surgery check: Net**: 1 error(s), 1 warning(s), 3 checks ran\n"
        "\n"
        "| severity | code | modules | message | fix |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| error | `channel-mismatch` | `a.head` → `a.pred` | a.head produces 512 \\| 1024<br>channels &lt;b&gt; | `model.a.pred = P(512)` |\n"
        "| warning | `orphan-module` | `extra` | never called | - |\n"
    )


def test_markdown_format_of_a_clean_report_ends_with_the_coverage(models: dict[str, nn.Module]) -> None:
    report = surgery.check(models["fixed"])
    text = report.format("markdown")
    lines = text.splitlines()
    assert lines[0] == "**surgery check: MaskRCNN**: ok, 0 warning(s), 13 checks ran"
    assert lines[1] == ""
    assert lines[2].startswith("coverage: 11 slots (R-CNN anatomy): 11 by contracts, 5 by the whole-model probe; every slot checked;")
    assert len(lines) == 3


def test_unknown_format_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"style must be 'text', 'github' or 'markdown', got 'html'"):
        Report().format("html")
