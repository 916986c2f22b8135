"""``python -m surgery`` and a start without torch: ``--help`` and ``--version`` import neither
torch nor any module that does, and the package's public names load on first use."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import surgery

PYTHON = sys.executable
SCRIPT = Path(PYTHON).with_name("surgery")
INIT = Path(surgery.__file__)

#: Runs ``surgery ARGV`` the way ``python -m surgery`` does, then prints which heavy modules got imported.
PROBE = """
import runpy, sys
sys.argv = ["surgery", *sys.argv[1:]]
try:
    runpy.run_module("surgery", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print("EXIT", code)
print("LOADED", sorted(m for m in ("torch", "torchvision", "surgery.check", "surgery.findings") if m in sys.modules))
"""


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, *argv], capture_output=True, text=True, timeout=300, check=False, cwd=cwd)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["check", "--help"], ["review", "--help"]])
def test_help_and_version_do_not_import_torch(argv: list[str]) -> None:
    done = run("-c", PROBE, *argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["EXIT 0", "LOADED []"]


def test_version_under_importtime_lists_no_torch_module() -> None:
    done = run("-X", "importtime", "-m", "surgery", "--version")
    assert (done.returncode, done.stdout) == (0, f"surgery {surgery.__version__}\n")
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "surgery.cli" in imported
    assert [m for m in imported if m.split(".")[0] in ("torch", "torchvision")] == []


def test_python_dash_m_is_the_console_script(tmp_path: Path) -> None:
    by_module = run("-m", "surgery", "inspect", "no_colon_here", cwd=tmp_path)
    by_script = subprocess.run([str(SCRIPT), "inspect", "no_colon_here"], capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert (by_module.returncode, by_script.returncode) == (2, 2)
    assert by_module.stderr == by_script.stderr
    assert "model spec 'no_colon_here' must be 'pkg.module:callable'" in by_module.stderr
    assert run("-m", "surgery", "--version").stdout == f"surgery {surgery.__version__}\n"


def _type_checking_imports() -> dict[str, str]:
    """``{public name: module}`` read from the ``if TYPE_CHECKING:`` imports of ``surgery/__init__.py``."""
    tree = ast.parse(INIT.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    names: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names:
            names[alias.asname or alias.name] = node.module if node.module != "surgery" else f"surgery.{alias.name}"
    return names


def test_the_lazy_table_matches_the_typed_imports() -> None:
    homes = {name: module for name, (module, _) in surgery._HOMES.items()}
    assert homes == _type_checking_imports()
    assert sorted(set(surgery.__all__) - {"__version__"}) == sorted(homes)


def test_public_names_are_the_objects_not_their_submodules() -> None:
    import surgery.check
    import surgery.diff
    import surgery.review
    import surgery.trace

    for name in ("check", "diff", "review", "trace", "render", "edit", "inspect"):
        assert not isinstance(getattr(surgery, name), types.ModuleType), name
        assert callable(getattr(surgery, name)), name
    assert isinstance(surgery.paths, types.ModuleType)
    assert set(surgery.__all__) <= set(dir(surgery))
    with pytest.raises(AttributeError, match="module 'surgery' has no attribute 'no_such_name'"):
        surgery.no_such_name  # noqa: B018


def test_a_submodule_imported_first_does_not_hide_the_function() -> None:
    code = ("import surgery.cli, sys; from surgery.check import check as f; import surgery; "
            "print(surgery.check is f, 'torch' in sys.modules)")
    done = run("-c", code)
    assert done.stdout.split() == ["True", "True"], done.stderr
