"""Edge cases of run data (port of the TS data-validation tests that concern state)."""

from __future__ import annotations

import asyncio
from typing import Any

from pgflow_client import FlowRun, FlowRunStatus, FlowStepStatus

from ._factories import (
    FLOW_SLUG,
    OTHER_RUN_ID,
    RUN_ID,
    STEP_SLUG,
    Recorder,
    make_run,
    run_completed,
    run_failed,
    run_row,
    step_completed,
    step_failed,
    step_row,
    step_skipped,
    step_started,
    until,
)


def test_invalid_run_transitions_are_refused() -> None:
    run = make_run()
    assert run._apply_event(run_failed())
    for event in (run_completed(), run_failed(error_message="again")):
        assert not run._apply_event(event)
    assert (run.status, run.error_message) == (FlowRunStatus.FAILED, "Something went wrong")


def test_invalid_step_transitions_are_refused() -> None:
    run = make_run()
    assert run._apply_event(step_skipped())
    for event in (step_started(), step_completed(), step_failed()):
        assert not run._apply_event(event)
    assert run.step(STEP_SLUG).status is FlowStepStatus.SKIPPED


def test_run_id_consistency() -> None:
    run = make_run()
    assert not run._apply_event(run_completed(run_id=OTHER_RUN_ID))
    assert run.status is FlowRunStatus.STARTED


def test_step_slug_consistency() -> None:
    step = make_run().step(STEP_SLUG)
    assert not step._apply_event(step_completed("elsewhere"))
    assert step.status is FlowStepStatus.CREATED


def test_null_input() -> None:
    run = FlowRun(RUN_ID, FLOW_SLUG, input=None)
    run._apply_snapshot(run_row(input=None), [], emit=False)
    assert run.input is None


def test_very_large_input_and_output() -> None:
    big = {f"key_{i}": {"values": list(range(20))} for i in range(5_000)}
    run = FlowRun(RUN_ID, FLOW_SLUG, input=big)
    run._apply_event(run_completed(output=big))
    assert run.input is big
    assert run.output == big


def test_circular_input_is_held_as_is() -> None:
    circular: dict[str, Any] = {"name": "loop"}
    circular["self"] = circular
    run = FlowRun(RUN_ID, FLOW_SLUG, input=circular)
    assert run.input["self"] is circular
    assert FLOW_SLUG in run._repr_html_()


def test_step_data_with_missing_optional_fields() -> None:
    run = FlowRun(RUN_ID, FLOW_SLUG)
    minimal = {"run_id": RUN_ID, "step_slug": "a", "status": "created"}
    run._apply_snapshot(run_row(), [minimal, step_row("b")], emit=False)
    assert run.step("a").status is FlowStepStatus.CREATED


def test_accessing_a_disposed_run() -> None:
    run = make_run()
    run._apply_event(step_completed(output=[1]))
    run.dispose()
    assert run.status is FlowRunStatus.STARTED
    assert run.step(STEP_SLUG).output == [1]
    assert "test_step" in run._repr_html_()
    seen = Recorder()
    run.on("*", seen)  # allowed, though nothing will be delivered by a transport


async def test_concurrent_updates_on_the_same_run() -> None:
    run = make_run()
    waits = [asyncio.create_task(run.step(f"s{i}").wait_for_status("completed")) for i in range(20)]
    await until(lambda: run._listener_count() == 20)

    async def deliver(i: int) -> None:
        await asyncio.sleep(0)
        run._apply_event(step_started(f"s{i}"))
        await asyncio.sleep(0)
        run._apply_event(step_completed(f"s{i}", output=i))

    await asyncio.gather(*(deliver(i) for i in range(20)))
    done = await asyncio.wait_for(asyncio.gather(*waits), 5)
    assert [s.output for s in done] == list(range(20))


async def test_cancelled_waits_leave_no_trace() -> None:
    run = make_run()
    tasks = [asyncio.create_task(run.wait_for_status("completed")) for _ in range(10)]
    await until(lambda: run._listener_count() == 10)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert run._listener_count() == 0
    run._apply_event(run_completed())
    assert run.disposed
