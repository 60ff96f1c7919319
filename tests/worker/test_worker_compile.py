"""What a worker does to its flow at startup, through pgflow.ensure_flow_compiled: options tuned
in SQL survive restarts, a changed flow is replaced only when told to (or on a local Supabase
stack), workers starting together compile once, and each worker registers as pgflow 0.17's do."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import psycopg
import pytest

from pgflow_worker import Flow, FlowShapeMismatch, FlowWorker
from pgflow_worker._sql_client import WORKER_VERSION
from tests.worker.helpers import start_run, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}
LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"


def orders(*, timeout: int = 30, fan_out: bool = False) -> Flow:
    flow = Flow("orders", max_attempts=2)

    @flow.step(timeout=timeout)
    def fetch(input: Any) -> list[int]:
        return [1, 2]

    if fan_out:

        @flow.map(array=fetch)
        def each(item: int) -> int:
            return item * 10

    else:

        @flow.step(depends_on=[fetch])
        def total(input: Any) -> int:
            return sum(input["fetch"])

    return flow


async def query(db_url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(statement.encode(), args)
        return await cur.fetchall() if cur.description else []


async def stored_options(db_url: str) -> list[tuple[Any, ...]]:
    return [
        *await query(db_url, "select opt_max_attempts, opt_timeout from pgflow.flows"),
        *await query(db_url, "select step_slug, opt_timeout from pgflow.steps order by step_index"),
    ]


async def test_options_tuned_in_sql_survive_a_restart(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with FlowWorker(orders(), db_url, **FAST):
        pass
    assert await stored_options(db_url) == [(2, 60), ("fetch", 30), ("total", None)]
    await query(db_url, "update pgflow.flows set opt_max_attempts = 7")
    await query(db_url, "update pgflow.steps set opt_timeout = 300 where step_slug = 'fetch'")

    caplog.set_level(logging.INFO, logger="pgflow.worker")
    async with FlowWorker(orders(), db_url, **FAST):
        run = await wait_run(db_url, await start_run(db_url, "orders", {}))
    assert run["output"] == {"total": 3}
    assert await stored_options(db_url) == [(7, 60), ("fetch", 300), ("total", None)]
    messages = [r.getMessage() for r in caplog.records]
    assert "flow 'orders': verified" in messages
    (kept,) = [m for m in messages if "were kept" in m]
    assert "flow max_attempts: 7 in the database, 2 in the definition" in kept
    assert "step 'fetch' timeout: 300 in the database, 30 in the definition" in kept


async def test_a_changed_flow_in_production_stops_the_worker_and_changes_nothing(
    db_url: str,
) -> None:
    async with FlowWorker(orders(), db_url, **FAST) as first:
        pass
    await start_run(db_url, "orders", {})
    tables = ("flows", "steps", "deps", "runs", "step_states", "step_tasks", "workers")
    counts = "select " + ", ".join(f"(select count(*) from pgflow.{t})" for t in tables)
    before = await query(db_url, counts)
    changed = FlowWorker(orders(fan_out=True), db_url, **FAST)

    with pytest.raises(FlowShapeMismatch) as caught:
        await changed.run(install_signal_handlers=False)

    assert caught.value.mismatch_kind == "shape"
    assert caught.value.differences == [
        "Step at index 1: slug differs 'each' vs 'total'",
        "Step at index 1: type differs 'map' vs 'single'",
        "Step routes differ: database has [fetch -> orders, total -> orders],"
        " worker expects [fetch -> orders, each -> orders]",
    ]
    assert await query(db_url, counts) == before, "nothing changed, no worker row added"
    assert await query(db_url, "select worker_id from pgflow.workers") == [(first.worker_id,)]


async def test_recompile_replaces_a_changed_flow_deleting_its_runs(db_url: str) -> None:
    async with FlowWorker(orders(), db_url, **FAST):
        pass
    old_run = await start_run(db_url, "orders", {})
    async with FlowWorker(orders(fan_out=True), db_url, recompile=True, **FAST):
        run = await wait_run(db_url, await start_run(db_url, "orders", {}))
    assert run["output"] == {"each": [10, 20]}
    assert await query(db_url, "select run_id from pgflow.runs where run_id = %s", old_run) == []


async def test_a_local_supabase_stack_recompiles_without_being_told(db_url: str) -> None:
    """pgflow's development mode: is_local() is true when the database has the Supabase CLI's
    JWT secret, and ensure_flow_compiled then replaces a changed flow by itself."""
    async with FlowWorker(orders(), db_url, **FAST):
        pass
    await start_run(db_url, "orders", {})
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute("select current_database()")
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            psycopg.sql.SQL("alter database {} set app.settings.jwt_secret = {}").format(
                psycopg.sql.Identifier(row[0]), psycopg.sql.Literal(LOCAL_JWT_SECRET)
            )
        )
    async with FlowWorker(orders(fan_out=True), db_url, **FAST):
        run = await wait_run(db_url, await start_run(db_url, "orders", {}))
    assert run["output"] == {"each": [10, 20]}
    assert len(await query(db_url, "select run_id from pgflow.runs")) == 1


async def test_workers_starting_together_compile_the_flow_once(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgflow.worker")
    workers = [FlowWorker(orders(), db_url, **FAST) for _ in range(4)]
    runners = [asyncio.create_task(w.run(install_signal_handlers=False)) for w in workers]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait_started() for w in workers)), 30)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*runners), 30)
    outcomes = sorted(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("flow 'orders': ")
    )
    assert outcomes == ["flow 'orders': compiled"] + ["flow 'orders': verified"] * 3
    assert await query(db_url, "select count(*) from pgflow.steps") == [(2,)]


async def test_a_worker_registers_as_pgflow_0_17_workers_do(db_url: str) -> None:
    worker_id = uuid.uuid4()
    async with FlowWorker(orders(), db_url, worker_id=worker_id, function_name="billing", **FAST):
        pass
    assert await query(
        db_url, "select function_name, start_mode, enabled from pgflow.worker_functions"
    ) == [("billing", "process", True)]
    assert await query(
        db_url,
        "select function_name, pgflow_version from pgflow.workers where worker_id = %s",
        worker_id,
    ) == [("billing", WORKER_VERSION)]
    assert WORKER_VERSION.startswith("pgflow-py/")
