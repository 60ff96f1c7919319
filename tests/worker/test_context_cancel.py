"""A handler sees through its ctx that its run was cancelled, within cancel_check_interval;
what it returns or raises afterwards changes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from pgflow_worker import Flow, FlowWorker, StepContext, WorkerError, WorkerSettings
from tests.worker.helpers import start_run

INTERVAL = 0.2
FAST = {"max_poll_seconds": 1, "poll_interval_ms": 50, "cancel_check_interval": INTERVAL}


def cancel(db_url: str, run_id: Any, reason: str | None) -> float:
    """Cancel the run; return the monotonic time once the cancellation is committed."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.cancel_run(%s, %s)", (run_id, reason))
    return time.monotonic()


def task_statuses(db_url: str, run_id: Any) -> dict[str, str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "select step_slug, status from pgflow.step_tasks where run_id = %s", (run_id,)
        ).fetchall()
    return {row[0]: row[1] for row in rows}


async def test_running_handlers_see_their_run_cancelled(db_url: str) -> None:
    """An async handler awaiting ctx.cancelled and a sync one blocked in ctx.wait_for_cancel
    both wake with the reason, within a few check intervals of the cancel's commit; their
    results are harmless; a dependent step never starts."""
    flow = Flow("cancellable", max_attempts=1)
    loop = asyncio.get_running_loop()
    started = {"async": asyncio.Event(), "sync": asyncio.Event()}
    seen: dict[str, tuple[bool, bool, str | None, float]] = {}
    woke = {"async": asyncio.Event(), "sync": asyncio.Event()}

    @flow.step
    async def waits_async(input: Any, ctx: StepContext) -> str:
        before = ctx.cancel_requested
        started["async"].set()
        await asyncio.wait_for(ctx.cancelled.wait(), 20)
        seen["async"] = (before, ctx.cancel_requested, ctx.cancel_reason, time.monotonic())
        woke["async"].set()
        return "stopped early"

    @flow.step
    def waits_sync(input: Any, ctx: StepContext) -> str:
        loop.call_soon_threadsafe(started["sync"].set)
        told = ctx.wait_for_cancel(timeout=20)
        seen["sync"] = (False, told, ctx.cancel_reason, time.monotonic())
        loop.call_soon_threadsafe(woke["sync"].set)
        raise RuntimeError("gave up")

    @flow.step(depends_on=[waits_async])
    def after(input: Any) -> str:
        raise AssertionError("a step of a cancelled run started")

    async with FlowWorker(flow, db_url, **FAST) as worker:
        run_id = await start_run(db_url, "cancellable", {})
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 20)
        committed = await asyncio.to_thread(cancel, db_url, run_id, "operator")
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in woke.values())), 20)
    # Leaving the block drained the worker: both results were reported.
    assert seen["async"][:3] == (False, True, "operator")
    assert seen["sync"][1:3] == (True, "operator")
    for _, _, _, woke_at in seen.values():
        assert woke_at - committed < INTERVAL * 10
    assert task_statuses(db_url, run_id) == {"waits_async": "cancelled", "waits_sync": "cancelled"}
    assert worker._running == {}


async def test_a_handler_of_another_run_is_not_told(db_url: str) -> None:
    flow = Flow("two_runs", max_attempts=1)
    loop = asyncio.get_running_loop()
    started: dict[str, asyncio.Event] = {"keep": asyncio.Event(), "drop": asyncio.Event()}
    release = asyncio.Event()
    told: dict[str, bool] = {}
    done = {"keep": asyncio.Event(), "drop": asyncio.Event()}

    @flow.step
    async def work(input: dict[str, str], ctx: StepContext) -> str:
        loop.call_soon(started[input["name"]].set)
        if input["name"] == "drop":
            await asyncio.wait_for(ctx.cancelled.wait(), 20)
        else:
            await asyncio.wait_for(release.wait(), 20)
        told[input["name"]] = ctx.cancel_requested
        done[input["name"]].set()
        return input["name"]

    async with FlowWorker(flow, db_url, **FAST):
        keep = await start_run(db_url, "two_runs", {"name": "keep"})
        drop = await start_run(db_url, "two_runs", {"name": "drop"})
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 20)
        await asyncio.to_thread(cancel, db_url, drop, None)
        await asyncio.wait_for(done["drop"].wait(), 20)
        release.set()
        await asyncio.wait_for(done["keep"].wait(), 20)
    assert told == {"drop": True, "keep": False}
    assert task_statuses(db_url, keep) == {"work": "completed"}


def test_the_check_interval_must_be_positive() -> None:
    assert WorkerSettings().cancel_check_interval == 1.0
    for bad in (0, -1.0, True):
        with pytest.raises(WorkerError, match="cancel_check_interval must be a positive"):
            WorkerSettings(cancel_check_interval=bad)
