"""The realtime connection dropped mid-run: the client catches up and sees the final state."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from supabase import AsyncClientOptions, acreate_client

from pgflow_client import FlowRunStatus, PgflowClient
from pgflow_worker import Flow, FlowWorker
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin.fixtures import close_client

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


def gated_flow(entered: asyncio.Event, gate: asyncio.Event) -> Flow:
    flow = Flow("gated", max_attempts=1)

    @flow.step
    async def first(input: Any) -> str:
        entered.set()
        await gate.wait()
        return "one"

    @flow.step(depends_on=[first])
    def second(input: dict[str, str]) -> str:
        return input["first"] + "+two"

    return flow


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
    flow = gated_flow(entered, gate)
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
