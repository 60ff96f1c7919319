"""Security: what a client role can do with and without grants, and SECURITY DEFINER functions
facing objects an attacker planted to take them over.

Roles are cluster-wide, so every test creates its own with a unique name and drops it after.
The SQL-level privilege checks live in tests/sql/test_security.py; these tests go through the
client (both transports) and try an actual takeover.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from postgrest.exceptions import APIError
from psycopg import sql
from psycopg.types.json import Jsonb
from supabase import acreate_client

from pgflow_client import FlowNotFound, FlowRunStatus, PgflowClient, RpcError
from pgflow_worker import Flow, FlowWorker
from tests.reliability.helpers import (
    documented_grants,
    grant_documented,
    grant_postgres_client,
    grant_supabase_client,
    postgres_client_grants,
    supabase_client_grants,
    temporary_role,
    url_as,
)
from tests.supabase_standin import SupabaseStandIn, unsigned_jwt
from tests.supabase_standin.fixtures import close_client

Conn = psycopg.Connection[Any]

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


def sample_flow() -> Flow:
    flow = Flow("secure", max_attempts=1)

    @flow.step
    def greet(input: dict[str, Any]) -> str:
        return f"hello {input['name']}"

    return flow


def define(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('secure', max_attempts => 1)")
        conn.execute("select pgflow.add_step('secure', 'greet')")


def counts(db_url: str) -> tuple[int, int, int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "select (select count(*) from pgflow.runs), (select count(*) from pgflow.step_tasks),"
            " (select count(*) from realtime.messages)"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def existing_run(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("select run_id::text from pgflow.start_flow('secure', '{}')").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def client_role(db_url: str) -> Iterator[str]:
    with temporary_role(db_url, "rel_client") as role:
        yield role


async def supabase_client_as(standin: SupabaseStandIn, role: str) -> Any:
    """A supabase client whose API key carries ``role`` (the stand-in runs REST calls as it)."""
    return await acreate_client(standin.url, unsigned_jwt({"role": role}))


# -- no grants -----------------------------------------------------------------------------------


async def check_refused(client: PgflowClient, db_url: str, run_id: str) -> None:
    before = counts(db_url)
    for slug in ("secure", "no_such_flow"):
        with pytest.raises(RpcError) as info:
            await client.start_flow(slug, {"name": "x"})
        # Refused for lack of privilege, before the flow is even looked up.
        assert info.value.code == "42501", info.value
        assert not isinstance(info.value, FlowNotFound)
    with pytest.raises(RpcError) as read:
        await client.get_run(run_id)
    assert read.value.code == "42501"
    assert counts(db_url) == before
    assert client.runs == {}
    assert client.subscriptions() == frozenset()


async def test_role_without_grants_cannot_start_or_read_over_postgres(
    db_url: str, client_role: str
) -> None:
    define(db_url)
    run_id = existing_run(db_url)
    async with await PgflowClient.connect(url_as(db_url, client_role)) as client:
        await check_refused(client, db_url, run_id)


async def test_role_without_grants_cannot_start_or_read_over_supabase(
    db_url: str, client_role: str
) -> None:
    define(db_url)
    run_id = existing_run(db_url)
    async with SupabaseStandIn(db_url, use_jwt_role=True) as standin:
        supabase = await supabase_client_as(standin, client_role)
        try:
            async with PgflowClient(supabase) as client:
                await check_refused(client, db_url, run_id)
        finally:
            await close_client(supabase)


# -- the documented grants -----------------------------------------------------------------------


def privileges(db_url: str, role: str) -> dict[str, list[str]]:
    """Every privilege ``role`` holds on pgflow's, pgmq's and realtime's objects."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        functions = conn.execute(
            "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname in ('pgflow', 'pgmq', 'realtime')"
            " and has_schema_privilege(%s, n.oid, 'usage')"
            " and has_function_privilege(%s, p.oid, 'execute') order by 1",
            (role, role),
        ).fetchall()
        tables = conn.execute(
            "select n.nspname || '.' || c.relname || ':' || k.priv"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace,"
            " unnest(array['select', 'insert', 'update', 'delete', 'truncate']) as k (priv)"
            " where n.nspname in ('pgflow', 'pgmq', 'realtime') and c.relkind in ('r', 'p', 'v')"
            " and has_schema_privilege(%s, n.oid, 'usage')"
            " and has_table_privilege(%s, c.oid, k.priv) order by 1",
            (role, role),
        ).fetchall()
    return {"functions": [r[0] for r in functions], "tables": [r[0] for r in tables]}


