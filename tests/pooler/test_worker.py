"""The worker through pgbouncer, with its default settings, in transaction and session mode.

The pool has two server connections per database, handed out in turn: a client connection's
consecutive transactions land on different server sessions, as they do behind Supabase's
transaction pooler (port 6543). Anything the worker kept in a session (a prepared statement,
a setting, a lock) would be missing on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgflow_worker import Flow, FlowWorker, StepContext
from pgflow_worker._database import list_migrations, migrate
from tests.pooler.conftest import Bouncers
from tests.pooler.poolflows import squares
from tests.worker.helpers import start_run, tasks_of, wait_run

ROOT = Path(__file__).resolve().parents[2]


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings and errors the worker logged, other than its handlers' failed attempts."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("pgflow")
        and record.levelno >= logging.WARNING
        and "attempt" not in record.getMessage()
    ]


@pytest.fixture(autouse=True)
def _capture_worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgflow")


async def test_runs_of_a_chain_around_a_map_complete(
    pooled_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sizes = range(3, 11)
    async with FlowWorker(squares, pooled_url):
        run_ids = [await start_run(db_url, squares.slug, {"n": n}) for n in sizes]
        runs = [await wait_run(db_url, run_id, timeout=60) for run_id in run_ids]
    for n, run in zip(sizes, runs, strict=True):
        assert run["status"] == "completed", run
        assert run["output"]["total"]["sum"] == sum(x * x for x in range(n))
    assert problems(caplog) == []


async def test_a_failed_attempt_is_retried(
    pooled_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    flow = Flow("pooled_retry", max_attempts=3, base_delay=1)

    @flow.step
    def flaky(input: Any, ctx: StepContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return {"attempt": ctx.attempt}

    async with FlowWorker(flow, pooled_url):
        run = await wait_run(db_url, await start_run(db_url, flow.slug, {}), timeout=60)
    assert run["status"] == "completed", run
    assert run["output"] == {"flaky": {"attempt": 2}}
    (task,) = await tasks_of(db_url, run["run_id"])
    assert task["attempts_count"] == 2
    assert problems(caplog) == []


async def test_handlers_query_through_ctx_execute(
    pooled_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("create table notes (x int primary key)")
    flow = Flow("pooled_sql", max_attempts=1)

    @flow.array
    def items(input: Any) -> list[int]:
        return list(range(8))

    @flow.map(array=items)
    def write(x: int, ctx: StepContext) -> dict[str, Any]:
        (row,) = ctx.execute("insert into notes (x) values (%s) returning x", (x,))
        (name,) = ctx.execute("select current_setting('application_name')")
        return {"x": row[0], "application_name": name[0]}

    async with FlowWorker(flow, pooled_url) as worker:
        run = await wait_run(db_url, await start_run(db_url, flow.slug, {}), timeout=60)
    assert run["status"] == "completed", run
    outputs = run["output"]["write"]
    assert [o["x"] for o in outputs] == list(range(8))
    assert {o["application_name"] for o in outputs} == {worker.application_name}
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute("select count(*) from notes")
        assert await cur.fetchone() == (8,)
    assert problems(caplog) == []


async def test_heartbeats_reach_the_database_and_deprecation_stops_the_worker(
    pooled_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker = FlowWorker(squares, pooled_url, heartbeat_interval=0.05)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        await asyncio.wait_for(worker.wait_started(), 30)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            beats: set[Any] = set()

            async def until_many_beats() -> None:
                while len(beats) < 12:
                    cur = await conn.execute(
                        "select last_heartbeat_at from pgflow.workers where worker_id = %s",
                        (worker.worker_id,),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    beats.add(row[0])
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(until_many_beats(), 30)
            await conn.execute(
                "update pgflow.workers set deprecated_at = now() where worker_id = %s",
                (worker.worker_id,),
            )
        await asyncio.wait_for(runner, 30)  # the next heartbeat reads the deprecation
    finally:
        worker.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(runner, 30)
    assert any("was deprecated" in r.getMessage() for r in caplog.records)
    assert problems(caplog) == []


async def test_workers_starting_together_register_the_flow_once(
    transaction_url: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    flow = Flow("pooled_together")

    @flow.step
    def first(input: Any) -> int:
        return 1

    @flow.step(depends_on=[first])
    def second(input: Any) -> int:
        return int(input["first"]) + 1

    workers = [FlowWorker(flow, transaction_url) for _ in range(4)]
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(*(stack.enter_async_context(w) for w in workers))
        run = await wait_run(db_url, await start_run(db_url, flow.slug, {}), timeout=60)
    assert run["status"] == "completed", run
    assert run["output"] == {"second": 2}
    messages = [r.getMessage() for r in caplog.records]
    statuses = sorted(m for m in messages if m.startswith("flow 'pooled_together'"))
    assert statuses == [
        "flow 'pooled_together': compiled",
        *["flow 'pooled_together': verified"] * 3,
    ]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(*) from pgflow.steps where flow_slug = 'pooled_together'"
        )
        assert await cur.fetchone() == (2,)
    assert problems(caplog) == []


def test_concurrent_migrations_apply_each_migration_once(
    empty_db_url: str, bouncers: Bouncers
) -> None:
    url = bouncers.get("transaction").url(empty_db_url)
    with ThreadPoolExecutor(3) as pool:
        reports = list(pool.map(lambda _: migrate(url), range(3)))
    applied = sorted(name for report in reports for name in report.applied)
    assert applied == [m.path.name for m in list_migrations()]
    assert migrate(url).applied == []
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        left = conn.execute("select count(*) from pg_locks where locktype = 'advisory'")
        assert left.fetchone() == (0,), "a migration left an advisory lock behind"
        tables = conn.execute("select count(*) from pgflow.migrations").fetchone()
        assert tables == (len(list_migrations()),)


async def test_the_pgflow_worker_command_completes_runs(transaction_url: str, db_url: str) -> None:
    proc = subprocess.Popen(  # noqa: ASYNC220 (a long-running child, not awaited here)
        [sys.executable, "-m", "pgflow_worker", "worker", "tests.pooler.poolflows:squares"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DATABASE_URL": transaction_url, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:

            async def registered() -> None:
                while True:
                    cur = await conn.execute("select count(*) from pgflow.workers")
                    if await cur.fetchone() == (1,):
                        return
                    assert proc.poll() is None, "the worker exited"
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(registered(), 30)
        run_ids = [await start_run(db_url, squares.slug, {"n": n}) for n in (4, 5, 6)]
        runs = [await wait_run(db_url, run_id, timeout=60) for run_id in run_ids]
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert [run["status"] for run in runs] == ["completed"] * 3, stderr
    assert proc.returncode == 0, stderr
    assert "WARNING" not in stderr, stderr
    assert "ERROR" not in stderr, stderr
