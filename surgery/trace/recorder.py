"""What the hooks of :func:`surgery.trace` do: flatten what a module received and returned
into ``(key, tensor)`` leaves, record each call, and tag module outputs with their producer."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from surgery.trace.results import TensorInfo, TraceCall, dtype_name

_MAX_NESTING = 8
_SCALARS = (int, float, bool, str, bytes, complex, type(None))


def _leaves(obj: Any, key: str, out: list[tuple[str, Tensor]], depth: int = 0) -> None:
    """Append ``(key, tensor)`` for every tensor inside ``obj``."""
    if isinstance(obj, Tensor):
        out.append((key, obj))
        return
    if depth >= _MAX_NESTING or isinstance(obj, _SCALARS):
        return
    if isinstance(obj, (list, tuple)):
        if isinstance(obj, torch.Size):
            return
        names = getattr(obj, "_fields", None)
        for i, v in enumerate(obj):
            if isinstance(v, _SCALARS):
                continue
            name = names[i] if names is not None and i < len(names) else str(i)
            _leaves(v, f"{key}.{name}" if key else name, out, depth + 1)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(v, _SCALARS):
                _leaves(v, f"{key}.{k}" if key else str(k), out, depth + 1)
    elif _is_image_list(obj):
        _leaves(obj.tensors, f"{key}.tensors" if key else "tensors", out, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _leaves(getattr(obj, f.name, None), f"{key}.{f.name}" if key else f.name, out, depth + 1)


def _is_image_list(obj: Any) -> bool:
    """True for a batch of padded images with their sizes: a tensor ``.tensors`` and a list
    ``.image_sizes`` (the form detection transforms hand to their backbone)."""
    return isinstance(getattr(obj, "tensors", None), Tensor) and isinstance(getattr(obj, "image_sizes", None), list)


def _info(key: str, t: Tensor) -> TensorInfo:
    """The shape and dtype of ``t``, found at ``key``."""
    return TensorInfo(key, tuple(t.shape), dtype_name(t.dtype))


# --------------------------------------------------------------------------- recording


class _Recorder:
    """State shared by the hooks and the function mode during one trace."""

    def __init__(self, components: list[str]) -> None:
        self.tags: dict[int, tuple[weakref.ref[Tensor], frozenset[str]]] = {}
        self.calls: list[TraceCall] = []
        self.stack: list[TraceCall] = []
        self.edges: dict[tuple[str, str], tuple[tuple[tuple[int, ...], ...], list[str]]] = {}
        self.comp_shapes: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {}
        self.called: set[str] = set()
        self.done: list[str] = []
        self.mode = "eval"
        self.components = set(components)
        self.comp_of: dict[str, str | None] = {}
        self._singletons: dict[str, frozenset[str]] = {}
        self._unions: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
        self._sorted_components = sorted(components, key=len, reverse=True)

    def component(self, path: str) -> str | None:
        found = self.comp_of.get(path, "")
        if found == "":
            found = next((c for c in self._sorted_components if path == c or path.startswith(c + ".")), None)
            self.comp_of[path] = found
        return found

    def tag_of(self, t: Tensor) -> frozenset[str] | None:
        entry = self.tags.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return None

    def union(self, a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
        key = (a, b)
        found = self._unions.get(key)
        if found is None:
            found = self._unions[key] = a | b
        return found

    def own(self, path: str) -> frozenset[str]:
        tag = self._singletons.get(path)
        if tag is None:
            tag = self._singletons[path] = frozenset((path,))
        return tag

    # hooks -----------------------------------------------------------------

    def make_hooks(self, path: str, type_name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        prefix = path + "." if path else ""
        is_component = path in self.components

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            with torch._C.DisableTorchFunction():
                leaves: list[tuple[str, Tensor]] = []
                _leaves(args, "", leaves)
                if kwargs:
                    _leaves(kwargs, "", leaves)
                infos = []
                found: dict[str, list[tuple[int, ...]]] = {}
                comp_found: dict[str, list[tuple[int, ...]]] = {}
                for key, t in leaves:
                    info = _info(key, t)
                    infos.append(info)
                    tag = self.tag_of(t)
                    if tag is None:
                        continue
                    comps: set[str] = set()
                    for producer in tag:
                        found.setdefault(producer, []).append(info.shape)
                        if is_component:
                            comp = self.component(producer)
                            if comp is not None and comp != path and comp not in comps:
                                comps.add(comp)
                                comp_found.setdefault(comp, []).append(info.shape)
                order = sorted(found)
                for producer in order:
                    edge = self.edges.get((producer, path))
                    if edge is None:
                        self.edges[(producer, path)] = (tuple(found[producer]), [self.mode])
                    elif self.mode not in edge[1]:
                        edge[1].append(self.mode)
                for comp, shapes in comp_found.items():
                    self.comp_shapes.setdefault((comp, path), tuple(shapes))
                call = TraceCall(len(self.calls), path, type_name, self.mode, len(self.stack), tuple(infos), producers=tuple(order))
                self.calls.append(call)
                self.stack.append(call)
                self.called.add(path)

        def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            with torch._C.DisableTorchFunction():
                stack = self.stack
                call = None
                while stack:
                    top = stack.pop()
                    if top.path == path:
                        call = top
                        break
                leaves: list[tuple[str, Tensor]] = []
                _leaves(output, "", leaves)
                own = self.own(path)
                tags = self.tags
                for _, t in leaves:
                    tag = self.tag_of(t)
                    if tag is not None and (not prefix or all(p.startswith(prefix) for p in tag)):
                        continue  # made inside this module: keep the more precise producer
                    tags[id(t)] = (weakref.ref(t), own)
                if call is not None:
                    call.outputs = tuple(_info(k, t) for k, t in leaves)
                    call.finished = True
                self.done.append(path)

        return pre, post

