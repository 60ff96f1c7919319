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


async def test_a_poll_failing_outside_the_database_driver_is_survived(db_url: str) -> None:
    """A message nested deeper than the JSON decoder allows breaks the poll that reads it
    (orjson raises, not psycopg): the worker logs it, backs off and keeps serving the flow."""
    flow = two_steps("poisoned")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)
        cur = await conn.execute(
            "select * from pgmq.send('poisoned', %s::jsonb)", ("[" * 1100 + "]" * 1100,)
        )
        row = await cur.fetchone()
        assert row is not None
        poison_id = row[0]
    watcher = _LogEvent("poll failed")
    logger = logging.getLogger("pgflow.worker")
    logger.addHandler(watcher)
    worker = FlowWorker(flow, db_url, **FAST)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        logged = asyncio.create_task(watcher.event.wait())
        await asyncio.wait({runner, logged}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert not runner.done(), runner.exception() if runner.done() else None
        assert logged.done(), "no poll failure was logged"
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("select pgmq.delete('poisoned', %s::bigint)", (poison_id,))
        run = await wait_run(db_url, await start_run(db_url, "poisoned", {}))
        assert (run["status"], run["output"]) == ("completed", {"two": 2})
        assert not runner.done()
    finally:
        logger.removeHandler(watcher)
        worker.stop()
        await asyncio.wait_for(runner, 30)
    record = watcher.records[0]
    assert record.levelno == logging.WARNING
    assert "JSONDecodeError" in record.getMessage()
    assert record.exc_info is not None  # an unexpected kind of failure comes with its traceback
