"""Privileges: nothing for PUBLIC, SECURITY DEFINER snapshot RPCs, pinned search paths."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.sql.helpers import define_flow, raises_sqlstate
from tests.sql.test_trace_context import TRACEPARENT

Conn = psycopg.Connection[Any]


@pytest.fixture
def stranger(db_url: str) -> Iterator[tuple[Conn, str]]:
    """An autocommit connection plus a fresh role with no grants (dropped afterwards)."""
    role = f"stranger_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
        try:
            yield conn, role
        finally:
            conn.execute("reset role")
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def as_role(conn: Conn, role: str) -> None:
    conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))


def test_a_role_without_grants_cannot_touch_pgflow(stranger: tuple[Conn, str]) -> None:
    conn, role = stranger
    define_flow(conn, "f", [("a", [])])
    as_role(conn, role)
    for statement in [
        "select pgflow.create_flow('g')",
        "select * from pgflow.flows",
        "select pgflow.start_flow('f', '{}')",
        "select pgflow.get_run_with_states(gen_random_uuid())",
    ]:
        with raises_sqlstate("42501", "pgflow"):
            conn.execute(statement.encode())


def test_schema_usage_alone_grants_nothing_else(stranger: tuple[Conn, str]) -> None:
    """Even with USAGE on the schema, no function or table is open to PUBLIC."""
    conn, role = stranger
    define_flow(conn, "f", [("a", [])])
    conn.execute(sql.SQL("grant usage on schema pgflow to {}").format(sql.Identifier(role)))
    as_role(conn, role)
    statements = [
        "select pgflow.create_flow('g')",
        "select pgflow.start_flow('f', '{}')",
        "select pgflow.start_flow_with_states('f', '{}')",
        "select pgflow.get_run_with_states(gen_random_uuid())",
        "select pgflow.start_tasks('f', '{1}', gen_random_uuid())",
        "select pgflow.requeue_stalled_tasks()",
        "select * from pgflow.flows",
        "select * from pgflow.runs",
        "select * from pgflow.step_tasks",
        "insert into pgflow.workers (worker_id, queue_name, function_name)"
        " values (gen_random_uuid(), 'f', 'x')",
    ]
    for statement in statements:
        with raises_sqlstate("42501", "permission denied"):
            conn.execute(statement.encode())


def test_catalog_shows_no_public_privileges(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        functions = conn.execute(
            "select p.oid::regprocedure::text from pg_proc p"
            " where p.pronamespace = 'pgflow'::regnamespace"
            " and has_function_privilege('public', p.oid, 'execute')"
        ).fetchall()
        assert functions == []
        tables = conn.execute(
            "select c.relname from pg_class c where c.relnamespace = 'pgflow'::regnamespace"
            " and c.relkind in ('r', 'v', 'p')"
            " and (has_table_privilege('public', c.oid, 'select')"
            "      or has_table_privilege('public', c.oid, 'insert')"
            "      or has_table_privilege('public', c.oid, 'update')"
            "      or has_table_privilege('public', c.oid, 'delete'))"
        ).fetchall()
        assert tables == []
        row = conn.execute("select has_schema_privilege('public', 'pgflow', 'usage')").fetchone()
        assert row == (False,)


def test_every_function_pins_its_search_path(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "select p.oid::regprocedure::text, p.proconfig from pg_proc p"
            " where p.pronamespace = 'pgflow'::regnamespace order by 1"
        ).fetchall()
        assert len(rows) > 10
        unpinned = [
            name
            for name, config in rows
            if not any(c.startswith("search_path=") for c in (config or []))
        ]
        assert unpinned == []


def test_snapshot_rpcs_are_security_definer(db_url: str) -> None:
    """The two snapshot RPCs, the traced start and the three that operate runs (clients call
    them through PostgREST with no privilege on the tables), and the pg_cron set-up (as in pgflow:
    scheduling needs the owner's rights on the cron schema), and nothing else."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "select p.proname, p.prosecdef from pg_proc p"
            " where p.pronamespace = 'pgflow'::regnamespace and p.prosecdef"
            " order by 1"
        ).fetchall()
        assert rows == [
            ("cancel_run", True),
            ("get_run_with_states", True),
            ("list_runs", True),
            ("retry_run", True),
            ("setup_requeue_stalled_tasks_cron", True),
            ("start_flow_with_states", True),
            ("start_flow_with_states_traced", True),
        ]


