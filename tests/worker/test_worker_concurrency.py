"""How many handlers, connections and polls a FlowWorker uses at once, measured on a real
database: handlers count themselves, pg_stat_activity counts connections by the worker's
application_name, and a pass-through wrapper records what each poll asked for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from pgflow_worker import Flow, FlowWorker, StepContext
from pgflow_worker._sql_client import Message, PgflowSqlClient, Report
from tests.worker.helpers import start_run, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 50}


@contextlib.asynccontextmanager
async def connection_sampler(db_url: str, application_name: str) -> AsyncIterator[list[int]]:
    """Counts the server's connections named ``application_name`` until the block ends."""
    counts: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            while not stop.is_set():
                cur = await conn.execute(
                    "select count(*) from pg_stat_activity where application_name = %s",
                    (application_name,),
                )
                row = await cur.fetchone()
                assert row is not None
                counts.append(row[0])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.005)  # the sampling period

    sampler = asyncio.create_task(sample())
    try:
        yield counts
    finally:
        stop.set()
        await sampler


async def test_async_map_stays_within_max_concurrent_and_the_pool_within_its_size(
    db_url: str,
) -> None:
    elements, limit, pool_size = 12, 3, 2
    flow = Flow("bounded")
    changed = asyncio.Condition()
    running = started = peak = 0
    names: set[str] = set()

    @flow.map
    async def each(x: int, ctx: StepContext) -> int:
        nonlocal running, started, peak
        async with changed:
            running += 1
            started += 1
            peak = max(peak, running)
            changed.notify_all()
            # Keep the slot until `limit` handlers run side by side (or none is left to
            # start): the worker has to fill every slot for this to end.
            await asyncio.wait_for(
                changed.wait_for(lambda: running >= limit or started == elements), 20
            )
        # Each handler wants a connection too, competing with polls and reports for the pool.
        async with ctx.connection() as conn:
            cur = await conn.execute("select current_setting('application_name')")
            row = await cur.fetchone()
            assert row is not None
            names.add(row[0])
        async with changed:
            running -= 1
            changed.notify_all()
        return x * 2

    worker = FlowWorker(flow, db_url, max_concurrent=limit, max_pg_connections=pool_size, **FAST)
    async with connection_sampler(db_url, worker.application_name) as counts, worker:
        run = await wait_run(db_url, await start_run(db_url, "bounded", list(range(elements))))
    assert run["status"] == "completed"
    assert run["output"] == {"each": [x * 2 for x in range(elements)]}
    assert started == elements
    assert peak == limit
    assert names == {f"pgflow-worker {worker.worker_id}"}
    assert counts, "the sampler never ran"
    assert max(counts) <= pool_size, counts
    assert max(counts) >= 1, "the worker's connections do not carry its application_name"


