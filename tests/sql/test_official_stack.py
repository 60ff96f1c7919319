"""The official @pgflow/core SQL installs on the test stack (used by compatibility tests)."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.helpers import complete, define_flow, read_and_start, run_row, start_flow


def test_official_and_ours_run_the_same_simple_flow(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "demo", [("a", []), ("b", ["a"])])
        run_id = start_flow(conn, "demo", {"n": 2})
        (task,) = read_and_start(conn, "demo")
        complete(conn, task, {"a": 1})
        (task,) = read_and_start(conn, "demo")
        complete(conn, task, {"b": 2})
        run: dict[str, Any] = run_row(conn, run_id)
        assert run["status"] == "completed"
        assert run["output"] == {"b": {"b": 2}}
