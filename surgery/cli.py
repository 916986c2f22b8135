"""The ``surgery`` command: a thin shell over the Python API.

Exit codes: 0 nothing at error severity; 1 errors found (or a failed smoke test);
2 usage errors, a spec that cannot be loaded, or a missing ``dot`` binary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from surgery._errors import LoadError, SurgeryError
from surgery.loading import DEFAULT_SPEC, load_model

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with the usage line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC", help=f"model spec (default: {DEFAULT_SPEC})")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model callable, value parsed as a Python literal (repeatable)")
    p.add_argument("--weights", metavar="FILE", help="state dict to load with torch.load(weights_only=True)")
    p.add_argument("--trust", action="store_true", help="allow a weights file holding a pickled whole model (runs its code)")


def _load(ns: argparse.Namespace) -> nn.Module:
    return load_model(ns.spec, ns.arg, ns.weights, ns.trust)


def _spec_name(ns: argparse.Namespace) -> str:
    return ns.spec or DEFAULT_SPEC


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _int_tuple(text: str, option: str, example: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers such as {example}, got {text!r}") from None


def _cmd_inspect(ns: argparse.Namespace) -> int:
    from surgery.overview import inspect

    model = _load(ns)
    input_size = _int_tuple(ns.input_size, "--input-size", "3,320,320") if ns.input_size else None
    overview = inspect(model, input_size=input_size, depth=ns.depth)
    if ns.json:
        _emit_json({"model": _spec_name(ns), "ok": True, "findings": [], **{k: v for k, v in overview.to_dict().items() if k != "model"},
                    "class": overview.model})
    else:
        print(overview)
    return EXIT_OK


def _cmd_check(ns: argparse.Namespace) -> int:
    from surgery.check import check

    model = _load(ns)
    report = check(model)
    report.model = _spec_name(ns)
    fmt = "json" if ns.json else ns.format
    if fmt == "json":
        _emit_json(report.to_dict())
    elif fmt == "github":
        text = report.format("github")
        if text:
            print(text)
        print(f"surgery check: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    else:
        print(report)
    return EXIT_OK if report.ok else EXIT_ERRORS


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
    p.add_argument("--depth", type=int, default=2, help="module tree depth (default: 2)")
    p.add_argument("--input-size", metavar="C,H,W", help="also print torchinfo's layer table for this input size")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("check", "Check that the components fit each other; exit 1 on errors.",
                "  surgery check\n  surgery check examples/deeper_mask_head.py:broken --json\n"
                "  surgery check my_model.py:build --format github   # annotations in GitHub Actions\n", _cmd_check)
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (same as --format json)")
    p.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format (default: text)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surgery`` console script. Returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.fn(ns))
    except LoadError as e:
        print(f"surgery: cannot load the model: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SurgeryError as e:
        print(f"surgery: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"surgery: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
