"""FlowRun state: event mapping, precedence, lifecycles, foreign events, step caching.

Ports the TS client's FlowRun unit tests (waiting and disposal live in their own files).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import pytest

from pgflow_client import (
    FlowRun,
    FlowRunStatus,
    FlowStep,
    FlowStepStatus,
    InvalidRunId,
    PgflowClientError,
)

from ._factories import (
    ANOTHER_STEP_SLUG,
    FLOW_SLUG,
    OTHER_RUN_ID,
    RUN_ID,
    STEP_SLUG,
    T0,
    Recorder,
    at,
    make_run,
    run_completed,
    run_failed,
    run_started,
    step_completed,
    step_started,
)


def test_initial_state() -> None:
    run = make_run()
    assert run.run_id == RUN_ID
    assert run.flow_slug == FLOW_SLUG
    assert run.status is FlowRunStatus.STARTED
    assert run.input == {"foo": "bar"}
    assert run.output is None
    assert run.error_message is None
    assert run.started_at == T0
    assert run.completed_at is None
    assert run.failed_at is None
    assert run.remaining_steps == 2
    assert run.steps == {}
    assert not run.disposed


def test_defaults_before_any_snapshot() -> None:
    run = FlowRun(UUID(RUN_ID), FLOW_SLUG)
    assert run.run_id == RUN_ID
    assert run.status is FlowRunStatus.STARTED
    assert run.started_at is None
    assert run.remaining_steps is None


@pytest.mark.parametrize("bad", ["run-1", "", 42, None])
def test_run_id_must_be_a_uuid(bad: Any) -> None:
    with pytest.raises(InvalidRunId) as caught:
        FlowRun(bad, FLOW_SLUG)
    assert caught.value.run_id == bad
    # Callers that catch the broad classes keep working.
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, PgflowClientError)
    assert "UUID" in str(caught.value)


def test_run_ids_are_canonical() -> None:
    upper = RUN_ID.upper()
    assert FlowRun(upper, FLOW_SLUG).run_id == RUN_ID
    assert FlowRun(f"{{{RUN_ID}}}", FLOW_SLUG).run_id == RUN_ID


def test_status_may_be_given_as_text() -> None:
    assert FlowRun(RUN_ID, FLOW_SLUG, status="failed").status is FlowRunStatus.FAILED
    with pytest.raises(ValueError, match="skipped"):
        FlowRun(RUN_ID, FLOW_SLUG, status="skipped")


# -- event -> state mapping ----------------------------------------------------------


def test_ignores_started_event_when_already_started() -> None:
    run = make_run(remaining_steps=2)
    seen, started = Recorder(), Recorder()
    run.on("*", seen)
    run.on("started", started)

    assert run._apply_event(run_started(remaining_steps=7)) is False

    assert seen.events == []
    assert started.events == []
    assert run.status is FlowRunStatus.STARTED
    assert run.remaining_steps == 2


def test_completed_event() -> None:
    run = make_run(remaining_steps=1)
    seen, completed = Recorder(), Recorder()
    run.on("*", seen)
    run.on("completed", completed)

    event = run_completed(output={"result": "success"})
    assert run._apply_event(event) is True

    assert run.status is FlowRunStatus.COMPLETED
    assert run.completed_at == at(10)
    assert run.output == {"result": "success"}
    assert run.remaining_steps == 0
    assert completed.events == [event]
    assert seen.events == [event]

    late = Recorder()
    run.on("*", late)
    assert run._apply_event(run_completed(output="other")) is False
    assert late.events == []
    assert run.output == {"result": "success"}


def test_failed_event() -> None:
    run = make_run(remaining_steps=1)
    seen, failed = Recorder(), Recorder()
    run.on("*", seen)
    run.on("failed", failed)

    assert run._apply_event(run_failed(error_message="Something went wrong")) is True

    assert run.status is FlowRunStatus.FAILED
    assert run.failed_at == at(10)
    assert run.error_message == "Something went wrong"
    assert run.remaining_steps == 1
    assert [e.error_message for e in failed.events] == ["Something went wrong"]
    assert seen.types == ["run:failed"]


def test_failed_event_without_message_falls_back_to_unknown_error() -> None:
    run = make_run()
    seen = Recorder()
    run.on("failed", seen)
    assert run._apply_event(run_failed(error_message=None)) is True
    assert run.error_message == "Unknown error"
    assert seen.events[0].error_message is None


# -- precedence & terminal protection -------------------------------------------------


def test_status_precedence_rules() -> None:
    run = make_run()
    statuses = []
    for event in (run_started(), run_completed(output={"ok": 1}), run_failed()):
        statuses.append((run._apply_event(event), run.status))
    assert statuses == [
        (False, FlowRunStatus.STARTED),
        (True, FlowRunStatus.COMPLETED),
        (False, FlowRunStatus.COMPLETED),
    ]
    assert run.output == {"ok": 1}
    assert run.error_message is None


def test_lower_precedence_events_are_ignored() -> None:
    run = make_run(status="failed", error_message="first")
    assert run._apply_event(run_started()) is False
    assert run._apply_event(run_completed()) is False
    assert run.status is FlowRunStatus.FAILED
    assert run.output is None
    assert run.error_message == "first"


def test_terminal_state_is_protected_from_later_events() -> None:
    run = make_run(status="completed", output={"result": "success"}, completed_at=at(5))
    assert run._apply_event(run_failed()) is False
    assert run.status is FlowRunStatus.COMPLETED
    assert run.output == {"result": "success"}
    assert run.error_message is None
    assert run.failed_at is None


def test_terminal_state_is_protected_from_same_status_events() -> None:
    run = make_run(status="completed", output={"result": "success"}, completed_at=at(5))
    assert run._apply_event(run_completed(output={"result": "different"})) is False
    assert run.output == {"result": "success"}
    assert run.completed_at == at(5)


# -- lifecycles -----------------------------------------------------------------------


def test_happy_path_started_then_completed() -> None:
    run = make_run(remaining_steps=1)
    seen = Recorder()
    run.on("*", seen)
    run._apply_event(run_started())
    run._apply_event(run_completed(output={"final": "result"}))
    assert seen.types == ["run:completed"]
    assert seen.events[0].output == {"final": "result"}


def test_failure_path_has_no_completed_event() -> None:
    run = make_run(remaining_steps=1)
    seen = Recorder()
    run.on("*", seen)
    run._apply_event(run_failed(error_message="Task execution failed"))
    run._apply_event(run_completed())
    assert seen.types == ["run:failed"]
    assert seen.events[0].error_message == "Task execution failed"


def test_payloads_reach_callbacks_unchanged() -> None:
    run = make_run()
    seen = Recorder()
    run.on("completed", seen)
    output = {"data": [1, 2, 3], "metadata": {"count": 3, "processed": True}}
    event = run_completed(output=output)
    run._apply_event(event)
    assert seen.events == [event]
    assert seen.events[0].output == output
    assert isinstance(seen.events[0].completed_at, datetime)


# -- foreign events -------------------------------------------------------------------


def test_ignores_events_for_other_runs() -> None:
    run = make_run()
    seen = Recorder()
    run.on("*", seen)
    assert run._apply_event(run_completed(run_id=OTHER_RUN_ID)) is False
    assert run._apply_event(run_failed(run_id=OTHER_RUN_ID)) is False
    assert run._apply_event(step_completed(run_id=OTHER_RUN_ID)) is False
    assert run.status is FlowRunStatus.STARTED
    assert seen.events == []
    assert run.steps == {}


def test_step_ignores_events_for_other_runs() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    assert step._apply_event(step_completed(run_id=OTHER_RUN_ID)) is False
    assert step.status is FlowStepStatus.CREATED


# -- steps ----------------------------------------------------------------------------


def test_steps_are_created_and_cached() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    assert isinstance(step, FlowStep)
    assert run.step(STEP_SLUG) is step
    assert run.step(ANOTHER_STEP_SLUG) is not step
    assert list(run.steps) == [STEP_SLUG, ANOTHER_STEP_SLUG]


def test_new_steps_start_created_and_empty() -> None:
    step = make_run().step(STEP_SLUG)
    assert step.run_id == RUN_ID
    assert step.step_slug == STEP_SLUG
    assert step.status is FlowStepStatus.CREATED
    for field in (
        "output",
        "error_message",
        "started_at",
        "completed_at",
        "failed_at",
        "skipped_at",
        "skip_reason",
    ):
        assert getattr(step, field) is None


def test_step_events_update_the_step_through_the_run() -> None:
    run = make_run()
    step = run.step(STEP_SLUG)
    seen = Recorder()
    step.on("*", seen)
    assert run._apply_event(step_started()) is True
    assert run._apply_event(step_completed(output={"x": 1})) is True
    assert step.status is FlowStepStatus.COMPLETED
    assert step.output == {"x": 1}
    assert seen.types == ["step:started", "step:completed"]
    assert run.status is FlowRunStatus.STARTED


def test_events_for_unknown_steps_create_them() -> None:
    run = make_run()
    assert run._apply_event(step_completed("never_accessed", output=[])) is True
    assert run.steps["never_accessed"].status is FlowStepStatus.COMPLETED
    assert run.step("never_accessed").output == []


def test_run_callbacks_do_not_see_step_events() -> None:
    run = make_run()
    seen = Recorder()
    run.on("*", seen)
    run._apply_event(step_started())
    assert seen.events == []


def test_steps_mapping_is_read_only() -> None:
    run = make_run()
    run.step(STEP_SLUG)
    with pytest.raises(TypeError):
        run.steps["x"] = run.step(STEP_SLUG)  # type: ignore[index]


def test_state_attributes_are_read_only() -> None:
    run = make_run()
    with pytest.raises(AttributeError):
        run.status = FlowRunStatus.COMPLETED  # type: ignore[misc]


def test_repr() -> None:
    assert repr(make_run()) == (
        f"<FlowRun run_id='{RUN_ID}' flow_slug='{FLOW_SLUG}' status='started'>"
    )
    assert (
        repr(make_run().step("s")) == f"<FlowStep step_slug='s' status='created' run_id='{RUN_ID}'>"
    )
