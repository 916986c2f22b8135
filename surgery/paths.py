"""Address any submodule of a model by dotted path.

``roi_heads.mask_head``, ``backbone.body.layer4.0.conv1`` and ModuleDict keys all work.
Integer segments index ``nn.Sequential`` and ``nn.ModuleList`` (negative ones too).
A lookup never creates anything: a segment that does not name a registered submodule is
a :class:`~surgery.PathError` that names the segment, its parent and up to three
did-you-mean candidates.

Example:
    >>> from surgery import paths
    >>> head = paths.get(model, "roi_heads.mask_head")
    >>> old = paths.set(model, "roi_heads.mask_head", new_head)
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Iterator

from torch import nn

from surgery._errors import PathError
from surgery._util import require_module

__all__ = ["get", "find", "set", "delete", "exists", "is_empty_slot", "iter_paths", "split", "join", "parent_of", "expression"]

_INDEXED = (nn.Sequential, nn.ModuleList)
_MAX_SUGGESTIONS = 3
_NEGATIVE_INDEX = re.compile(r"-[1-9][0-9]*")


def split(path: str) -> list[str]:
    """Split a dotted path into its segments (``""`` is the root, with no segments)."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str like 'roi_heads.mask_head', got {type(path).__name__} {path!r}")
    if path == "":
        return []
    segments = path.split(".")
    if any(s == "" for s in segments):
        raise PathError(
            f"path {path!r} has an empty segment; write segments separated by single dots, "
            "e.g. 'roi_heads.mask_head' or 'backbone.body.layer4.0'",
            path=path,
            segment="",
        )
    return segments


def join(*segments: str) -> str:
    """Join segments (or partial paths) into one dotted path, skipping empty ones."""
    return ".".join(s for s in segments if s)


def parent_of(path: str) -> tuple[str, str]:
    """Return ``(parent_path, last_segment)`` of a non-root path."""
    segments = split(path)
    if not segments:
        raise PathError("the root has no parent; name a submodule such as 'roi_heads.mask_head'", path=path)
    return ".".join(segments[:-1]), segments[-1]


def _describe(path: str) -> str:
    return repr(path) if path else "the root"


def _child_key(parent: nn.Module, segment: str) -> str | None:
    """The ``_modules`` key that ``segment`` names in ``parent``, or None."""
    if segment in parent._modules:
        return segment
    if isinstance(parent, _INDEXED) and _NEGATIVE_INDEX.fullmatch(segment):
        index = int(segment)  # only plain ASCII '-N': int() would also take ' -1', '-1_0' or other scripts' digits
        n = len(parent._modules)
        if -n <= index < 0:
            return list(parent._modules)[index]
    return None


def _optional_slots(model: nn.Module) -> frozenset[str]:
    """The paths the model's anatomy declares as optional slots (that a model may leave ``None``)."""
    from surgery.anatomy import anatomy_for  # imported here: the anatomy layer builds on this module

    return frozenset(s.path for s in anatomy_for(model).declared_slots(model) if s.optional)


def _empty_here(model: nn.Module, parent: nn.Module, path: str, segment: str) -> bool:
    """The empty-slot rule for ``segment`` of ``parent``, where ``path`` is the slot's full path in ``model``."""
    if segment in parent._modules:
        return parent._modules[segment] is None
    if segment in parent.__dict__ and parent.__dict__[segment] is None:
        return path in _optional_slots(model)
    return False


def is_empty_slot(model: nn.Module, path: str) -> bool:
    """True when ``path`` names an empty slot of ``model``, one that :func:`set` may fill.

    A slot is empty when its parent exists and either registered it as ``None``
    (``parent._modules[name] is None``, as :func:`delete` leaves it) or holds a plain ``None``
    attribute there that the model's anatomy declares an optional slot (e.g.
    ``roi_heads.mask_head`` of a Faster R-CNN). Any other ``None`` attribute
    (``transform.fixed_size``, ``roi_heads.box_roi_pool.scales``) is not a slot.

    Args:
        model: The model to look in.
        path: Dotted path of the slot.

    Returns:
        Whether it is an empty slot (False for a filled slot or a path that does not resolve).
    """
    try:
        parent_path, name = parent_of(path)
        parent = get(model, parent_path) if parent_path else require_module(model, "paths")
    except PathError:
        return False
    return _empty_here(model, parent, path, name)


def _all_paths(root: nn.Module) -> list[str]:
    return [p for p, _ in root.named_modules(remove_duplicate=False) if p]


