"""``surgery.review``: one self-contained HTML page that reviews an edit.

The page holds the verdict, the before/after diagram (inline SVG), the findings of the model
after the edit with their fixes, the structural and cost diff, the smoke test of the model
after the edit (CPU, small images) and, when given, the recipe that made it. It has no remote
asset: the style sheet and the diagram are inline, so it can be attached to a pull request,
uploaded as a CI artifact or opened from disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from surgery import _html
from surgery._errors import RenderError
from surgery._util import check_int, first_line, require_module
from surgery.check import check
from surgery.diff import Diff, diff
from surgery.findings import Report
from surgery.recipe import Recipe
from surgery.render import Graph, render
from surgery.smoke import SmokeResult, smoke_test

__all__ = ["ReviewResult", "review"]


@dataclass
class ReviewResult:
    """What :func:`review` built.

    Attributes:
        ok: True when the model after the edit has no error finding and its smoke test
            passed (or was not run).
        verdict: One line, e.g. ``"passes: no error, smoke test ok"``.
        html: The whole page.
        path: Where the page was written (None when no path was given).
        title: The page's title.
        report: :func:`surgery.check` of the model after the edit.
        diff: :func:`surgery.diff` of the two models.
        graph: The before/after diagram.
        smoke: The smoke test of the model after the edit (None with ``smoke=False``).
        recipe: The recipe shown on the page, if any.
    """

    ok: bool
    verdict: str
    html: str
    path: Path | None
    title: str
    report: Report
    diff: Diff
    graph: Graph
    smoke: SmokeResult | None = None
    recipe: Recipe | None = None

    def __str__(self) -> str:
        where = f"; page written to {self.path}" if self.path is not None else ""
        return f"surgery review: {self.title}: {self.verdict}{where}"

    def __repr__(self) -> str:
        return _html.short_repr("ReviewResult", f"{self.title}: {self.verdict}" + (f", {self.path}" if self.path else ""))

    def _repr_html_(self) -> str:
        link = [_html.tag("p", _html.join("page: ", _html.tag("a", str(self.path), href=self.path.as_uri())))] if self.path else []
        return _html.fragment(_html.tag("h3", self.title), _verdict(self.ok, self.verdict), _cards(self), *link)


def _load_recipe(recipe: Recipe | str | os.PathLike[str] | None) -> Recipe | None:
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.load(Path(recipe))
    raise TypeError(f"recipe must be a surgery.Recipe, the path of a recipe file or None, got {type(recipe).__name__}")


def review(
    before: nn.Module,
    after: nn.Module,
    path: str | os.PathLike[str] | None = None,
    *,
    recipe: Recipe | str | os.PathLike[str] | None = None,
    title: str | None = None,
    smoke: bool = True,
    cost: bool = True,
    image_size: int = 128,
) -> ReviewResult:
    """Review an edit on one self-contained HTML page.

    Checks ``after``, draws ``after`` against ``before``, diffs the two (structure and, with
    ``cost``, FLOPs, latency and memory) and smoke-tests ``after`` on the CPU. Both models
    are left exactly as they were.

    Args:
        before: The model before the edit.
        after: The model after the edit.
        path: Where to write the page (parent folders are created); None only returns it.
        recipe: The recipe that made ``after`` (a :class:`~surgery.Recipe` or the path of its
            TOML file), shown on the page.
        title: The page's title (default ``"Before → After"`` from the class names).
        smoke: Run :func:`surgery.smoke_test` on ``after`` (CPU, batch of 2).
        cost: Measure FLOPs, latency and peak memory in the diff (parameters are always counted).
        image_size: Side of the square synthetic images of the diff and the smoke test (>= 32).

    Returns:
        A :class:`ReviewResult`; its ``html`` is the page.

    Raises:
        NotAModuleError: ``before`` or ``after`` is not an ``nn.Module``.
        ValueError: ``image_size`` is below 32.
        TypeError: ``recipe`` is neither a recipe nor a path.
        RecipeError: The recipe file is missing or invalid.
        OSError: The page cannot be written to ``path``.
    """
    require_module(before, "review()", "before")
    require_module(after, "review()", "after")
    check_int("image_size", image_size, 32)
    loaded = _load_recipe(recipe)
    name = title or f"{type(before).__name__} → {type(after).__name__}"
    report = check(after)
    graph = render(after, before=before)
    changes = diff(before, after, cost=cost, image_size=image_size)
    smoked = smoke_test(after, device="cpu", image_size=image_size, check=False) if smoke else None
    ok = report.ok and (smoked is None or smoked.ok)
    result = ReviewResult(ok=ok, verdict=_verdict_text(report, smoked), html="", path=None, title=name, report=report,
                          diff=changes, graph=graph, smoke=smoked, recipe=loaded)
    result.html = _page(result, cost=cost, image_size=image_size)
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.html, encoding="utf-8")
        result.path = out.resolve()
    return result


def _verdict_text(report: Report, smoked: SmokeResult | None) -> str:
    problems = []
    if report.errors:
        problems.append(_html.plural(len(report.errors), "check error"))
    if smoked is not None and not smoked.ok:
        problems.append(f"smoke test failed ({_html.plural(len(smoked.errors), 'error')})")
    warnings = f", {_html.plural(len(report.warnings), 'warning')}" if report.warnings else ""
    if problems:
        return "fails: " + ", ".join(problems) + warnings
    return "passes: no error" + warnings + (", smoke test ok" if smoked is not None else ", smoke test not run")


def _verdict(ok: bool, text: str) -> _html.Raw:
    colour = "#2e7d32" if ok else "#d32f2f"
    return _html.tag("div", ("✓ " if ok else "✗ ") + text[0].upper() + text[1:], "sg-verdict", id="verdict", style=f"background:{colour}")


def _cards(r: ReviewResult) -> _html.Raw:
    def card(label: str, value: str, note: str = "") -> _html.Raw:
        return _html.tag("div", _html.join(_html.tag("b", value), label, *([" ", _html.muted(note)] if note else [])), "sg-card")

    cards = [card("errors", str(len(r.report.errors))), card("warnings", str(len(r.report.warnings))),
             card("slots changed", str(len(r.diff.changed_slots)))]
    for m in r.diff.measures:
        if m.name in ("params", "FLOPs") and m.delta is not None:
            cards.append(card(f"Δ{m.name}", m.format(m.delta, signed=True), "" if m.ratio is None else f"{m.ratio:.2f}×"))
    if r.smoke is not None:
        cards.append(card("smoke test", "ok" if r.smoke.ok else "failed"))
    return _html.tag("div", _html.join(*cards), "sg-cards")


def _diagram(graph: Graph) -> _html.Raw:
    try:
        return _html.tag("div", _html.Raw(graph.svg()), "sg-diagram", id="diagram")
    except RenderError as e:
        return _html.join(_html.tag("p", first_line(e), "sg-muted"), _html.details("DOT text of the diagram", _html.pre(graph.source)))


def _recipe(recipe: Recipe) -> _html.Raw:
    steps = _html.tag("ol", _html.Raw("".join(_html.tag("li", _html.code(s.describe())) for s in recipe.steps)))
    return _html.join(
        _html.tag("h2", "Recipe"),
        _html.tag("p", _html.join(_html.code(recipe.source), *([" — ", recipe.description] if recipe.description else []))),
        steps,
        _html.details("recipe file", _html.pre(recipe.text), open_=True),
    )


def _page(r: ReviewResult, *, cost: bool, image_size: int) -> str:
    from surgery import __version__

    smoke = _html.smoke(r.smoke, heading=False) if r.smoke is not None else _html.tag("p", "Not run (smoke=False).", "sg-muted")
    return _html.page(
        f"surgery review: {r.title}",
        _html.tag("h1", r.title),
        _html.tag("p", f"surgery {__version__} review of an edit: the model after it checked, drawn against the model before it, "
                       f"diffed{' with its cost' if cost else ''} and smoke-tested on the CPU at {image_size}×{image_size}.", "sg-muted"),
        _verdict(r.ok, r.verdict),
        _cards(r),
        _html.tag("h2", "Diagram: before → after"),
        _diagram(r.graph),
        _html.tag("h2", "Findings after the edit"),
        _html.report(r.report, heading=False),
        _html.tag("h2", "What changed"),
        _html.diff(r.diff, heading=False),
        _html.tag("h2", "Smoke test after the edit"),
        smoke,
        _recipe(r.recipe) if r.recipe is not None else "",
    )
