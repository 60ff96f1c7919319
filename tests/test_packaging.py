"""The distribution as a user receives it: the wheel's files and metadata, and a README that
reads correctly on PyPI, where relative links lead nowhere."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def _mkdocs() -> dict[str, str]:
    # mkdocs.yml uses python tags elsewhere; only plain keys are read here.
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    plain = "\n".join(line for line in text.splitlines() if "!!" not in line)
    loaded = yaml.safe_load(plain)
    return {key: str(loaded[key]) for key in ("site_url", "repo_url")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH, so the wheel cannot be built here")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_the_wheel_carries_the_license(wheel: zipfile.ZipFile) -> None:
    licenses = [n for n in wheel.namelist() if ".dist-info/licenses/" in n]
    assert [Path(n).name for n in licenses] == ["LICENSE"]
    text = wheel.read(licenses[0]).decode()
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0" in text
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["License-File"] == "LICENSE"


def test_the_wheel_names_where_the_project_lives(wheel: zipfile.ZipFile) -> None:
    urls = dict(value.split(", ", 1) for value in _metadata(wheel).get_all("Project-URL") or [])
    site = _mkdocs()
    assert urls["Documentation"] == site["site_url"]
    assert urls["Repository"] == site["repo_url"]
    assert urls["Issues"].startswith(site["repo_url"])


def test_the_wheel_holds_both_packages_the_sql_and_the_command(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {"pgflow_client/py.typed", "pgflow_worker/py.typed"} <= names
    assert any(n.startswith("pgflow_worker/_sql/migrations/") for n in names)
    assert "pgflow_worker/_sql/compat/realtime.sql" in names
    dashboard = "pgflow_worker/_tools/dashboard/"
    assert {
        f"{dashboard}templates/run.html",
        f"{dashboard}templates/_run_body.html",
        f"{dashboard}static/dashboard.css",
        f"{dashboard}static/live.js",
    } <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = wheel.read(entry).decode()
    assert "pgflow = pgflow_worker._tools.cli:main" in scripts
    from pgflow_worker._tools.cli import main

    assert callable(main)


def test_readme_links_work_on_pypi() -> None:
    """Every link is absolute; links into the docs site name a page that exists."""
    site = _mkdocs()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = LINK.findall(readme)
    assert links
    for link in links:
        assert link.startswith("https://"), f"{link} is relative: it breaks on PyPI"
        if link.startswith(site["site_url"]):
            page = link.removeprefix(site["site_url"]).partition("#")[0].rstrip("/")
            assert (ROOT / "docs" / f"{page or 'index'}.md").is_file(), link
        elif link.startswith(site["repo_url"] + "/blob/main/"):
            assert (ROOT / link.removeprefix(site["repo_url"] + "/blob/main/")).exists(), link


def test_pyproject_and_the_readme_agree_on_the_license() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache-2.0" in (ROOT / "README.md").read_text(encoding="utf-8")
