"""What a handler's ctx gives it on a real worker: the run's input loaded once per run, the
shutdown signal, and the database from sync handlers as well as async ones."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg

from pgflow_worker import Flow, FlowWorker, HandlerContextError, StepContext
from tests.worker.helpers import start_run, steps_of, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 50}


async def test_flow_input_is_loaded_once_per_run_and_shared_by_its_steps(db_url: str) -> None:
    """Map tasks and dependent steps get no flow input from start_tasks: the worker loads it."""
    flow = Flow("inputs")
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()

    @flow.map
    def each(x: int, ctx: StepContext) -> int:
        with lock:
            seen.append(("each", ctx.flow_input))
        return x

    @flow.step(depends_on=[each])
    async def total(input: dict[str, list[int]], ctx: StepContext) -> int:
        seen.append(("total", await ctx.get_flow_input()))
        return sum(input["each"])

    @flow.step(depends_on=[each])
    def count(input: dict[str, list[int]], ctx: StepContext) -> int:
        with lock:
            seen.append(("count", ctx.flow_input))
        return len(input["each"])

    async with FlowWorker(flow, db_url, **FAST) as worker:
        first = await wait_run(db_url, await start_run(db_url, "inputs", [1, 2, 3]))
        second = await wait_run(db_url, await start_run(db_url, "inputs", [10, 20]))
    assert first["output"] == {"total": 6, "count": 3}
    assert second["output"] == {"total": 30, "count": 2}
    assert sorted(name for name, _ in seen) == ["count"] * 2 + ["each"] * 5 + ["total"] * 2
    assert {str(value) for _, value in seen} == {"[1, 2, 3]", "[10, 20]"}
    assert worker.stats.flow_input_loads == 2  # one query per run, however many readers


async def test_flow_input_supplied_to_a_root_step_is_reused_without_a_query(
    db_url: str,
) -> None:
    flow = Flow("supplied")

    @flow.step
    def root(input: dict[str, str]) -> str:
        return input["name"]

    @flow.step(depends_on=[root])
    async def later(input: dict[str, str], ctx: StepContext) -> Any:
        return await ctx.get_flow_input()

    async with FlowWorker(flow, db_url, **FAST) as worker:
        run = await wait_run(db_url, await start_run(db_url, "supplied", {"name": "Ada"}))
    assert run["output"] == {"later": {"name": "Ada"}}
    assert worker.stats.flow_input_loads == 0


async def test_ctx_shutdown_is_set_when_the_worker_stops_during_a_handler(db_url: str) -> None:
    flow = Flow("winds_down", max_attempts=1)
    loop = asyncio.get_running_loop()
    async_started = asyncio.Event()
    sync_started = asyncio.Event()

    @flow.step
    async def waits_async(input: Any, ctx: StepContext) -> dict[str, bool]:
        before = ctx.shutdown.is_set()
        async_started.set()
        await asyncio.wait_for(ctx.shutdown.wait(), 20)
        return {"before": before, "event": ctx.shutdown.is_set(), "flag": ctx.shutdown_requested}

    @flow.step
    def waits_sync(input: Any, ctx: StepContext) -> dict[str, bool]:
        before = ctx.shutdown_requested
        loop.call_soon_threadsafe(sync_started.set)
        return {"before": before, "woken": ctx.wait_for_shutdown(20)}

    worker = FlowWorker(flow, db_url, **FAST)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    await asyncio.wait_for(worker.wait_started(), 20)
    run_id = await start_run(db_url, "winds_down", {})
    await asyncio.wait_for(asyncio.gather(async_started.wait(), sync_started.wait()), 20)
    worker.stop()
    await asyncio.wait_for(runner, 30)
    run = await wait_run(db_url, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {
        "waits_async": {"before": False, "event": True, "flag": True},
        "waits_sync": {"before": False, "woken": True},
    }


async def test_sync_handlers_reach_the_database_through_the_workers_pool(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("create table notes (id serial primary key, run_id uuid, body text)")
    flow = Flow("sync_sql")

    @flow.step
    def write(input: dict[str, str], ctx: StepContext) -> dict[str, Any]:
        (inserted,) = ctx.execute(
            "insert into notes (run_id, body) values (%s, %s) returning id, body",
            (ctx.run_id, input["body"]),
        )
        updated = ctx.execute("update notes set body = upper(body) where id = %s", inserted[:1])
        (name,) = ctx.execute("select current_setting('application_name')")
        return {"inserted": list(inserted), "updated": updated, "application_name": name[0]}

    @flow.step(depends_on=[write])
    def read(input: Any, ctx: StepContext) -> list[list[Any]]:
        rows = ctx.execute("select id, body from notes where run_id = %s", (ctx.run_id,))
        return [list(row) for row in rows]

    async with FlowWorker(flow, db_url, **FAST) as worker:
        run = await wait_run(db_url, await start_run(db_url, "sync_sql", {"body": "hi"}))
    assert run["status"] == "completed", run
    assert run["output"] == {"read": [[1, "HI"]]}
    written = (await steps_of(db_url, run["run_id"]))["write"]["output"]
    assert written == {
        "inserted": [1, "hi"],
        "updated": [],
        "application_name": worker.application_name,
    }


async def test_blocking_context_calls_from_async_handlers_fail_with_a_clear_error(
    db_url: str,
) -> None:
    flow = Flow("misused", max_attempts=1)

    @flow.map
    async def each(x: int, ctx: StepContext) -> Any:
        if x == 0:
            return ctx.execute("select 1")
        if x == 1:
            return ctx.wait_for_shutdown(0)
        return ctx.flow_input

    async with FlowWorker(flow, db_url, **FAST):
        # One run per call: the first failure of a run would cut its sibling tasks short.
        runs = [await start_run(db_url, "misused", [x]) for x in range(3)]
        failures = {x: await wait_run(db_url, run_id) for x, run_id in enumerate(runs)}
    advice = {
        0: "ctx.execute() blocks",
        1: "use await ctx.shutdown.wait() instead",
        2: "use await ctx.get_flow_input() instead",
    }
    for x, run in failures.items():
        assert run["status"] == "failed"
        message = (await steps_of(db_url, run["run_id"]))["each"]["error_message"]
        assert message.startswith("HandlerContextError: step 'each': "), message
        assert advice[x] in message, message
    assert issubclass(HandlerContextError, RuntimeError)
