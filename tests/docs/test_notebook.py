"""The quickstart notebook runs from top to bottom, and is committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.docs.snippets import DOCS

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


def test_the_notebook_runs(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("DATABASE_URL", db_url)
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    client = NotebookClient(
        nb,
        timeout=90,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    text = "".join("".join(output.get("text", "")) for output in _outputs(nb, "stream"))
    print(text)
    assert "measured 5 words" in text
    assert "longest word: callbacks" in text
    assert "run:completed" in text
    assert "Timeout waiting for run" in text
    assert "failed - ValueError: max() arg is an empty sequence" in text

    displayed = _outputs(nb, "execute_result") + _outputs(nb, "display_data")
    html = [o.data["text/html"] for o in displayed if "text/html" in o.data]
    assert any("notebook_words" in h and "completed" in h for h in html)
    widgets = [o for o in displayed if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(widgets) == 1
    assert json.dumps(nb.metadata.get("widgets", {}))  # the widget's state was recorded
