"""Helpers for worker tests: start runs and wait for them on their broadcast events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


async def start_run(db_url: str, flow_slug: str, payload: Any) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select run_id from pgflow.start_flow(%s, %s)", (flow_slug, Jsonb(payload))
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def run_state(db_url: str, run_id: uuid.UUID) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select to_jsonb(r) from pgflow.runs r where run_id = %s", (run_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def wait_run(db_url: str, run_id: uuid.UUID, timeout: float = 30) -> dict[str, Any]:
    """Wait until the run is no longer `started`, woken by each broadcast NOTIFY; the run's row
    comes back without its input (which a test may have made too deep to decode)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("listen realtime_broadcast")

        async def until_done() -> dict[str, Any]:
            while True:
                cur = await conn.execute(
                    "select to_jsonb(r) - 'input' from pgflow.runs r where run_id = %s", (run_id,)
                )
                row = await cur.fetchone()
                assert row is not None
                if row[0]["status"] != "started":
                    return row[0]  # type: ignore[no-any-return]
                async for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass

        return await asyncio.wait_for(until_done(), timeout)


async def tasks_of(db_url: str, run_id: uuid.UUID) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select to_jsonb(t) from pgflow.step_tasks t where run_id = %s"
            " order by step_slug, task_index",
            (run_id,),
        )
        return [r[0] for r in await cur.fetchall()]


async def steps_of(db_url: str, run_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select step_slug, to_jsonb(s) from pgflow.step_states s where run_id = %s", (run_id,)
        )
        return {r[0]: r[1] for r in await cur.fetchall()}
