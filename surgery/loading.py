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
from typing import TYPE_CHECKING, Any

from surgery._errors import LoadError

if TYPE_CHECKING:  # torch loads when a model is built, so `surgery --help` starts without it
    import torch
    from torch import nn

__all__ = ["DEFAULT_SPEC", "WeightsReport", "absolute_spec", "current_folder_on_path", "import_spec_file", "is_saved_file", "load_model",
           "load_weights", "parse_args", "resolve_callable", "spec_modules", "spec_source"]

#: The model used when no spec is given (built with ``weights=None, weights_backbone=None``).
DEFAULT_SPEC = "torchvision.models.detection:maskrcnn_resnet50_fpn"
_OFFLINE_KWARGS = ("weights", "weights_backbone")
#: Entries of a checkpoint dict that may hold the state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "model_state")
_DDP_PREFIX = "module."
#: Name prefix of the modules that ``.py`` spec files are imported as.
SPEC_MODULE_PREFIX = "_surgery_spec_"


def parse_args(pairs: Iterable[str] | Mapping[str, Any] | None, option: str = "--arg") -> dict[str, Any]:
    """Turn ``["num_classes=3", "min_size=(320,)"]`` into keyword arguments.

    Each value is parsed with ``ast.literal_eval``; a mapping is returned as a copy.

    Args:
        pairs: ``key=literal`` strings, a mapping, or None.
        option: The command-line option the pairs came from, named in the error messages.

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
            raise LoadError(f"{option} {pair!r} is not key=value; write e.g. {option} num_classes=3", arg=pair)
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
            raise LoadError(
                f"{option} {key}={raw!r}: {raw!r} is not a Python literal ({type(e).__name__}); "
                f"numbers, None/True/False, tuples and quoted strings work, e.g. {key}='{raw}'",
                arg=pair,
            ) from e
    return out


def _exit_text(e: SystemExit) -> str:
    return f"sys.exit({e.code!r})" if e.code is not None else "sys.exit() (or exit())"


def import_spec_file(file: str | Path, name: str | None = None) -> Any:
    """Import a ``.py`` spec file as a module (this runs the file) and register it in ``sys.modules``.

    Args:
        file: The file.
        name: The module name to give it; by default ``_surgery_spec_<stem>_<hash of the path>``,
            the same name each time for the same file (so a DDP worker process can import the
            file under the name the model's classes were pickled with).

    Returns:
        The module.

    Raises:
        LoadError: The file does not exist, cannot be read, or raised (or exited) while running.
    """
    file = Path(file)
    try:
        is_file = file.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise LoadError(f"spec file {_short(str(file))!r} cannot be used: {e.strerror or e}", file=str(file)) from e
    if not is_file:
        what = "is a directory" if file.is_dir() else "does not exist"
        raise LoadError(f"spec file {_short(str(file))!r} {what}; give an existing .py file, e.g. models/my_model.py:build", file=str(file))
    if name is None:
        digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
        name = f"{SPEC_MODULE_PREFIX}{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {str(file)!r} as a Python file", file=str(file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(name, None)
        raise LoadError(f"running {str(file)!r} called {_exit_text(e)}; a spec file must define the builder, not exit", file=str(file)) from e
    except Exception as e:
        sys.modules.pop(name, None)
        raise LoadError(f"running {str(file)!r} raised {type(e).__name__}: {e}", file=str(file)) from e
    return module


def spec_modules() -> list[tuple[str, str]]:
    """``(module name, file)`` of every ``.py`` spec file imported so far in this process."""
    return [(name, str(getattr(m, "__file__", ""))) for name, m in list(sys.modules.items())
            if name.startswith(SPEC_MODULE_PREFIX) and getattr(m, "__file__", None)]


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve_callable(spec: str) -> tuple[Any, str]:
    """Import the object a spec names. Returns ``(object, normalised spec)``.

    Raises:
        LoadError: The spec is malformed, or its module, file or attribute does not exist.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise LoadError(
            f"model spec {spec!r} must be 'pkg.module:callable' or 'path/to/file.py:callable' (or an existing file "
            f"written by 'surgery apply -o'), e.g. {DEFAULT_SPEC!r}",
            spec=spec,
        )
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise LoadError(f"model spec {spec!r} needs both a module and a callable around ':', e.g. {DEFAULT_SPEC!r}", spec=spec)
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = import_spec_file(target)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise LoadError(
                f"cannot import module {target!r} of spec {spec!r}: {e}. Install it, add it to PYTHONPATH, "
                f"or name a file instead: path/to/file.py:{attr}",
                spec=spec,
            ) from e
        except SystemExit as e:
            raise LoadError(f"importing {target!r} called {_exit_text(e)}", spec=spec) from e
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


def is_saved_file(spec: str) -> bool:
    """True when ``spec`` names an existing file (no ``:callable``): a result saved by ``surgery apply -o``."""
    if not isinstance(spec, str) or spec.endswith(".py"):
        return False
    try:
        return Path(spec).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def absolute_spec(spec: str) -> str:
    """``spec`` with its file made absolute (``models/m.py:build`` -> ``/abs/models/m.py:build``),
    so that it loads from any folder. Module specs and saved files are returned as they are
    (a saved file's path is made absolute too)."""
    if is_saved_file(spec):
        return str(Path(spec).resolve())
    target, sep, attr = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target or "\\" in target):
        return f"{Path(target).resolve()}:{attr}"
    return spec


