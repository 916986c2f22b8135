"""Regenerate docs/cli.md from the ``surgery`` command's own help texts.

Run: python docs/make_cli.py
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from surgery.cli import build_parser

HEADER = """# The `surgery` command

Generated from `surgery --help` and each command's `--help` by `python docs/make_cli.py`.

A model SPEC is `pkg.module:callable` or `path/to/file.py:callable`. **A `.py` spec runs
that file**, as importing it would: only name files you trust. Repeated `--arg key=value`
options pass keyword arguments, each value parsed as a Python literal (`--arg num_classes=3`,
`--arg "backbone_name='resnet18'"`). `--weights FILE` loads a state dict with
`torch.load(weights_only=True)`; a file holding a pickled whole model is refused unless
`--trust` is given. Without a SPEC the model is
`torchvision.models.detection:maskrcnn_resnet50_fpn` with `weights=None` and
`weights_backbone=None`; builders that take `weights`/`weights_backbone` always get `None`
unless an `--arg` says otherwise, so nothing is downloaded.

## Exit codes

| code | meaning |
| --- | --- |
| 0 | nothing at error severity |
| 1 | findings at error severity, or a failed smoke test |
| 2 | usage errors, a spec or weights file that cannot be loaded, a bad recipe, or a missing `dot` binary when an image was asked for (the message says how to install it) |

## JSON

`--json` prints one object: `{"model": SPEC, "ok": bool, "findings": [{"severity", "code",
"paths", "message", "fix"}], ...}`, each command adding its own fields next to those.
Finding codes are listed in [checks.md](checks.md).
"""


def _help(argv: list[str]) -> str:
    buf = io.StringIO()
    parser = build_parser()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    return buf.getvalue().rstrip()


def main() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = list(sub.choices)  # type: ignore[union-attr]
    parts = [HEADER, "## surgery --help\n", "```", _help(["--help"]), "```\n"]
    for name in commands:
        parts += [f"## surgery {name}\n", "```", _help([name, "--help"]), "```\n"]
    out = Path(__file__).with_name("cli.md")
    out.write_text("\n".join(parts))
    print(f"wrote {out} ({len(commands)} commands)")


if __name__ == "__main__":
    main()
