"""The ``surgery`` command (also ``python -m surgery``): a thin shell over the Python API.

Exit codes: 0 nothing at error severity; 1 errors found (or a failed smoke test);
2 usage errors, a spec that cannot be loaded, or a missing ``dot`` binary.

Every bad value ends in a one-line message naming it and exit code 2, never a traceback; with
``--json`` stdout then holds ``{"model", "ok": false, "findings": [], "error"}``. Whatever the
model's own code prints goes to stderr, so stdout under ``--json`` is one JSON object; long
phases print one progress line each to stderr.

Nothing here imports torch at module level (``--help`` and ``--version`` start without it):
each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from surgery._errors import LoadError, SurgeryError
from surgery.loading import DEFAULT_SPEC

if TYPE_CHECKING:
    from torch import nn

    from surgery.findings import Report

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

_EPILOG = f"""\
A SPEC is 'pkg.module:callable' (looked up with the current folder on sys.path, as with
python -m), 'path/to/file.py:callable' (the file is executed) or a file written by
'surgery apply -o' (rebuilt from the spec and recipe stored in it).
Without one, the model is {DEFAULT_SPEC} built with weights=None, weights_backbone=None.

examples:
  surgery inspect --depth 3
  surgery inspect torchvision.models.detection:fasterrcnn_resnet50_fpn_v2 --arg num_classes=3 --json
  surgery check my_model.py:build --weights ckpt.pt
  surgery check --format github
  surgery review torchvision.models.detection:maskrcnn_resnet50_fpn deeper.pt -o review.html
"""


#: Bounds of the numeric options: a value outside is a usage error, reported before anything is built.
IMAGE_SIZE = (32, 4096)
BATCH_SIZE = (1, 256)
STEPS = (1, 1000)
WORLD_SIZE = (2, 64)
RUNS = (1, 1000)
DEPTH = (0, 1000)
INPUT_SIDE = (1, 4096)
MAX_SECONDS = 86400.0
#: Output styles of the commands that report findings.
FORMATS = ("text", "json", "github", "markdown")


class _UsageError(Exception):
    """A command line that argparse refused; :func:`main` reports it (as JSON too under ``--json``)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with the usage line (see main)
        raise _UsageError(self, message)


def _int_in(low: int, high: int, *, zero: bool = False) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (or 0 when ``zero``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not (low <= value <= high or (zero and value == 0)):
            allowed = f"0 or an integer in {low}..{high}" if zero else f"an integer in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; give {allowed}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite positive number of seconds, at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a number of seconds > 0 and <= {MAX_SECONDS:g}")
    return value


def _input_size(text: str) -> tuple[int, int, int]:
    """An argparse type: ``C,H,W``, three integers in :data:`INPUT_SIDE`."""
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    low, high = INPUT_SIDE
    if len(parts) != 3 or not all(low <= x <= high for x in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W: give three comma-separated integers in {low}..{high}, e.g. 3,320,320")
    return parts[0], parts[1], parts[2]


def _add_model_args(p: argparse.ArgumentParser, *, spec: bool = True, before: str = "", after: str = "SPEC") -> None:
    """The options that build a model: ``--arg``/``--weights`` for ``after`` (the command's main
    model) and, with ``before``, ``--arg-before``/``--weights-before`` for the model before."""
    if spec:
        p.add_argument("spec", nargs="?", default=None, metavar="SPEC", help=f"model spec (default: {DEFAULT_SPEC})")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help=f"keyword argument for the {after} callable, value parsed as a Python literal (repeatable)")
    p.add_argument("--weights", metavar="FILE", help=f"state dict for {after}, loaded with torch.load(weights_only=True)")
    if before:
        p.add_argument("--arg-before", action="append", default=[], metavar="KEY=VALUE",
                       help=f"keyword argument for the {before} callable, value parsed as a Python literal (repeatable)")
        p.add_argument("--weights-before", metavar="FILE", help=f"state dict for {before}, loaded with torch.load(weights_only=True)")
    p.add_argument("--no-strict", action="store_true",
                   help="with --weights" + ("/--weights-before" if before else "") +
                        ": load the tensors that fit and list the rest, instead of refusing a file that does not match")
    p.add_argument("--trust", action="store_true", help="allow a weights file holding a pickled whole model (runs its code)")


