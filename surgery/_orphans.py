"""Static orphan detection: registered submodules that the forward pass never uses.

The source of ``forward`` is parsed (never executed) and every ``self.<name>`` it reads is
collected, following the methods, properties and ``super()`` calls it reaches, so that
``RoIHeads.has_mask()`` counts as using the mask modules.

The analysis runs top-down over the module tree, one instance at a time, because how a
parent uses a child decides what the child may run:

* ``self.c(x)`` runs ``c.forward``; ``self.c.loss(x)`` also runs ``c.loss``, whose reads
  count as uses too; ``self.c.b(x)`` uses ``c``'s child ``b`` directly.
* When a child escapes (``h = self.c``, ``f(self.c)``, ``for m in self.layers``, a
  subscript), the analysis cannot know what is done with it, so nothing inside that child
  is ever reported.

Whenever it cannot be sure (source unavailable, ``self`` passed elsewhere,
``self.children()``, ``getattr`` with a computed name, a forward patched on the instance,
a module shared under several names, referenced from a plain attribute or a hook, hooks on
the module) every child counts as used: this pass never guesses an orphan.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from surgery import paths
from surgery.findings import Finding, Severity

__all__ = ["used_attribute_names", "find_orphans"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: Reading any of these on ``self`` means "all children may be used".
_DYNAMIC = frozenset(
    {
        "_modules", "children", "named_children", "modules", "named_modules", "items", "values", "keys",
        "__dict__", "__iter__", "__getitem__", "__getattr__", "__getattribute__", "get_submodule", "apply",
        "parameters", "named_parameters", "buffers", "named_buffers", "state_dict", "__call__", "forward",
    }
)
#: Methods never run by a forward pass (``__init__`` assigns every child, which is no use).
_NOT_ENTRIES = frozenset({"__init__", "__new__", "__setstate__", "__getstate__", "__repr__", "extra_repr", "__dir__"})
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
#: ``nn.Module`` bookkeeping that never holds a module a forward pass could run.
_SKIP_ATTRS = frozenset(
    {
        "_modules", "_parameters", "_buffers", "_non_persistent_buffers_set", "_forward_hooks_always_called",
        "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_is_full_backward_hook",
        "_load_state_dict_post_hooks", "_load_state_dict_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
        "training", *_HOOK_DICTS,
    }
)
_ATOMS = (bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.dtype, torch.device)
_ATOM_TYPES = frozenset({*_ATOMS, nn.Parameter})


@dataclass(frozen=True)
class _Usage:
    """What the code of one class (from some entry methods) does with ``self``.

    Attributes:
        names: Every attribute read on ``self``.
        chains: ``(("c", "loss"), False)`` for each maximal attribute chain ``self.c.loss`` and
            whether the object it ends on escapes (is stored, passed, iterated, indexed…)
            rather than called or compared with ``is``.
    """

    names: frozenset[str]
    chains: frozenset[tuple[tuple[str, ...], bool]]


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


def _is_method(cls: type, name: str) -> bool:
    found = _lookup(cls, name)
    return found is not None and found[0] not in (nn.Module, object) and _function_of(found[1]) is not None


@functools.lru_cache(maxsize=256)
def _parse(func: Any) -> ast.FunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None  # type: ignore[return-value]


@functools.lru_cache(maxsize=2048)
def _usage(cls: type, entries: frozenset[str]) -> _Usage | None:
    """What ``cls``'s ``entries`` methods (and all they reach) do with ``self``; None when unknown."""
    queue: list[tuple[type, Any]] = []
    for entry in sorted(entries):
        found = _lookup(cls, entry)
        if entry == "forward" and (found is None or found[0] is nn.Module):
            return None
        if found is None or found[0] in (nn.Module, object):
            continue
        queue.append(found)
    names: set[str] = set()
    chains: set[tuple[tuple[str, ...], bool]] = set()
    seen: set[int] = set()
    while queue:
        owner, member = queue.pop()
        if isinstance(member, (staticmethod, classmethod)):
            continue  # no instance: ``self`` can only reach it as an argument, which counts as escaping
        func = _function_of(member)
        if func is None:
            return None
        if id(func) in seen:
            continue
        seen.add(id(func))
        node = _parse(func)
        if node is None or not node.args.args:
            return None
        if not _scan(node, node.args.args[0].arg, cls, owner, names, chains, queue):
            return None
    return _Usage(frozenset(names), frozenset(chains))


