"""The function mode of :func:`surgery.trace` that carries producer tags through tensor ops."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from surgery.trace.recorder import _Recorder

_SETITEM = Tensor.__setitem__


class _FlowMode(TorchFunctionMode):
    """Carries producer tags from each op's tensor inputs to its tensor outputs."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.tags = recorder.tags
        self.union = recorder.union

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        out = func(*args, **kwargs)
        tags = self.tags
        if not tags:
            return out
        if isinstance(out, Tensor):
            outs: Iterable[Any] = (out,)
        elif isinstance(out, (tuple, list)) and not isinstance(out, torch.Size):
            outs = out
        elif func is _SETITEM and args and isinstance(args[0], Tensor):
            outs = (args[0],)
        else:
            return out
        # tensors among the positional args (one level into lists/tuples) and the keyword args
        candidates = [b for a in args for b in (a if isinstance(a, (list, tuple)) else (a,))]
        if kwargs:
            candidates.extend(kwargs.values())
        tag: frozenset[str] | None = None
        for a in candidates:
            if isinstance(a, Tensor):
                entry = tags.get(id(a))
                if entry is not None and entry[0]() is a:
                    t = entry[1]
                    tag = t if tag is None or tag is t else self.union(tag, t)
        if tag is None:
            return out
        for o in outs:
            if isinstance(o, Tensor):
                tags[id(o)] = (weakref.ref(o), tag)
        return out

