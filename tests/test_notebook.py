"""``examples/notebook.ipynb`` runs top to bottom in a fresh kernel (nbclient + ipykernel, the
``dev`` extras) and every result shows itself as HTML or SVG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from surgery.render import dot_binary

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def _clients() -> tuple[Any, Any]:
    try:
        import ipykernel  # noqa: F401  (the kernel nbclient starts)
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{e}; CI=true installs the dev extras (pip install -e '.[dev]'), which include nbclient and ipykernel")
        pytest.skip(f"{e}: install the dev extras (pip install -e '.[dev]') to run the notebook")
    return nbformat, NotebookClient


def _outputs(cell: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for out in cell.get("outputs", []):
        for mime, data in out.get("data", {}).items():
            found[mime] = data if isinstance(data, str) else "".join(data)
    return found


@pytest.mark.slow  # starts a kernel, which imports torch
def test_the_notebook_runs_and_shows_html_and_svg(tmp_path: Path) -> None:
    nbformat, client_class = _clients()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client_class(nb, timeout=600, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    by_tag = {c.metadata["tags"][0]: _outputs(c) for c in code}
    assert list(by_tag) == ["inspect", "check", "replace", "render", "diff", "smoke"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    mimes = {mime for outputs in by_tag.values() for mime in outputs}
    assert "text/html" in mimes
    assert "table" in by_tag["inspect"]["text/html"] and "<code>roi_heads.mask_head</code>" in by_tag["inspect"]["text/html"]
    assert "channel-mismatch" in by_tag["check"]["text/html"]
    assert "MaskRCNNPredictor(512, 256, 3)" in by_tag["check"]["text/html"]
    assert "MaskRCNNPredictor(256, 256, 3) → MaskRCNNPredictor(512, 256, 3)" in by_tag["replace"]["text/html"]
    assert "Slots: 2 changed, 0 added, 0 removed" in by_tag["diff"]["text/html"]
    assert '<span class="sg-badge sg-ok">ok</span>' in by_tag["smoke"]["text/html"]
    assert by_tag["render"]["text/plain"].startswith("<Graph 'MaskRCNN: before → after'")
    if dot_binary() is not None:
        assert "image/svg+xml" in mimes
        assert by_tag["render"]["image/svg+xml"].startswith("<svg")
    elif os.environ.get("CI") == "true":
        pytest.fail("Graphviz's dot is missing but CI=true: `make setup` installs it")
