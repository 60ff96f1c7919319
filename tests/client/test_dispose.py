"""Disposal: automatic once terminal and unobserved, explicit, idempotent, state kept."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pgflow_client import FlowRun, FlowRunStatus, FlowStepStatus, WaitCancelled

from ._factories import (
    FLOW_SLUG,
    RUN_ID,
    STEP_SLUG,
    Recorder,
    make_run,
    run_completed,
    run_failed,
    step_completed,
    step_failed,
    step_started,
    until,
)


class Releases:
    """An on_dispose hook that records the runs it was called with."""

    def __init__(self) -> None:
        self.runs: list[FlowRun] = []

    def __call__(self, run: FlowRun) -> None:
        self.runs.append(run)


def test_auto_disposes_when_terminal_with_no_listeners() -> None:
    released = Releases()
    run = make_run(on_dispose=released)
    run._apply_event(run_completed())
    assert run.disposed
    assert released.runs == [run]


def test_does_not_auto_dispose_with_active_listeners() -> None:
    released = Releases()
    run = make_run(on_dispose=released)
    unsubscribe = run.on("*", Recorder())
    run._apply_event(run_failed())
    assert not run.disposed
    unsubscribe()
    assert run.disposed
    assert released.runs == [run]


def test_does_not_auto_dispose_while_not_terminal() -> None:
    run = make_run()
    unsubscribe = run.on("completed", Recorder())
    run._apply_event(step_completed())
    unsubscribe()
    assert not run.disposed


def test_step_listeners_count_as_listeners_of_the_run() -> None:
    run = make_run()
    unsubscribe = run.step(STEP_SLUG).on("failed", Recorder())
    run._apply_event(run_failed())
    assert not run.disposed
    # The type-violation path sends step:failed after run:failed.
    run._apply_event(step_failed())
    unsubscribe()
    assert run.disposed


async def test_pending_waits_count_as_listeners() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    waiting = asyncio.create_task(step.wait_for_status("failed"))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_failed())
    assert not run.disposed
    run._apply_event(step_failed())
    await waiting
    assert run.disposed


def test_double_unsubscribe_does_not_dispose_early() -> None:
    run = make_run()
    first = run.on("*", Recorder())
    run.on("*", Recorder())
    run._apply_event(run_completed())
    first()
    first()
    assert not run.disposed


def test_dispose_drops_callbacks_and_keeps_state() -> None:
    run = make_run()
    seen, step_seen = Recorder(), Recorder()
    run.on("*", seen)
    run._apply_event(step_started())
    run._apply_event(step_completed(output={"kept": True}))
    run.step(STEP_SLUG).on("*", step_seen)
    run.dispose()
    assert run._listener_count() == 0
    assert run.step(STEP_SLUG).output == {"kept": True}
    assert run.step(STEP_SLUG).status is FlowStepStatus.COMPLETED
    assert list(run.steps) == [STEP_SLUG]
    # State still follows events delivered after disposal; callbacks are gone.
    run._apply_event(run_completed())
    assert run.status is FlowRunStatus.COMPLETED
    assert seen.events == []
    assert step_seen.events == []


def test_dispose_is_idempotent() -> None:
    released = Releases()
    run = make_run(on_dispose=released)
    run.dispose()
    run.dispose()
    run.dispose()
    assert released.runs == [run]


def test_unsubscribing_after_dispose_is_harmless() -> None:
    released = Releases()
    run = make_run(on_dispose=released)
    unsubscribe = run.on("*", Recorder())
    run.dispose()
    unsubscribe()
    unsubscribe()
    assert released.runs == [run]


def test_rapid_subscribe_and_dispose_cycles() -> None:
    released = Releases()
    runs = [FlowRun(RUN_ID, FLOW_SLUG, on_dispose=released) for _ in range(50)]
    for run in runs:
        for _ in range(5):
            run.on("*", Recorder())()
        run.dispose()
    assert released.runs == runs


def test_raising_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def hook(run: FlowRun) -> None:
        raise RuntimeError("cannot release")

    run = make_run(on_dispose=hook)
    with caplog.at_level(logging.ERROR, logger="pgflow.client"):
        run._apply_event(run_completed())
    assert run.disposed
    assert f"run {RUN_ID}" in caplog.records[-1].getMessage()


async def test_async_hook_runs_as_a_task() -> None:
    released = asyncio.Event()

    async def hook(run: FlowRun) -> None:
        await asyncio.sleep(0)
        released.set()

    run = make_run(on_dispose=hook)
    run.dispose()
    await asyncio.wait_for(released.wait(), 5)


def test_a_callback_unsubscribing_during_the_terminal_event_disposes_afterwards() -> None:
    run = make_run()
    calls: list[str] = []
    unsubscribe = None

    def once(event: object) -> None:
        assert unsubscribe is not None
        unsubscribe()
        calls.append("once")

    unsubscribe = run.on("completed", once)
    run.on("completed", lambda e: calls.append("second"))
    run._apply_event(run_completed())
    assert calls == ["once", "second"]
    assert not run.disposed  # the second callback still listens


def test_last_listener_unsubscribing_mid_delivery_lets_the_rest_run() -> None:
    run = make_run()
    calls: list[str] = []
    unsubscribe = None

    def once(event: object) -> None:
        assert unsubscribe is not None
        unsubscribe()
        calls.append("once")

    unsubscribe = run.on("completed", once)
    run._apply_event(run_completed())
    assert calls == ["once"]
    assert run.disposed


async def test_steps_created_after_dispose_do_not_wait_forever() -> None:
    run = make_run()
    run.dispose()
    step = run.step("late")
    assert step.status is FlowStepStatus.CREATED
    with pytest.raises(WaitCancelled):
        await step.wait_for_status("completed")
