"""How the ``surgery`` command prints: progress lines, markdown, and GitHub workflow annotations
that point into the working tree (``--format github``).

Like :mod:`surgery.cli`, nothing here imports torch at module level.

A finding points at the class of the first module it names that is defined in a file under
the current folder (``inspect.getsourcelines``), else at the spec's builder (its file and the
line of its ``def``, read without running anything), else nowhere. Files of installed packages
(``site-packages``) are never pointed at: a pull request cannot show them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgery.loading import DEFAULT_SPEC, spec_source

if TYPE_CHECKING:
    from torch import nn

    from surgery.findings import Finding, Report

__all__ = ["annotation", "diff_progress", "github", "in_tree", "load_error_location", "locate", "markdown", "say"]

_PACKAGE = Path(__file__).resolve().parent

#: A place in the working tree: a file relative to the current folder and a line (None when unknown).
Where = tuple[Path, int | None]


def in_tree(file: str | None) -> Path | None:
    """``file`` relative to the current folder when it lies inside it and is neither an installed
    package's nor surgery's own, else None."""
    if not file:
        return None
    try:
        path, here = Path(file).resolve(), Path.cwd().resolve()
    except (OSError, ValueError):
        return None
    if not path.is_file() or not path.is_relative_to(here) or path.is_relative_to(_PACKAGE) or {"site-packages", "dist-packages"} & set(path.parts):
        return None
    return path.relative_to(here)


def _class_source(module: Any) -> Where | None:
    try:
        file, (_, line) = inspect.getsourcefile(type(module)), inspect.getsourcelines(type(module))
    except (OSError, TypeError):
        return None
    where = in_tree(file)
    return (where, line) if where is not None else None


def locate(finding: Finding, model: nn.Module | None, spec: str | None) -> Where | None:
    """Where a finding points in the working tree: the class of the first module it names that is
    defined there, else the spec's builder, else None."""
    for path in finding.paths if model is not None else ():
        for candidate in (path, path.rpartition(".")[0]):  # a parameter's path names its module's
            try:
                found = _class_source(model.get_submodule(candidate))  # type: ignore[union-attr]
            except AttributeError:
                continue
            if found is not None:
                return found
            break
    source = spec_source(spec or DEFAULT_SPEC)
    where = in_tree(source[0]) if source else None
    return (where, source[1]) if where is not None and source else None


def _location(where: Where | None) -> str:
    """``file=...,line=...,`` for a workflow command (empty without a location)."""
    if where is None:
        return ""
    escape = {"%": "%25", "\r": "%0D", "\n": "%0A", ":": "%3A", ",": "%2C"}
    text = "file=" + "".join(escape.get(c, c) for c in where[0].as_posix()) + ","
    return text + (f"line={where[1]}," if where[1] is not None else "")


def github(report: Report, model: nn.Module | None, spec: str | None) -> str:
    """``report.format("github")`` with ``file=`` and ``line=`` on each finding that has a location."""
    lines = report.format("github").splitlines()
    out = []
    for finding, line in zip(report.findings, lines, strict=True):
        head, _, rest = line.partition(" ")  # "::error" "title=CODE::message"
        out.append(f"{head} {_location(locate(finding, model, spec))}{rest}")
    return "\n".join(out)


def load_error_location(error: BaseException, spec: str | None) -> Where | None:
    """Where a load error happened in the working tree: the syntax error's or the deepest raising
    line of a file there, else the spec's builder or the file named, else None."""
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, SyntaxError) and (where := in_tree(cause.filename)) is not None:
            return where, cause.lineno
        frames, tb = [], cause.__traceback__
        while tb is not None:
            frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
            tb = tb.tb_next
        for file, line in reversed(frames):
            if (where := in_tree(file)) is not None:
                return where, line
        cause = cause.__cause__
    details = getattr(error, "details", {})
    source = spec_source(details.get("spec") or spec or DEFAULT_SPEC)
    if source and (where := in_tree(source[0])) is not None:
        return where, source[1]
    where = in_tree(details.get("file"))
    return (where, None) if where is not None else None


def annotation(level: str, message: str, title: str, where: Where | None = None) -> str:
    """One workflow command, e.g. ``::error file=model.py,line=3,title=surgery check::message``."""
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{level} {_location(where)}title={title}::{escaped}"


def markdown(report: Report, command: str, extra: str = "") -> str:
    """``report.format("markdown")`` titled with ``command`` (``**surgery smoke: ...**``), then ``extra``."""
    body = report.format("markdown").replace("**surgery check: ", f"**surgery {command}: ", 1).rstrip("\n")
    return body + (f"\n\n{extra}" if extra else "")


def say(command: str, text: str) -> None:
    """One progress line on stderr, a terminal or not: ``surgery COMMAND: TEXT``."""
    print(f"surgery {command}: {text}", file=sys.stderr, flush=True)


def diff_progress(command: str) -> Callable[[int, int, str], None]:
    """The cost measurement's progress: a bar redrawn in place on a terminal, else one line as each
    phase starts (FLOPs and memory, warm-up, latency)."""
    from surgery.diff import ProgressBar

    if sys.stderr.isatty():
        return ProgressBar(sys.stderr)
    seen: set[str] = set()

    def line(done: int, total: int, what: str) -> None:
        phase = what.split(" (")[0]
        if phase not in seen:
            seen.add(phase)
            say(command, f"measuring {phase} ({done}/{total} steps done)")

    return line