FORBIDDEN_SQL = [
    "select * from pgflow.runs",
    "select * from pgflow.flows",
    "select * from pgflow.step_tasks",
    "select pgflow.start_flow('secure', '{}')",
    "select pgflow.complete_task(gen_random_uuid(), 'greet', 0, '{}')",
    "select pgflow.fail_task(gen_random_uuid(), 'greet', 0, 'x')",
    "select pgflow.start_tasks('secure', '{1}', gen_random_uuid())",
    "select pgflow.create_flow('other')",
    "select pgflow.requeue_stalled_tasks()",
    "select * from pgmq.read('secure', 30, 10)",
    "select pgmq.send('secure', '{}')",
    "select pgmq.delete('secure', 1::bigint)",
    "update pgflow.runs set status = 'completed'",
    "insert into realtime.messages (topic, extension, payload, event)"
    " values ('pgflow:run:x', 'broadcast', '{}', 'run:completed')",
    "delete from realtime.messages",
]


async def test_client_grants_allow_exactly_starting_flows_and_reading_runs(
    db_url: str, client_role: str
) -> None:
    """Supabase's ``authenticated`` role with the grants docs/supabase.md gives it, run as
    written there (USAGE on pgflow, EXECUTE on start_flow_with_states, its traced form and
    get_run_with_states):
    it starts runs, reads them, gets their events; it reaches nothing else: no table, no other
    function, not the queue."""
    define(db_url)
    grant_supabase_client(db_url, client_role)
    assert privileges(db_url, client_role) == {
        "functions": [
            "get_run_with_states",
            "start_flow_with_states",
            "start_flow_with_states_traced",
        ],
        "tables": [],
    }
    flow = sample_flow()
    task_args = {"run_id": str(uuid.uuid4()), "step_slug": "greet", "task_index": 0}
    forbidden_rpcs = {
        "start_flow": {"flow_slug": "secure", "input": {}},
        "complete_task": {**task_args, "output": {}},
        "fail_task": {**task_args, "error_message": "x"},
        "requeue_stalled_tasks": {},
    }
    async with (
        SupabaseStandIn(db_url, use_jwt_role=True) as standin,
        FlowWorker(flow, db_url, **FAST),
    ):
        starter = await supabase_client_as(standin, client_role)
        other = await supabase_client_as(standin, client_role)
        try:
            async with PgflowClient(starter) as client, PgflowClient(other) as reader:
                run = await client.start_flow("secure", {"name": "ada"})
                await run.wait_for_status("completed", timeout=30)
                assert run.output == {"greet": "hello ada"}
                found = await reader.get_run(run.run_id)
                assert found is not None
                assert found.status is FlowRunStatus.COMPLETED
            for name, args in forbidden_rpcs.items():
                with pytest.raises(APIError) as refused:
                    await starter.schema("pgflow").rpc(name, args).execute()
                assert refused.value.code == "42501", (name, refused.value)
            with pytest.raises(APIError) as table:
                await starter.schema("pgflow").from_("runs").select("*").execute()
            assert table.value.code == "42501"
        finally:
            await close_client(other)
            await close_client(starter)

    with psycopg.connect(url_as(db_url, client_role), autocommit=True) as conn:
        for statement in FORBIDDEN_SQL:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())


async def test_client_grants_over_plain_postgres(db_url: str, client_role: str) -> None:
    """Over plain PostgreSQL the client also reads the event rows it is notified of: with
    docs/postgres.md's grants (the RPCs plus SELECT on realtime.messages) it follows runs live.

    USAGE on the realtime schema also reaches the stand-in's own functions, which PostgreSQL
    lets PUBLIC execute by default; realtime.send runs with the caller's rights, so without
    INSERT on realtime.messages it broadcasts nothing."""
    define(db_url)
    grant_postgres_client(db_url, client_role)
    assert privileges(db_url, client_role) == {
        "functions": [
            "get_run_with_states",
            "notify_message_inserted",
            "send",
            "start_flow_with_states",
            "start_flow_with_states_traced",
            "topic",
        ],
        "tables": ["realtime.messages:select"],
    }
    before = counts(db_url)
    with psycopg.connect(url_as(db_url, client_role), autocommit=True) as conn:
        conn.execute("select realtime.send('{}', 'run:completed', 'pgflow:run:x', false)")
    assert counts(db_url) == before
    flow = sample_flow()
    async with (
        FlowWorker(flow, db_url, **FAST),
        await PgflowClient.connect(url_as(db_url, client_role)) as client,
    ):
        run = await client.start_flow("secure", {"name": "grace"})
        steps: list[str] = []
        run.step("greet").on("*", lambda e: steps.append(e.event_type))
        await run.wait_for_status("completed", timeout=30)
    assert run.output == {"greet": "hello grace"}
    assert steps == ["step:completed"]


