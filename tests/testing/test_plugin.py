"""The pytest plugin as a user meets it: a project of its own, run by a pytest of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from tests._stack import Stack

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).parent / "example_project"


def _copy_example(pytester: pytest.Pytester) -> None:
    for path in EXAMPLE.iterdir():
        if path.is_file():
            shutil.copy(path, pytester.path / path.name)


@pytest.mark.parametrize("server", ["DATABASE_URL", "local"])
def test_example_project_passes_and_explains_its_failure(
    pytester: pytest.Pytester, stack: Stack, monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    """Against DATABASE_URL's server, and against one the plugin starts for the session."""
    _copy_example(pytester)
    if server == "DATABASE_URL":
        monkeypatch.setenv("DATABASE_URL", stack.admin_url)
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=5, failed=1)
    output = result.stdout.str()
    # The deliberate failure says which step failed and why, not just "failed != completed".
    assert "test_fails_on_purpose" in output
    assert "step 'parse' failed: ValueError: cannot parse 'oops'" in output
    # The session's template and every per-test database are gone.
    with psycopg.connect(stack.admin_url) as conn:
        left = conn.execute(
            "select datname from pg_database where datname like 'pgflow\\_template\\_%'"
        ).fetchall()
    assert left == []


def test_unused_plugin_starts_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project that never asks for the fixtures never reaches a server: here the only one
    it could reach does not exist, and its tests pass all the same."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")
    result.stdout.fnmatch_lines(["*pgflow_database*", "*pgflow_run*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
