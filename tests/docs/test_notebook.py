"""The quickstart notebook runs from top to bottom, and is committed without outputs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

from tests.docs.snippets import DOCS, ROOT

NOTEBOOK = DOCS / "notebooks" / "quickstart.ipynb"


def _outputs(nb: Any, kind: str) -> list[Any]:
    return [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == kind
    ]


def test_the_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert [cell.outputs for cell in code] == [[] for _ in code]
    assert [cell.execution_count for cell in code] == [None for _ in code]
    assert "widgets" not in nb.metadata


# The command docs/notebooks.md gives for running the notebook without a browser.
COMMAND = (
    "uv run jupyter nbconvert --to notebook --execute docs/notebooks/quickstart.ipynb"
    " --output-dir executed"
)


def test_the_notebook_runs_as_documented(db_url: str, tmp_path: Path) -> None:
    page = (DOCS / "notebooks.md").read_text(encoding="utf-8")
    assert COMMAND in page
    argv = shlex.split(COMMAND)
    assert argv[:3] == ["uv", "run", "jupyter"]
    output_dir = tmp_path / "executed"
    argv[-1] = str(output_dir)  # the same command, writing into this test's folder
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", *argv[3:]],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    nb = nbformat.read(output_dir / NOTEBOOK.name, as_version=4)  # type: ignore[no-untyped-call]

    text = "".join("".join(output.get("text", "")) for output in _outputs(nb, "stream"))
    print(text)
    assert "measured 5 words" in text
    assert "longest word: callbacks" in text
    assert "run:completed" in text
    assert "Timeout waiting for run" in text
    # Python 3.13 words the error "max() iterable argument is empty".
    assert re.search(
        r"failed - ValueError: max\(\) (arg is an empty sequence|iterable argument is empty)", text
    )

    displayed = _outputs(nb, "execute_result") + _outputs(nb, "display_data")
    html = [o.data["text/html"] for o in displayed if "text/html" in o.data]
    assert any("notebook_words" in h and "completed" in h for h in html)
    widgets = [o for o in displayed if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(widgets) == 1
    assert json.dumps(nb.metadata.get("widgets", {}))  # the widget's state was recorded