def test_the_reliability_page_restates_the_documented_grants(db_url: str) -> None:
    """docs/reliability.md shows the grants again: its block for ``authenticated`` is
    docs/supabase.md's word for word, and with its LISTEN block on top a role holds exactly
    what docs/postgres.md grants a plain-PostgreSQL client."""
    assert documented_grants("reliability.md", "authenticated") == supabase_client_grants()
    with (
        temporary_role(db_url, "rel_page") as restated,
        temporary_role(db_url, "rel_docs") as documented,
    ):
        grant_documented(
            db_url, restated, documented_grants("reliability.md", "authenticated"), "authenticated"
        )
        grant_documented(
            db_url, restated, documented_grants("reliability.md", "app_client"), "app_client"
        )
        grant_documented(db_url, documented, postgres_client_grants(), "app_client")
        assert privileges(db_url, restated) == privileges(db_url, documented)
        assert privileges(db_url, documented)["tables"] == ["realtime.messages:select"]


# -- SECURITY DEFINER takeover attempts ----------------------------------------------------------

# Every planted object calls evil.hit(), which records who ran it: if pgflow's SECURITY DEFINER
# functions ever ran one, it would run with their owner's privileges.
PLANT = """
create table {evil}.hits (what text, as_user text);
create function {evil}.hit(what text) returns boolean language plpgsql
  set search_path = pg_catalog, pg_temp as $$
begin
  insert into {evil}.hits values (what, current_user);
  return true;
end $$;

-- Functions and operators named like the built-ins pgflow's SQL calls.
create function {evil}.jsonb_build_object(text, text) returns jsonb language sql
  as $$ select case when {evil}.hit('jsonb_build_object')
                    then pg_catalog.jsonb_build_object($1, $2) end $$;
create function {evil}.to_jsonb(anyelement) returns jsonb language sql
  as $$ select case when {evil}.hit('to_jsonb') then pg_catalog.to_jsonb($1) end $$;
create function {evil}.gen_random_uuid() returns uuid language sql
  as $$ select case when {evil}.hit('gen_random_uuid') then pg_catalog.gen_random_uuid() end $$;
create function {evil}.now() returns timestamptz language sql
  as $$ select case when {evil}.hit('now') then pg_catalog.now() end $$;
create function {evil}.jsonb_typeof(jsonb) returns text language sql
  as $$ select case when {evil}.hit('jsonb_typeof') then pg_catalog.jsonb_typeof($1) end $$;
create function {evil}.format(text, text) returns text language sql
  as $$ select case when {evil}.hit('format') then pg_catalog.format($1, $2) end $$;
create function {evil}.uuid_eq(uuid, uuid) returns boolean language sql
  as $$ select {evil}.hit('uuid =') and pg_catalog.uuid_eq($1, $2) $$;
create operator {evil}.= (leftarg = uuid, rightarg = uuid, function = {evil}.uuid_eq);
create function {evil}.text_eq(text, text) returns boolean language sql
  as $$ select {evil}.hit('text =') and pg_catalog.texteq($1, $2) $$;
create operator {evil}.= (leftarg = text, rightarg = text, function = {evil}.text_eq);
create function {evil}.jsonb_cat(jsonb, jsonb) returns jsonb language sql
  as $$ select case when {evil}.hit('jsonb ||') then pg_catalog.jsonb_concat($1, $2) end $$;
create operator {evil}.|| (leftarg = jsonb, rightarg = jsonb, function = {evil}.jsonb_cat);

-- Tables named like pgflow's, in the attacker's schema and among the session's temp tables.
create table {evil}.runs (run_id uuid, flow_slug text, status text);
create table {evil}.flows (flow_slug text);
create table {evil}.steps (flow_slug text, step_slug text);
create table {evil}.step_states (run_id uuid, step_slug text);
create temp table runs (run_id uuid, flow_slug text, status text);
create temp table flows (flow_slug text);
create temp table steps (flow_slug text, step_slug text);
create temp table step_states (run_id uuid, step_slug text);

-- Types named like the built-ins: temporary domains whose checks call evil.hit().
create domain pg_temp.jsonb as pg_catalog.jsonb check ({evil}.hit('domain jsonb'));
create domain pg_temp.uuid as pg_catalog.uuid check ({evil}.hit('domain uuid'));
create domain pg_temp.text as pg_catalog.text check ({evil}.hit('domain text'));
create domain pg_temp.timestamptz as pg_catalog.timestamptz
  check ({evil}.hit('domain timestamptz'));
"""


