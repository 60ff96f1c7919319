"""Worker lifecycle: flow checks at start, deprecation, heartbeats, and what its logs carry."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import psycopg
import pytest

from pgflow_worker import Flow, FlowShapeMismatch, FlowWorker, WorkerError, ensure_flow
from tests.worker.helpers import start_run, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


def two_steps(slug: str = "life", second_depends: bool = True) -> Flow:
    flow = Flow(slug)

    @flow.step
    def one(input: Any) -> int:
        return 1

    @flow.step(depends_on=[one] if second_depends else None)
    def two(input: Any) -> int:
        return 2

    return flow


async def test_worker_refuses_a_differing_stored_flow_unless_told_to_recompile(
    db_url: str,
) -> None:
    async with FlowWorker(two_steps(), db_url, **FAST):
        pass
    changed = two_steps(second_depends=False)
    with pytest.raises(FlowShapeMismatch) as caught:
        await FlowWorker(changed, db_url, **FAST).run(install_signal_handlers=False)
    assert "life" in str(caught.value)
    assert any("dependencies differ" in d for d in caught.value.differences)
    async with FlowWorker(changed, db_url, recompile=True, **FAST):
        run = await wait_run(db_url, await start_run(db_url, "life", {}))
    assert run["output"] == {"one": 1, "two": 2}


async def test_deprecated_worker_stops_polling(db_url: str) -> None:
    worker = FlowWorker(two_steps(), db_url, heartbeat_interval=0.1, **FAST)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    await asyncio.wait_for(worker.wait_started(), 20)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "update pgflow.workers set deprecated_at = now() where worker_id = %s",
            (worker.worker_id,),
        )
    await asyncio.wait_for(runner, 20)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select stopped_at is not null, last_heartbeat_at > started_at"
            " from pgflow.workers where worker_id = %s",
            (worker.worker_id,),
        )
        assert await cur.fetchone() == (True, True)


async def test_task_log_records_carry_run_step_and_task(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    flow = Flow("logged", max_attempts=1)

    @flow.step
    def fails(input: Any) -> None:
        raise ValueError("nope")

    caplog.set_level(logging.DEBUG, logger="pgflow.worker")
    async with FlowWorker(flow, db_url, **FAST):
        run_id = await start_run(db_url, "logged", {})
        await wait_run(db_url, run_id)
    records = [r for r in caplog.records if "attempt 1 failed" in r.getMessage()]
    assert records, caplog.text
    record = records[0]
    assert record.run_id == str(run_id)  # type: ignore[attr-defined]
    assert record.step_slug == "fails"  # type: ignore[attr-defined]
    assert record.task_index == 0  # type: ignore[attr-defined]
    assert f"run {run_id} fails[0]" in record.getMessage()


def test_settings_are_validated() -> None:
    with pytest.raises(WorkerError, match="max_concurrent"):
        FlowWorker(two_steps(), "postgresql://x@y/z", max_concurrent=0)
    with pytest.raises(WorkerError, match="max_pg_connections must be at least 2"):
        FlowWorker(two_steps(), "postgresql://x@y/z", max_pg_connections=1)


async def test_unreachable_database_is_a_clear_error() -> None:
    worker = FlowWorker(two_steps(), "postgresql://u:pw@127.0.0.1:1/none", **FAST)
    with pytest.raises(
        WorkerError, match=re.escape("cannot connect to u@127.0.0.1:1/none")
    ) as caught:
        await worker.run(install_signal_handlers=False)
    assert "pw" not in str(caught.value)


class _LogEvent(logging.Handler):
    """Sets an event when a record containing ``text`` is logged (on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.records.append(record)
            self.event.set()


#: JSON nesting PostgreSQL's jsonb holds (its default 2 MB stack takes about 14,000 levels) and
#: Python's decoder refuses: 3.11 and 3.12 stop near 1,000 levels, 3.13 near 10,000.
DEEPER_THAN_PYTHON = 12_000


async def test_a_message_that_cannot_be_decoded_holds_up_no_other(db_url: str) -> None:
    """A message nested deeper than Python's JSON decoder allows is logged and left alone (it
    has no task); a run started beside it completes while it is still in the queue."""
    flow = two_steps("poisoned")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)
        cur = await conn.execute(
            "select * from pgmq.send('poisoned', %s::jsonb)",
            ("[" * DEEPER_THAN_PYTHON + "]" * DEEPER_THAN_PYTHON,),
        )
        row = await cur.fetchone()
        assert row is not None
        poison_id = row[0]
    watcher = _LogEvent("cannot be decoded")
    logger = logging.getLogger("pgflow.worker")
    logger.addHandler(watcher)
    try:
        async with FlowWorker(flow, db_url, **FAST) as worker:
            run = await wait_run(db_url, await start_run(db_url, "poisoned", {}))
            await asyncio.wait_for(watcher.event.wait(), 20)
        assert (run["status"], run["output"]) == ("completed", {"two": 2})
        assert worker.completed == 2
    finally:
        logger.removeHandler(watcher)
    record = watcher.records[0]
    assert record.levelno == logging.WARNING
    assert f"message {poison_id} of queue 'poisoned'" in record.getMessage()
    assert "nested deeper" in record.getMessage()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(*) from pgmq.q_poisoned where msg_id = %s", (poison_id,)
        )
        assert await cur.fetchone() == (1,)  # not the worker's to delete


