"""Choosing the Supabase the tests talk to, and the database that goes with it."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgflow_worker import Flow
from pgflow_worker._database.sqlfiles import list_migrations
from pgflow_worker._shape import ensure_flow
from tests.supabase_standin._env import (
    DB_URL_VARIABLE,
    KEY_VARIABLE,
    SUPABASE_MARKER,
    URL_VARIABLE,
    Misconfigured,
    RealStack,
    database_for,
    prepare_real_database,
    reset_real_database,
    stack_from_env,
    talks_to_supabase,
)

DB = "postgresql://postgres:secret@127.0.0.1:54322/postgres"
FULL = {URL_VARIABLE: "http://127.0.0.1:54321/", KEY_VARIABLE: "anon-key", DB_URL_VARIABLE: DB}


def reason(result: object) -> str:
    assert isinstance(result, Misconfigured), result
    return result.reason


def test_nothing_set_means_the_stand_in() -> None:
    assert stack_from_env({}) is None
    assert stack_from_env({URL_VARIABLE: "  ", "UNRELATED": "x"}) is None


def test_all_three_set_describe_the_real_stack() -> None:
    assert stack_from_env(FULL) == RealStack("http://127.0.0.1:54321", "anon-key", DB)
    keyword_form = {**FULL, DB_URL_VARIABLE: "host=db.example.com dbname=postgres"}
    assert isinstance(stack_from_env(keyword_form), RealStack)


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        (KEY_VARIABLE, f"{URL_VARIABLE} is set but {KEY_VARIABLE}"),
        (DB_URL_VARIABLE, f"{URL_VARIABLE} is set but {DB_URL_VARIABLE} is not"),
    ],
)
def test_a_url_without_key_or_database_is_refused(missing: str, expected: str) -> None:
    env = {name: value for name, value in FULL.items() if name != missing}
    assert expected in reason(stack_from_env(env))


def test_key_or_database_without_a_url_is_refused() -> None:
    message = reason(stack_from_env({DB_URL_VARIABLE: DB}))
    assert f"{DB_URL_VARIABLE} set without {URL_VARIABLE}" in message
    message = reason(stack_from_env({KEY_VARIABLE: "k", DB_URL_VARIABLE: DB}))
    assert f"{KEY_VARIABLE} and {DB_URL_VARIABLE} set without" in message


def test_malformed_values_are_refused_without_echoing_secrets() -> None:
    assert "http(s) URL" in reason(stack_from_env({**FULL, URL_VARIABLE: "ws://x"}))
    bad_db = "host=db password=hunter2 'unterminated"
    message = reason(stack_from_env({**FULL, DB_URL_VARIABLE: bad_db}))
    assert "not a PostgreSQL connection string" in message
    assert "hunter2" not in message
    assert "anon-key" not in reason(stack_from_env({**FULL, DB_URL_VARIABLE: ""}))


def test_which_tests_talk_to_supabase() -> None:
    assert talks_to_supabase(["db_url", "supabase_env"], [])
    assert talks_to_supabase(["asupabase", "supabase_target"], [])
    assert talks_to_supabase(["db_url"], [SUPABASE_MARKER])
    assert not talks_to_supabase(["db_url", "supabase_standin", "aconn"], ["slow"])


def test_database_selection() -> None:
    real = stack_from_env(FULL)
    broken = Misconfigured("why")
    assert database_for(real, talks_to_supabase=True) == DB
    assert database_for(real, talks_to_supabase=False) is None  # a local clone
    assert database_for(None, talks_to_supabase=True) is None
    assert database_for(broken, talks_to_supabase=True) is broken
    assert database_for(broken, talks_to_supabase=False) is None


def test_this_test_gets_a_local_clone(db_url: str, request: pytest.FixtureRequest) -> None:
    """Whatever the environment, a test that does not talk to Supabase keeps its own clone."""
    assert not talks_to_supabase(request.fixturenames, [])
    assert psycopg.conninfo.conninfo_to_dict(db_url)["dbname"].startswith("pgflow_test_")


async def test_preparing_and_resetting_a_stack_database(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    """Run on a local clone: the same SQL as on a real stack's database."""
    flow = Flow("env_reset", max_attempts=1)

    @flow.step
    def only(input: Any) -> int:
        return 1

    await ensure_flow(aconn, flow)
    await aconn.execute("select pgflow.start_flow('env_reset', '{}'::jsonb)")
    role = f"pgflow_env_{uuid.uuid4().hex[:10]}"  # roles are cluster-wide: a unique one
    ident = sql.Identifier(role)
    await aconn.execute(sql.SQL("create role {} nologin").format(ident))
    try:
        prepare_real_database(db_url, roles=(role, "pgflow_env_no_such_role"))
        prepare_real_database(db_url, roles=(role,))  # safe to repeat
        cur = await aconn.execute(
            "select has_schema_privilege(%s, 'pgflow', 'usage'),"
            " has_function_privilege(%s, 'pgflow.get_run_with_states(uuid)', 'execute'),"
            " has_function_privilege(%s,"
            "   'pgflow.start_flow_with_states(text, jsonb, uuid)', 'execute')",
            (role, role, role),
        )
        assert await cur.fetchone() == (True, True, True)
    finally:
        await aconn.execute(sql.SQL("drop owned by {}").format(ident))
        await aconn.execute(sql.SQL("drop role {}").format(ident))

    reset_real_database(db_url)
    for table in ("flows", "steps", "runs", "step_states", "step_tasks"):
        cur = await aconn.execute(f"select count(*) from pgflow.{table}".encode())
        assert await cur.fetchone() == (0,), table
    cur = await aconn.execute(
        "select count(*) from pgmq.list_queues() where queue_name = 'env_reset'"
    )
    assert await cur.fetchone() == (0,)
    cur = await aconn.execute("select count(*) from pgflow.migrations")
    row = await cur.fetchone()
    assert row is not None
    assert row[0] == len(list_migrations())  # the migration records are kept
    await ensure_flow(aconn, flow)  # and the database is usable again
