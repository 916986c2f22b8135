"""Static orphan detection: registered submodules that their parent's ``forward`` never uses.

The source of ``forward`` is parsed (never executed) and every ``self.<name>`` it reads is
collected, following the methods, properties and ``super()`` calls it reaches, so that
``RoIHeads.has_mask()`` counts as using the mask modules. When the analysis cannot be sure
(source unavailable, ``self`` passed elsewhere, ``self.children()``, ``getattr`` with a
computed name) every child counts as used: this pass never guesses an orphan.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Iterable
from typing import Any

from torch import nn

from surgery.findings import Finding

__all__ = ["used_attribute_names", "find_orphans"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: Reading any of these on ``self`` means "all children may be used".
_DYNAMIC = frozenset(
    {
        "_modules", "children", "named_children", "modules", "named_modules", "items", "values", "keys",
        "__dict__", "__iter__", "__getitem__", "_modules", "apply", "parameters", "named_parameters",
        "state_dict", "__call__", "forward",
    }
)


def _lookup(cls: type, name: str, start_after: type | None = None) -> tuple[type, Any] | None:
    mro = cls.__mro__
    if start_after is not None and start_after in mro:
        mro = mro[mro.index(start_after) + 1 :]
    for klass in mro:
        if name in klass.__dict__:
            return klass, klass.__dict__[name]
    return None


def _function_of(member: Any) -> Any:
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if inspect.isfunction(member):
        return member
    return None


@functools.lru_cache(maxsize=256)
def _parse(func: Any) -> ast.FunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None  # type: ignore[return-value]


@functools.lru_cache(maxsize=1024)
def used_attribute_names(cls: type) -> frozenset[str] | None:
    """Names of ``self`` attributes that ``cls.forward`` may read, or None when unknown.

    Args:
        cls: An ``nn.Module`` subclass.

    Returns:
        The attribute names, or None when every child must be assumed used.
    """
    found = _lookup(cls, "forward")
    if found is None or found[0] is nn.Module:
        return None
    used: set[str] = set()
    queue: list[tuple[type, Any]] = [(found[0], found[1])]
    seen: set[int] = set()
    while queue:
        owner, member = queue.pop()
        func = _function_of(member)
        if func is None or id(func) in seen:
            if func is None:
                return None
            continue
        seen.add(id(func))
        node = _parse(func)
        if node is None or not node.args.args:
            return None
        self_name = node.args.args[0].arg
        result = _scan(node, self_name, cls, owner, used, queue)
        if result is False:
            return None
    return frozenset(used)


def _scan(node: ast.AST, self_name: str, cls: type, owner: type, used: set[str], queue: list[tuple[type, Any]]) -> bool:
    """Collect attribute reads on ``self``; False when ``self`` escapes the analysis."""
    attr_values: set[int] = set()
    allowed_self: set[int] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            base = sub.value
            if isinstance(base, ast.Name) and base.id == self_name:
                attr_values.add(id(base))
                name = sub.attr
                if name in _DYNAMIC:
                    return False
                used.add(name)
                member = _lookup(cls, name)
                if member is not None and _function_of(member[1]) is not None and member[0] is not nn.Module:
                    queue.append(member)
            elif isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                member = _lookup(cls, sub.attr, start_after=owner)
                if member is None or member[0] is nn.Module:
                    continue
                queue.append(member)
                for arg in base.args:
                    if isinstance(arg, ast.Name) and arg.id == self_name:
                        allowed_self.add(id(arg))
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("getattr", "hasattr"):
            if sub.args and isinstance(sub.args[0], ast.Name) and sub.args[0].id == self_name:
                allowed_self.add(id(sub.args[0]))
                if len(sub.args) >= 2 and isinstance(sub.args[1], ast.Constant) and isinstance(sub.args[1].value, str):
                    used.add(sub.args[1].value)
                else:
                    return False
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "isinstance":
            for arg in sub.args[:1]:
                if isinstance(arg, ast.Name) and arg.id == self_name:
                    allowed_self.add(id(arg))
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == self_name and isinstance(sub.ctx, ast.Load):
            if id(sub) not in attr_values and id(sub) not in allowed_self:
                return False  # self passed somewhere we cannot follow
    return True


def _orphan_candidates(model: nn.Module) -> Iterable[tuple[str, str, nn.Module, nn.Module]]:
    """(path, name, parent, child) for children their parent's forward never reads."""
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _CONTAINERS) or not module._modules:
            continue
        if "forward" in module.__dict__:  # forward patched on the instance: cannot know
            continue
        names = used_attribute_names(type(module))
        if names is None:
            continue
        for name, child in module._modules.items():
            if child is not None and name not in names:
                yield (f"{path}.{name}" if path else name), name, module, child


def find_orphans(model: nn.Module, slot_paths: Iterable[str] = ()) -> list[Finding]:
    """``orphan-module`` findings for ``model``.

    Args:
        model: The model to analyse.
        slot_paths: Paths of the family's slots (present or empty); an orphan whose name
            matches one of them is told where it was probably meant to go.

    Returns:
        One error per top-most orphan.
    """
    candidates = list(_orphan_candidates(model))
    if not candidates:
        return []
    orphan_ids = {id(child) for *_, child in candidates}
    # a module also registered under a used name is not an orphan
    reachable: set[int] = set()
    candidate_paths = {p for p, *_ in candidates}

    def visit(module: nn.Module, path: str) -> None:
        for name, child in module._modules.items():
            if child is None:
                continue
            child_path = f"{path}.{name}" if path else name
            if child_path in candidate_paths:
                continue
            reachable.add(id(child))
            visit(child, child_path)

    visit(model, "")
    all_paths = [p for p, _ in model.named_modules(remove_duplicate=False) if p]
    slots = list(slot_paths)
    findings: list[Finding] = []
    reported: list[str] = []
    for path, name, parent, child in candidates:
        if id(child) in reachable or id(child) not in orphan_ids:
            continue
        if any(path.startswith(r + ".") for r in reported):
            continue
        reported.append(path)
        target = next((s for s in slots if s.rsplit(".", 1)[-1] == name and s != path), None)
        if target is None:
            target = next((p for p in all_paths if p.rsplit(".", 1)[-1] == name and p != path and not p.startswith(path + ".")), None)
        n_params = sum(p.numel() for p in child.parameters())
        parent_path = path.rsplit(".", 1)[0] if "." in path else ""
        where = f"{parent_path} ({type(parent).__name__})" if parent_path else type(parent).__name__
        message = (
            f"{path} ({type(child).__name__}, {n_params:,} parameters) is registered on {where}, "
            f"but {type(parent).__name__}.forward never uses it, so it never runs and its parameters never train"
        )
        if target:
            message += f"; it was probably meant for {target}"
            fix = f"model.{target} = model.{path}; del model.{path}"
        else:
            fix = f"del model.{path}  # or call it from {type(parent).__name__}.forward"
        findings.append(Finding("error", "orphan-module", (path,) + ((target,) if target else ()), message, fix))
    return findings