async def test_a_task_whose_input_cannot_be_decoded_fails_with_the_reason(db_url: str) -> None:
    flow = Flow("deep_input", max_attempts=1)

    @flow.step
    def first(input: Any) -> str:
        return "ran"

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)
        cur = await conn.execute(
            "select run_id from pgflow.start_flow('deep_input', %s::jsonb)",
            ('{"x": ' + "[" * DEEPER_THAN_PYTHON + "]" * DEEPER_THAN_PYTHON + "}",),
        )
        row = await cur.fetchone()
        assert row is not None
    async with FlowWorker(flow, db_url, **FAST) as worker:
        run = await wait_run(db_url, row[0])
        plain = await wait_run(db_url, await start_run(db_url, "deep_input", {"x": 1}))
    assert run["status"] == "failed"
    assert plain["status"] == "completed"
    assert (worker.completed, worker.failed) == (1, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select error_message from pgflow.step_tasks where run_id = %s", (row[0],)
        )
        task = await cur.fetchone()
    assert task is not None
    assert task[0] == (
        "WorkerError: the task of step 'first' of flow 'deep_input' cannot be decoded: "
        "JSON nested deeper than Python's recursion limit"
    )


async def test_numbers_past_64_bits_reach_handlers_and_the_database_exactly(db_url: str) -> None:
    """orjson alone would round 2**70 + 1 to a float and refuse 1e400 (which jsonb stores as
    the integer it is): both reach the handler as exact ints, and its output is stored
    exactly."""
    flow = Flow("big_numbers")
    big = 2**70 + 1

    @flow.step
    def twice(input: Any) -> dict[str, Any]:
        n, f = input["n"], input["f"]
        return {"twice": n * 2, "types": [type(n).__name__, type(f).__name__], "f": f == 10**400}

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)
        cur = await conn.execute(
            "select run_id from pgflow.start_flow('big_numbers', %s::jsonb)",
            (f'{{"n": {big}, "f": 1e400}}',),
        )
        row = await cur.fetchone()
        assert row is not None
    async with FlowWorker(flow, db_url, **FAST):
        run = await wait_run(db_url, row[0])
    assert run["status"] == "completed"
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select output -> 'twice' ->> 'twice', output -> 'twice' -> 'types',"
            " output -> 'twice' -> 'f' from pgflow.runs where run_id = %s",
            (row[0],),
        )
        assert await cur.fetchone() == (str(2 * big), ["int", "int"], True)