def test_client_role_with_rpc_grants_only(stranger: tuple[Conn, str]) -> None:
    """The client's documented grants (USAGE plus EXECUTE on the two RPCs) are enough to start
    a run and read its snapshot, without any table privilege."""
    conn, role = stranger
    define_flow(conn, "f", [("a", [])])
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("grant usage on schema pgflow to {}").format(ident))
    conn.execute(
        sql.SQL(
            "grant execute on function pgflow.start_flow_with_states(text, jsonb, uuid),"
            " pgflow.get_run_with_states(uuid) to {}"
        ).format(ident)
    )
    as_role(conn, role)
    row = conn.execute("select pgflow.start_flow_with_states('f', '{\"x\": 1}')").fetchone()
    assert row is not None
    run_id = row[0]["run"]["run_id"]
    snapshot = conn.execute("select pgflow.get_run_with_states(%s)", (run_id,)).fetchone()
    assert snapshot is not None
    assert snapshot[0]["run"]["input"] == {"x": 1}
    assert [s["step_slug"] for s in snapshot[0]["steps"]] == ["a"]
    with raises_sqlstate("42501"):
        conn.execute("select * from pgflow.runs")
    # The traced start is a grant of its own: without it, refused before anything starts.
    with raises_sqlstate("42501"):
        conn.execute(
            "select pgflow.start_flow_with_states_traced('f', '{}', null, %s)", (TRACEPARENT,)
        )


def test_client_role_with_the_traced_start_stores_the_context(stranger: tuple[Conn, str]) -> None:
    """EXECUTE on start_flow_with_states_traced is enough to start a run with its trace
    context, without any privilege on pgflow.run_trace_contexts."""
    conn, role = stranger
    define_flow(conn, "f", [("a", [])])
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("grant usage on schema pgflow to {}").format(ident))
    conn.execute(
        sql.SQL(
            "grant execute on function"
            " pgflow.start_flow_with_states_traced(text, jsonb, uuid, text, text) to {}"
        ).format(ident)
    )
    as_role(conn, role)
    row = conn.execute(
        "select pgflow.start_flow_with_states_traced('f', '{}', null, %s)", (TRACEPARENT,)
    ).fetchone()
    assert row is not None
    with raises_sqlstate("42501"):
        conn.execute("select * from pgflow.run_trace_contexts")
    conn.execute("reset role")
    stored = conn.execute(
        "select run_id::text, traceparent from pgflow.run_trace_contexts"
    ).fetchall()
    assert stored == [(row[0]["run"]["run_id"], TRACEPARENT)]


def test_operator_role_with_rpc_grants_only(stranger: tuple[Conn, str]) -> None:
    """EXECUTE on list_runs, cancel_run and retry_run (the documented grants) is enough to
    operate runs, without any table privilege; without it each is refused."""
    conn, role = stranger
    define_flow(conn, "f", [("a", [])])
    run_id = conn.execute("select run_id from pgflow.start_flow('f', '{}')").fetchone()
    assert run_id is not None
    functions = (
        "pgflow.list_runs(text, text, timestamptz, integer, uuid)",
        "pgflow.cancel_run(uuid, text)",
        "pgflow.retry_run(uuid, uuid)",
    )
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("grant usage on schema pgflow to {}").format(ident))
    as_role(conn, role)
    with raises_sqlstate("42501"):
        conn.execute("select * from pgflow.list_runs()")
    conn.execute("reset role")
    for function in functions:
        conn.execute(sql.SQL("grant execute on function {} to {}").format(sql.SQL(function), ident))
    as_role(conn, role)
    (listed,) = conn.execute("select run_id from pgflow.list_runs()").fetchall()
    assert listed == run_id
    conn.execute("select pgflow.cancel_run(%s, 'stop')", run_id)
    row = conn.execute("select (pgflow.retry_run(%s)).restart_of_run_id", run_id).fetchone()
    assert row == run_id
    with raises_sqlstate("42501"):
        conn.execute("select * from pgflow.runs")
