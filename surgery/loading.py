"""Build a model from a spec and load local weights safely.

A spec is ``pkg.module:callable`` or ``path/to/file.py:callable``. A ``.py`` spec *runs that
file*, exactly like importing it would, so only name files you trust. Weights are always
read with ``torch.load(weights_only=True)``; a pickled whole model is refused unless
``trust=True``.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect as _inspect
import pickle
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery._errors import LoadError

__all__ = ["DEFAULT_SPEC", "WeightsReport", "load_model", "load_weights", "parse_args", "resolve_callable"]

#: The model used when no spec is given (built with ``weights=None, weights_backbone=None``).
DEFAULT_SPEC = "torchvision.models.detection:maskrcnn_resnet50_fpn"
_OFFLINE_KWARGS = ("weights", "weights_backbone")


def parse_args(pairs: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn ``["num_classes=3", "min_size=(320,)"]`` into keyword arguments.

    Each value is parsed with ``ast.literal_eval``; a mapping is returned as a copy.

    Raises:
        LoadError: A pair has no ``=`` or its value is not a Python literal.
    """
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        return dict(pairs)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise LoadError(f"--arg {pair!r} is not key=value; write e.g. --arg num_classes=3", arg=pair)
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError) as e:
            raise LoadError(
                f"--arg {key}={raw!r}: {raw!r} is not a Python literal ({type(e).__name__}); "
                f"numbers, None/True/False, tuples and quoted strings work, e.g. {key}='{raw}'",
                arg=pair,
            ) from e
    return out


