"""FlowStep state: event mapping, precedence and the lifecycles the SQL produces.

Ports the TS client's FlowStep unit tests (waiting lives in test_wait_for_status.py).
"""

from __future__ import annotations

import pytest

from pgflow_client import FlowStep, FlowStepStatus, SkipReason

from ._factories import (
    ANOTHER_STEP_SLUG,
    RUN_ID,
    STEP_SLUG,
    Recorder,
    at,
    step_completed,
    step_failed,
    step_skipped,
    step_started,
)


def make_step(**kwargs: object) -> FlowStep:
    return FlowStep(RUN_ID, STEP_SLUG, **kwargs)  # type: ignore[arg-type]


def test_initial_state() -> None:
    step = make_step()
    assert (step.run_id, step.step_slug, step.status) == (RUN_ID, STEP_SLUG, "created")
    assert step.output is None
    assert step.skip_reason is None


def test_ignores_events_for_other_steps() -> None:
    step = make_step()
    seen = Recorder()
    step.on("*", seen)
    assert step._apply_event(step_started(ANOTHER_STEP_SLUG)) is False
    assert step.status is FlowStepStatus.CREATED
    assert seen.events == []


# -- event -> state mapping ----------------------------------------------------------


def test_started_event() -> None:
    step = make_step()
    seen = Recorder()
    step.on("started", seen)
    assert step._apply_event(step_started()) is True
    assert step.status is FlowStepStatus.STARTED
    assert step.started_at == at(1)
    assert seen.types == ["step:started"]


def test_completed_event() -> None:
    step = make_step(status="started")
    seen = Recorder()
    step.on("completed", seen)
    assert step._apply_event(step_completed(output={"step_result": "success"})) is True
    assert step.status is FlowStepStatus.COMPLETED
    assert step.completed_at == at(2)
    assert step.output == {"step_result": "success"}
    assert seen.events[0].output == {"step_result": "success"}


def test_failed_event() -> None:
    step = make_step(status="started")
    seen = Recorder()
    step.on("failed", seen)
    assert step._apply_event(step_failed(error_message="Step failed")) is True
    assert step.status is FlowStepStatus.FAILED
    assert step.failed_at == at(2)
    assert step.error_message == "Step failed"
    assert seen.types == ["step:failed"]


def test_failed_event_without_message_falls_back_to_unknown_error() -> None:
    step = make_step(status="started")
    step._apply_event(step_failed(error_message=None))
    assert step.error_message == "Unknown error"


def test_skipped_event() -> None:
    step = make_step()
    seen = Recorder()
    step.on("skipped", seen)
    assert step._apply_event(step_skipped(skip_reason="condition_unmet")) is True
    assert step.status is FlowStepStatus.SKIPPED
    assert step.skipped_at == at(2)
    assert step.skip_reason is SkipReason.CONDITION_UNMET
    assert step.error_message is None
    assert seen.types == ["step:skipped"]


@pytest.mark.parametrize("reason", list(SkipReason))
def test_skipped_event_with_every_reason(reason: SkipReason) -> None:
    step = make_step()
    step._apply_event(step_skipped(skip_reason=reason, error_message="why"))
    assert step.skip_reason is reason
    assert step.error_message == "why"


def test_terminal_events_leave_other_fields_alone() -> None:
    step = make_step(status="started", started_at=at(1))
    step._apply_event(step_completed())
    assert step.started_at == at(1)
    assert step.failed_at is None
    assert step.error_message is None


# -- precedence ------------------------------------------------------------------------


def test_precedence_rules() -> None:
    step = make_step()
    assert step._apply_event(step_started()) is True
    assert step._apply_event(step_started(started_at=at(9))) is False
    assert step.started_at == at(1)
    assert step._apply_event(step_completed()) is True
    assert step._apply_event(step_failed()) is False
    assert step._apply_event(step_skipped()) is False
    assert step.status is FlowStepStatus.COMPLETED


def test_lower_precedence_transitions_are_ignored() -> None:
    step = make_step(status="started", started_at=at(1))
    assert step._apply_event(step_started(started_at=at(5))) is False
    step = make_step(status="failed", error_message="x")
    assert step._apply_event(step_started()) is False
    assert step._apply_event(step_completed()) is False
    assert step.status is FlowStepStatus.FAILED


@pytest.mark.parametrize("status", ["completed", "failed", "skipped"])
def test_terminal_states_are_protected(status: str) -> None:
    step = make_step(status=status)
    seen = Recorder()
    step.on("*", seen)
    for event in (step_started(), step_completed(), step_failed(), step_skipped()):
        assert step._apply_event(event) is False
    assert step.status == status
    assert step.output is None
    assert seen.events == []


# -- lifecycles the SQL produces ---------------------------------------------------------


def test_normal_step_started_then_completed() -> None:
    step = make_step()
    seen = Recorder()
    step.on("*", seen)
    step._apply_event(step_started())
    step._apply_event(step_completed(output={"ok": True}))
    assert seen.types == ["step:started", "step:completed"]
    assert step.output == {"ok": True}


def test_normal_step_started_then_failed() -> None:
    step = make_step()
    seen = Recorder()
    step.on("*", seen)
    step._apply_event(step_started())
    step._apply_event(step_failed(error_message="Handler crashed"))
    assert seen.types == ["step:started", "step:failed"]
    assert step.error_message == "Handler crashed"


def test_skipped_step_gets_only_a_skipped_event() -> None:
    step = make_step()
    seen = Recorder()
    step.on("*", seen)
    step._apply_event(step_skipped(skip_reason="dependency_skipped"))
    assert seen.types == ["step:skipped"]
    assert step.started_at is None


def test_empty_map_step_gets_only_a_completed_event() -> None:
    step = make_step()
    seen = Recorder()
    step.on("*", seen)
    step._apply_event(step_completed(output=[]))
    assert seen.types == ["step:completed"]
    assert step.output == []
    assert step.started_at is None


def test_callback_order_specific_then_wildcard() -> None:
    step = make_step()
    order: list[str] = []
    step.on("*", lambda e: order.append("*"))
    step.on("started", lambda e: order.append("started"))
    step.on("completed", lambda e: order.append("completed"))
    step._apply_event(step_started())
    assert order == ["started", "*"]