@functools.lru_cache(maxsize=1024)
def used_attribute_names(cls: type) -> frozenset[str] | None:
    """Names of ``self`` attributes that ``cls.forward`` may read, or None when unknown.

    Args:
        cls: An ``nn.Module`` subclass.

    Returns:
        The attribute names, or None when every child must be assumed used.
    """
    usage = _usage(cls, frozenset({"forward", "__call__"}))
    return None if usage is None else usage.names


def _chain(node: ast.Attribute, self_name: str) -> tuple[str, ...] | None:
    """``("c", "loss")`` for ``self.c.loss``; None when the chain does not start at ``self``."""
    parts: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    if isinstance(cur, ast.Name) and cur.id == self_name:
        return tuple(reversed(parts))
    return None


def _escapes(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    """False when the value of ``node`` is only called, compared with ``is`` or type-tested."""
    parent = parents.get(id(node))
    if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load):
        return False
    if isinstance(parent, ast.Call):
        if parent.func is node:
            return False
        return not (isinstance(parent.func, ast.Name) and parent.func.id == "isinstance" and parent.args[:1] == [node])
    if isinstance(parent, ast.Compare):
        return not all(isinstance(op, (ast.Is, ast.IsNot)) for op in parent.ops)
    return True


def _scan(
    node: ast.AST,
    self_name: str,
    cls: type,
    owner: type,
    names: set[str],
    chains: set[tuple[tuple[str, ...], bool]],
    queue: list[tuple[type, Any]],
) -> bool:
    """Collect attribute reads on ``self``; False when ``self`` escapes the analysis."""
    nodes = list(ast.walk(node))
    parents: dict[int, ast.AST] = {}
    for sub in nodes:
        for child in ast.iter_child_nodes(sub):
            parents[id(child)] = sub
    attr_values: set[int] = set()
    allowed_self: set[int] = set()
    for sub in nodes:
        if isinstance(sub, ast.Attribute):
            base = sub.value
            if isinstance(base, ast.Name) and base.id == self_name:
                attr_values.add(id(base))
                name = sub.attr
                if name in _DYNAMIC:
                    return False
                names.add(name)
                member = _lookup(cls, name)
                if member is not None and _function_of(member[1]) is not None and member[0] not in (nn.Module, object):
                    queue.append(member)
            elif isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                start = owner
                if base.args:
                    first = base.args[0]
                    named = [k for k in cls.__mro__ if isinstance(first, ast.Name) and k.__name__ == first.id]
                    if len(named) != 1:
                        return False  # super(X, self) with an X we cannot resolve
                    start = named[0]
                    for arg in base.args[1:]:
                        if isinstance(arg, ast.Name) and arg.id == self_name:
                            allowed_self.add(id(arg))
                if sub.attr in _DYNAMIC - {"forward", "__call__"}:
                    return False
                member = _lookup(cls, sub.attr, start_after=start)
                if member is None or member[0] in (nn.Module, object):
                    continue
                queue.append(member)
            if not isinstance(parents.get(id(sub)), ast.Attribute):
                chain = _chain(sub, self_name)
                if chain is not None:
                    chains.add((chain, _escapes(sub, parents)))
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("getattr", "hasattr"):
            if sub.args and isinstance(sub.args[0], ast.Name) and sub.args[0].id == self_name:
                allowed_self.add(id(sub.args[0]))
                if len(sub.args) >= 2 and isinstance(sub.args[1], ast.Constant) and isinstance(sub.args[1].value, str):
                    name = sub.args[1].value
                    if name in _DYNAMIC:
                        return False
                    names.add(name)
                    if sub.func.id == "getattr":
                        chains.add(((name,), True))  # the value is handed out: treat it as escaping
                else:
                    return False
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "isinstance":
            for arg in sub.args[:1]:
                if isinstance(arg, ast.Name) and arg.id == self_name:
                    allowed_self.add(id(arg))
    for sub in nodes:
        if isinstance(sub, ast.Name) and sub.id == self_name and isinstance(sub.ctx, ast.Load):
            if id(sub) not in attr_values and id(sub) not in allowed_self:
                return False  # self passed somewhere we cannot follow
    return True


