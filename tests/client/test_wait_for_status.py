"""wait_for_status on runs and steps: reached, unreachable, timeout, cancel, task cancel."""

from __future__ import annotations

import asyncio

import pytest

from pgflow_client import (
    FlowRunStatus,
    FlowStepStatus,
    StatusUnreachable,
    WaitCancelled,
    WaitTimeout,
)

from ._factories import (
    RUN_ID,
    STEP_SLUG,
    make_run,
    run_completed,
    run_failed,
    step_completed,
    step_failed,
    step_skipped,
    step_started,
    until,
)

SHORT = 0.05  # only where the test is about the timeout


# -- runs --------------------------------------------------------------------------------


async def test_run_resolves_when_target_is_reached() -> None:
    run = make_run()
    waiting = asyncio.create_task(run.wait_for_status("completed"))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_completed())
    assert await waiting is run
    assert run._listener_count() == 0


async def test_run_resolves_at_once_when_already_there() -> None:
    run = make_run(status="completed")
    assert await run.wait_for_status(FlowRunStatus.COMPLETED) is run
    assert await make_run().wait_for_status("started") is not None


async def test_run_failed_target() -> None:
    run = make_run()
    waiting = asyncio.create_task(run.wait_for_status(FlowRunStatus.FAILED))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_failed(error_message="boom"))
    assert (await waiting).error_message == "boom"
    assert await run.wait_for_status("failed") is run


async def test_run_times_out() -> None:
    run = make_run()
    with pytest.raises(WaitTimeout) as info:
        await run.wait_for_status("completed", timeout=SHORT)
    assert str(info.value) == f"Timeout waiting for run {RUN_ID} to reach status 'completed'"
    assert isinstance(info.value, TimeoutError)
    assert info.value.target == "completed"
    assert info.value.timeout == SHORT
    assert run._listener_count() == 0


async def test_run_failed_target_times_out_without_failure() -> None:
    run = make_run()
    with pytest.raises(WaitTimeout, match="'failed'"):
        await run.wait_for_status("failed", timeout=SHORT)


async def test_run_resolves_before_timeout() -> None:
    run = make_run()
    waiting = asyncio.create_task(run.wait_for_status("completed", timeout=60))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_completed())
    assert await waiting is run


async def test_completed_on_a_failed_run_is_unreachable_at_once() -> None:
    run = make_run(status="failed", error_message="boom")
    with pytest.raises(StatusUnreachable) as info:
        await run.wait_for_status("completed", timeout=None)
    err = info.value
    assert (err.status, err.target, err.error_message) == ("failed", "completed", "boom")
    assert err.run_id == RUN_ID
    assert err.step_slug is None
    assert "boom" in str(err)


async def test_run_failing_while_waiting_for_completed_raises_unreachable() -> None:
    run = make_run()
    waiting = asyncio.create_task(run.wait_for_status("completed", timeout=None))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_failed(error_message="Task execution failed"))
    with pytest.raises(StatusUnreachable) as info:
        await waiting
    assert info.value.status == "failed"
    assert info.value.error_message == "Task execution failed"
    assert run._listener_count() == 0


async def test_run_completing_while_waiting_for_failed_raises_unreachable() -> None:
    run = make_run()
    waiting = asyncio.create_task(run.wait_for_status("failed", timeout=None))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_completed())
    with pytest.raises(StatusUnreachable) as info:
        await waiting
    assert (info.value.status, info.value.error_message) == ("completed", None)


async def test_run_cancel_event() -> None:
    run = make_run()
    cancel = asyncio.Event()
    waiting = asyncio.create_task(run.wait_for_status("completed", cancel=cancel))
    await until(lambda: run._listener_count() == 1)
    cancel.set()
    with pytest.raises(WaitCancelled) as info:
        await waiting
    assert str(info.value).startswith(f"Cancelled waiting for run {RUN_ID}")
    assert info.value.target == "completed"
    assert run._listener_count() == 0


async def test_run_cancel_event_already_set() -> None:
    run = make_run()
    cancel = asyncio.Event()
    cancel.set()
    with pytest.raises(WaitCancelled):
        await run.wait_for_status("failed", cancel=cancel)
    assert run._listener_count() == 0


async def test_reached_status_wins_over_a_set_cancel_event() -> None:
    run = make_run(status="completed")
    cancel = asyncio.Event()
    cancel.set()
    assert await run.wait_for_status("completed", cancel=cancel) is run


async def test_cancel_event_left_unset_does_not_disturb_success() -> None:
    run = make_run()
    cancel = asyncio.Event()
    waiting = asyncio.create_task(run.wait_for_status("completed", cancel=cancel))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_completed())
    assert await waiting is run
    cancel.set()  # too late to matter


async def test_task_cancellation_propagates_and_cleans_up() -> None:
    run = make_run()
    for cancel in (None, asyncio.Event()):
        waiting = asyncio.create_task(run.wait_for_status("completed", cancel=cancel))
        await until(lambda: run._listener_count() == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert run._listener_count() == 0


async def test_wait_for_in_an_outer_timeout() -> None:
    run = make_run()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run.wait_for_status("completed", timeout=None), SHORT)
    assert run._listener_count() == 0