def _suggest(root: nn.Module, parent: nn.Module, parent_path: str, segment: str, rest: list[str]) -> tuple[str, ...]:
    """Up to three existing paths that were probably meant."""
    all_paths = _all_paths(root)
    existing = frozenset(all_paths)
    found: list[str] = []

    def add(candidate: str) -> None:
        full = join(candidate, *rest)
        pick = full if full in existing else candidate
        if pick not in found and pick in existing:
            found.append(pick)

    # 1. the same name elsewhere in the model (``mask_predictor`` -> ``roi_heads.mask_predictor``)
    for p in all_paths:
        if p.rsplit(".", 1)[-1] == segment and p != join(parent_path, segment):
            add(p)
    # 2. siblings with a similar name
    siblings = [k for k, v in parent._modules.items() if v is not None]
    for name in difflib.get_close_matches(segment, siblings, n=_MAX_SUGGESTIONS, cutoff=0.6):
        add(join(parent_path, name))
    # 3. similar last names anywhere in the model
    by_last: dict[str, list[str]] = {}
    for p in all_paths:
        by_last.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    for name in difflib.get_close_matches(segment, list(by_last), n=_MAX_SUGGESTIONS, cutoff=0.75):
        for p in by_last[name][:1]:
            add(p)
    return tuple(found[:_MAX_SUGGESTIONS])


def _missing(root: nn.Module, path: str, segments: list[str], i: int, parent: nn.Module) -> PathError:
    parent_path = ".".join(segments[:i])
    segment = segments[i]
    suggestions = _suggest(root, parent, parent_path, segment, segments[i + 1 :])
    children = [k for k, v in parent._modules.items() if v is not None]
    msg = (
        f"{segment!r} is not a submodule of {_describe(parent_path)} ({type(parent).__name__}) "
        f"in path {path!r}."
    )
    if suggestions:
        msg += " Did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
    if children:
        shown = ", ".join(children[:12]) + (", ..." if len(children) > 12 else "")
        msg += f" Submodules of {_describe(parent_path)}: {shown}."
    else:
        msg += f" {_describe(parent_path)} has no submodules."
    if segment in parent.__dict__ or hasattr(type(parent), segment):
        msg += f" ({segment!r} exists there, but as a {type(getattr(parent, segment, None)).__name__}, not a module.)"
    return PathError(msg, path=path, segment=segment, parent=parent_path, suggestions=suggestions)


def _walk(model: nn.Module, path: str) -> tuple[nn.Module, str, list[str]]:
    """Resolve all but the last segment. Returns (parent, last_key_or_segment, segments)."""
    require_module(model, "paths")
    segments = split(path)
    if not segments:
        raise PathError(
            "the empty path names the model itself; name a submodule such as 'roi_heads.mask_head'",
            path=path,
        )
    node = model
    for i, segment in enumerate(segments[:-1]):
        key = _child_key(node, segment)
        if key is None or node._modules[key] is None:
            if _empty_here(model, node, join(*segments[: i + 1]), segment):
                raise PathError(
                    f"{join(*segments[: i + 1])!r} is an empty slot (None) in path {path!r}; "
                    "set it with paths.set() first",
                    path=path,
                    segment=segment,
                    parent=".".join(segments[:i]),
                )
            raise _missing(model, path, segments, i, node)
        child = node._modules[key]
        assert child is not None  # checked just above
        node = child
    return node, segments[-1], segments


