"""Regenerate docs/api.md from the docstrings of the public API (``surgery.__all__``).

Run: python docs/make_api.py
"""

from __future__ import annotations

import inspect
from pathlib import Path

import surgery

HEADER = """# Python API

Generated from the docstrings by `python docs/make_api.py`; the docstrings are the source.
Every public name is imported from `surgery` (`import surgery; surgery.check(model)`).
Errors all derive from `surgery.SurgeryError` and from the built-in error a caller would
catch (`PathError` is an `AttributeError`, `IncompatibleError` a `ValueError`, ...).
"""


def _entry(name: str, obj: object) -> str:
    if inspect.ismodule(obj):
        funcs = [n for n in getattr(obj, "__all__", []) if callable(getattr(obj, n, None))]
        parts = [f"## `surgery.{name}` (module)\n\n{inspect.getdoc(obj) or ''}\n"]
        for fn in funcs:
            parts.append(_entry(f"{name}.{fn}", getattr(obj, fn)).replace("## ", "### ", 1))
        return "\n".join(parts)
    doc = inspect.getdoc(obj) or "(no docstring)"
    if inspect.isclass(obj):
        kind = "class"
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        if issubclass(obj, BaseException):
            bases = ", ".join(b.__name__ for b in obj.__bases__)
            return f"## `{name}({bases})`\n\n{doc}\n"
        return f"## {kind} `{name}{sig}`\n\n{doc}\n"
    if callable(obj):
        return f"## `{name}{inspect.signature(obj)}`\n\n{doc}\n"
    return f"## `{name}`\n\n`{obj!r}`\n"


def main() -> None:
    sections = [HEADER]
    for name in sorted(surgery.__all__, key=lambda n: (not callable(getattr(surgery, n)) or inspect.isclass(getattr(surgery, n)), n.lower())):
        if name.startswith("__"):
            continue
        sections.append(_entry(name, getattr(surgery, name)))
    out = Path(__file__).with_name("api.md")
    out.write_text("\n".join(sections))
    print(f"wrote {out} ({len(sections) - 1} names)")


if __name__ == "__main__":
    main()