async def test_several_waiters() -> None:
    run = make_run()
    completed = [asyncio.create_task(run.wait_for_status("completed")) for _ in range(3)]
    failed = asyncio.create_task(run.wait_for_status("failed"))
    await until(lambda: run._listener_count() == 4)
    run._apply_event(run_completed())
    assert await asyncio.gather(*completed) == [run, run, run]
    with pytest.raises(StatusUnreachable):
        await failed
    assert run._listener_count() == 0


async def test_unknown_run_status_is_rejected() -> None:
    run = make_run()
    with pytest.raises(ValueError, match="'skipped' is not a run status") as info:
        await run.wait_for_status("skipped")
    assert "'started', 'completed', 'failed'" in str(info.value)
    with pytest.raises(ValueError, match="not a run status"):
        await run.wait_for_status(FlowStepStatus.CREATED)


async def test_waiting_on_a_disposed_run_is_cancelled() -> None:
    run = make_run()
    run.dispose()
    with pytest.raises(WaitCancelled, match="disposed"):
        await run.wait_for_status("completed")


async def test_disposing_ends_pending_waits() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    waiting_run = asyncio.create_task(run.wait_for_status("completed"))
    waiting_step = asyncio.create_task(step.wait_for_status("completed"))
    await until(lambda: run._listener_count() == 2)
    run.dispose()
    for task in (waiting_run, waiting_step):
        with pytest.raises(WaitCancelled, match="disposed"):
            await task


# -- steps -------------------------------------------------------------------------------


async def test_step_resolves_when_target_is_reached() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    waiting = asyncio.create_task(step.wait_for_status(FlowStepStatus.COMPLETED))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(step_started())
    assert not waiting.done()
    run._apply_event(step_completed(output={"n": 1}))
    assert (await waiting).output == {"n": 1}
    assert run._listener_count() == 0


async def test_step_times_out() -> None:
    step = make_run().step(STEP_SLUG)
    with pytest.raises(WaitTimeout) as info:
        await step.wait_for_status("completed", timeout=SHORT)
    assert str(info.value) == (
        f"Timeout waiting for step '{STEP_SLUG}' of run {RUN_ID} to reach status 'completed'"
    )


async def test_step_resolves_at_once_when_already_there() -> None:
    run = make_run()
    run._apply_event(step_started())
    step = run.step(STEP_SLUG)
    assert await step.wait_for_status("started") is step
    assert await step.wait_for_status("created") is step


async def test_step_cancel_event() -> None:
    step = make_run().step(STEP_SLUG)
    cancel = asyncio.Event()
    waiting = asyncio.create_task(step.wait_for_status("completed", cancel=cancel))
    await until(lambda: step._listener_count() == 1)
    cancel.set()
    with pytest.raises(WaitCancelled, match=f"step '{STEP_SLUG}'"):
        await waiting


@pytest.mark.parametrize(
    ("events", "target"),
    [
        ([step_started()], "started"),
        ([step_started(), step_completed()], "completed"),
        ([step_started(), step_failed()], "failed"),
        ([step_skipped()], "skipped"),
    ],
)
async def test_step_every_status(events: list[object], target: str) -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    waiting = asyncio.create_task(step.wait_for_status(target))
    await until(lambda: step._listener_count() == 1)
    for event in events:
        run._apply_event(event)  # type: ignore[arg-type]
    assert (await waiting).status == target


async def test_started_on_an_empty_map_step_is_unreachable() -> None:
    # An empty map goes created -> completed without a 'started' event.
    run = make_run()
    step = run.step(STEP_SLUG)
    waiting = asyncio.create_task(step.wait_for_status("started", timeout=None))
    await until(lambda: step._listener_count() == 1)
    run._apply_event(step_completed(output=[]))
    with pytest.raises(StatusUnreachable) as info:
        await waiting
    assert (info.value.status, info.value.target) == ("completed", "started")
    assert info.value.step_slug == STEP_SLUG


async def test_completed_on_an_empty_map_step_resolves_at_once() -> None:
    run = make_run()
    run._apply_event(step_completed(output=[]))
    step = run.step(STEP_SLUG)
    assert await step.wait_for_status("completed") is step
    with pytest.raises(StatusUnreachable):
        await step.wait_for_status("started")


async def test_started_resolves_at_once_for_a_step_that_passed_through_it() -> None:
    run = make_run()
    run._apply_event(step_started())
    run._apply_event(step_completed())
    assert await run.step(STEP_SLUG).wait_for_status("started") is run.step(STEP_SLUG)


async def test_skipped_step_is_unreachable_for_completed() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    waiting = asyncio.create_task(step.wait_for_status("completed"))
    await until(lambda: step._listener_count() == 1)
    run._apply_event(step_skipped(skip_reason="handler_failed", error_message="boom"))
    with pytest.raises(StatusUnreachable) as info:
        await waiting
    assert (info.value.status, info.value.error_message) == ("skipped", "boom")


async def test_step_failure_then_run_failure() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    step_waiting = asyncio.create_task(step.wait_for_status("failed"))
    run_waiting = asyncio.create_task(run.wait_for_status("failed"))
    await until(lambda: run._listener_count() == 2)
    run._apply_event(step_failed(error_message="boom"))
    assert (await step_waiting).error_message == "boom"
    assert not run_waiting.done()
    run._apply_event(run_failed(error_message="boom"))
    assert (await run_waiting).error_message == "boom"


async def test_unknown_step_status_is_rejected() -> None:
    step = make_run().step(STEP_SLUG)
    with pytest.raises(ValueError, match="'done' is not a step status"):
        await step.wait_for_status("done")
