"""`_apply_snapshot`: silent initial snapshots, no regression, and replay after reconnects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pgflow_client import (
    FlowRun,
    FlowRunStatus,
    FlowStepStatus,
    InvalidRunData,
    SkipReason,
    StatusUnreachable,
)

from ._factories import (
    FLOW_SLUG,
    OTHER_RUN_ID,
    RUN_ID,
    T0,
    Recorder,
    at,
    run_completed,
    run_row,
    step_completed,
    step_row,
    step_started,
    until,
)


def stamp(seconds: float) -> str:
    return at(seconds).isoformat()


def fresh() -> FlowRun:
    """A run as start_flow creates it before the snapshot arrives."""
    return FlowRun(RUN_ID, FLOW_SLUG, input={"foo": "bar"})


def finished_rows() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = run_row(status="completed", output={"b": 2}, remaining_steps=0, completed_at=stamp(9))
    steps = [
        step_row("a", "completed", output=1, started_at=stamp(1), completed_at=stamp(2)),
        step_row("b", "completed", output=2, started_at=stamp(3), completed_at=stamp(4)),
    ]
    return run, steps


# -- silent snapshots (emit=False) ------------------------------------------------------


def test_initial_snapshot_sets_state_silently() -> None:
    run = fresh()
    seen, step_seen = Recorder(), Recorder()
    run.on("*", seen)
    run.step("a").on("*", step_seen)
    rows = [
        step_row("a", "started", started_at=stamp(1)),
        step_row("b", "created", remaining_deps=1),
    ]
    run._apply_snapshot(run_row(), rows, emit=False)
    assert run.status is FlowRunStatus.STARTED
    assert run.started_at == T0
    assert run.remaining_steps == 2
    assert run.step("a").status is FlowStepStatus.STARTED
    assert run.step("a").started_at == at(1)
    assert run.step("b").status is FlowStepStatus.CREATED
    assert list(run.steps) == ["a", "b"]
    assert seen.events == []
    assert step_seen.events == []


def test_finished_snapshot_takes_step_outputs() -> None:
    run = fresh()
    run.on("*", Recorder())
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=False)
    assert run.status is FlowRunStatus.COMPLETED
    assert run.output == {"b": 2}
    assert run.remaining_steps == 0
    assert run.completed_at == at(9)
    assert run.step("a").output == 1
    assert run.step("b").output == 2


def test_failed_snapshot_takes_the_message_of_the_failed_step() -> None:
    run = fresh()
    rows = [
        step_row("a", "completed", started_at=stamp(1), completed_at=stamp(2)),
        step_row("b", "failed", error_message="boom", started_at=stamp(3), failed_at=stamp(4)),
    ]
    run._apply_snapshot(run_row(status="failed", failed_at=stamp(4)), rows, emit=False)
    assert run.status is FlowRunStatus.FAILED
    assert run.error_message == "boom"
    assert run.step("b").error_message == "boom"


def test_failed_snapshot_without_any_message() -> None:
    run = fresh()
    rows = [step_row("b", "failed", failed_at=stamp(4))]
    run._apply_snapshot(run_row(status="failed", failed_at=stamp(4)), rows, emit=False)
    assert run.error_message == "Unknown error"
    assert run.step("b").error_message == "Unknown error"


def test_skipped_step_snapshot() -> None:
    run = fresh()
    rows = [step_row("a", "skipped", skip_reason="condition_unmet", skipped_at=stamp(1))]
    run._apply_snapshot(run_row(), rows, emit=False)
    step = run.step("a")
    assert (step.status, step.skip_reason, step.skipped_at) == (
        FlowStepStatus.SKIPPED,
        SkipReason.CONDITION_UNMET,
        at(1),
    )


def test_missing_or_empty_step_states() -> None:
    run = fresh()
    run._apply_snapshot(run_row(), [], emit=False)
    run._apply_snapshot(run_row(), emit=False)
    assert run.steps == {}
    assert run.remaining_steps == 2


def test_older_snapshot_does_not_move_state_backwards() -> None:
    run = fresh()
    run.on("*", Recorder())
    run._apply_event(step_started("a"))
    run._apply_event(step_completed("a", output={"from": "event"}))
    run._apply_event(run_completed(output={"from": "event"}))
    # The snapshot was taken before those events arrived.
    rows = [step_row("a", "started", started_at=stamp(0.5)), step_row("b", "created")]
    run._apply_snapshot(run_row(), rows, emit=False)
    assert run.status is FlowRunStatus.COMPLETED
    assert run.output == {"from": "event"}
    assert run.remaining_steps == 0
    step = run.step("a")
    assert step.status is FlowStepStatus.COMPLETED
    assert step.output == {"from": "event"}
    assert step.started_at == at(1)


def test_older_snapshot_still_fills_facts_that_never_change() -> None:
    run = FlowRun(RUN_ID, FLOW_SLUG)
    run.on("*", Recorder())
    run._apply_event(step_completed("a"))
    run._apply_event(run_completed())
    run._apply_snapshot(run_row(), [step_row("a", "started", started_at=stamp(1))], emit=False)
    assert run.status is FlowRunStatus.COMPLETED
    assert run.input == {"foo": "bar"}
    assert run.started_at == T0
    assert run.step("a").started_at == at(1)


def test_equal_status_snapshot_fills_missing_fields_only() -> None:
    run = fresh()
    run.on("*", Recorder())
    run._apply_event(run_completed(output={"from": "event"}, completed_at=at(10)))
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=False)
    assert run.output == {"from": "event"}
    assert run.completed_at == at(10)
    assert run.started_at == T0
    assert run.step("a").output == 1


def test_remaining_steps_only_decreases() -> None:
    run = fresh()
    run._apply_snapshot(run_row(remaining_steps=3), emit=False)
    run._apply_snapshot(run_row(remaining_steps=1), emit=False)
    assert run.remaining_steps == 1
    run._apply_snapshot(run_row(remaining_steps=3), emit=False)
    assert run.remaining_steps == 1


async def test_silent_snapshot_wakes_waiters() -> None:
    run = fresh()
    step_wait = asyncio.create_task(run.step("a").wait_for_status("completed"))
    run_wait = asyncio.create_task(run.wait_for_status("failed"))
    await until(lambda: run._listener_count() == 2)
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=False)
    assert (await step_wait).output == 1
    with pytest.raises(StatusUnreachable):
        await run_wait


def test_terminal_snapshot_disposes_an_unobserved_run() -> None:
    released: list[FlowRun] = []
    run = FlowRun(RUN_ID, FLOW_SLUG, on_dispose=released.append)
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=False)
    assert released == [run]
    assert run.step("b").output == 2


# -- replay (emit=True) ------------------------------------------------------------------


def test_replay_fires_callbacks_for_missed_transitions() -> None:
    run = fresh()
    run._apply_snapshot(
        run_row(), [step_row("a", "started", started_at=stamp(1)), step_row("b")], emit=False
    )
    seen, step_a, step_b = Recorder(), Recorder(), Recorder()
    run.on("*", seen)
    run.step("a").on("*", step_a)
    run.step("b").on("*", step_b)
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=True)
    assert step_a.types == ["step:completed"]
    assert step_a.events[0].output == 1
    assert step_b.types == ["step:completed"]
    assert seen.types == ["run:completed"]
    assert seen.events[0].output == {"b": 2}
    # Fields without an event are filled from the rows.
    assert run.step("b").started_at == at(3)


async def test_replay_feeds_event_iterators_in_time_order() -> None:
    run = fresh()
    got: list[str] = []

    async def consume() -> None:
        async for event in run.events():
            got.append(f"{event.event_type}:{getattr(event, 'step_slug', '')}")

    task = asyncio.create_task(consume())
    await until(lambda: run._listener_count() == 1)
    rows = [
        step_row("late", "completed", started_at=stamp(3), completed_at=stamp(4)),
        step_row("early", "completed", started_at=stamp(1), completed_at=stamp(2)),
        step_row("pending", "created"),
        step_row("mid", "started", started_at=stamp(2.5)),
    ]
    run._apply_snapshot(run_row(status="failed", failed_at=stamp(5)), rows, emit=True)
    await asyncio.wait_for(task, 5)
    assert got == [
        "step:completed:early",
        "step:started:mid",
        "step:completed:late",
        "run:failed:",
    ]


def test_replay_skips_what_was_already_seen() -> None:
    run = fresh()
    seen = Recorder()
    run.on("*", seen)
    step_seen = Recorder()
    run.step("a").on("*", step_seen)
    run._apply_event(step_completed("a", output="live"))
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=True)
    run._apply_snapshot(run_data, steps, emit=True)
    assert step_seen.types == ["step:completed"]
    assert run.step("a").output == "live"
    assert seen.types == ["run:completed"]


def test_replay_of_a_failed_run_names_the_step_error() -> None:
    run = fresh()
    seen = Recorder()
    run.on("failed", seen)
    rows = [step_row("b", "failed", error_message="boom", failed_at=stamp(4))]
    run._apply_snapshot(run_row(status="failed", failed_at=stamp(4)), rows, emit=True)
    assert seen.events[0].error_message == "boom"
    assert run.error_message == "boom"


def test_replay_of_a_started_run_changes_nothing_but_fills_fields() -> None:
    run = fresh()
    seen = Recorder()
    run.on("*", seen)
    run._apply_snapshot(run_row(remaining_steps=1), [step_row("a")], emit=True)
    assert seen.events == []
    assert run.remaining_steps == 1
    assert run.started_at == T0
    assert run.step("a").status is FlowStepStatus.CREATED


# -- invalid snapshots -------------------------------------------------------------------


@pytest.mark.parametrize("emit", [False, True])
@pytest.mark.parametrize(
    ("run_data", "steps", "fragment"),
    [
        (run_row(run_id=OTHER_RUN_ID), [], "does not belong"),
        (run_row(flow_slug="other_flow"), [], "does not belong"),
        (run_row(status="weird"), [], "Invalid run data"),
        ({"run_id": RUN_ID}, [], "Invalid run data"),
        (run_row(), [step_row("a", run_id=OTHER_RUN_ID)], "belongs to run"),
        (run_row(), [step_row("a", "completed", completed_at=stamp(1)), {"status": "x"}], "step"),
    ],
)
def test_invalid_snapshot_raises_and_changes_nothing(
    emit: bool, run_data: dict[str, Any], steps: list[dict[str, Any]], fragment: str
) -> None:
    run = fresh()
    seen = Recorder()
    run.on("*", seen)
    with pytest.raises(InvalidRunData, match=fragment):
        run._apply_snapshot(run_data, steps, emit=emit)
    assert run.steps == {}
    assert run.started_at is None
    assert seen.events == []


def test_replay_needs_the_timestamps_of_each_status() -> None:
    run = fresh()
    rows = [step_row("a", "completed", started_at=stamp(1)), step_row("b", "completed")]
    with pytest.raises(InvalidRunData, match="completed_at is null"):
        run._apply_snapshot(run_row(), rows, emit=True)
    assert run.steps == {}


# -- settled runs (nothing a snapshot could add) ------------------------------------------


def test_a_completed_run_with_every_field_known_is_settled() -> None:
    run = fresh()
    run_data, steps = finished_rows()
    run._apply_snapshot(run_data, steps, emit=False)
    assert run._settled()


def test_a_run_that_missed_a_step_start_is_not_settled() -> None:
    run = fresh()
    run._apply_snapshot(run_row(), [step_row("a", "created")], emit=False)
    run._apply_event(step_completed("a", output=1, completed_at=at(2)))
    run._apply_event(run_completed(output={"a": 1}, completed_at=at(3)))
    assert run.status is FlowRunStatus.COMPLETED
    assert run.step("a").started_at is None  # only a snapshot can bring it now
    assert not run._settled()


def test_started_failed_or_stepless_runs_are_not_settled() -> None:
    started = fresh()
    started._apply_snapshot(run_row(), [step_row("a", "started", started_at=stamp(1))], emit=False)
    assert not started._settled()
    failed = fresh()
    rows = [step_row("a", "completed", output=1, started_at=stamp(1), completed_at=stamp(2))]
    failed._apply_snapshot(run_row(status="failed", failed_at=stamp(4)), rows, emit=False)
    assert not failed._settled()
    stepless = fresh()
    stepless._apply_snapshot(
        run_row(status="completed", output={}, remaining_steps=0, completed_at=stamp(9)),
        [],
        emit=False,
    )
    assert not stepless._settled()
