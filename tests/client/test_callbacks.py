"""`.on()` callbacks: sync and async, failures contained, decorator form, unsubscribing."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from pgflow_client import FlowRun, RunCompletedEvent, StepCompletedEvent

from ._factories import (
    RUN_ID,
    STEP_SLUG,
    Recorder,
    make_run,
    run_completed,
    run_failed,
    step_completed,
    step_started,
)


async def test_sync_callbacks_run_inline() -> None:
    run = make_run()
    seen = Recorder()
    run.on("completed", seen)
    run._apply_event(run_completed())
    assert seen.types == ["run:completed"]


async def test_async_callbacks_run_as_tasks() -> None:
    run = make_run()
    done = asyncio.Event()
    received: list[RunCompletedEvent] = []

    async def callback(event: RunCompletedEvent) -> None:
        await asyncio.sleep(0)
        received.append(event)
        done.set()

    run.on("completed", callback)
    event = run_completed()
    run._apply_event(event)
    assert received == []  # scheduled, not run inline
    await asyncio.wait_for(done.wait(), 5)
    assert received == [event]


async def test_async_callback_tasks_are_kept_alive_until_done() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    release = asyncio.Event()
    finished = asyncio.Event()

    async def callback(event: StepCompletedEvent) -> None:
        await release.wait()
        finished.set()

    step.on("completed", callback)
    run._apply_event(step_completed())
    await asyncio.sleep(0)
    gc.collect()
    release.set()
    await asyncio.wait_for(finished.wait(), 5)


async def test_raising_sync_callback_is_logged_and_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = make_run()
    before, after = Recorder(), Recorder()

    def broken(event: object) -> None:
        raise RuntimeError("callback exploded")

    run.on("completed", before)
    run.on("completed", broken)
    run.on("completed", after)
    run.on("*", after)
    with caplog.at_level(logging.ERROR, logger="pgflow.client"):
        assert run._apply_event(run_completed()) is True
    assert len(before.events) == 1
    assert len(after.events) == 2
    [record] = [r for r in caplog.records if r.name == "pgflow.client"]
    message = record.getMessage()
    assert f"run {RUN_ID}" in message
    assert "'completed'" in message
    assert record.exc_info is not None
    assert "callback exploded" in str(record.exc_info[1])


async def test_raising_async_callback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    failed = asyncio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            failed.set()

    async def broken(event: object) -> None:
        raise ValueError("async callback exploded")

    handler = Handler(level=logging.ERROR)
    logging.getLogger("pgflow.client").addHandler(handler)
    try:
        with caplog.at_level(logging.ERROR, logger="pgflow.client"):
            step.on("started", broken)
            seen = Recorder()
            step.on("*", seen)
            run._apply_event(step_started())
            await asyncio.wait_for(failed.wait(), 5)
    finally:
        logging.getLogger("pgflow.client").removeHandler(handler)
    assert seen.types == ["step:started"]
    [record] = [r for r in caplog.records if r.name == "pgflow.client"]
    assert f"step '{STEP_SLUG}' of run {RUN_ID}" in record.getMessage()
    assert record.exc_info is not None
    assert "async callback exploded" in str(record.exc_info[1])


def test_async_callback_without_a_running_loop_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = make_run()

    async def callback(event: object) -> None:
        raise AssertionError("never runs")

    run.on("completed", callback)
    with caplog.at_level(logging.ERROR, logger="pgflow.client"):
        assert run._apply_event(run_completed()) is True
    assert "no event loop is running" in caplog.records[-1].getMessage()


def test_wildcard_fires_after_specific_callbacks() -> None:
    run = make_run()
    order: list[str] = []
    run.on("*", lambda e: order.append("*"))
    run.on("completed", lambda e: order.append("completed"))
    run.on("failed", lambda e: order.append("failed"))
    run._apply_event(run_completed())
    assert order == ["completed", "*"]


def test_decorator_form_returns_the_function() -> None:
    run = make_run()
    seen: list[object] = []

    @run.on("completed")
    def on_completed(event: RunCompletedEvent) -> None:
        seen.append(event)

    @run.step(STEP_SLUG).on("*")
    def on_step(event: object) -> None:
        seen.append(event)

    assert callable(on_completed)
    assert on_completed.__name__ == "on_completed"
    run._apply_event(step_completed())
    run._apply_event(run_completed())
    assert [e.event_type for e in seen] == ["step:completed", "run:completed"]  # type: ignore[attr-defined]


def test_unknown_event_name_is_rejected() -> None:
    run = make_run()
    with pytest.raises(ValueError, match="'skipped'") as info:
        run.on("skipped", print)  # type: ignore[call-overload]
    assert "'started', 'completed', 'failed', '*'" in str(info.value)
    with pytest.raises(ValueError, match="unknown event 'done'"):
        run.step(STEP_SLUG).on("done")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="unknown event"):
        run.on("run:completed", print)  # type: ignore[call-overload]
    assert run._listener_count() == 0


def test_unsubscribe_stops_callbacks() -> None:
    run = make_run()
    seen = Recorder()
    unsubscribe = run.on("*", seen)
    keep = run.on("*", Recorder())
    unsubscribe()
    run._apply_event(run_completed())
    assert seen.events == []
    keep()


def test_unsubscribe_is_idempotent() -> None:
    run = make_run()
    first = run.on("completed", Recorder())
    second = run.on("completed", Recorder())
    assert run._listener_count() == 2
    first()
    first()
    first()
    assert run._listener_count() == 1
    second()
    assert run._listener_count() == 0


def test_a_callback_may_unsubscribe_itself_while_events_are_delivered() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    calls: list[str] = []
    unsubscribe = None

    def once(event: object) -> None:
        calls.append("once")
        assert unsubscribe is not None
        unsubscribe()

    unsubscribe = step.on("*", once)
    step.on("*", lambda e: calls.append("other"))
    run._apply_event(step_started())
    run._apply_event(step_completed())
    assert calls == ["once", "other", "other"]


def test_callback_removed_by_an_earlier_callback_is_not_called() -> None:
    run = make_run()
    calls: list[str] = []
    later = run.on("*", lambda e: calls.append("later"))
    run.on("failed", lambda e: later())
    run._apply_event(run_failed())
    assert calls == []


def test_the_same_function_may_be_registered_twice() -> None:
    run = FlowRun(RUN_ID, "f")
    seen = Recorder()
    first = run.on("completed", seen)
    run.on("completed", seen)
    first()
    run._apply_event(run_completed(flow_slug="f"))
    assert len(seen.events) == 1