async def test_a_busy_worker_waits_briefly_to_poll_for_several_slots(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five of ten running handlers end together: the next poll asks for several slots
    instead of polling for one the moment the first of them ends."""
    offered: list[int] = []
    read_messages = PgflowSqlClient.read_messages

    async def recording(self: PgflowSqlClient, *args: Any) -> list[Message]:
        offered.append(args[2])  # qty
        return await read_messages(self, *args)

    monkeypatch.setattr(PgflowSqlClient, "read_messages", recording)
    flow = Flow("fill_batch")
    first_batch = asyncio.Event()
    refilled = asyncio.Event()
    release_five = asyncio.Event()
    release_all = asyncio.Event()
    seen = {"first": 0, "second": 0}

    @flow.map
    async def each(x: int) -> int:
        if x < 10:
            seen["first"] += 1
            if seen["first"] == 10:
                first_batch.set()
            await (release_five if x < 5 else release_all).wait()
        else:
            seen["second"] += 1
            if seen["second"] == 5:
                refilled.set()
            await release_all.wait()
        return x

    async with FlowWorker(flow, db_url, max_concurrent=10, batch_size=10, **FAST):
        run_id = await start_run(db_url, "fill_batch", list(range(20)))
        try:
            await asyncio.wait_for(first_batch.wait(), 20)
            before = len(offered)
            release_five.set()
            # Every slot is taken again once five new handlers run: no poll after that.
            await asyncio.wait_for(refilled.wait(), 20)
            refill_polls = offered[before:]
        finally:
            release_all.set()
        run = await wait_run(db_url, run_id)
    assert run["status"] == "completed"
    assert sum(refill_polls) == 5, refill_polls
    # Their reports come back a few milliseconds apart; polling at the first would ask for 1.
    assert refill_polls[0] >= 2, refill_polls
    assert len(refill_polls) <= 2, refill_polls


async def test_an_idle_worker_polls_for_every_free_slot_without_waiting() -> None:
    worker = FlowWorker(Flow("idle"), "postgresql://unused@localhost/none", batch_size=10)
    await worker._slots.acquire()  # the poll loop's first slot
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await worker._more_slots(9) == 9
    assert loop.time() - began < 0.015  # no fill wait when nothing is running


async def test_a_busy_worker_waits_no_longer_than_its_fill_wait() -> None:
    worker = FlowWorker(Flow("busy"), "postgresql://unused@localhost/none", batch_size=10)
    for _ in range(10):
        await worker._slots.acquire()
    handler = asyncio.create_task(asyncio.Event().wait())
    worker._in_flight.add(handler)
    loop = asyncio.get_running_loop()
    try:
        loop.call_later(0.005, worker._slots.release)
        began = loop.time()
        taken = await asyncio.wait_for(worker._more_slots(9), 5)
        waited = loop.time() - began
    finally:
        handler.cancel()
    assert taken == 1  # one came free in time; nobody else finished
    assert 0.019 <= waited < 1.0


async def test_a_busy_worker_waits_for_a_whole_batch_not_half() -> None:
    worker = FlowWorker(Flow("busy"), "postgresql://unused@localhost/none", batch_size=10)
    for _ in range(10):
        await worker._slots.acquire()
    for _ in range(6):  # more than half a batch is free, four handlers still run
        worker._slots.release()
    handler = asyncio.create_task(asyncio.Event().wait())
    worker._in_flight.add(handler)
    loop = asyncio.get_running_loop()
    try:
        began = loop.time()
        taken = await asyncio.wait_for(worker._more_slots(9), 5)
        waited = loop.time() - began
    finally:
        handler.cancel()
    assert taken == 6
    assert 0.019 <= waited < 1.0  # it gave the running handlers the fill wait to finish


async def test_results_of_one_step_travel_in_one_batch_at_a_time(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of a map: results of one run's map step are never in two batches being sent at
    once (they would only queue on its step_states row), and results ready together share a
    batch."""
    in_flight: list[set[tuple[Any, str]]] = []
    sizes: list[int] = []
    clashes: list[tuple[Any, str]] = []
    report_batch = PgflowSqlClient.report_batch

    async def recording(self: PgflowSqlClient, reports: Sequence[Report]) -> Any:
        keys = {(r.task.run_id, r.task.step_slug) for r in reports}
        clashes.extend(key for other in in_flight for key in keys & other)
        in_flight.append(keys)
        sizes.append(len(reports))
        try:
            return await report_batch(self, reports)
        finally:
            in_flight.remove(keys)

    monkeypatch.setattr(PgflowSqlClient, "report_batch", recording)
    flow = Flow("report_turns")

    @flow.map
    async def each(x: int) -> int:
        return x

    worker = FlowWorker(flow, db_url, max_concurrent=10, max_pg_connections=4, **FAST)
    async with worker:
        runs = [await start_run(db_url, "report_turns", list(range(30))) for _ in range(2)]
        finished = [await wait_run(db_url, run_id) for run_id in runs]
    assert [run["status"] for run in finished] == ["completed", "completed"]
    assert [run["output"] for run in finished] == [{"each": list(range(30))}] * 2
    assert clashes == []
    assert sum(sizes) == 60
    assert max(sizes) > 1, sizes
    assert worker.stats.completions == 60
    assert worker.stats.report_transactions == len(sizes)


async def test_the_next_poll_does_not_wait_for_results_to_be_sent(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database takes no results, a worker with max_concurrent=5 runs five more
    handlers after the first five are done, and no more: five finished tasks may wait for
    their results to be sent, beyond that the poll loop waits too."""
    gate = asyncio.Event()
    report_batch = PgflowSqlClient.report_batch

    async def gated(self: PgflowSqlClient, reports: Sequence[Report]) -> Any:
        await gate.wait()
        return await report_batch(self, reports)

    monkeypatch.setattr(PgflowSqlClient, "report_batch", gated)
    flow = Flow("report_backlog")
    returned = 0
    ten_returned = asyncio.Event()

    @flow.map
    async def each(x: int) -> int:
        nonlocal returned
        returned += 1
        if returned == 10:
            ten_returned.set()
        return x

    worker = FlowWorker(flow, db_url, max_concurrent=5, batch_size=5, **FAST)
    async with worker:
        run_id = await start_run(db_url, "report_backlog", list(range(20)))
        try:
            await asyncio.wait_for(ten_returned.wait(), 20)
            # Ten handlers returned, none reported: every handler and report slot is taken,
            # so no poll can claim an eleventh task.
            assert worker._slots.locked()
            assert worker._report_slots.locked()
            assert returned == 10
            assert worker.completed == 0
        finally:
            gate.set()
        run = await wait_run(db_url, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"each": list(range(20))}
    assert returned == 20
