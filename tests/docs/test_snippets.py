"""The documentation's code runs as written: every page's marked blocks, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runner import PageRunner, roles_for, supabase_for
from tests.docs.snippets import ROOT, Page, documentation_files, marker_problems, parse

PAGES = [parse(path) for path in documentation_files()]
RUNNABLE = [page for page in PAGES if page.runnable]


def test_every_code_block_says_whether_it_runs() -> None:
    problems = [p for page in PAGES for b in page.blocks if (p := marker_problems(b)) is not None]
    assert problems == []


def test_the_readme_and_the_guides_have_runnable_code() -> None:
    names = {page.path.relative_to(ROOT).as_posix() for page in RUNNABLE}
    for expected in ["README.md", "docs/getting-started.md", "docs/client.md", "docs/worker.md"]:
        assert expected in names


@pytest.mark.parametrize(
    "page", RUNNABLE, ids=[page.path.relative_to(ROOT).as_posix() for page in RUNNABLE]
)
async def test_page_runs(
    page: Page, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.chdir(tmp_path)
    runner = PageRunner(page, db_url, tmp_path)
    if "supabase" in page.options:
        roles = [r for r in page.options.get("roles", "").split(",") if r]
        async with (
            roles_for(db_url, roles),
            supabase_for(db_url, page.options.get("role", "anon")) as (url, key),
        ):
            monkeypatch.setenv("SUPABASE_URL", url)
            monkeypatch.setenv("SUPABASE_KEY", key)
            runner.env.update(SUPABASE_URL=url, SUPABASE_KEY=key)
            async with runner:
                await runner.run()
        return
    async with runner:
        await runner.run()
