"""ReportBatcher on a real database: which results travel together, in what order, in how many
transactions, and what a refused or abandoned result does to the others.

A pass-through wrapper around the real ``PgflowSqlClient.report_batch`` records every batch
and can hold it at a gate, so the tests decide what is waiting when a sending slot frees up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from pgflow_worker._reports import ReportBatcher
from pgflow_worker._sql_client import PgflowSqlClient, Report, StepTask, configure_connection

WORKER = uuid.UUID("00000000-0000-0000-0000-0000000000b1")


class GatedClient(PgflowSqlClient):
    """The real client; each batch is recorded, then waits for ``gate`` while it is closed."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        super().__init__(pool)
        self.batches: list[list[Report]] = []
        self.in_flight: list[list[Report]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Condition()

    async def report_batch(self, reports: Sequence[Report]) -> list[Exception | None]:
        batch = list(reports)
        async with self.arrived:
            self.batches.append(batch)
            self.in_flight.append(batch)
            self.arrived.notify_all()
        try:
            await self.gate.wait()
            return await super().report_batch(batch)
        finally:
            self.in_flight.remove(batch)

    async def wait_for_batches(self, count: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.batches) >= count), 10)


@pytest_asyncio.fixture
async def client(db_url: str) -> AsyncIterator[GatedClient]:
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, configure=configure_connection
    ) as pool:
        client = GatedClient(pool)
        async with pool.connection() as conn:
            await conn.execute("select pgflow.create_flow('batched')")
            await conn.execute("select pgflow.add_step('batched', 'each', step_type => 'map')")
        await client.detect_flavour()
        await client.register_worker(WORKER, "batched", "tests")
        yield client


async def claim_run(client: PgflowSqlClient, size: int) -> list[StepTask]:
    """Start a run of the map over ``size`` elements and claim all of its tasks."""
    async with client.pool.connection() as conn:
        cur = await conn.execute(
            "select run_id from pgflow.start_flow('batched', %s)", (Jsonb(list(range(size))),)
        )
        row = await cur.fetchone()
    assert row is not None
    run_id = row[0]
    tasks: list[StepTask] = []
    while len(tasks) < size:
        messages = await client.read_messages("batched", 30, size, 1, 50)
        claimed = await client.start_tasks("batched", [m.msg_id for m in messages], WORKER)
        tasks += [t for t in claimed if t.run_id == run_id]
    return sorted(tasks, key=lambda t: t.task_index)


async def task_rows(client: PgflowSqlClient, run_id: uuid.UUID) -> dict[int, tuple[str, Any]]:
    async with client.pool.connection() as conn:
        cur = await conn.execute(
            "select task_index, status, completed_at from pgflow.step_tasks where run_id = %s",
            (run_id,),
        )
        return {index: (status, at) for index, status, at in await cur.fetchall()}


async def send_held(
    client: GatedClient, batcher: ReportBatcher, task: StepTask
) -> asyncio.Task[None]:
    """Close the gate and send ``task``'s result: it is the batch in flight, held there."""
    client.gate.clear()
    sent = asyncio.create_task(batcher.complete(task, task.task_index))
    await client.wait_for_batches(len(client.batches) + 1)
    return sent


def indexes(batch: list[Report]) -> list[int]:
    return [report.task.task_index for report in batch]


async def test_results_waiting_together_go_in_one_transaction(client: GatedClient) -> None:
    tasks = await claim_run(client, 5)
    batcher = ReportBatcher(client, max_batches=1)
    first = await send_held(client, batcher, tasks[0])
    rest = [asyncio.create_task(batcher.complete(t, t.task_index)) for t in tasks[1:]]
    await asyncio.sleep(0)
    assert [indexes(b) for b in client.batches] == [[0]]  # the others wait for the slot
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert [indexes(b) for b in client.batches] == [[0], [1, 2, 3, 4]]
    rows = await task_rows(client, tasks[0].run_id)
    assert {status for status, _ in rows.values()} == {"completed"}
    # now() is the transaction's start: one value for the four sent together.
    assert len({rows[i][1] for i in (1, 2, 3, 4)}) == 1
    assert rows[0][1] != rows[1][1]


async def test_a_refused_result_fails_alone(client: GatedClient) -> None:
    tasks = await claim_run(client, 3)
    missing = replace(tasks[1], task_index=99)  # no such task: complete_task raises
    batcher = ReportBatcher(client, max_batches=1)
    first = await send_held(client, batcher, tasks[0])
    good = asyncio.create_task(batcher.complete(tasks[1], 1))
    bad = asyncio.create_task(batcher.complete(missing, 1))
    also_good = asyncio.create_task(batcher.complete(tasks[2], 2))
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(first, good, also_good), 10)
    with pytest.raises(psycopg.errors.NoDataFound, match=r"has no task each\[99\]"):
        await bad
    assert sorted(indexes(client.batches[1])) == [1, 2, 99]
    # The first alone, then the refused batch of three, then each of the three alone.
    assert client.stats.report_transactions == 1 + 1 + 3
    rows = await task_rows(client, tasks[0].run_id)
    assert {i: status for i, (status, _) in rows.items()} == {
        0: "completed",
        1: "completed",
        2: "completed",
    }
    async with client.pool.connection() as conn:
        cur = await conn.execute(
            "select status, output from pgflow.runs where run_id = %s", (tasks[0].run_id,)
        )
        assert await cur.fetchone() == ("completed", {"each": [0, 1, 2]})


