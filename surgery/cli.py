"""The ``surgery`` command: a thin shell over the Python API.

Exit codes: 0 nothing at error severity; 1 errors found (or a failed smoke test);
2 usage errors, a spec that cannot be loaded, or a missing ``dot`` binary.

Every bad value ends in a one-line message naming it and exit code 2, never a traceback; with
``--json`` stdout then holds ``{"model", "ok": false, "findings": [], "error"}``. Whatever the
model's own code prints goes to stderr, so stdout under ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from surgery._errors import LoadError, SurgeryError
from surgery.loading import DEFAULT_SPEC, load_model, load_weights

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

_EPILOG = f"""\
A SPEC is 'pkg.module:callable' or 'path/to/file.py:callable' (the file is executed).
Without one, the model is {DEFAULT_SPEC} built with weights=None, weights_backbone=None.

examples:
  surgery inspect --depth 3
  surgery inspect torchvision.models.detection:fasterrcnn_resnet50_fpn_v2 --arg num_classes=3 --json
  surgery check my_model.py:build --weights ckpt.pt
  surgery check --format github
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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC", help=f"model spec (default: {DEFAULT_SPEC})")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model callable, value parsed as a Python literal (repeatable)")
    p.add_argument("--weights", metavar="FILE", help="state dict to load with torch.load(weights_only=True)")
    p.add_argument("--no-strict", action="store_true",
                   help="with --weights: load the tensors that fit and list the rest, instead of refusing a file that does not match")
    p.add_argument("--trust", action="store_true", help="allow a weights file holding a pickled whole model (runs its code)")


def _load(ns: argparse.Namespace) -> nn.Module:
    model = load_model(ns.spec, ns.arg)
    if ns.weights is not None:
        report = load_weights(model, ns.weights, trust=ns.trust, strict=not ns.no_strict)
        for note in report.notes:
            print(f"surgery: --weights {ns.weights}: {note}", file=sys.stderr)
        if not report.clean:
            print(f"surgery: --no-strict: {report}", file=sys.stderr)
    return model


def _spec_name(ns: argparse.Namespace) -> str:
    return getattr(ns, "spec", None) or getattr(ns, "spec_b", None) or DEFAULT_SPEC


def _emit(ns: argparse.Namespace, text: str) -> None:
    """Write ``text`` to the real stdout (while a command runs, what the model's code prints goes to stderr)."""
    out: TextIO = getattr(ns, "out", None) or sys.stdout
    out.write(text + "\n")
    out.flush()


def _emit_json(ns: argparse.Namespace, obj: dict[str, Any]) -> None:
    _emit(ns, json.dumps(obj, indent=2, default=str))


def _wants_json(ns: argparse.Namespace) -> bool:
    return bool(getattr(ns, "json", False)) or getattr(ns, "format", None) == "json"


