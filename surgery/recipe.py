"""Recipes: an ordered list of edits written in TOML, applied as one checked transaction.

A recipe names the model it starts from and its steps, one ``[[step]]`` table each, with
exactly one action key::

    model = "torchvision.models.detection:maskrcnn_resnet50_fpn"   # optional (CLI SPEC overrides)
    args = { num_classes = 91 }                                     # optional keyword arguments

    [[step]]
    replace = "roi_heads.mask_head"
    module = "torchvision.models.detection.mask_rcnn:MaskRCNNHeads"
    kwargs = { in_channels = 256, layers = [256, 256, 512, 512, 1024], dilation = 1 }
    adapt = true

    [[step]]
    set_num_classes = 4
    keep = [0, 1, 3, 18]

    [[step]]
    freeze = ["backbone.body.conv1*", "backbone.body.layer1*"]

Actions: ``replace`` (with ``module``, optional ``args``, ``kwargs``, ``adapt``), ``adapt``,
``set_num_classes`` (optional ``keep``), ``freeze``, ``unfreeze``, ``freeze_backbone_layers``.
A ``module`` is ``pkg.module:Class`` (or ``path/to/file.py:Class``, which runs that file)
called with the literal ``args`` and ``kwargs``. Only an ``nn.Module`` subclass or one of the
documented factories in :data:`FACTORIES` may be named: anything else (``os:system``,
``builtins:eval``, a plain function) is refused when the recipe is read, before anything is
called. A recipe's ``model`` (and the spec in a saved file) may not name a standard-library
or built-in callable either.

:meth:`Recipe.save` writes ``{"format", "spec", "args", "recipe", "state_dict"}`` with
``torch.save``; :func:`rebuild` loads it with ``weights_only=True``, builds the spec, applies
the recipe and loads the state dict, giving the same model.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery import paths
from surgery._errors import LoadError, PathError, SurgeryError
from surgery.edit import Transaction
from surgery.findings import Report
from surgery.loading import DEFAULT_SPEC, absolute_spec, is_saved_file, load_model, resolve_callable

__all__ = ["FACTORIES", "FORMAT", "Recipe", "RecipeError", "RecipeResult", "Step", "rebuild"]

#: The ``format`` entry of a file written by :meth:`Recipe.save`.
FORMAT = "surgery.recipe/1"

_TOP_KEYS = ("model", "args", "description", "step")

#: The largest class count a recipe may ask for (a larger one is a typo, and would allocate that many rows).
MAX_CLASSES = 100_000

#: The factories a ``replace`` step's ``module`` may name besides ``nn.Module`` subclasses.
FACTORIES: frozenset[str] = frozenset({"surgery:detection_backbone"})


class RecipeError(SurgeryError, ValueError):
    """A recipe cannot be read or one of its steps cannot be applied.

    Attributes:
        source: The recipe file (or ``"<recipe>"``).
        step: The 1-based step number (None for the recipe as a whole).
        line: The line in the recipe text (None when unknown).
        key: The key at fault, when one is.
    """

    def __init__(self, message: str, *, source: str, step: int | None = None, line: int | None = None, key: str | None = None) -> None:
        where = source
        if step is not None:
            where += f", step {step}"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.step = step
        self.line = line
        self.key = key


# --------------------------------------------------------------------------- value checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _path(value: object) -> str | None:
    """None when ``value`` is a well-formed dotted path, else what is wrong."""
    if not isinstance(value, str) or not value:
        return f"must be a dotted path string like 'roi_heads.mask_head', got {value!r}"
    try:
        paths.split(value)
    except PathError as e:
        return str(e)
    return None


def _patterns(value: object) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        return f"must be a glob string or a non-empty list of them, e.g. ['backbone.body.layer[12]*'], got {value!r}"
    return None


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
            allowed = f"an integer in {minimum}..{maximum}" if maximum is not None else f"an integer >= {minimum}"
            return f"must be {allowed}, got {type(value).__name__} {value!r}"
        return None

    return check


def _module_spec(value: object) -> str | None:
    if not isinstance(value, str) or ":" not in value:
        return f"must be 'pkg.module:Callable', e.g. 'torchvision.models.detection.mask_rcnn:MaskRCNNHeads', got {value!r}"
    return None


def _kind(kind: type, name: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not isinstance(value, kind):
            return f"must be {name}, got {type(value).__name__} {value!r}"
        return None

    return check


def _keep(value: object) -> str | None:
    if isinstance(value, list):
        if not all(_is_int(v) for v in value):
            return f"must be a list of old class indices (integers), got {value!r}"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not re.fullmatch(r"[0-9]+", str(k)) or not _is_int(v):
                return f"must map new class indices to old ones, e.g. keep = {{ 0 = 0, 1 = 3 }}, got {k!r} = {v!r}"
        return None
    return f"must be a list of old indices or a table {{new = old}}, got {type(value).__name__} {value!r}"


#: action -> (check of its value, {option: (check, required)})
_ACTIONS: dict[str, tuple[Callable[[object], str | None], dict[str, tuple[Callable[[object], str | None], bool]]]] = {
    "replace": (_path, {
        "module": (_module_spec, True),
        "args": (_kind(list, "a list"), False),
        "kwargs": (_kind(dict, "a table"), False),
        "adapt": (_kind(bool, "true or false"), False),
    }),
    "adapt": (_path, {}),
    "set_num_classes": (_int_at_least(1, MAX_CLASSES), {"keep": (_keep, False)}),
    "freeze": (_patterns, {}),
    "unfreeze": (_patterns, {}),
    "freeze_backbone_layers": (_int_at_least(0), {}),
}


def _not_a_builder(fn: object, spec: str) -> str | None:
    """None when a step's ``module`` may be called: an ``nn.Module`` subclass or a listed factory."""
    if isinstance(fn, type) and issubclass(fn, nn.Module):
        return None
    if spec in FACTORIES:
        return None
    kind = "class" if isinstance(fn, type) else type(fn).__name__
    return (f"{spec} is a {kind}, not an nn.Module subclass; a recipe may only build modules: name an nn.Module "
            f"subclass or one of the factories {', '.join(sorted(FACTORIES))}. Nothing was called")


