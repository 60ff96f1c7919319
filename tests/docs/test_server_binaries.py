"""What the README and the docs say about the PostgreSQL a local server runs is what the code does.

``pgflow demo``, ``LocalPostgres`` and the test suite take the first server binaries found, in
an order the CLI reference lists, with the ``pgserver`` package as the last resort; when there
are none, the error says what to install. These tests hold the pages to that: the lookup order
documented against ``find_bindir`` given every kind of candidate, and the install advice
against the error message.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pgflow_worker._tools import cluster as cluster_module
from pgflow_worker._tools import embedded as embedded_module
from pgflow_worker._tools import find_bindir
from pgflow_worker.errors import PostgresNotFound
from tests.docs.snippets import ROOT

PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md", ROOT / "docs" / "cli.md"]
INSTALL_ADVICE = ["apt-get install postgresql", "brew install postgresql", "DATABASE_URL"]

# How each source of binaries is named in the CLI reference's list.
SOURCES = {
    "env": "`PGFLOW_PG_BINDIR`",
    "pg_config": "`pg_config --bindir`",
    "debian": "`/usr/lib/postgresql/<version>/bin`",
    "pgserver": "[pgserver]",
}


def text_of(path: Path) -> str:
    """The page's text with its line breaks and indentation folded into single spaces."""
    return " ".join(path.read_text(encoding="utf-8").split())


def documented_order() -> list[str]:
    """The sources of binaries in the order the CLI reference's numbered list gives them."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text[text.index("## `pgflow demo`") :]
    items = re.findall(r"^\d+\. (.*(?:\n {3}.*)*)", section, re.M)
    listed = " ".join(items)
    assert listed, "no numbered list of where the binaries come from"
    positions = {name: listed.find(label) for name, label in SOURCES.items()}
    missing = [SOURCES[name] for name, at in positions.items() if at < 0]
    assert missing == [], f"the list does not name {missing}"
    return sorted(positions, key=positions.__getitem__)


def fake_bindir(folder: Path) -> Path:
    """A folder with the three programs ``find_bindir`` looks for (never run here)."""
    folder.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl", "postgres"):
        (folder / tool).write_text("")
    return folder


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_pages_name_the_fallback_and_what_to_install(page: Path) -> None:
    text = text_of(page)
    machine = text.find("machine's PostgreSQL")
    fallback = text.find("pgserver")
    assert 0 <= machine < fallback, "the machine's binaries first, then pgserver"
    missing = [advice for advice in INSTALL_ADVICE if advice not in text]
    assert missing == [], f"{page.name} does not say {missing}"


def test_the_documented_lookup_order_is_the_one_followed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    candidates = {
        "env": fake_bindir(tmp_path / "from-env"),
        "pg_config": fake_bindir(tmp_path / "from-pg-config"),
        "debian": fake_bindir(tmp_path / "debian" / "15" / "bin"),
        "pgserver": fake_bindir(tmp_path / "pgserver" / "bin"),
    }
    on_path = tmp_path / "path"
    on_path.mkdir()
    pg_config = on_path / "pg_config"
    pg_config.write_text(f"#!/bin/sh\necho {candidates['pg_config']}\n")
    pg_config.chmod(pg_config.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PGFLOW_PG_BINDIR", str(candidates["env"]))
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.setattr(cluster_module, "SYSTEM_PG_ROOT", tmp_path / "debian")
    monkeypatch.setattr(embedded_module, "pgserver_bindir", lambda: candidates["pgserver"])
    remove: dict[str, Callable[[], object]] = {
        "env": lambda: monkeypatch.delenv("PGFLOW_PG_BINDIR"),
        "pg_config": pg_config.unlink,
        "debian": lambda: monkeypatch.setattr(
            cluster_module, "SYSTEM_PG_ROOT", tmp_path / "no-debian"
        ),
        "pgserver": lambda: monkeypatch.setattr(embedded_module, "pgserver_bindir", lambda: None),
    }
    followed: list[str] = []
    for _ in candidates:
        found = find_bindir()
        source = next(name for name, folder in candidates.items() if folder == found)
        followed.append(source)
        remove[source]()
    assert followed == documented_order()
    with pytest.raises(PostgresNotFound) as caught:
        find_bindir()
    # The advice in the error is the advice in the CLI reference.
    reference = text_of(ROOT / "docs" / "cli.md")
    for advice in [*INSTALL_ADVICE, "pip install 'pgflow-py[embedded]'"]:
        assert advice in str(caught.value)
        assert advice in reference
