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
`python -m surgery ...` is the same command. `surgery --help` and `surgery --version` start
without importing torch (`benchmarks/bench_cli.py` measures it).

## Specs

A model SPEC is one of:

- `pkg.module:callable`: looked up with the current folder first on `sys.path`, as with
  `python -m`, so `detector.py` next to you loads as `detector:build` without `PYTHONPATH=.`;
- `path/to/file.py:callable`: **a `.py` spec runs that file**, as importing it would: only
  name files you trust;
- a file written by `surgery apply RECIPE.toml -o OUT.pt`: it holds the spec (its file as an
  absolute path), the args, the recipe and a state dict, read with `torch.load(weights_only=True)`;
  the model is rebuilt from them (`surgery check OUT.pt`, from any folder). It takes no `--arg`.

Repeated `--arg key=value` options pass keyword arguments, each value parsed as a Python
literal (`--arg num_classes=3`, `--arg "backbone_name='resnet18'"`). `--weights FILE` loads a
state dict with `torch.load(weights_only=True)`; a file holding a pickled whole model is
refused unless `--trust` is given. Without a SPEC the model is
`torchvision.models.detection:maskrcnn_resnet50_fpn` with `weights=None` and
`weights_backbone=None`; builders that take `weights`/`weights_backbone` always get `None`
unless an `--arg` says otherwise, so nothing is downloaded.

## Two models: before and after

`diff`, `render --before` and `review` build two models. `--arg KEY=VALUE` and
`--weights FILE` build the model after (SPEC_B, SPEC, SPEC_AFTER); `--arg-before KEY=VALUE`
and `--weights-before FILE` build the model before (SPEC_A, `--before SPEC`, SPEC_BEFORE).
`--no-strict` and `--trust` apply to both weights files.

```
surgery diff my_model.py:build my_model.py:build --arg-before num_classes=91 --arg num_classes=3
surgery render my_model.py:build -o after.svg --before base.py:build --weights-before base.pt
surgery review base.py:build edited.pt --weights-before base.pt -o review.html
```

## Output formats

`check`, `trace`, `smoke`, `render` and `review` report findings and take
`--format text|json|github|markdown` (`--json` is `--format json`):

- `github`: one workflow command per finding (`::error file=F,line=N,title=CODE::message`)
  and a summary line. `file=`/`line=` point at the class of the first module the finding
  names that is defined under the current folder (its `class` line), else at the spec's
  builder (its file and `def` line); files of installed packages are never named, so a
  finding about torchvision's own modules in a torchvision builder has no location. A spec
  that does not load is an annotation too, at the line that raised (or the syntax error, or
  the builder), or without a location when there is none: exit code 2.
- `markdown`: `Report.format("markdown")`, a findings table and the coverage line, titled
  with the command (e.g. for `$GITHUB_STEP_SUMMARY`).

## Progress

Long phases print one line each to stderr, on a terminal or not: `diff` and `review` as they
load each model and start comparing (on a terminal, `diff`'s cost measurement draws a bar
instead of its phase lines); `smoke` as each phase starts (`surgery smoke: train phase
running...`) and ends (the phase line; on stdout in the text format, where it is the phase table).
Under `--json`, stdout holds one JSON object and nothing else.

## Exit codes

| code | meaning |
| --- | --- |
| 0 | nothing at error severity |
| 1 | findings at error severity, a failed smoke test, or a review that fails |
| 2 | usage errors, a spec or weights file that cannot be loaded, a bad recipe, an output file that cannot be written, or a missing `dot` binary when an image was asked for (the message says how to install it) |

## JSON

`--json` prints one object: `{"model": SPEC, "ok": bool, "findings": [{"severity", "code",
"paths", "message", "fix"}], ...}`, each command adding its own fields next to those
(`review`: `verdict`, `title`, `output`, `before`, `after`, `slots_changed`, `smoke`, and the
check's `checked` and `coverage`; `render`: `output`, `nodes`, `edges`, `flow`, `before`).
An error exits 2 with `{"model", "ok": false, "findings": [], "error"}`.
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