# --------------------------------------------------------------------------- instance-level analysis


@dataclass
class _Use:
    """How the code above a module uses it: attributes read on it, and whether it escaped."""

    reads: set[str] = field(default_factory=set)
    opaque: bool = False


def _modules_in(value: Any, depth: int = 0) -> Iterator[nn.Module]:
    """Modules reachable from a plain (unregistered) attribute value or a hook callable."""
    if depth > 3 or isinstance(value, _ATOMS):
        return
    if isinstance(value, nn.Module):
        yield value
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _modules_in(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _modules_in(item, depth + 1)
    elif isinstance(value, functools.partial):
        yield from _modules_in((value.func, *value.args, *value.keywords.values()), depth + 1)
    elif inspect.ismethod(value):
        yield from _modules_in(value.__self__, depth + 1)
    elif inspect.isfunction(value):
        cells = [c.cell_contents for c in (value.__closure__ or ()) if _has_contents(c)]
        yield from _modules_in((*cells, *(value.__defaults__ or ())), depth + 1)
    elif callable(value) and hasattr(value, "__dict__") and not isinstance(value, type):
        yield from _modules_in(tuple(vars(value).values()), depth + 1)


def _graph_usage(module: torch.fx.GraphModule) -> _Usage:
    """What a traced module's graphs do with ``self``: each ``call_module`` node calls the module at
    its target, each ``get_attr`` node takes the object at its target as a value. A module with
    one graph per mode (a feature extractor) is read in both. Read from the graph itself: the
    class and its code are generated anew for every traced module."""
    graphs = [g for g in (getattr(module, "train_graph", None), getattr(module, "eval_graph", None)) if g is not None]
    chains: set[tuple[tuple[str, ...], bool]] = set()
    for graph in graphs or [module.graph]:
        for node in graph.nodes:
            if node.op in ("call_module", "get_attr") and isinstance(node.target, str):
                chains.add((tuple(node.target.split(".")), node.op == "get_attr"))
    return _Usage(frozenset(chain[0] for chain, _ in chains), frozenset(chains))


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises ValueError
    except ValueError:
        return False
    return True


def _escaped_elsewhere(model: nn.Module) -> set[int]:
    """Modules that code outside ``forward`` may run: held by plain attributes or hooks, or hooked."""
    found: set[int] = set()
    atoms = _ATOM_TYPES
    for module in model.modules():
        for key, value in vars(module).items():
            kind = type(value)
            if kind in atoms or key in _SKIP_ATTRS or kind is tuple and all(type(v) in atoms for v in value):
                continue  # the usual attributes (sizes, flags, names) hold no module: skip them fast
            found.update(id(m) for m in _modules_in(value))
        for key in _HOOK_DICTS:
            hooks = module.__dict__.get(key)
            if hooks:
                found.add(id(module))  # a hook receives the module and may call any of its children
                for hook in hooks.values():
                    found.update(id(m) for m in _modules_in(hook))
    return found


def _record(model_use: dict[int, _Use], start: nn.Module, chain: tuple[str, ...], escapes: bool) -> None:
    """Walk ``self.a.b.c`` from ``start``, noting what is read on each module it passes."""
    obj = start
    for i, part in enumerate(chain):
        if i > 0:
            model_use.setdefault(id(obj), _Use()).reads.add(part)
        child = obj._modules.get(part)
        if child is None:
            return
        obj = child
    use = model_use.setdefault(id(obj), _Use())
    if escapes:
        use.opaque = True
    else:
        use.reads.add("forward")


def _orphan_candidates(model: nn.Module) -> Iterable[tuple[str, str, nn.Module, nn.Module]]:
    """(path, name, parent, child) for children that no code run by ``model(...)`` reads."""
    if any(getattr(_torch_module, name, None) for name in _GLOBAL_HOOKS):
        return  # a global hook may call any module
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    escaped = _escaped_elsewhere(model)
    use: dict[int, _Use] = {id(model): _Use({"forward"})}
    opaque_paths: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if any(path == p or path.startswith(p + ".") for p in opaque_paths):
            continue
        mine = use.setdefault(id(module), _Use())
        if mine.opaque or counts[id(module)] > 1 or id(module) in escaped or "forward" in module.__dict__:
            if module._modules:
                opaque_paths.append(path)
            continue
        if not module._modules:
            continue
        if isinstance(module, _CONTAINERS):
            if type(module).forward is nn.Sequential.forward:
                for child in module._modules.values():
                    if child is not None:
                        use.setdefault(id(child), _Use()).reads.add("forward")
            else:
                opaque_paths.append(path)  # elements reached by index or iteration: no telling how
            continue
        if isinstance(module, torch.fx.GraphModule):  # its forward is the graph's generated code
            usage: _Usage | None = _graph_usage(module)
        else:
            entries = {"forward", "__call__"} | {r for r in mine.reads if r not in _NOT_ENTRIES and _is_method(type(module), r)}
            usage = _usage(type(module), frozenset(entries))  # type: ignore[arg-type]  # classes are hashable
        if usage is None:
            opaque_paths.append(path)
            continue
        for chain, escapes in usage.chains:
            _record(use, module, chain, escapes)
        for name, child in module._modules.items():
            if child is None or name in usage.names or name in mine.reads:
                continue
            if escaped and any(id(m) in escaped for m in child.modules()):
                continue  # run (in part) from a plain attribute or a hook
            yield (f"{path}.{name}" if path else name), name, module, child


def find_orphans(model: nn.Module, slot_paths: Iterable[str] = ()) -> list[Finding]:
    """``orphan-module`` findings for ``model``.

    Args:
        model: The model to analyse.
        slot_paths: Paths of the family's slots (present or empty); an orphan whose name
            matches one of them is told where it was probably meant to go.

    Returns:
        One finding per top-most orphan: an error when it holds parameters (they never train),
        a warning when it has none (an unused activation, pool or dropout).
    """
    candidates = list(_orphan_candidates(model))
    if not candidates:
        return []
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
        if id(child) in reachable:
            continue
        if any(path.startswith(r + ".") for r in reported):
            continue
        reported.append(path)
        n_params = sum(p.numel() for p in child.parameters())
        # a module without parameters is only proposed for an empty slot: moving it onto a
        # stateless twin (another ``relu``) changes nothing
        target = next((s for s in slots if s.rsplit(".", 1)[-1] == name and s != path
                       and (n_params or not paths.exists(model, s))), None)
        if target is None and n_params:
            target = next((p for p in all_paths if p.rsplit(".", 1)[-1] == name and p != path and not p.startswith(path + ".")), None)
        parent_path = path.rsplit(".", 1)[0] if "." in path else ""
        where = f"{parent_path} ({type(parent).__name__})" if parent_path else type(parent).__name__
        message = (
            f"{path} ({type(child).__name__}, {n_params:,} parameters) is registered on {where}, "
            f"but {type(parent).__name__}.forward never uses it, so it never runs"
            + (" and its parameters never train" if n_params else "")
        )
        if target:
            message += f"; it was probably meant for {target}"
            fix = f"{paths.expression(target, model)} = {paths.expression(path, model)}; del {paths.expression(path, model)}"
        else:
            fix = f"del {paths.expression(path, model)}  # or call it from {type(parent).__name__}.forward"
        # nothing to train: an unused activation or pool costs nothing, so it is worth a look, not an error
        severity: Severity = "error" if n_params else "warning"
        findings.append(Finding(severity, "orphan-module", (path,) + ((target,) if target else ()), message, fix))
    return findings