def _model_spec_problem(spec: str, source: str) -> str | None:
    """None when a model spec read from a file may be called: it must not be a standard-library or built-in callable."""
    import sys

    try:
        obj, _ = resolve_callable(spec)
    except LoadError:
        return None  # building it will say why it cannot be loaded
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return None
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    if top in ("builtins", "__main__") or top in sys.stdlib_module_names or not callable(obj):
        return (f"model {spec!r} in {source} names {type(obj).__name__} {getattr(obj, '__qualname__', obj)!r} of module {top!r}, "
                "not a model builder; a recipe's model must be a builder such as "
                f"{DEFAULT_SPEC!r} or an nn.Module subclass. Nothing was called")
    return None


# --------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Step:
    """One step of a recipe.

    Attributes:
        index: Its 1-based number.
        line: The line of its ``[[step]]`` header (None when unknown).
        action: ``replace``, ``adapt``, ``set_num_classes``, ``freeze``, ``unfreeze`` or ``freeze_backbone_layers``.
        value: The action key's value (a path, a class count, patterns, ...).
        options: The step's other keys.
        lines: The line of each key of the step.
    """

    index: int
    line: int | None
    action: str
    value: Any
    options: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """A one-line description, e.g. ``"replace roi_heads.mask_head with ...:MaskRCNNHeads (adapt)"``."""
        if self.action == "replace":
            adapt = " (adapt)" if self.options.get("adapt") else ""
            return f"replace {self.value} with {self.options['module']}{adapt}"
        if self.action == "set_num_classes":
            keep = f", keep={self.options['keep']}" if "keep" in self.options else ""
            return f"set_num_classes {self.value}{keep}"
        return f"{self.action} {self.value}"


@dataclass
class StepOutcome:
    """What one step did: its number, action and a summary line."""

    step: int
    action: str
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "action": self.action, "summary": self.summary}


@dataclass
class RecipeResult:
    """The result of :meth:`Recipe.apply`.

    Attributes:
        source: The recipe file.
        steps: One outcome per step, in order.
        report: The check of the whole model at the end (None with ``check=False``).
        notes: Notes from the transaction (device moves, what adapt did, ...).
    """

    source: str
    steps: list[StepOutcome]
    report: Report | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.source, "steps": [s.to_dict() for s in self.steps], "notes": list(self.notes),
                "report": self.report.to_dict() if self.report is not None else None}

    def __str__(self) -> str:
        lines = [f"recipe {self.source}: {len(self.steps)} step(s) applied"]
        for s in self.steps:
            first, *rest = s.summary.splitlines() or [""]
            lines.append(f"  {s.step}. {first}")
            lines.extend(f"     {r}" for r in rest)
        if self.report is not None:
            lines.append(str(self.report) if not self.report.ok else "check: ok")
        return "\n".join(lines)