def _add_format(p: argparse.ArgumentParser, what: str = "print one JSON object") -> None:
    p.add_argument("--json", action="store_true", help=f"{what} (same as --format json)")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="output format: text, json, github (workflow annotations with file= and line=) or markdown (default: text)")


def _say(ns: argparse.Namespace, text: str) -> None:
    """One progress line on stderr (a TTY or not), e.g. ``surgery diff: loading the model before``."""
    from surgery._cli_output import say

    say(ns.command, text)


def _load(ns: argparse.Namespace, *, before: bool = False) -> nn.Module:
    """Build the command's model (or, with ``before``, the model before) from its spec and options."""
    from surgery.loading import load_model, load_weights, parse_args

    spec, args, weights = ((ns.before, ns.arg_before, ns.weights_before) if before else (ns.spec, ns.arg, ns.weights))
    suffix = "-before" if before else ""
    model = load_model(spec, parse_args(args, f"--arg{suffix}"))
    if weights is not None:
        report = load_weights(model, weights, trust=ns.trust, strict=not ns.no_strict)
        for note in report.notes:
            print(f"surgery: --weights{suffix} {weights}: {note}", file=sys.stderr)
        if not report.clean:
            print(f"surgery: --no-strict: {report}", file=sys.stderr)
    return model


def _spec_name(ns: argparse.Namespace) -> str:
    return getattr(ns, "spec", None) or DEFAULT_SPEC


def _emit(ns: argparse.Namespace, text: str) -> None:
    """Write ``text`` to the real stdout (while a command runs, what the model's code prints goes to stderr)."""
    out: TextIO = getattr(ns, "out", None) or sys.stdout
    out.write(text + "\n")
    out.flush()


def _emit_json(ns: argparse.Namespace, obj: dict[str, Any]) -> None:
    _emit(ns, json.dumps(obj, indent=2, default=str))


def _style(ns: argparse.Namespace) -> str:
    return "json" if getattr(ns, "json", False) else getattr(ns, "format", None) or "text"


