"""Structural comparison of two models: the slots and modules an edit added, removed or changed.

:func:`slot_changes` compares the slots of the models' anatomies (type, signature, parameter
counts); :func:`module_changes` compares ``named_modules`` path by path (type,
hyperparameters, own parameter shapes, ``requires_grad``). :func:`brief` is the one-line
description of a module that both the changes and the module-level diagrams show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from surgery.anatomy import Anatomy, anatomy_for
from surgery.overview import UNINITIALIZED, Component, components, count_params

__all__ = ["Change", "Status", "brief", "merge_order", "module_changes", "slot_changes"]

#: Before/after status of a slot or module (and of a diagram's nodes, edges and clusters).
Status = Literal["added", "removed", "changed", "unchanged"]


# --------------------------------------------------------------------------- describing modules


def _size(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        if len(set(value)) == 1:
            return str(value[0])
        return "×".join(map(str, value))
    return str(value)


def _kernel(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "×".join(map(str, value))
    return f"{value}×{value}"


def brief(module: nn.Module) -> str:
    """A one-line description: the type and its key hyperparameters.

    ``Conv2d 256→512 3×3``, ``Linear 12544→1024``, ``BatchNorm2d 64``,
    ``MaxPool2d 3×3 s2``; other modules give their class name.

    Args:
        module: Any module.

    Returns:
        The description.
    """
    t = type(module).__name__
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return f"{t} ({UNINITIALIZED})"
    if isinstance(module, nn.modules.conv._ConvNd):
        text = f"{t} {module.in_channels}→{module.out_channels} {_kernel(module.kernel_size)}"
        if _size(module.stride) != "1":
            text += f" s{_size(module.stride)}"
        if _size(module.dilation) != "1":
            text += f" d{_size(module.dilation)}"
        if module.groups != 1:
            text += f" g{module.groups}"
        return text
    if isinstance(module, nn.Linear):
        return f"{t} {module.in_features}→{module.out_features}"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{t} {module.num_features}"
    if isinstance(module, nn.GroupNorm):
        return f"{t} {module.num_groups}/{module.num_channels}"
    if isinstance(module, nn.LayerNorm):
        return f"{t} {_size(tuple(module.normalized_shape))}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        text = f"{t} {_kernel(module.kernel_size)}"
        if module.stride is not None and _size(module.stride) != _size(module.kernel_size):
            text += f" s{_size(module.stride)}"
        return text
    if isinstance(module, nn.Dropout):
        return f"{t} p={module.p}"
    weight = module._buffers.get("weight") if "weight" not in module._parameters else None
    if weight is not None and weight.dim() == 1 and "running_mean" in module._buffers:  # FrozenBatchNorm2d and kin
        return f"{t} {int(weight.shape[0])}"
    output_size = getattr(module, "output_size", None)
    names = getattr(module, "featmap_names", None)
    if isinstance(names, (list, tuple)) and output_size is not None:
        return f"{t} {','.join(map(str, names))} → {_kernel(output_size)}"
    return t


# --------------------------------------------------------------------------- changes


@dataclass(frozen=True)
class Change:
    """How one slot or module differs between two models.

    Attributes:
        path: Dotted path.
        status: ``"added"``, ``"removed"``, ``"changed"`` or ``"unchanged"``.
        before: Description before the edit (type and signature or hyperparameters), None when added.
        after: Description after the edit, None when removed.
        params_before: Parameters before (None when added).
        params_after: Parameters after (None when removed).
        what: What changed: any of ``"type"``, ``"signature"``, ``"hyperparameters"``,
            ``"params"``, ``"trainable"``.
        modules: Modules in the subtree (for an added or removed module, whose descendants are
            not listed separately).
    """

    path: str
    status: Status
    before: str | None
    after: str | None
    params_before: int | None
    params_after: int | None
    what: tuple[str, ...] = ()
    modules: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "before": self.before,
            "after": self.after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "what": list(self.what),
            "modules": self.modules,
        }

    def __str__(self) -> str:
        if self.status == "added":
            extra = f" ({self.modules} modules)" if self.modules > 1 else ""
            return f"+ {self.path}: {self.after}, {self.params_after:,} params{extra}"
        if self.status == "removed":
            extra = f" ({self.modules} modules)" if self.modules > 1 else ""
            return f"- {self.path}: {self.before}, {self.params_before:,} params{extra}"
        if self.status == "unchanged":
            return f"  {self.path}: {self.after}"
        text = f"~ {self.path}: {self.before} → {self.after}"
        if self.params_before != self.params_after:
            text += f", params {self.params_before:,} → {self.params_after:,}"
        return text + f" [{', '.join(self.what)}]"


def merge_order(after: Sequence[str], before: Sequence[str]) -> list[str]:
    """``after``'s order, with items only in ``before`` inserted after their predecessor there.

    Args:
        after: Paths of the model after the edit, in their order.
        before: Paths of the model before the edit, in their order.

    Returns:
        Every path of either list, each once.
    """
    out = list(after)
    seen = set(out)
    previous: str | None = None
    for item in before:
        if item not in seen:
            out.insert(out.index(previous) + 1 if previous is not None else 0, item)
            seen.add(item)
        previous = item
    return out


def _component_text(c: Component) -> str:
    config = f" [{c.config}]" if c.config else ""
    if c.in_sig is None and c.out_sig is None:
        return c.type + config
    return f"{c.type} (in {c.in_sig or '?'}, out {c.out_sig or '?'}){config}"


def slot_changes(before: nn.Module, after: nn.Module) -> list[Change]:
    """Compare two models slot by slot (their anatomy's components).

    A slot is changed when its type, its input/output signature, its configuration (anchor
    sizes and ratios, a pooler's maps, output size and sampling ratio), its parameter count or
    its trainable parameter count differ.

    Args:
        before: The model before the edit.
        after: The model after the edit.

    Returns:
        One :class:`Change` per slot of either model, unchanged ones included, in data-flow order.
    """
    old = {c.path: c for c in components(before)}
    new = {c.path: c for c in components(after)}
    out: list[Change] = []
    for path in merge_order(list(new), list(old)):
        a, b = old.get(path), new.get(path)
        if a is None:
            assert b is not None
            out.append(Change(path, "added", None, _component_text(b), None, b.params))
            continue
        if b is None:
            out.append(Change(path, "removed", _component_text(a), None, a.params, None))
            continue
        what = []
        if a.type != b.type:
            what.append("type")
        if str(a.in_sig) != str(b.in_sig) or str(a.out_sig) != str(b.out_sig):
            what.append("signature")
        if a.config != b.config:
            what.append("config")
        if a.params != b.params:
            what.append("params")
        if a.params - a.trainable != b.params - b.trainable:
            what.append("trainable")
        status: Status = "changed" if what else "unchanged"
        out.append(Change(path, status, _component_text(a), _component_text(b), a.params, b.params, tuple(what)))
    return out


def _shape(t: Any) -> tuple[int, ...] | str:
    return UNINITIALIZED if isinstance(t, (UninitializedParameter, UninitializedBuffer)) else tuple(t.shape)


def _own_key(module: nn.Module, anatomy: Anatomy) -> tuple[Any, ...]:
    return (
        type(module).__qualname__,
        (module.extra_repr(), anatomy.slot_config(module)),
        tuple((n, _shape(p)) for n, p in module._parameters.items() if p is not None),
        tuple((n, _shape(b)) for n, b in module._buffers.items() if b is not None),
        tuple(p.requires_grad for p in module._parameters.values() if p is not None),
    )


def _module_what(a: nn.Module, b: nn.Module, anatomy: Anatomy) -> tuple[str, ...]:
    ka, kb = _own_key(a, anatomy), _own_key(b, anatomy)
    what = []
    if ka[0] != kb[0]:
        what.append("type")
    if ka[1] != kb[1]:
        what.append("hyperparameters")
    if ka[2] != kb[2] or ka[3] != kb[3]:
        what.append("params")
    if ka[4] != kb[4]:
        what.append("trainable")
    return tuple(what)


def module_changes(before: nn.Module, after: nn.Module, *, unchanged: bool = False, anatomy: Anatomy | None = None) -> list[Change]:
    """Compare two models module by module (dotted paths of ``named_modules``).

    A module is changed when its own type, hyperparameters (``extra_repr`` and the
    configuration the anatomy reads, e.g. anchor sizes), own parameter or
    buffer shapes, or own ``requires_grad`` flags differ; a container whose children changed
    is not itself changed. The descendants of an added or removed module are not listed
    separately (:attr:`Change.modules` counts them).

    Args:
        before: The model before the edit.
        after: The model after the edit.
        unchanged: Also list unchanged modules.
        anatomy: The anatomy of ``after`` (resolved here when None).

    Returns:
        The changes, in registration order (removed modules where they used to be). The
        root module itself is never listed.
    """
    anatomy = anatomy if anatomy is not None else anatomy_for(after)
    old = dict(before.named_modules())
    new = dict(after.named_modules())
    out: list[Change] = []
    gone: list[str] = []  # roots of added/removed subtrees
    for path in merge_order(list(new), list(old)):
        if path == "" or any(path.startswith(g + ".") for g in gone):
            continue
        a, b = old.get(path), new.get(path)
        if a is None or b is None:
            gone.append(path)
            module = b if b is not None else a
            assert module is not None
            size = sum(1 for _ in module.modules())
            params = count_params(module)[0]
            if a is None:
                out.append(Change(path, "added", None, brief(module), None, params, (), size))
            else:
                out.append(Change(path, "removed", brief(module), None, params, None, (), size))
            continue
        what = _module_what(a, b, anatomy)
        if what or unchanged:
            text_a, text_b = brief(a), brief(b)
            config_a, config_b = anatomy.slot_config(a), anatomy.slot_config(b)
            if config_a != config_b:
                text_a, text_b = f"{text_a} [{config_a or '-'}]", f"{text_b} [{config_b or '-'}]"
            out.append(Change(path, "changed" if what else "unchanged", text_a, text_b, count_params(a)[0], count_params(b)[0], what))
    return out
