"""Snapshot and restore everything a forward pass may disturb ("leave no trace")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["preserved", "Snapshot"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
_SIZE_ATTRS = ("min_size", "max_size", "fixed_size", "size_divisible")


class Snapshot:
    """What :func:`preserved` saves: mode flags, ``requires_grad``, ``.grad``, hooks,
    transform sizes, buffers (BatchNorm statistics) and the device/dtype of every tensor."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = list(model.modules())
        self.training = [m.training for m in self.modules]
        self.hooks = [{name: set(getattr(m, name, {}) or {}) for name in _HOOK_DICTS} for m in self.modules]
        self.params = list(model.parameters())
        self.requires_grad = [p.requires_grad for p in self.params]
        self.grads = [p.grad for p in self.params]
        self.param_places = [(p.device, p.dtype) for p in self.params]
        self.buffers = [(m, name, b.detach().clone() if b is not None else None) for m in self.modules for name, b in m._buffers.items()]
        self.sizes: list[tuple[nn.Module, dict[str, Any]]] = []
        for m in self.modules:
            saved = {a: getattr(m, a) for a in _SIZE_ATTRS if a in m.__dict__}
            if saved:
                self.sizes.append((m, saved))

    def restore(self) -> None:
        """Put everything back (buffers in place, so the same tensor objects stay registered)."""
        for p, (device, dtype) in zip(self.params, self.param_places, strict=True):
            if p.device != device or p.dtype != dtype:
                p.data = p.data.to(device=device, dtype=dtype)
        with torch.no_grad():
            for m, name, saved in self.buffers:
                current = m._buffers.get(name)
                if saved is None or current is None:
                    m._buffers[name] = saved
                elif current.shape == saved.shape:
                    if current.device != saved.device or current.dtype != saved.dtype:
                        m._buffers[name] = saved
                    else:
                        current.copy_(saved)
                else:
                    m._buffers[name] = saved
        for m, flag in zip(self.modules, self.training, strict=True):
            m.training = flag
        for m, saved_hooks in zip(self.modules, self.hooks, strict=True):
            for name, keys in saved_hooks.items():
                hooks = getattr(m, name, None)
                if hooks:
                    for k in [k for k in hooks if k not in keys]:
                        del hooks[k]
        for p, flag, grad in zip(self.params, self.requires_grad, self.grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for m, sizes in self.sizes:
            for attr, value in sizes.items():
                setattr(m, attr, value)


@contextmanager
def preserved(model: nn.Module) -> Iterator[Snapshot]:
    """Run a block, then restore the model's state whatever happened inside it."""
    snap = Snapshot(model)
    try:
        yield snap
    finally:
        snap.restore()
