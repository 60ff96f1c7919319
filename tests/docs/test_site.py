"""The site builds with ``mkdocs build --strict``, with diagrams, API pages and the notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pgflow_client
import pgflow_worker
from tests.docs.snippets import ROOT


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr

    concepts = (site / "concepts" / "index.html").read_text(encoding="utf-8")
    assert concepts.count('class="mermaid"') >= 2
    for package in (pgflow_client, pgflow_worker):
        page = site / "api" / package.__name__.removeprefix("pgflow_") / "index.html"
        html = page.read_text(encoding="utf-8")
        missing = [
            name
            for name in package.__all__
            if f'id="{package.__name__}.{name}"' not in html and f'.{name}"' not in html
        ]
        assert missing == [], f"{page}: no entry for {missing}"
    assert (site / "notebooks" / "quickstart.ipynb").is_file()
