"""The realtime connection dropped mid-run: the client catches up and sees the final state."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from supabase import AsyncClientOptions, acreate_client

from pgflow_client import FlowRunStatus, PgflowClient, SubscriptionError
from pgflow_client._postgres import PostgresTransport
from pgflow_worker import FlowWorker
from pgflow_worker._shape import ensure_flow
from tests._stack import Stack
from tests.e2e.flows import gated, mapping
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin.fixtures import close_client

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


async def drop_listen_connections(db_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = current_database() and query ilike 'listen %%'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def check_drop_mid_run(client: PgflowClient, db_url: str, drop: Any) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    flow = gated(entered, gate)
    async with FlowWorker(flow, db_url, **FAST):
        run = await client.start_flow("gated", {})
        completed: list[str] = []
        run.step("second").on("completed", lambda e: completed.append(e.output))
        await asyncio.wait_for(entered.wait(), 20)
        assert await drop() >= 1
        gate.set()  # the rest of the run happens while the client reconnects
        await run.wait_for_status("completed", timeout=30)
    assert run.status is FlowRunStatus.COMPLETED
    assert run.output == {"second": "one+two"}
    assert completed == ["one+two"]  # the missed transition was replayed to callbacks


async def test_postgres_listen_connection_dropped_mid_run(db_url: str) -> None:
    async with await PgflowClient.connect(db_url) as client:
        await check_drop_mid_run(client, db_url, lambda: drop_listen_connections(db_url))


async def test_realtime_socket_dropped_mid_run(db_url: str) -> None:
    async with SupabaseStandIn(db_url) as standin:
        supabase = await acreate_client(
            standin.url, standin.key, AsyncClientOptions(realtime={"initial_backoff": 0.2})
        )
        try:
            async with PgflowClient(supabase) as client:
                await check_drop_mid_run(client, db_url, standin.drop_realtime_connections)
            assert standin.joined_topics() == {}
        finally:
            await close_client(supabase)


# -- a LISTEN outage -----------------------------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], *, within: float, what: str) -> None:
    """Re-check a client-side condition that has no event of its own (the transport noticing
    a lost connection); AssertionError after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"not true after {within:g} s: {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def listen_outage(stack: Stack, db_url: str) -> AsyncIterator[None]:
    """The database refuses every new connection and the LISTEN sessions on it are ended,
    so a client cannot re-establish its LISTEN until the block ends."""
    dbname = conninfo_to_dict(db_url)["dbname"]
    async with await psycopg.AsyncConnection.connect(stack.admin_url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("alter database {} allow_connections false").format(sql.Identifier(dbname))
        )
        try:
            cur = await admin.execute(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity"
                " where datname = %s and query ilike 'listen %%'",
                (dbname,),
            )
            assert await cur.fetchone() == (1,)
            yield
        finally:
            await admin.execute(
                sql.SQL("alter database {} allow_connections true").format(sql.Identifier(dbname))
            )


async def test_postgres_subscribe_is_bounded_during_a_listen_outage(
    db_url: str, stack: Stack
) -> None:
    """While LISTEN cannot be re-established, start_flow and get_run give up after
    ``subscribe_timeout`` with SubscriptionError, start nothing and keep no subscription."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, mapping())
    async with await PgflowClient.connect(db_url, subscribe_timeout=0.5) as client:
        transport = client._transport
        assert isinstance(transport, PostgresTransport)
        assert transport.listening
        async with listen_outage(stack, db_url):
            await wait_for(lambda: not transport.listening, within=10, what="LISTEN seen lost")
            began = time.monotonic()
            with pytest.raises(SubscriptionError, match=r"LISTEN connection .* within 0\.5 s"):
                await client.start_flow("e2e_map", [1])
            with pytest.raises(SubscriptionError, match="LISTEN connection"):
                await client.get_run(uuid.uuid4())
            elapsed = time.monotonic() - began
            assert 1.0 <= elapsed < 10
            assert client.subscriptions() == frozenset()
            assert client.runs == {}
            assert not transport.listening
        await wait_for(lambda: transport.listening, within=30, what="LISTEN restored")
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            cur = await conn.execute("select count(*) from pgflow.runs")
            assert await cur.fetchone() == (0,)  # the refused start_flow started nothing
        run = await client.start_flow("e2e_map", [1])
        assert client.subscriptions() == {run.run_id}