async def test_one_step_is_never_in_two_batches_while_other_steps_go_side_by_side(
    client: GatedClient,
) -> None:
    a = await claim_run(client, 2)
    b = await claim_run(client, 1)
    batcher = ReportBatcher(client, max_batches=2)
    a0 = await send_held(client, batcher, a[0])
    a1 = asyncio.create_task(batcher.fail(a[1], "boom"))
    b0 = asyncio.create_task(batcher.complete(b[0], 0))
    await client.wait_for_batches(2)
    # a1 waits although a slot was free: a0 of the same step is still being sent.
    assert [[(r.task.run_id, r.task.task_index) for r in batch] for batch in client.in_flight] == [
        [(a[0].run_id, 0)],
        [(b[0].run_id, 0)],
    ]
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(a0, a1, b0), 10)
    assert [(r.kind, r.task.task_index) for r in client.batches[2]] == [("fail", 1)]
    assert (await task_rows(client, a[1].run_id))[1][0] == "queued"  # to be retried


async def test_a_batch_takes_its_runs_in_run_id_order(client: GatedClient) -> None:
    runs = [await claim_run(client, 1) for _ in range(4)]
    batcher = ReportBatcher(client, max_batches=1)
    blocker = await claim_run(client, 1)
    first = await send_held(client, batcher, blocker[0])
    by_id = sorted((tasks[0] for tasks in runs), key=lambda t: t.run_id, reverse=True)
    sent = [asyncio.create_task(batcher.complete(t, 0)) for t in by_id]
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *sent), 10)
    order = [r.task.run_id for r in client.batches[1]]
    assert len(order) == 4
    assert order == sorted(order)


async def test_a_result_whose_sender_was_cancelled_is_not_sent(client: GatedClient) -> None:
    tasks = await claim_run(client, 2)
    batcher = ReportBatcher(client, max_batches=1)
    first = await send_held(client, batcher, tasks[0])
    abandoned = asyncio.create_task(batcher.complete(tasks[1], 1))
    await asyncio.sleep(0)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    client.gate.set()
    await asyncio.wait_for(first, 10)
    await asyncio.wait_for(batcher.aclose(), 10)
    assert [indexes(b) for b in client.batches] == [[0]]
    rows = await task_rows(client, tasks[0].run_id)
    assert (rows[0][0], rows[1][0]) == ("completed", "started")


async def test_aclose_waits_for_the_batches_being_sent(client: GatedClient) -> None:
    tasks = await claim_run(client, 1)
    batcher = ReportBatcher(client, max_batches=1)
    sent = await send_held(client, batcher, tasks[0])
    closing = asyncio.create_task(batcher.aclose())
    for _ in range(5):  # enough turns of the loop for an aclose that does not wait to return
        await asyncio.sleep(0)
    assert not closing.done()
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(sent, closing), 10)
    assert (await task_rows(client, tasks[0].run_id))[0][0] == "completed"


async def test_completions_and_failures_of_one_batch_go_in_one_statement(
    client: GatedClient,
) -> None:
    tasks = await claim_run(client, 4)
    batch = [
        Report("fail", tasks[1], "ValueError: bad element"),
        Report("complete", tasks[0], None),  # JSON null is an output, not a missing one
        Report("complete", tasks[2], {"n": 2}),
        Report("fail", tasks[3], "TimeoutError: too slow"),
    ]
    assert await client.report_batch(batch) == [None] * 4
    assert client.stats.report_transactions == 1
    assert (client.stats.completions, client.stats.failures) == (2, 2)
    async with client.pool.connection() as conn:
        cur = await conn.execute(
            "select task_index, status, output, output is null, error_message"
            " from pgflow.step_tasks where run_id = %s order by task_index",
            (tasks[0].run_id,),
        )
        rows = await cur.fetchall()
    assert rows == [
        (0, "completed", None, False, None),
        (1, "queued", None, True, "ValueError: bad element"),
        (2, "completed", {"n": 2}, False, None),
        (3, "queued", None, True, "TimeoutError: too slow"),
    ]


async def test_a_batch_of_failures_only(client: GatedClient) -> None:
    tasks = await claim_run(client, 2)
    batch = [Report("fail", task, f"boom {task.task_index}") for task in tasks]
    assert await client.report_batch(batch) == [None, None]
    assert client.stats.report_transactions == 1
    async with client.pool.connection() as conn:
        cur = await conn.execute(
            "select task_index, status, error_message from pgflow.step_tasks"
            " where run_id = %s order by task_index",
            (tasks[0].run_id,),
        )
        assert await cur.fetchall() == [(0, "queued", "boom 0"), (1, "queued", "boom 1")]