def _output_file(path: str, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a file that can be written: its folder exists and it is not itself a folder.

    Raises:
        ValueError: It cannot be written; the message names the option and the path.
    """
    target = Path(path)
    if suffixes and target.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path!r}: give a file ending in {' or '.join(suffixes)}")
    try:
        if target.is_dir():
            raise ValueError(f"{option} {path!r} is a folder; give a file name inside it, e.g. {str(target / ('out' + (suffixes or ('.pt',))[0]))!r}")
        folder = target.parent
        if not folder.is_dir():
            raise ValueError(f"{option} {path!r}: the folder {str(folder)!r} does not exist; create it first")
    except OSError as e:
        raise ValueError(f"{option} {path!r} cannot be used: {e.strerror or e}") from e
    return target


# --------------------------------------------------------------------------- findings out


def _report_out(ns: argparse.Namespace, report: Report, model: nn.Module | None, text: str, summary: str, extra: str = "") -> None:
    """Print findings in the text, github or markdown style (JSON is each command's own); ``extra``
    follows the markdown table (e.g. the file written)."""
    style = _style(ns)
    if style == "github":
        from surgery._cli_output import github

        annotations = github(report, model, _spec_name(ns))
        if annotations:
            _emit(ns, annotations)
        _emit(ns, summary)
    elif style == "markdown":
        from surgery._cli_output import markdown

        _emit(ns, markdown(report, ns.command, extra))
    else:
        _emit(ns, text)


def _summary(ns: argparse.Namespace, report: Report) -> str:
    return f"surgery {ns.command}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"


# --------------------------------------------------------------------------- commands


def _cmd_inspect(ns: argparse.Namespace) -> int:
    from surgery.overview import inspect

    model = _load(ns)
    overview = inspect(model, input_size=ns.input_size, depth=ns.depth)
    if ns.json:
        _emit_json(ns, {"model": _spec_name(ns), "ok": True, "findings": [], **{k: v for k, v in overview.to_dict().items() if k != "model"},
                    "class": overview.model})
    else:
        _emit(ns, str(overview))
    return EXIT_OK


def _cmd_check(ns: argparse.Namespace) -> int:
    from surgery.check import check

    model = _load(ns)
    report = check(model, trace=ns.trace)
    report.model = _spec_name(ns)
    if _style(ns) == "json":
        _emit_json(ns, report.to_dict())
    else:
        _report_out(ns, report, model, str(report), _summary(ns, report))
    return EXIT_OK if report.ok else EXIT_ERRORS


def _cmd_trace(ns: argparse.Namespace) -> int:
    from surgery.findings import Report
    from surgery.trace import trace

    if ns.train and ns.mode not in (None, "train"):
        raise ValueError(f"--train means --mode train; it contradicts --mode {ns.mode}")
    model = _load(ns)
    mode = ns.mode or ("train" if ns.train else "eval")
    result = trace(model, mode=mode, image_size=ns.image_size, depth=ns.depth, strict=False)
    if _style(ns) == "json":
        body = result.to_dict()
        _emit_json(ns, {"model": _spec_name(ns), "ok": result.ok, "findings": body.pop("findings"), **{k: v for k, v in body.items() if k != "model"},
                    "class": result.model})
    else:
        report = Report(findings=list(result.findings), model=_spec_name(ns), checked=[f"trace ({mode})"])
        _report_out(ns, report, model, str(result), _summary(ns, report))
    return EXIT_OK if result.ok else EXIT_ERRORS


def _cmd_apply(ns: argparse.Namespace) -> int:
    from surgery._errors import IncompatibleError
    from surgery.loading import parse_args
    from surgery.recipe import Recipe

    _output_file(ns.output, "-o")
    recipe = Recipe.load(ns.recipe)
    spec, args = recipe.model_spec(ns.spec, parse_args(ns.arg))
    ns.spec, ns.arg = spec, args
    model = _load(ns)
    head = {"model": spec, "recipe": ns.recipe}
    try:
        result = recipe.apply(model)
    except IncompatibleError as e:
        if ns.json:
            _emit_json(ns, {**head, "ok": False, "findings": [f.to_dict() for f in e.findings], "output": None, "steps": []})
        else:
            print(f"surgery: {e}\nnothing was saved", file=sys.stderr)
        return EXIT_ERRORS
    assert result.report is not None  # apply() checks by default
    report = result.report
    report.model = spec
    if report.ok:
        recipe.save(model, ns.output, spec=spec, args=args)
    saved = ns.output if report.ok else None
    if ns.json:
        _emit_json(ns, {**report.to_dict(), **head, "output": saved, "steps": [s.to_dict() for s in result.steps], "notes": result.notes})
    else:
        _emit(ns, str(result))
        _emit(ns, f"saved to {saved} (check it with: surgery check {saved}; rebuild it with surgery.rebuild({saved!r}))"
              if saved else "errors remain: nothing was saved")
    return EXIT_OK if report.ok else EXIT_ERRORS


def _cmd_smoke(ns: argparse.Namespace) -> int:
    from surgery._errors import SmokeTestError
    from surgery.smoke import resolve_device, smoke_test

    resolve_device(ns.device)  # no GPU for --device cuda is a usage error (exit 2), before the model is built
    stream = ns.out if _style(ns) == "text" else sys.stderr  # the phase table is the text output; else it is progress
    upcoming = [*([] if ns.no_check else ["check"]), "train", "eval", *(["ddp"] if ns.ddp else [])]

    def progress(line: str) -> None:  # smoke_test says when a phase ends; say when the next one starts too
        print(line, file=stream, flush=True)
        if upcoming:
            _say(ns, f"{upcoming.pop(0)} phase running...")

    model = _load(ns)
    amp: bool | str = ns.amp_dtype or ns.amp
    try:
        result = smoke_test(model, device=ns.device, batch_size=ns.batch_size, image_size=ns.image_size, amp=amp, steps=ns.steps,
                            ddp=ns.ddp, check=not ns.no_check, ddp_timeout=ns.ddp_timeout, progress=progress)
    except SmokeTestError as e:
        print(f"surgery smoke: the smoke test could not finish: {e}", file=sys.stderr)
        return EXIT_ERRORS
    result.model = _spec_name(ns)
    if _style(ns) == "json":
        _emit_json(ns, result.to_dict())
        return EXIT_OK if result.ok else EXIT_ERRORS
    lines = []
    if result.losses:
        lines.append("  losses: " + ", ".join(f"{k}={v:.4g}" for k, v in result.losses.items()))
    lines.extend(str(finding) for finding in result.findings)
    verdict = "ok" if result.ok else f"FAILED, {len(result.errors)} error(s)"
    lines.append(f"surgery smoke: {result.model}: {verdict}")
    report = result.report()
    _report_out(ns, report, model, "\n".join(lines), _summary(ns, report))
    return EXIT_OK if result.ok else EXIT_ERRORS


def _cmd_render(ns: argparse.Namespace) -> int:
    from surgery.render import FORMATS as IMAGE_FORMATS
    from surgery.render import render

    if (ns.arg_before or ns.weights_before) and not ns.before:
        raise ValueError("--arg-before and --weights-before apply to the --before model; give --before SPEC too")
    if Path(ns.output).suffix.lower() not in IMAGE_FORMATS:
        raise ValueError(f"cannot tell the format of -o {ns.output!r}: the extension must be one of {sorted(IMAGE_FORMATS)}")
    if ns.depth is not None and ns.level != "modules":
        raise ValueError(f"--depth applies to --level modules only, got --depth {ns.depth} with --level {ns.level}")
    _output_file(ns.output, "-o")
    model = _load(ns)
    before = _load(ns, before=True) if ns.before else None
    graph = render(model, ns.output, before=before, level=ns.level, depth=ns.depth, trace=False if ns.no_trace else "auto")
    from surgery.findings import Report

    report = Report(findings=list(graph.findings), model=_spec_name(ns), checked=["render"])
    edges = sum(1 for e in graph.edges if e.kind != "layout")
    wrote = f"surgery render: wrote {ns.output} ({len(graph.nodes)} nodes, {edges} edges, labels from the {graph.flow} flow)"
    if _style(ns) == "json":
        _emit_json(ns, {"model": _spec_name(ns), "ok": report.ok, "findings": [f.to_dict() for f in report.findings],
                        "output": ns.output, "nodes": len(graph.nodes), "edges": edges, "flow": graph.flow, "before": ns.before})
    else:
        _report_out(ns, report, model, "\n".join([wrote, *(str(f) for f in report.errors)]), wrote + "\n" + _summary(ns, report), wrote)
    return EXIT_OK if report.ok else EXIT_ERRORS


def _cmd_diff(ns: argparse.Namespace) -> int:
    from surgery._cli_output import diff_progress
    from surgery.diff import diff
    from surgery.findings import Finding

    _say(ns, f"loading the model before: {ns.before}")
    before = _load(ns, before=True)
    _say(ns, f"loading the model after: {ns.spec}")
    after = _load(ns)
    _say(ns, "comparing the structure" + ("" if ns.no_cost else " and measuring the cost"))
    result = diff(before, after, cost=not ns.no_cost, image_size=ns.image_size, runs=ns.runs,
                  progress=None if ns.no_cost else diff_progress(ns.command))
    findings = [Finding("error", "shape-error", (), p) for p in result.problems]
    if ns.json:
        body = result.to_dict()
        _emit_json(ns, {"model": ns.spec, "ok": not findings, "findings": [f.to_dict() for f in findings], **body,
                    "before": ns.before, "after": ns.spec, "classes": [body["before"], body["after"]]})
    else:
        _emit(ns, str(result))
    return EXIT_ERRORS if findings else EXIT_OK


def _cmd_review(ns: argparse.Namespace) -> int:
    from surgery.review import review

    _output_file(ns.output, "-o", (".html", ".htm"))
    if ns.recipe is not None and not Path(ns.recipe).is_file():
        raise ValueError(f"--recipe {ns.recipe!r} is not a file; give the recipe's TOML file")
    _say(ns, f"loading the model before: {ns.before}")
    before = _load(ns, before=True)
    _say(ns, f"loading the model after: {ns.spec}")
    after = _load(ns)
    _say(ns, f"reviewing: check, diagram, diff{'' if ns.no_cost else ' with cost'}"
             f"{'' if ns.no_smoke else ', smoke test'} at {ns.image_size}×{ns.image_size}")
    result = review(before, after, ns.output, recipe=ns.recipe, title=ns.title, smoke=not ns.no_smoke, cost=not ns.no_cost,
                    image_size=ns.image_size)
    report = result.report
    report.model = ns.spec
    if _style(ns) == "json":
        _emit_json(ns, {**report.to_dict(), "ok": result.ok, "verdict": result.verdict, "title": result.title,
                        "output": str(result.path), "before": ns.before, "after": ns.spec,
                        "slots_changed": [c.to_dict() for c in result.diff.changed_slots],
                        "smoke": None if result.smoke is None else result.smoke.ok})
    else:
        _report_out(ns, report, after, f"{report}\n{result}", f"{result}\n{_summary(ns, report)}", str(result))
    return EXIT_OK if result.ok else EXIT_ERRORS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = _Parser(
        prog="surgery",
        description="Look inside torchvision detection models, check that their parts fit, change them safely.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from surgery import __version__

    parser.add_argument("--version", action="version", version=f"surgery {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_: str, examples: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog="examples:\n" + examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    def image_size(p: argparse.ArgumentParser, default: int, what: str = "the synthetic images") -> None:
        p.add_argument("--image-size", type=_int_in(*IMAGE_SIZE), default=default, metavar="N", help=f"side of {what} (default: {default})")

    p = command("inspect", "List the swappable components and the module tree.",
                "  surgery inspect\n  surgery inspect --depth 4 --input-size 3,320,320\n"
                "  surgery inspect torchvision.models.detection:retinanet_resnet50_fpn --json\n", _cmd_inspect)
    _add_model_args(p)
    p.add_argument("--depth", type=_int_in(*DEPTH), default=2, help="module tree depth (default: 2)")
    p.add_argument("--input-size", type=_input_size, metavar="C,H,W", help="also print torchinfo's layer table for this input size")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("check", "Check that the components fit each other; exit 1 on errors.",
                "  surgery check\n  surgery check examples/deeper_mask_head.py:broken --json\n"
                "  surgery check my_model.py:build --format github   # annotations in GitHub Actions\n"
                "  surgery check deeper.pt --format markdown >> $GITHUB_STEP_SUMMARY   # a file saved by surgery apply\n", _cmd_check)
    _add_model_args(p)
    _add_format(p)
    p.add_argument("--trace", action="store_true",
                   help="also run an eval pass and a train step (synthetic batch) to find modules that never run, "
                        "parameters without a gradient, NaN/Inf and forward errors")

    p = command("trace", "Run the model on a synthetic batch and print every module call and the data flow between components.",
                "  surgery trace\n  surgery trace --mode both --image-size 256\n"
                "  surgery trace torchvision.models.detection:retinanet_resnet50_fpn --train --json\n", _cmd_trace)
    _add_model_args(p)
    p.add_argument("--train", action="store_true", help="run a train step (with backward) instead of an eval pass")
    p.add_argument("--mode", choices=("eval", "train", "both"), default=None, help="which passes to run (default: eval)")
    image_size(p, 320)
    p.add_argument("--depth", type=_int_in(*DEPTH), default=None, metavar="N",
                   help="trace modules at most N levels deep (components are always traced; default: all)")
    _add_format(p, "print one JSON object with the full trace")

    p = command("apply", "Apply a TOML recipe of edits as one checked transaction and save the result; exit 1 on errors.",
                "  surgery apply examples/recipes/deeper_mask_head.toml -o deeper.pt\n"
                "  surgery apply recipe.toml torchvision.models.detection:maskrcnn_resnet50_fpn_v2 -o out.pt --json\n"
                "  surgery check deeper.pt   # the saved file is a spec: rebuilt from its spec, recipe and weights\n", _cmd_apply)
    p.add_argument("recipe", metavar="RECIPE.toml", help="the recipe: [[step]] tables of replace / adapt / set_num_classes / freeze / ...")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt",
                   help="where to save {state_dict, recipe, spec, args}; the file is a SPEC for the other commands "
                        "(and surgery.rebuild loads it)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("smoke", "Check, train one step and evaluate on a synthetic batch (optionally under DDP); exit 1 on failure.",
                "  surgery smoke\n  surgery smoke my_model.py:build --device cuda --amp --image-size 800\n"
                "  surgery smoke my_model.py:build --ddp 2 --image-size 256 --json   # phases go to stderr\n", _cmd_smoke)
    _add_model_args(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run: auto picks cuda when available, else cpu (default: auto)")
    p.add_argument("--amp", action="store_true", help="run under torch.autocast: bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--amp-dtype", choices=("bf16", "fp16"), default=None, help="autocast dtype (implies --amp)")
    p.add_argument("--ddp", type=_int_in(*WORLD_SIZE, zero=True), default=0, metavar="N",
                   help="also run 2 train steps in N processes under DistributedDataParallel (gloo on CPU, nccl with N GPUs)")
    p.add_argument("--ddp-timeout", type=_seconds, default=300.0, metavar="S", help="kill the DDP workers after S seconds (default: 300)")
    image_size(p, 320)
    p.add_argument("--batch-size", type=_int_in(*BATCH_SIZE), default=2, metavar="N", help="images per step (default: 2)")
    p.add_argument("--steps", type=_int_in(*STEPS), default=1, metavar="N", help="train steps (default: 1)")
    p.add_argument("--no-check", action="store_true", help="skip the static check before the passes")
    _add_format(p, "print one JSON object; the phases go to stderr as they run, as with github and markdown")

    p = command("render", "Draw the model's components (or modules) as SVG/PNG/PDF/DOT; exit 1 when a contract is broken.",
                "  surgery render -o maskrcnn.svg\n"
                "  surgery render my_model.py:build -o after.svg --before torchvision.models.detection:maskrcnn_resnet50_fpn\n"
                "  surgery render my_model.py:build --arg num_classes=3 -o after.svg --before my_model.py:build --arg-before num_classes=91\n"
                "  surgery render -o modules.svg --level modules --depth 3\n"
                "  surgery render -o arch.dot   # DOT text; needs no Graphviz binary\n", _cmd_render)
    _add_model_args(p, before="--before SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file: .svg, .png, .pdf (need Graphviz's dot) or .dot")
    p.add_argument("--before", metavar="SPEC", help="the model before an edit: colour slots added / removed / changed "
                                                    "(built with --arg-before and --weights-before)")
    p.add_argument("--level", choices=("components", "modules"), default="components",
                   help="one node per component slot, or nested module clusters (default: components)")
    p.add_argument("--depth", type=_int_in(*DEPTH), default=None, metavar="N", help="with --level modules: open N levels (default: all)")
    p.add_argument("--no-trace", action="store_true",
                   help="label edges with channels read statically (no forward pass) instead of traced shapes")
    _add_format(p)

    p = command("diff", "Compare two models: slots and modules changed, and Δparams, ΔFLOPs, Δlatency, Δpeak memory.",
                "  surgery diff torchvision.models.detection:maskrcnn_resnet50_fpn my_model.py:build\n"
                "  surgery diff my_model.py:build my_model.py:build --arg-before num_classes=91 --arg num_classes=3\n"
                "  surgery diff A.py:build B.py:build --weights-before a.pt --weights b.pt --no-cost --json\n", _cmd_diff)
    p.add_argument("before", metavar="SPEC_A", help="the model before")
    p.add_argument("spec", metavar="SPEC_B", help="the model after")
    _add_model_args(p, spec=False, before="SPEC_A", after="SPEC_B")
    p.add_argument("--no-cost", action="store_true", help="structure and parameter counts only (no forward passes)")
    image_size(p, 320, "the synthetic image of the cost forwards")
    p.add_argument("--runs", type=_int_in(*RUNS), default=3, metavar="N", help="timed forwards per model, median reported (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("review", "Review an edit on one self-contained HTML page (verdict, diagram, findings, diff, smoke test); exit 1 when it fails.",
                "  surgery review torchvision.models.detection:maskrcnn_resnet50_fpn deeper.pt -o review.html\n"
                "  surgery review my_model.py:build my_model.py:build --arg-before num_classes=91 --arg num_classes=3 -o review.html\n"
                "  surgery review base.py:build edited.py:build --weights-before base.pt --weights edited.pt -o review.html --json\n",
                _cmd_review)
    p.add_argument("before", metavar="SPEC_BEFORE", help="the model before the edit")
    p.add_argument("spec", metavar="SPEC_AFTER", help="the model after the edit (e.g. a file saved by surgery apply)")
    _add_model_args(p, spec=False, before="SPEC_BEFORE", after="SPEC_AFTER")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="where to write the page (its folder must exist)")
    p.add_argument("--recipe", metavar="RECIPE.toml", help="the recipe that made SPEC_AFTER, shown on the page")
    p.add_argument("--title", help="the page's title (default: 'Before → After' from the class names)")
    p.add_argument("--no-smoke", action="store_true", help="do not smoke-test SPEC_AFTER")
    p.add_argument("--no-cost", action="store_true", help="parameters only in the diff (no FLOPs, latency, memory)")
    image_size(p, 128, "the synthetic images of the diff and the smoke test")
    _add_format(p, "print one JSON summary")
    return parser


def _fail(ns: argparse.Namespace | None, argv: Sequence[str], message: str, error: BaseException | None = None) -> int:
    """Report an error: the message on stderr and, under ``--json``, an error object on stdout
    (under ``--format github``, an ``::error`` annotation, located where the error is). Returns 2."""
    print(message, file=sys.stderr)
    if ns is not None:
        style = _style(ns)
    else:
        wants = "--json" in argv or "--format=json" in argv or any(a == "--format" and b == "json" for a, b in zip(argv, argv[1:], strict=False))
        style = "json" if wants else "text"
    out: TextIO = getattr(ns, "out", None) or sys.stdout
    if style == "json":
        model = _spec_name(ns) if ns is not None else None
        out.write(json.dumps({"model": model, "ok": False, "findings": [], "error": message}, indent=2) + "\n")
    elif style == "github":
        from surgery._cli_output import annotation, load_error_location

        where = load_error_location(error, _spec_name(ns) if ns is not None else None) if isinstance(error, LoadError) else None
        out.write(annotation("error", message, f"surgery {getattr(ns, 'command', '')}", where) + "\n")
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surgery`` console script and of ``python -m surgery``. Returns the
    exit code; a command line argparse refuses raises ``SystemExit(2)`` as argparse does."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except _UsageError as e:  # argparse's own way out: SystemExit(2), after the message (and the JSON under --json)
        e.parser.print_usage(sys.stderr)
        sys.exit(_fail(None, args, f"{e.parser.prog}: error: {e}"))
    ns.out = sys.stdout
    from surgery.loading import current_folder_on_path

    current_folder_on_path()  # specs in the current folder load as with python -m, from the console script too
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what the model's code prints must not mix with our output
            return int(ns.fn(ns))
    except LoadError as e:
        return _fail(ns, args, f"surgery: cannot load the model: {e}", e)
    except SurgeryError as e:
        return _fail(ns, args, f"surgery: {type(e).__name__}: {e}", e)
    except (ValueError, OSError) as e:
        return _fail(ns, args, f"surgery: {e}", e)
    except SystemExit as e:  # the model's own code called sys.exit() while it ran
        return _fail(ns, args, f"surgery: the model's code called sys.exit({e.code!r}) while surgery {ns.command} ran it")


if __name__ == "__main__":
    sys.exit(main())