def get(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at ``path`` (``""`` returns the model itself).

    Args:
        model: The model to look in.
        path: Dotted path, e.g. ``"roi_heads.mask_head"`` or ``"backbone.body.layer4.0"``.

    Returns:
        The submodule.

    Raises:
        PathError: A segment is not a registered submodule, or the slot is empty (None).
    """
    if path == "":
        require_module(model, "paths")
        return model
    parent, last, segments = _walk(model, path)
    key = _child_key(parent, last)
    if key is None or parent._modules[key] is None:
        if _empty_here(model, parent, path, last):
            raise PathError(
                f"{path!r} is an empty slot (None) of {type(parent).__name__}; "
                f"fill it with surgery.paths.set(model, {path!r}, module)",
                path=path,
                segment=last,
                parent=".".join(segments[:-1]),
            )
        raise _missing(model, path, segments, len(segments) - 1, parent)
    child = parent._modules[key]
    assert child is not None
    return child


def find(model: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path``, or None when there is none (no error, nothing created).

    Args:
        model: The root module.
        path: Dotted path, as for :func:`get`.

    Returns:
        The submodule, or None when a segment does not exist or the slot is empty.
    """
    require_module(model, "paths")
    try:
        segments = split(path)
    except PathError:
        return None
    node = model
    for segment in segments:  # no error is built: a missing slot is a common answer, not a failure
        key = _child_key(node, segment)
        child = node._modules.get(key) if key is not None else None
        if child is None:
            return None
        node = child
    return node


def exists(model: nn.Module, path: str) -> bool:
    """True when ``path`` names a submodule (an empty ``None`` slot does not count)."""
    return find(model, path) is not None


def set(model: nn.Module, path: str, module: nn.Module) -> nn.Module | None:  # noqa: A001 - mirrors get/set
    """Put ``module`` at ``path`` and return what was there.

    Only an existing submodule or an existing empty (``None``) slot can be set; nothing new
    is ever created, unlike ``nn.Module.set_submodule`` with a typo.

    Args:
        model: The model to change.
        path: Dotted path of an existing submodule or empty slot.
        module: The replacement.

    Returns:
        The module that was at ``path``, or None for an empty slot.

    Raises:
        NotAModuleError: ``module`` is not an ``nn.Module``.
        PathError: ``path`` does not name an existing submodule or empty slot.
    """
    require_module(module, "paths.set()", f"the replacement for {path!r}")
    parent, last, segments = _walk(model, path)
    key = _child_key(parent, last)
    if key is not None:
        old = parent._modules[key]
        parent._modules[key] = module
        return old
    if _empty_here(model, parent, path, last):
        setattr(parent, last, module)  # nn.Module.__setattr__ registers it in place of the None attribute
        return None
    raise _missing(model, path, segments, len(segments) - 1, parent)


def delete(model: nn.Module, path: str) -> nn.Module:
    """Remove the submodule at ``path`` and return it.

    In ``nn.Sequential`` / ``nn.ModuleList`` the entry is removed (later indices shift down);
    in ``nn.ModuleDict`` the key is removed. Elsewhere the slot is set to ``None``, which is
    how torchvision marks an absent head (``RoIHeads.has_mask()`` then returns False), so the
    attribute still exists and ``forward`` can test it.

    Raises:
        PathError: ``path`` does not name an existing submodule.
    """
    old = get(model, path)
    parent, last, _ = _walk(model, path)
    key = _child_key(parent, last)
    assert key is not None  # get() succeeded
    if isinstance(parent, _INDEXED):
        del parent[list(parent._modules).index(key)]
    elif isinstance(parent, nn.ModuleDict):
        del parent[key]
    else:
        parent._modules[key] = None
    return old


def iter_paths(model: nn.Module) -> Iterator[str]:
    """Yield the dotted path of every submodule (not the root), in registration order.

    A module registered under two names is yielded once, under its first name.
    """
    require_module(model, "paths")
    for p, _ in model.named_modules():
        if p:
            yield p


def expression(path: str, model: nn.Module | None = None, root: str = "model") -> str:
    """The Python expression that reaches ``path`` from ``root``, for fix texts a user can paste.

    ``"layer1.0.relu"`` becomes ``model.layer1[0].relu``: an integer segment is an index
    (``nn.Sequential`` / ``nn.ModuleList``), any other identifier an attribute. With
    ``model``, a ``nn.ModuleDict`` key is written as a string subscript (``["0"]``), and a
    segment that is no identifier (``"my-key"``) is always a string subscript or a ``getattr``.

    Args:
        path: A dotted path (``""`` is the root itself).
        model: The model the path lives in, to tell a ModuleDict key from an index.
        root: The name the expression starts from.

    Returns:
        The expression, e.g. ``'model.roi_heads.box_predictor'`` or ``'model.layer1[0].relu'``.
    """
    text = root
    parent: nn.Module | None = model
    for segment in split(path) if path else []:
        is_dict = isinstance(parent, nn.ModuleDict)
        name = segment.isidentifier() and not keyword.iskeyword(segment)
        if is_dict or (not name and not segment.lstrip("-").isdigit()):
            text = f"{text}[{segment!r}]" if is_dict or parent is None else f"getattr({text}, {segment!r})"
        elif name:
            text = f"{text}.{segment}"
        else:
            text = f"{text}[{int(segment)}]"
        if parent is not None:
            parent = parent._modules.get(segment)
    return text
