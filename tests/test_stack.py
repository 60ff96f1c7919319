"""The test suite's own database stack cleans up after a failed setup."""

from __future__ import annotations

import psycopg
import pytest

from tests._stack import Stack, TemplateBuildFailed


def _databases(stack: Stack, prefix: str) -> list[str]:
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname like %s", (prefix + "%",)
        ).fetchall()
    return [row[0] for row in rows]


def test_a_failed_template_build_leaves_no_database_and_keeps_its_cause(stack: Stack) -> None:
    kind = "no_such_kind"
    with pytest.raises(ValueError, match=kind):
        stack.template(kind)
    assert _databases(stack, f"pgflow_tpl_{kind}_") == []
    # Later tests get the original cause, not a DuplicateDatabase from a half-built copy.
    with pytest.raises(TemplateBuildFailed, match=f"building the '{kind}' template failed"):
        stack.template(kind)
    with pytest.raises(TemplateBuildFailed):
        stack.clone(kind)
    assert _databases(stack, f"pgflow_tpl_{kind}_") == []