def plant(conn: Conn, evil: str) -> None:
    statement = PLANT.format(evil=f'"{evil}"')
    conn.execute(statement.encode())


def hits(conn: Conn, evil: str) -> list[tuple[str, str]]:
    found = conn.execute(
        sql.SQL("select what, as_user from {}.hits order by 1").format(sql.Identifier(evil))
    ).fetchall()
    return [(r[0], r[1]) for r in found]


def test_security_definer_functions_ignore_planted_objects(db_url: str, client_role: str) -> None:
    """A client role that may create objects puts its own schema (and its temporary objects)
    in front of pg_catalog and calls the two SECURITY DEFINER functions. They must return the
    right answers without running a single planted object, and the role stays unprivileged."""
    define(db_url)
    grant_supabase_client(db_url, client_role)
    evil = f"evil_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("create schema {} authorization {}").format(
                sql.Identifier(evil), sql.Identifier(client_role)
            )
        )
    try:
        with psycopg.connect(url_as(db_url, client_role), autocommit=True) as conn:
            plant(conn, evil)
            conn.execute(
                sql.SQL("set search_path = {}, pg_temp, public, pg_catalog").format(
                    sql.Identifier(evil)
                )
            )
            # The plants are armed: in the attacker's own queries they do run.
            conn.execute("select gen_random_uuid(), '{}'::jsonb, now()")
            assert {what for what, _ in hits(conn, evil)} >= {"gen_random_uuid", "domain jsonb"}
            conn.execute(sql.SQL("delete from {}.hits").format(sql.Identifier(evil)))

            run_id = uuid.uuid4()
            started = conn.execute(
                "select pgflow.start_flow_with_states('secure', %s, %s)",
                (Jsonb({"name": "eve"}), run_id),
            ).fetchone()
            snapshot = conn.execute("select pgflow.get_run_with_states(%s)", (run_id,)).fetchone()
            ran = hits(conn, evil)

        assert ran == [], f"planted objects ran inside SECURITY DEFINER functions: {ran}"
        assert started is not None
        assert snapshot is not None
        assert started[0]["run"]["run_id"] == str(run_id)
        assert snapshot[0]["run"]["input"] == {"name": "eve"}
        assert [s["step_slug"] for s in snapshot[0]["steps"]] == ["greet"]
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            superuser = admin.execute(
                "select rolsuper from pg_roles where rolname = %s", (client_role,)
            ).fetchone()
            admin.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(evil)))
    assert superuser == (False,)


# -- public channels -----------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="runs broadcast on public Realtime channels (as in pgflow): any client that knows "
    "a run id can send events on its channel, and the client trusts them",
)
async def test_a_third_party_broadcast_cannot_fake_a_run_result(db_url: str) -> None:
    define(db_url)
    async with SupabaseStandIn(db_url) as standin:
        victim_sb = await acreate_client(standin.url, standin.key)
        intruder = await acreate_client(standin.url, standin.key)
        try:
            async with PgflowClient(victim_sb, reconcile_after=()) as client:
                run = await client.start_flow("secure", {"name": "x"})
                channel = intruder.channel(f"pgflow:run:{run.run_id}")
                forged = {
                    "run_id": run.run_id,
                    "flow_slug": "secure",
                    "status": "completed",
                    "output": {"greet": "forged"},
                    "completed_at": "2026-01-01T00:00:00+00:00",
                }
                await channel.http_send("run:completed", forged)
                # Let the real run finish; the forged result must not have been taken.
                async with FlowWorker(sample_flow(), db_url, **FAST):
                    await run.wait_for_status("completed", timeout=30)
                assert run.output == {"greet": "hello x"}
        finally:
            await close_client(intruder)
            await close_client(victim_sb)