def _output_file(path: str, option: str) -> Path:
    """``path`` as a file that can be written: its folder exists and it is not itself a folder.

    Raises:
        ValueError: It cannot be written; the message names the option and the path.
    """
    target = Path(path)
    try:
        if target.is_dir():
            raise ValueError(f"{option} {path!r} is a folder; give a file name inside it, e.g. {str(target / 'out.pt')!r}")
        folder = target.parent
        if not folder.is_dir():
            raise ValueError(f"{option} {path!r}: the folder {str(folder)!r} does not exist; create it first")
    except OSError as e:
        raise ValueError(f"{option} {path!r} cannot be used: {e.strerror or e}") from e
    return target


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
    fmt = "json" if ns.json else ns.format
    if fmt == "json":
        _emit_json(ns, report.to_dict())
    elif fmt == "github":
        text = report.format("github")
        if text:
            _emit(ns, text)
        _emit(ns, f"surgery check: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    else:
        _emit(ns, str(report))
    return EXIT_OK if report.ok else EXIT_ERRORS


def _cmd_trace(ns: argparse.Namespace) -> int:
    from surgery.trace import trace

    if ns.train and ns.mode not in (None, "train"):
        raise ValueError(f"--train means --mode train; it contradicts --mode {ns.mode}")
    model = _load(ns)
    result = trace(model, mode=ns.mode or ("train" if ns.train else "eval"), image_size=ns.image_size, depth=ns.depth, strict=False)
    if ns.json:
        body = result.to_dict()
        _emit_json(ns, {"model": _spec_name(ns), "ok": result.ok, "findings": body.pop("findings"), **{k: v for k, v in body.items() if k != "model"},
                    "class": result.model})
    else:
        _emit(ns, str(result))
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
        _emit(ns, f"saved to {saved} (rebuild it with surgery.rebuild({saved!r}))" if saved else "errors remain: nothing was saved")
    return EXIT_OK if report.ok else EXIT_ERRORS


def _cmd_smoke(ns: argparse.Namespace) -> int:
    from surgery._errors import SmokeTestError
    from surgery.smoke import resolve_device, smoke_test

    resolve_device(ns.device)  # no GPU for --device cuda is a usage error (exit 2), before the model is built
    stream = sys.stderr if ns.json else ns.out

    def progress(line: str) -> None:
        print(line, file=stream, flush=True)

    model = _load(ns)
    amp: bool | str = ns.amp_dtype or ns.amp
    try:
        result = smoke_test(model, device=ns.device, batch_size=ns.batch_size, image_size=ns.image_size, amp=amp, steps=ns.steps,
                            ddp=ns.ddp, check=not ns.no_check, ddp_timeout=ns.ddp_timeout, progress=progress)
    except SmokeTestError as e:
        print(f"surgery smoke: the smoke test could not finish: {e}", file=sys.stderr)
        return EXIT_ERRORS
    result.model = _spec_name(ns)
    if ns.json:
        _emit_json(ns, result.to_dict())
    else:
        if result.losses:
            _emit(ns, "  losses: " + ", ".join(f"{k}={v:.4g}" for k, v in result.losses.items()))
        for finding in result.findings:
            _emit(ns, str(finding))
        verdict = "ok" if result.ok else f"FAILED, {len(result.errors)} error(s)"
        _emit(ns, f"surgery smoke: {result.model}: {verdict}")
    return EXIT_OK if result.ok else EXIT_ERRORS


def _cmd_render(ns: argparse.Namespace) -> int:
    from surgery.render import FORMATS, render

    if Path(ns.output).suffix.lower() not in FORMATS:
        raise ValueError(f"cannot tell the format of -o {ns.output!r}: the extension must be one of {sorted(FORMATS)}")
    if ns.depth is not None and ns.level != "modules":
        raise ValueError(f"--depth applies to --level modules only, got --depth {ns.depth} with --level {ns.level}")
    _output_file(ns.output, "-o")
    model = _load(ns)
    before = load_model(ns.before) if ns.before else None
    graph = render(model, ns.output, before=before, level=ns.level, depth=ns.depth, trace=False if ns.no_trace else "auto")
    errors = [f for f in graph.findings if f.severity == "error"]
    _emit(ns, f"surgery render: wrote {ns.output} ({len(graph.nodes)} nodes, "
              f"{sum(1 for e in graph.edges if e.kind != 'layout')} edges, labels from the {graph.flow} flow)")
    for f in errors:
        _emit(ns, str(f))
    return EXIT_ERRORS if errors else EXIT_OK


def _cmd_diff(ns: argparse.Namespace) -> int:
    from surgery.diff import ProgressBar, diff
    from surgery.findings import Finding

    before = load_model(ns.spec_a)
    after = load_model(ns.spec_b)
    progress = ProgressBar(sys.stderr) if not ns.no_cost and sys.stderr.isatty() else None
    result = diff(before, after, cost=not ns.no_cost, image_size=ns.image_size, runs=ns.runs, progress=progress)
    findings = [Finding("error", "shape-error", (), p) for p in result.problems]
    if ns.json:
        body = result.to_dict()
        _emit_json(ns, {"model": ns.spec_b, "ok": not findings, "findings": [f.to_dict() for f in findings], **body,
                    "before": ns.spec_a, "after": ns.spec_b, "classes": [body["before"], body["after"]]})
    else:
        _emit(ns, str(result))
    return EXIT_ERRORS if findings else EXIT_OK


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

    p = command("inspect", "List the swappable components and the module tree.",
                "  surgery inspect\n  surgery inspect --depth 4 --input-size 3,320,320\n"
                "  surgery inspect torchvision.models.detection:retinanet_resnet50_fpn --json\n", _cmd_inspect)
    _add_model_args(p)
    p.add_argument("--depth", type=_int_in(*DEPTH), default=2, help="module tree depth (default: 2)")
    p.add_argument("--input-size", type=_input_size, metavar="C,H,W", help="also print torchinfo's layer table for this input size")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("check", "Check that the components fit each other; exit 1 on errors.",
                "  surgery check\n  surgery check examples/deeper_mask_head.py:broken --json\n"
                "  surgery check my_model.py:build --format github   # annotations in GitHub Actions\n", _cmd_check)
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (same as --format json)")
    p.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format (default: text)")
    p.add_argument("--trace", action="store_true",
                   help="also run an eval pass and a train step (synthetic batch) to find modules that never run, "
                        "parameters without a gradient, NaN/Inf and forward errors")

    p = command("trace", "Run the model on a synthetic batch and print every module call and the data flow between components.",
                "  surgery trace\n  surgery trace --mode both --image-size 256\n"
                "  surgery trace torchvision.models.detection:retinanet_resnet50_fpn --train --json\n", _cmd_trace)
    _add_model_args(p)
    p.add_argument("--train", action="store_true", help="run a train step (with backward) instead of an eval pass")
    p.add_argument("--mode", choices=("eval", "train", "both"), default=None, help="which passes to run (default: eval)")
    p.add_argument("--image-size", type=_int_in(*IMAGE_SIZE), default=320, metavar="N", help="side of the synthetic images (default: 320)")
    p.add_argument("--depth", type=_int_in(*DEPTH), default=None, metavar="N",
                   help="trace modules at most N levels deep (components are always traced; default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the full trace")

    p = command("apply", "Apply a TOML recipe of edits as one checked transaction and save the result; exit 1 on errors.",
                "  surgery apply examples/recipes/deeper_mask_head.toml -o deeper.pt\n"
                "  surgery apply recipe.toml torchvision.models.detection:maskrcnn_resnet50_fpn_v2 -o out.pt --json\n"
                "  python -c \"import surgery; surgery.rebuild('deeper.pt')\"   # the same model again\n", _cmd_apply)
    p.add_argument("recipe", metavar="RECIPE.toml", help="the recipe: [[step]] tables of replace / adapt / set_num_classes / freeze / ...")
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt",
                   help="where to save {state_dict, recipe, spec, args} (load it with surgery.rebuild)")
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
    p.add_argument("--image-size", type=_int_in(*IMAGE_SIZE), default=320, metavar="N", help="side of the synthetic images (default: 320)")
    p.add_argument("--batch-size", type=_int_in(*BATCH_SIZE), default=2, metavar="N", help="images per step (default: 2)")
    p.add_argument("--steps", type=_int_in(*STEPS), default=1, metavar="N", help="train steps (default: 1)")
    p.add_argument("--no-check", action="store_true", help="skip the static check before the passes")
    p.add_argument("--json", action="store_true", help="print one JSON object (the phases go to stderr as they run)")

    p = command("render", "Draw the model's components (or modules) as SVG/PNG/PDF/DOT; exit 1 when a contract is broken.",
                "  surgery render -o maskrcnn.svg\n"
                "  surgery render my_model.py:build -o after.svg --before torchvision.models.detection:maskrcnn_resnet50_fpn\n"
                "  surgery render -o modules.svg --level modules --depth 3\n"
                "  surgery render -o arch.dot   # DOT text; needs no Graphviz binary\n", _cmd_render)
    _add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file: .svg, .png, .pdf (need Graphviz's dot) or .dot")
    p.add_argument("--before", metavar="SPEC", help="the model before an edit: colour slots added / removed / changed "
                                                    "(--arg and --weights apply to SPEC only)")
    p.add_argument("--level", choices=("components", "modules"), default="components",
                   help="one node per component slot, or nested module clusters (default: components)")
    p.add_argument("--depth", type=_int_in(*DEPTH), default=None, metavar="N", help="with --level modules: open N levels (default: all)")
    p.add_argument("--no-trace", action="store_true",
                   help="label edges with channels read statically (no forward pass) instead of traced shapes")

    p = command("diff", "Compare two models: slots and modules changed, and Δparams, ΔFLOPs, Δlatency, Δpeak memory.",
                "  surgery diff torchvision.models.detection:maskrcnn_resnet50_fpn my_model.py:build\n"
                "  surgery diff A.py:build B.py:build --no-cost --json\n", _cmd_diff)
    p.add_argument("spec_a", metavar="SPEC_A", help="the model before")
    p.add_argument("spec_b", metavar="SPEC_B", help="the model after")
    p.add_argument("--no-cost", action="store_true", help="structure and parameter counts only (no forward passes)")
    p.add_argument("--image-size", type=_int_in(*IMAGE_SIZE), default=320, metavar="N", help="side of the synthetic image of the cost forwards (default: 320)")
    p.add_argument("--runs", type=_int_in(*RUNS), default=3, metavar="N", help="timed forwards per model, median reported (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _fail(ns: argparse.Namespace | None, argv: Sequence[str], message: str) -> int:
    """Report an error: the message on stderr and, under ``--json``, an error object on stdout. Returns 2."""
    print(message, file=sys.stderr)
    if ns is not None:
        wants = _wants_json(ns)
    else:
        wants = "--json" in argv or "--format=json" in argv or any(a == "--format" and b == "json" for a, b in zip(argv, argv[1:], strict=False))
    if wants:
        model = _spec_name(ns) if ns is not None else None
        out: TextIO = getattr(ns, "out", None) or sys.stdout
        out.write(json.dumps({"model": model, "ok": False, "findings": [], "error": message}, indent=2) + "\n")
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surgery`` console script. Returns the exit code; a command line
    argparse refuses raises ``SystemExit(2)`` as argparse does."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except _UsageError as e:  # argparse's own way out: SystemExit(2), after the message (and the JSON under --json)
        e.parser.print_usage(sys.stderr)
        sys.exit(_fail(None, args, f"{e.parser.prog}: error: {e}"))
    ns.out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what the model's code prints must not mix with our output
            return int(ns.fn(ns))
    except LoadError as e:
        return _fail(ns, args, f"surgery: cannot load the model: {e}")
    except SurgeryError as e:
        return _fail(ns, args, f"surgery: {type(e).__name__}: {e}")
    except (ValueError, OSError) as e:
        return _fail(ns, args, f"surgery: {e}")
    except SystemExit as e:  # the model's own code called sys.exit() while it ran
        return _fail(ns, args, f"surgery: the model's code called sys.exit({e.code!r}) while surgery {ns.command} ran it")


if __name__ == "__main__":
    sys.exit(main())