def spec_source(spec: str) -> tuple[str, int | None] | None:
    """Where a spec's callable is defined, found without running anything: ``(file, line)``.

    The file of a ``.py`` spec or the module's source file (found with ``importlib.util.find_spec``,
    which imports at most its parent packages), and the line of the top-level ``def``, ``class``
    or assignment of the first name after ``:`` (None when the file has no such line).

    Returns:
        ``(file, line)``, or None when the spec names no source file (a saved result, a built-in
        module, a module that cannot be found).
    """
    if not isinstance(spec, str) or ":" not in spec or is_saved_file(spec):
        return None
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        file = Path(target)
    else:
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            return None
        if found is None or not found.origin or not found.origin.endswith(".py"):
            return None
        file = Path(found.origin)
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return (str(file), None) if file.is_file() else None
    name = attr.split(".")[0]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return str(file), node.lineno
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return str(file), node.lineno
    return str(file), None


def current_folder_on_path() -> None:
    """Put the current folder first on ``sys.path`` unless it is there already, as ``python -m``
    does, so that a module ``detector.py`` in it loads as the spec ``detector:build``."""
    cwd = str(Path.cwd())
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


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
        notes: What was done to the keys (e.g. a ``module.`` prefix stripped).
    """

    file: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"{self.file}: {len(self.loaded)} tensors loaded", *(f"  note: {n}" for n in self.notes)]
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
    import torch
    from torch import nn

    try:
        is_file = file.is_file()
    except OSError as e:
        raise LoadError(f"weights file {_short(str(file))!r} cannot be used: {e.strerror or e}", file=str(file)) from e
    if not is_file:
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise LoadError(f"weights file {_short(str(file))!r} {what}", file=str(file))
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
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        shown = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:12]) + (" ..." if len(obj) > 12 else "")
        raise LoadError(
            f"{str(file)!r} holds a dict that is not a state dict of tensors, nor has one under "
            f"{', '.join(map(repr, _NESTED_KEYS))}; its keys: {shown or 'none'}",
            file=str(file),
        )
    raise LoadError(
        f"{str(file)!r} holds a {type(obj).__name__}, not a state dict of tensors (nor a dict with a "
        f"{' / '.join(map(repr, _NESTED_KEYS))} entry holding one)",
        file=str(file),
    )


def _strip_prefix(state: Mapping[str, Any], own: Mapping[str, Any], prefix: str = _DDP_PREFIX) -> tuple[Mapping[str, Any], str]:
    """Drop ``prefix`` (what ``DistributedDataParallel``/``DataParallel`` add) from every key when all
    keys carry it and the model's own keys do not. Returns the state and a note ("" when unchanged)."""
    keys = list(state)
    if not keys or not all(isinstance(k, str) and k.startswith(prefix) for k in keys) or any(k.startswith(prefix) for k in own):
        return state, ""
    return {k[len(prefix):]: v for k, v in state.items()}, f"stripped the {prefix!r} prefix (a model saved from DDP) from all {len(keys)} keys"