def _import_file(file: Path) -> Any:
    if not file.is_file():
        raise LoadError(f"spec file {str(file)!r} does not exist; give an existing .py file, e.g. models/my_model.py:build", file=str(file))
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    name = f"_surgery_spec_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {str(file)!r} as a Python file", file=str(file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise LoadError(f"running {str(file)!r} raised {type(e).__name__}: {e}", file=str(file)) from e
    return module


def resolve_callable(spec: str) -> tuple[Any, str]:
    """Import the object a spec names. Returns ``(object, normalised spec)``.

    Raises:
        LoadError: The spec is malformed, or its module, file or attribute does not exist.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise LoadError(
            f"model spec {spec!r} must be 'pkg.module:callable' or 'path/to/file.py:callable', "
            f"e.g. {DEFAULT_SPEC!r}",
            spec=spec,
        )
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise LoadError(f"model spec {spec!r} needs both a module and a callable around ':', e.g. {DEFAULT_SPEC!r}", spec=spec)
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise LoadError(
                f"cannot import module {target!r} of spec {spec!r}: {e}. Install it, add it to PYTHONPATH, "
                f"or name a file instead: path/to/file.py:{attr}",
                spec=spec,
            ) from e
        except Exception as e:
            raise LoadError(f"importing {target!r} raised {type(e).__name__}: {e}", spec=spec) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            close = difflib.get_close_matches(part, public, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else (f" It has: {', '.join(public[:10])}." if public else "")
            raise LoadError(f"{target!r} has no attribute {part!r} (spec {spec!r}).{hint}", spec=spec)
        obj = getattr(obj, part)
    return obj, spec


def _builder_kwargs(fn: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Add ``weights=None, weights_backbone=None`` where the builder takes them and the user did not say."""
    kwargs = dict(args)
    try:
        params = _inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    for name in _OFFLINE_KWARGS:
        if name in params and name not in kwargs:
            kwargs[name] = None
    return kwargs


@dataclass
class WeightsReport:
    """How a state dict matched a model.

    Attributes:
        file: The file read.
        loaded: Keys copied into the model.
        missing: Model keys the file does not have.
        unexpected: File keys the model does not have.
        mismatched: ``{key: (model_shape, file_shape)}`` for keys present in both with other shapes.
    """

    file: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "loaded": len(self.loaded),
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
        }

    def __str__(self) -> str:
        lines = [f"{self.file}: {len(self.loaded)} tensors loaded"]
        for title, keys in (("missing from file", self.missing), ("not in model", self.unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        for k, (a, b) in list(self.mismatched.items())[:8]:
            lines.append(f"  shape mismatch {k}: model {tuple(a)} vs file {tuple(b)}")
        return "\n".join(lines)


def _first_line(error: BaseException) -> str:
    text = str(error).splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _refused_globals(error: pickle.UnpicklingError) -> bool:
    """True when ``torch.load(weights_only=True)`` refused the file for naming Python objects
    (a pickled model or class), rather than because the bytes are not a pickle at all.

    torch raises the same ``UnpicklingError`` for both; the inner error it chains says which
    ("Unsupported global: ..." versus e.g. "Unsupported operand 110"). When in doubt the file
    is reported as unreadable, which still refuses it.
    """
    texts = (str(error), str(error.__context__ or ""))
    return any("unsupported global" in t.lower() for t in texts)


def _read_checkpoint(file: Path, trust: bool) -> Mapping[str, Any]:
    if not file.is_file():
        raise LoadError(f"weights file {str(file)!r} does not exist", file=str(file))
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _refused_globals(e):
            raise LoadError(
                f"{str(file)!r} is not a readable PyTorch checkpoint ({_first_line(e.__context__ or e)}); "
                "it should be a file written by torch.save(model.state_dict(), path)",
                file=str(file),
            ) from e
        if not trust:
            raise LoadError(
                f"{str(file)!r} is not a plain state dict: it holds pickled Python objects (e.g. a whole model), "
                "which can run arbitrary code when loaded. Save model.state_dict() instead, or pass --trust "
                "(trust=True) if you wrote this file yourself",
                file=str(file),
            ) from e
        try:
            obj = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise LoadError(f"{str(file)!r} could not be unpickled even with trust: {type(e2).__name__}: {e2}", file=str(file)) from e2
    except Exception as e:
        raise LoadError(
            f"{str(file)!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it should be a file written by torch.save(model.state_dict(), path)",
            file=str(file),
        ) from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise LoadError(
        f"{str(file)!r} holds a {type(obj).__name__}, not a state dict of tensors (nor a dict with a "
        "'state_dict' or 'model' entry holding one)",
        file=str(file),
    )


def load_weights(model: nn.Module, file: str | Path, *, trust: bool = False, strict: bool = True) -> WeightsReport:
    """Load a local state dict into ``model`` and report how the keys matched.

    Args:
        model: The model to fill.
        file: A file written by ``torch.save(model.state_dict(), file)`` (or a checkpoint dict
            with a ``"state_dict"`` / ``"model"`` entry).
        trust: Allow a pickled whole model (runs code from the file).
        strict: Raise when any key is missing, unexpected or of another shape. When False, the
            keys that fit are loaded and the rest is reported.

    Returns:
        A :class:`WeightsReport`.

    Raises:
        LoadError: The file is missing, corrupt, pickled without ``trust``, or (``strict``) does not match.
    """
    path = Path(file)
    state = _read_checkpoint(path, trust)
    own = model.state_dict()
    report = WeightsReport(str(path))
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    fitting: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k in own:
            if tuple(own[k].shape) != tuple(v.shape):
                report.mismatched[k] = (tuple(own[k].shape), tuple(v.shape))
            else:
                fitting[k] = v
    if strict and not report.clean:
        raise LoadError(f"weights do not match the model (pass strict=False to load what fits):\n{report}", file=str(path))
    model.load_state_dict(fitting, strict=False)
    report.loaded = list(fitting)
    return report


def load_model(
    spec: str | None = None,
    args: Iterable[str] | Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    trust: bool = False,
    strict: bool = True,
) -> nn.Module:
    """Build a model from a spec, optionally loading local weights.

    Builders that take ``weights`` / ``weights_backbone`` get ``None`` unless ``args`` says
    otherwise, so nothing is ever downloaded.

    Args:
        spec: ``pkg.module:callable`` or ``path/to/file.py:callable`` (the file is executed);
            None means :data:`DEFAULT_SPEC`. The attribute may also be a built ``nn.Module``.
        args: Keyword arguments for the callable, as a mapping or ``["key=literal", ...]``.
        weights: A local state-dict file to load (``torch.load(weights_only=True)``).
        trust: Allow a weights file that holds a pickled whole model.
        strict: Require the weights to match the model exactly.

    Returns:
        The model.

    Raises:
        LoadError: Anything went wrong; the message says what was tried and what would work.
    """
    spec = spec or DEFAULT_SPEC
    kwargs = parse_args(args)
    obj, spec = resolve_callable(spec)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise LoadError(f"{spec!r} is an already built {type(obj).__name__}; it takes no --arg", spec=spec)
        model = obj
    elif callable(obj):
        kwargs = _builder_kwargs(obj, kwargs)
        try:
            model = obj(**kwargs)
        except TypeError as e:
            try:
                sig = str(_inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            raise LoadError(f"calling {spec}{sig} with {kwargs} failed: {e}", spec=spec) from e
        except Exception as e:
            raise LoadError(f"building {spec!r} raised {type(e).__name__}: {e}", spec=spec) from e
    else:
        raise LoadError(f"{spec!r} is a {type(obj).__name__}, not a callable that builds an nn.Module", spec=spec)
    if not isinstance(model, nn.Module):
        raise LoadError(
            f"{spec!r} returned a {type(model).__module__}.{type(model).__qualname__}, not a torch.nn.Module; "
            "the callable must build and return the model",
            spec=spec,
        )
    if weights is not None:
        load_weights(model, weights, trust=trust, strict=strict)
    return model