def _header_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*step\s*\]\]", line)]


def _key_lines(text: str, start: int, end: int | None) -> dict[str, int]:
    """``{key: line}`` of ``key = ...`` lines in [start, end) (1-based)."""
    found: dict[str, int] = {}
    lines = text.splitlines()
    for number in range(start, (end or len(lines) + 1)):
        if number - 1 >= len(lines):
            break
        line = lines[number - 1]
        if number > start and re.match(r"\s*\[", line):
            break
        match = re.match(r"\s*([A-Za-z0-9_\-\"']+)\s*=", line)
        if match:
            found.setdefault(match.group(1).strip("\"'"), number)
    return found


def _close(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass
class Recipe:
    """A parsed recipe. Make one with :meth:`load` or :meth:`parse`.

    Attributes:
        text: The TOML text (saved with the result so the model can be rebuilt).
        source: Where it came from (a file name or ``"<recipe>"``).
        model: The recipe's model spec (None when it names none).
        args: Keyword arguments for the model spec.
        steps: The steps, in order.
        description: Its ``description``, if any.
    """

    text: str
    source: str
    model: str | None
    args: dict[str, Any]
    steps: list[Step]
    description: str = ""

    @classmethod
    def load(cls, file: str | Path) -> Recipe:
        """Read and validate a recipe file.

        Raises:
            RecipeError: The file is missing or the recipe is invalid.
        """
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise RecipeError(f"cannot read the recipe: {e.strerror or e}", source=str(path)) from e
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<recipe>") -> Recipe:
        """Parse and validate recipe text. Nothing is built; the modules it names are imported.

        Raises:
            RecipeError: Invalid TOML, an unknown step or key, a value of the wrong type, a
                malformed path, or a module that cannot be imported; the step and line are named.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"not valid TOML: {e}", source=source) from e
        headers = _header_lines(text)
        top = _key_lines(text, 1, headers[0] if headers else None)
        for key in data:
            if key not in _TOP_KEYS:
                raise RecipeError(f"unknown top-level key {key!r}; allowed: {', '.join(_TOP_KEYS)}.{_close(key, list(_TOP_KEYS))}",
                                  source=source, line=top.get(key), key=key)
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or ":" not in model):
            raise RecipeError(f"model must be a spec string like {DEFAULT_SPEC!r}, got {model!r}", source=source, line=top.get("model"), key="model")
        args = data.get("args", {})
        if not isinstance(args, dict):
            raise RecipeError(f"args must be a table of keyword arguments, got {args!r}", source=source, line=top.get("args"), key="args")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise RecipeError("description must be a string", source=source, line=top.get("description"), key="description")
        raw_steps = data.get("step")
        if not isinstance(raw_steps, list) or not raw_steps or not all(isinstance(s, dict) for s in raw_steps):
            raise RecipeError("a recipe needs at least one [[step]] table, e.g.\n[[step]]\nset_num_classes = 3",
                              source=source, line=top.get("step"), key="step")
        steps = []
        for i, raw in enumerate(raw_steps):
            line = headers[i] if i < len(headers) else top.get("step")
            end = headers[i + 1] if i + 1 < len(headers) else None
            lines = _key_lines(text, line, end) if line is not None and i < len(headers) else {}
            steps.append(_parse_step(raw, i + 1, line, lines, source))
        return cls(text, source, model, dict(args), steps, description)

    def model_spec(self, spec: str | None = None, args: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The spec and keyword arguments to build: ``spec`` when given (the recipe's ``args``
        then do not apply), else the recipe's ``model`` with its ``args``, else the default model.
        ``args`` are added on top.

        Raises:
            RecipeError: The recipe's ``model`` is needed and names a standard-library or built-in callable.
        """
        if spec is not None:
            return spec, dict(args or {})
        if self.model is not None:
            problem = _model_spec_problem(self.model, self.source)
            if problem:
                raise RecipeError(problem, source=self.source, key="model")
        return self.model or DEFAULT_SPEC, {**self.args, **dict(args or {})}

    def apply(self, model: nn.Module, *, check: bool = True) -> RecipeResult:
        """Apply every step to ``model`` as one transaction, checked once at the end.

        Args:
            model: The model to change.
            check: Check the whole model at the end and roll back on a new error.

        Returns:
            A :class:`RecipeResult`.

        Raises:
            RecipeError: A step failed (bad path, module that cannot be built, ...); the model is unchanged.
            IncompatibleError: The result has a new error; the model is unchanged.
        """
        outcomes: list[StepOutcome] = []
        tx = Transaction(model, check=check, label=f"recipe {self.source}")
        with tx:
            for step in self.steps:
                outcomes.append(StepOutcome(step.index, step.action, self._run(tx, step)))
        return RecipeResult(self.source, outcomes, tx.report, list(tx.notes))

    def _fail(self, step: Step, message: str, key: str | None = None) -> RecipeError:
        line = step.lines.get(key or step.action, step.line)
        return RecipeError(f"{step.describe()}: {message}", source=self.source, step=step.index, line=line, key=key or step.action)

    def _run(self, tx: Transaction, step: Step) -> str:
        try:
            if step.action == "replace":
                module = self._build(step)
                if step.options.get("adapt", False):
                    return str(tx.replace(step.value, module, adapt=True))
                old = tx.replace(step.value, module)
                return f"replace {step.value}: {type(old).__name__ if old is not None else 'empty slot'} → {type(module).__name__}"
            if step.action == "adapt":
                return str(tx.adapt(step.value))
            if step.action == "set_num_classes":
                return str(tx.set_num_classes(step.value, keep=step.options.get("keep")))
            if step.action in ("freeze", "unfreeze"):
                patterns = [step.value] if isinstance(step.value, str) else list(step.value)
                changed = tx.freeze(*patterns) if step.action == "freeze" else tx.unfreeze(*patterns)
                return f"{step.action} {patterns}: {len(changed)} parameter tensor(s) changed"
            changed = tx.freeze_backbone_layers(step.value)
            return f"freeze_backbone_layers {step.value}: {len(changed)} parameter tensor(s) changed"
        except RecipeError:
            raise
        except (SurgeryError, ValueError, TypeError) as e:
            key = "keep" if step.action == "set_num_classes" and "keep" in str(e) else None
            raise self._fail(step, f"{type(e).__name__}: {e}", key) from e

    def _build(self, step: Step) -> nn.Module:
        spec = step.options["module"]
        fn, _ = resolve_callable(spec)
        problem = _not_a_builder(fn, spec)
        if problem:
            raise self._fail(step, problem, "module")
        args = list(step.options.get("args", []))
        kwargs = dict(step.options.get("kwargs", {}))
        try:
            module = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a user's constructor may raise anything; report it with the step
            where = next((k for k in ("kwargs", "args") if k in step.options), "module")
            raise self._fail(step, f"calling {spec}(*{args}, **{kwargs}) raised {type(e).__name__}: {e}", where) from e
        if not isinstance(module, nn.Module):
            raise self._fail(step, f"{spec} returned a {type(module).__name__}, not an nn.Module", "module")
        return module

    def save(self, model: nn.Module, file: str | Path, *, spec: str, args: Mapping[str, Any] | None = None) -> Path:
        """Save ``model``'s state dict with this recipe and the spec it was built from.

        The spec is stored with its file made absolute, so the saved file rebuilds (and works as
        a spec: ``surgery check OUT.pt``) from any folder.

        Args:
            model: The model the recipe was applied to.
            file: Where to write (``torch.save``).
            spec: The model spec the recipe was applied to.
            args: Its keyword arguments (Python literals only).

        Returns:
            The path written.

        Raises:
            TypeError: ``args`` holds something other than literals (it could not be loaded with ``weights_only=True``).
            ValueError: ``spec`` is the saved file ``file`` itself (it could never be rebuilt).
        """
        plain = dict(args or {})
        _require_literal(plain, "args")
        path = Path(file)
        stored = absolute_spec(spec)
        if is_saved_file(stored) and Path(stored) == path.resolve():
            raise ValueError(f"cannot save to {str(path)!r}: it is the file the model was built from (spec {spec!r}); "
                             "write the result to another file")
        payload = {
            "format": FORMAT,
            "spec": stored,
            "args": plain,
            "recipe": self.text,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        torch.save(payload, path)
        return path


def _require_literal(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _require_literal(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be strings, got {k!r}")
            _require_literal(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} must hold only literals (numbers, strings, booleans, None, lists, tuples, dicts), got {type(value).__name__}")


def _parse_step(raw: dict[str, Any], index: int, line: int | None, lines: dict[str, int], source: str) -> Step:
    actions = [k for k in raw if k in _ACTIONS and not (k == "adapt" and "replace" in raw)]  # replace takes adapt = true
    if len(actions) != 1:
        unknown = [k for k in raw if k not in _ACTIONS]
        if not actions:
            hint = _close(unknown[0], list(_ACTIONS)) if unknown else ""
            raise RecipeError(
                f"no action: a step needs exactly one of {', '.join(_ACTIONS)}; it has {', '.join(map(repr, raw)) or 'no keys'}.{hint}",
                source=source, step=index, line=line, key=unknown[0] if unknown else None)
        raise RecipeError(f"a step has exactly one action, this one has {', '.join(actions)}; split it into several [[step]] tables",
                          source=source, step=index, line=lines.get(actions[1], line), key=actions[1])
    action = actions[0]
    check_value, options = _ACTIONS[action]
    problem = check_value(raw[action])
    if problem:
        raise RecipeError(f"{action} {problem}", source=source, step=index, line=lines.get(action, line), key=action)
    for key, value in raw.items():
        if key == action:
            continue
        if key not in options:
            allowed = ", ".join(options) or "no other keys"
            raise RecipeError(f"unknown key {key!r} in a {action} step; allowed: {allowed}.{_close(key, list(options))}",
                              source=source, step=index, line=lines.get(key, line), key=key)
        problem = options[key][0](value)
        if problem:
            raise RecipeError(f"{key} {problem}", source=source, step=index, line=lines.get(key, line), key=key)
    for key, (_, required) in options.items():
        if required and key not in raw:
            raise RecipeError(f"a {action} step needs {key!r}, e.g. module = 'torchvision.models.detection.mask_rcnn:MaskRCNNHeads'",
                              source=source, step=index, line=line, key=key)
    opts = {k: v for k, v in raw.items() if k != action}
    if "keep" in opts and isinstance(opts["keep"], dict):
        keep: dict[int, int] = {}
        for k, v in opts["keep"].items():
            if int(k) in keep:
                raise RecipeError(f"keep names new class {int(k)} twice", source=source, step=index, line=lines.get("keep", line), key="keep")
            keep[int(k)] = v
        opts["keep"] = keep
    if action == "replace":
        try:
            fn, _ = resolve_callable(opts["module"])
        except LoadError as e:
            raise RecipeError(str(e), source=source, step=index, line=lines.get("module", line), key="module") from e
        problem = _not_a_builder(fn, opts["module"])
        if problem:
            raise RecipeError(problem, source=source, step=index, line=lines.get("module", line), key="module")
    return Step(index, line, action, raw[action], opts, lines)


def rebuild(file: str | Path) -> nn.Module:
    """Rebuild the model saved by :meth:`Recipe.save` (or ``surgery apply -o``).

    The file is read with ``torch.load(weights_only=True)``. Its spec is built (a spec naming
    a ``.py`` file runs that file, and the recipe imports the modules it names, so rebuild
    only files you trust), the recipe is applied, then the state dict is loaded strictly.

    Args:
        file: The saved file.

    Returns:
        The model, on the CPU, with the saved weights.

    Raises:
        LoadError: The file is missing, not a saved recipe result, or its weights do not fit.
        RecipeError: The embedded recipe is invalid.
        IncompatibleError: The rebuilt model does not pass its check.
    """
    path = Path(file)
    if not path.is_file():
        raise LoadError(f"{str(path)!r} does not exist", file=str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a file we wrote"
        raise LoadError(f"{str(path)!r} is not a file written by Recipe.save / surgery apply: {type(e).__name__}: {e}", file=str(path)) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LoadError(f"{str(path)!r} is not a file written by Recipe.save / surgery apply (no format {FORMAT!r})", file=str(path))
    spec, args, text, state = payload.get("spec"), payload.get("args"), payload.get("recipe"), payload.get("state_dict")
    if not (isinstance(spec, str) and isinstance(args, dict) and isinstance(text, str) and isinstance(state, dict)):
        raise LoadError(f"{str(path)!r} lacks one of spec, args, recipe, state_dict", file=str(path))
    problem = _model_spec_problem(spec, str(path))
    if problem:
        raise LoadError(problem, file=str(path))
    recipe = Recipe.parse(text, source=f"{path} (saved recipe)")  # validated (and its modules checked) before anything is built
    model = load_model(spec, args)
    recipe.apply(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LoadError(f"the weights in {str(path)!r} do not fit the rebuilt model: {e}", file=str(path)) from e
    return model