def _dtype_kind(dtype: torch.dtype) -> str:
    import torch

    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    return "integer"


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _class_hint(model: nn.Module, mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    """A hint naming the class count the file was saved with, when the mismatches are the class layers'."""
    from surgery.anatomy import anatomy_for

    try:
        layers, _ = anatomy_for(model).class_layers(model)
    except ValueError:
        return ""
    counts: set[int] = set()
    for layer in layers:
        shapes = mismatched.get(f"{layer.path}.weight")
        if shapes is None or not shapes[1]:
            continue
        rows, per = shapes[1][0], layer.anchors * layer.per_class
        if per and rows % per == 0:
            counts.add(rows // per)
    if len(counts) != 1:
        return ""
    n = counts.pop()
    return (f"\nthe class-dependent layers of the file predict {n} classes (the model has another count): "
            f"build the model with --arg num_classes={n} (num_classes={n} in Python)")


def _validate(state: Mapping[str, Any], own: Mapping[str, torch.Tensor], file: str) -> list[str]:
    """What makes tensors of ``state`` impossible to load into ``own`` (meta device, another kind of dtype)."""
    import torch

    problems = []
    for k, v in state.items():
        if k not in own:
            continue
        if v.is_meta:
            problems.append(f"{k!r} is on the meta device (it holds no values)")
        elif v.layout != torch.strided:
            problems.append(f"{k!r} is a {v.layout} tensor; only dense tensors load")
        elif _dtype_kind(v.dtype) != _dtype_kind(own[k].dtype):
            problems.append(f"{k!r} is {v.dtype} in the file but {own[k].dtype} in the model; "
                            f"{_a(_dtype_kind(v.dtype))} tensor is not loaded into {_a(_dtype_kind(own[k].dtype))} one")
    return problems


def load_weights(model: nn.Module, file: str | Path, *, trust: bool = False, strict: bool = True) -> WeightsReport:
    """Load a local state dict into ``model`` and report how the keys matched.

    Every tensor is validated before any is copied, so a refused file leaves the model
    untouched. Keys that all start with ``module.`` (a model saved from
    ``DistributedDataParallel``) are stripped of it, and the report says so.

    Args:
        model: The model to fill.
        file: A file written by ``torch.save(model.state_dict(), file)`` (or a checkpoint dict
            with a ``"state_dict"``, ``"model"``, ``"model_state_dict"`` or ``"model_state"`` entry).
        trust: Allow a pickled whole model (runs code from the file).
        strict: Raise when any key is missing, unexpected or of another shape. When False, the
            keys that fit are loaded and the rest is reported.

    Returns:
        A :class:`WeightsReport`.

    Raises:
        LoadError: The file is missing, corrupt, pickled without ``trust``, holds a tensor that
            cannot be loaded (meta device, an integer tensor for a floating one, ...), or
            (``strict``) does not match. The model is then unchanged.
    """

    from surgery._util import first_line

    path = Path(file)
    state = _read_checkpoint(path, trust)
    own = model.state_dict()
    state, note = _strip_prefix(state, own)
    report = WeightsReport(str(path), notes=[note] if note else [])
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    problems = _validate(state, own, str(path))
    if problems:
        raise LoadError(f"{str(path)!r} cannot be loaded, nothing was changed:\n  " + "\n  ".join(problems[:10])
                        + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""), file=str(path))
    fitting: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k in own:
            if tuple(own[k].shape) != tuple(v.shape):
                report.mismatched[k] = (tuple(own[k].shape), tuple(v.shape))
            else:
                fitting[k] = v
    if strict and not report.clean:
        hint = _class_hint(model, report.mismatched) if report.mismatched else ""
        raise LoadError(f"weights do not match the model (pass strict=False to load what fits), nothing was loaded "
                        f"(on the command line: --no-strict):\n{report}{hint}", file=str(path))
    try:
        model.load_state_dict(fitting, strict=False)
    except RuntimeError as e:
        raise LoadError(f"loading {str(path)!r} failed: {first_line(e)}", file=str(path)) from e
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
            A file written by ``surgery apply -o`` (:meth:`~surgery.Recipe.save`) is a spec too:
            it is rebuilt with :func:`~surgery.rebuild` (its spec and args are stored in it).
        args: Keyword arguments for the callable, as a mapping or ``["key=literal", ...]``.
        weights: A local state-dict file to load (``torch.load(weights_only=True)``).
        trust: Allow a weights file that holds a pickled whole model.
        strict: Require the weights to match the model exactly.

    Returns:
        The model.

    Raises:
        LoadError: Anything went wrong; the message says what was tried and what would work.
    """
    from torch import nn

    spec = spec or DEFAULT_SPEC
    kwargs = parse_args(args)
    if is_saved_file(spec):
        from surgery.recipe import rebuild

        if kwargs:
            raise LoadError(f"{spec!r} is a saved recipe result: it stores its own spec and args; it takes no --arg "
                            f"(got {', '.join(sorted(kwargs))})", spec=spec)
        model = rebuild(spec)
        if weights is not None:
            load_weights(model, weights, trust=trust, strict=strict)
        return model
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
        except SystemExit as e:
            raise LoadError(f"building {spec!r} called {_exit_text(e)} instead of returning an nn.Module", spec=spec) from e
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
