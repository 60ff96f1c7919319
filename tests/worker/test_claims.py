"""The worker's claim of a batch on a queue the planner knows nothing about yet.

Right after a big map starts, the table statistics do not know the new queue's name, and the
planner estimates one task for it. The worker reads each claimed message's attempt next to
``start_tasks``; a join there walked every task of the queue for each message, which made a
10,000-task map quadratic until autovacuum analysed the table. These tests count the rows the
lookup touches, on both SQL cores, and check the attempts the worker hands to its handlers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from pgflow_worker._sql_client import (
    _ATTEMPTS_BY_FLOW,
    _ATTEMPTS_BY_QUEUE,
    PgflowSqlClient,
    configure_connection,
)

WORKER = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
SIZE = 10_000


def _prepare_unknown_queue(conn: psycopg.Connection[Any]) -> list[int]:
    """Statistics from another flow's tasks, then a big map on a queue they do not know; the
    first ten message ids of the map."""
    conn.execute("alter table pgflow.step_tasks set (autovacuum_enabled = false)")
    conn.execute("select pgflow.create_flow('small')")
    conn.execute("select pgflow.add_step('small', 'each', step_type => 'map')")
    conn.execute("select pgflow.start_flow('small', %s)", (Jsonb(list(range(200))),))
    conn.execute("analyze pgflow.step_tasks")
    conn.execute("select pgflow.create_flow('big')")
    conn.execute("select pgflow.add_step('big', 'each', step_type => 'map')")
    conn.execute("select pgflow.start_flow('big', %s)", (Jsonb(list(range(SIZE))),))
    rows = conn.execute("select msg_id from pgmq.q_big order by msg_id limit 10").fetchall()
    return [r[0] for r in rows]


def _rows_touched(plan: dict[str, Any]) -> int:
    """Rows every scan of step_tasks in an EXPLAIN ANALYZE plan read, filtered ones included."""
    total = 0
    if plan.get("Relation Name") == "step_tasks":
        # EXPLAIN gives rows per loop.
        per_loop = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        total += round(per_loop * plan["Actual Loops"])
    total += round(plan.get("Rows Removed by Join Filter", 0) * plan["Actual Loops"])
    for child in plan.get("Plans", []):
        total += _rows_touched(child)
    return total


@pytest.mark.parametrize(
    ("any_db_url", "query", "per_message"),
    # The official SQL's index is on the message id alone, and both flows' queues numbered
    # their messages from 1: each probe finds the task of either flow.
    [("ours", _ATTEMPTS_BY_QUEUE, 1), ("official", _ATTEMPTS_BY_FLOW, 2)],
    indirect=["any_db_url"],
    ids=["ours", "official"],
)
def test_the_attempts_lookup_probes_one_task_per_message(
    any_db_url: str, query: str, per_message: int
) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        ids = _prepare_unknown_queue(conn)
        cur = conn.execute(
            ("explain (analyze, format json) " + query).encode(), ("big", ids), prepare=False
        )
        row = cur.fetchone()
        assert row is not None
        plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
        touched = _rows_touched(plan[0]["Plan"])
        assert touched == per_message * len(ids), json.dumps(plan, indent=1)
        rows = conn.execute(query.encode(), ("big", ids)).fetchall()
        assert sorted(rows) == [(i, 0) for i in ids]


@pytest_asyncio.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=2, kwargs={"autocommit": True}, configure=configure_connection
    ) as pool:
        yield pool


async def test_claimed_tasks_carry_their_attempt(
    db_url: str, pool: AsyncConnectionPool[AsyncConnection[Any]]
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        ids = _prepare_unknown_queue(conn)
    client = PgflowSqlClient(pool)
    await client.register_worker(WORKER, "big", "tests")
    tasks = await client.start_tasks("big", ids, WORKER)
    assert sorted(t.task_index for t in tasks) == list(range(10))
    assert {t.attempt for t in tasks} == {1}

    # A failed task comes back with its next attempt.
    failed = tasks[0]
    async with pool.connection() as conn:
        await conn.execute(
            "select pgflow.fail_task(%s, %s, %s, 'boom')",
            (failed.run_id, failed.step_slug, failed.task_index),
        )
        await conn.execute(
            "update pgmq.q_big set vt = clock_timestamp() where msg_id = %s", (failed.msg_id,)
        )
    [again] = await client.start_tasks("big", [failed.msg_id], WORKER)
    assert (again.task_index, again.attempt) == (failed.task_index, 2)
