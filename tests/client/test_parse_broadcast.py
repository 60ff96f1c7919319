"""Raw broadcasts to typed events: routing, JSON decoding, and dropping malformed payloads.

Ports the TS client's type-guard, JSON-parsing and broadcast-routing tests.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from pgflow_client import (
    FlowRunStatus,
    FlowStepStatus,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    SkipReason,
    StepCompletedEvent,
    StepFailedEvent,
    StepSkippedEvent,
    StepStartedEvent,
)
from pgflow_client._events import parse_broadcast

from ._factories import FLOW_SLUG, RUN_ID

STAMP = "2024-01-01T00:00:00.123456+00:00"


def run_payload(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_type": f"run:{status}",
        "run_id": RUN_ID,
        "flow_slug": FLOW_SLUG,
        "status": status,
        **extra,
    }


def step_payload(slug: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_type": f"step:{status}",
        "run_id": RUN_ID,
        "step_slug": slug,
        "status": status,
        **extra,
    }


@pytest.fixture
def dropped(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="pgflow.client")
    return caplog


def assert_dropped(caplog: pytest.LogCaptureFixture, *fragments: str) -> None:
    records = [r for r in caplog.records if r.name == "pgflow.client"]
    assert records, "expected a log record on pgflow.client"
    text = records[-1].getMessage()
    for fragment in fragments:
        assert fragment in text


# -- run events ---------------------------------------------------------------------


def test_run_started() -> None:
    event = parse_broadcast(
        "run:started",
        run_payload("started", input={"a": 1}, started_at=STAMP, remaining_steps=3),
    )
    assert isinstance(event, RunStartedEvent)
    assert event.event_type == "run:started"
    assert event.run_id == RUN_ID
    assert event.flow_slug == FLOW_SLUG
    assert event.status is FlowRunStatus.STARTED
    assert event.input == {"a": 1}
    assert event.remaining_steps == 3
    assert event.started_at == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def test_run_completed() -> None:
    event = parse_broadcast(
        "run:completed", run_payload("completed", output={"x": [1, 2]}, completed_at=STAMP)
    )
    assert isinstance(event, RunCompletedEvent)
    assert event.status is FlowRunStatus.COMPLETED
    assert event.output == {"x": [1, 2]}


def test_run_failed() -> None:
    event = parse_broadcast(
        "run:failed", run_payload("failed", error_message="boom", failed_at=STAMP)
    )
    assert isinstance(event, RunFailedEvent)
    assert event.error_message == "boom"


def test_run_failed_without_error_message_is_accepted() -> None:
    # complete_task's type-violation path sends run:failed without an error_message.
    event = parse_broadcast("run:failed", run_payload("failed", failed_at=STAMP))
    assert isinstance(event, RunFailedEvent)
    assert event.error_message is None


# -- step events --------------------------------------------------------------------


def test_step_started_keeps_task_counts() -> None:
    event = parse_broadcast(
        "step:fetch:started",
        step_payload("fetch", "started", started_at=STAMP, remaining_tasks=4, remaining_deps=0),
    )
    assert isinstance(event, StepStartedEvent)
    assert event.step_slug == "fetch"
    assert event.status is FlowStepStatus.STARTED
    assert (event.remaining_tasks, event.remaining_deps) == (4, 0)


def test_step_completed() -> None:
    event = parse_broadcast(
        "step:fetch:completed", step_payload("fetch", "completed", output=[1], completed_at=STAMP)
    )
    assert isinstance(event, StepCompletedEvent)
    assert event.output == [1]


def test_step_failed() -> None:
    event = parse_broadcast(
        "step:fetch:failed",
        step_payload("fetch", "failed", error_message="Condition not met", failed_at=STAMP),
    )
    assert isinstance(event, StepFailedEvent)
    assert event.error_message == "Condition not met"


@pytest.mark.parametrize("reason", list(SkipReason))
def test_step_skipped_with_every_reason(reason: SkipReason) -> None:
    event = parse_broadcast(
        "step:fetch:skipped",
        step_payload("fetch", "skipped", skip_reason=reason.value, skipped_at=STAMP),
    )
    assert isinstance(event, StepSkippedEvent)
    assert event.skip_reason is reason
    assert event.error_message is None


def test_step_skipped_after_handler_failure_keeps_error_message() -> None:
    event = parse_broadcast(
        "step:fetch:skipped",
        step_payload(
            "fetch",
            "skipped",
            skip_reason="handler_failed",
            error_message="ValueError: nope",
            skipped_at=STAMP,
        ),
    )
    assert isinstance(event, StepSkippedEvent)
    assert event.error_message == "ValueError: nope"


def test_step_slug_comes_from_the_payload_and_may_be_missing() -> None:
    payload = step_payload("fetch", "completed", completed_at=STAMP)
    del payload["step_slug"]
    event = parse_broadcast("step:fetch:completed", payload)
    assert isinstance(event, StepCompletedEvent)
    assert event.step_slug == "fetch"


def test_extra_keys_are_ignored() -> None:
    payload = step_payload(
        "fetch",
        "completed",
        completed_at=STAMP,
        id="9a8b7c6d-0000-4000-8000-000000000000",
        flow_slug=FLOW_SLUG,
        remaining_tasks=0,
        remaining_deps=0,
        started_at=STAMP,
        something_new={"nested": True},
    )
    event = parse_broadcast("step:fetch:completed", payload)
    assert isinstance(event, StepCompletedEvent)
    assert not hasattr(event, "something_new")


def test_event_type_comes_from_the_event_name() -> None:
    # run:started payloads carry no event_type in some senders; a wrong one is overridden.
    payload = run_payload("started", started_at=STAMP, remaining_steps=1)
    del payload["event_type"]
    assert isinstance(parse_broadcast("run:started", payload), RunStartedEvent)
    payload["event_type"] = "bogus"
    assert isinstance(parse_broadcast("run:started", payload), RunStartedEvent)


# -- values -------------------------------------------------------------------------


def test_timestamps_are_timezone_aware() -> None:
    cases = {
        "2024-01-01T00:00:00Z": datetime(2024, 1, 1, tzinfo=UTC),
        "2024-01-01 02:00:00.5+02": datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        "2024-01-01T00:00:00": datetime(2024, 1, 1, tzinfo=UTC),
    }
    for text, expected in cases.items():
        event = parse_broadcast(
            "step:s:completed", step_payload("s", "completed", completed_at=text)
        )
        assert isinstance(event, StepCompletedEvent)
        assert event.completed_at.tzinfo is not None
        assert event.completed_at == expected
    offset = parse_broadcast(
        "step:s:completed", step_payload("s", "completed", completed_at="2024-01-01T05:30:00+05:30")
    )
    assert isinstance(offset, StepCompletedEvent)
    assert offset.completed_at.utcoffset() == timedelta(hours=5, minutes=30)
    assert offset.completed_at.tzinfo == timezone(timedelta(hours=5, minutes=30))


def test_run_id_is_canonical_uuid_text() -> None:
    payload = run_payload("failed", failed_at=STAMP)
    payload["run_id"] = RUN_ID.upper()
    event = parse_broadcast("run:failed", payload)
    assert event is not None
    assert event.run_id == RUN_ID
    assert event.run_id == str(UUID(RUN_ID))


# -- JSON text in input/output (port of json-parsing tests) ------------------------------


def test_json_text_output_is_decoded() -> None:
    output = {"result": "success", "data": {"count": 42, "items": ["a", "b", "c"]}}
    event = parse_broadcast(
        "step:simple_step:completed",
        step_payload("simple_step", "completed", output=json.dumps(output), completed_at=STAMP),
    )
    assert isinstance(event, StepCompletedEvent)
    assert event.output == output


def test_non_json_output_text_is_kept() -> None:
    event = parse_broadcast(
        "step:simple_step:completed",
        step_payload("simple_step", "completed", output="plain text output", completed_at=STAMP),
    )
    assert isinstance(event, StepCompletedEvent)
    assert event.output == "plain text output"


def test_already_decoded_output_is_unchanged() -> None:
    output = {"already": "parsed"}
    event = parse_broadcast(
        "step:simple_step:completed",
        step_payload("simple_step", "completed", output=output, completed_at=STAMP),
    )
    assert isinstance(event, StepCompletedEvent)
    assert event.output == output


def test_json_text_input_of_run_started_is_decoded() -> None:
    flow_input = {"url": "https://example.com", "options": {"timeout": 30000, "retries": 3}}
    event = parse_broadcast(
        "run:started",
        run_payload("started", input=json.dumps(flow_input), started_at=STAMP, remaining_steps=3),
    )
    assert isinstance(event, RunStartedEvent)
    assert event.input == flow_input


def test_json_text_output_of_run_completed_is_decoded() -> None:
    output = {"final_result": "success", "summary": {"errors": 0}}
    event = parse_broadcast(
        "run:completed", run_payload("completed", output=json.dumps(output), completed_at=STAMP)
    )
    assert isinstance(event, RunCompletedEvent)
    assert event.output == output


@pytest.mark.parametrize("text", ['{"malformed": json}', ""])
def test_malformed_or_empty_json_text_is_kept(text: str) -> None:
    event = parse_broadcast(
        "step:simple_step:completed",
        step_payload("simple_step", "completed", output=text, completed_at=STAMP),
    )
    assert isinstance(event, StepCompletedEvent)
    assert event.output == text


# -- malformed broadcasts are logged and dropped (port of type-guard rejections) ---------


@pytest.mark.parametrize(
    ("name", "payload", "fragment"),
    [
        ("run:started", {"run_id": RUN_ID, "status": "started"}, "started_at"),
        ("run:completed", run_payload("completed"), "completed_at"),
        ("run:failed", {"run_id": RUN_ID, "status": "failed", "failed_at": STAMP}, "flow_slug"),
        ("step:s:failed", step_payload("s", "failed"), "failed_at"),
        ("step:s:skipped", step_payload("s", "skipped", skipped_at=STAMP), "skip_reason"),
        ("run:failed", {"flow_slug": FLOW_SLUG, "status": "failed", "failed_at": STAMP}, "run_id"),
    ],
    ids=["started-bare", "no-completed_at", "no-flow_slug", "no-failed_at", "no-reason", "no-id"],
)
def test_missing_keys(
    dropped: pytest.LogCaptureFixture, name: str, payload: dict[str, Any], fragment: str
) -> None:
    assert parse_broadcast(name, payload) is None
    assert_dropped(dropped, name, fragment)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("run:completed", run_payload("failed", completed_at=STAMP)),
        ("run:started", run_payload("created", started_at=STAMP, remaining_steps=1)),
        ("step:s:started", step_payload("s", "completed", started_at=STAMP)),
        (
            "step:s:completed",
            {**step_payload("s", "completed", completed_at=STAMP), "status": None},
        ),
        ("run:started", {k: v for k, v in run_payload("started").items() if k != "status"}),
    ],
    ids=["run-mismatch", "run-unknown", "step-mismatch", "null-status", "no-status"],
)
def test_status_must_match_event_name(
    dropped: pytest.LogCaptureFixture, name: str, payload: dict[str, Any]
) -> None:
    assert parse_broadcast(name, payload) is None
    assert_dropped(dropped, "does not match the event name")


@pytest.mark.parametrize(
    "payload",
    [
        step_payload("s", "completed", completed_at="not a time"),
        step_payload("s", "completed", completed_at=12.5j),
        step_payload("s", "started", started_at=STAMP, remaining_tasks="many"),
        {**step_payload("s", "completed", completed_at=STAMP), "run_id": "not-a-uuid"},
        {**step_payload("s", "completed", completed_at=STAMP), "run_id": 42},
        {**step_payload("s", "skipped", skipped_at=STAMP), "skip_reason": "bored"},
    ],
    ids=["bad-time", "complex-time", "bad-count", "bad-uuid", "int-uuid", "bad-reason"],
)
def test_wrong_types(dropped: pytest.LogCaptureFixture, payload: dict[str, Any]) -> None:
    name = f"step:s:{payload['status']}"
    assert parse_broadcast(name, payload) is None
    assert_dropped(dropped, name)


def test_step_slug_must_match_event_name(dropped: pytest.LogCaptureFixture) -> None:
    payload = step_payload("other", "completed", completed_at=STAMP)
    assert parse_broadcast("step:fetch:completed", payload) is None
    assert_dropped(dropped, "step_slug 'other' does not match")


def test_step_payload_under_a_run_event_name_is_rejected(
    dropped: pytest.LogCaptureFixture,
) -> None:
    # A step payload has no flow_slug, so it is not a valid run event.
    payload = step_payload("fetch", "completed", completed_at=STAMP)
    assert parse_broadcast("run:completed", payload) is None
    assert_dropped(dropped, "flow_slug")


@pytest.mark.parametrize(
    "name",
    ["run:created", "step:fetch:created", "step::completed", "step:completed", "other", "", "run"],
)
def test_unknown_event_names(dropped: pytest.LogCaptureFixture, name: str) -> None:
    payload = step_payload("fetch", "created", created_at=STAMP)
    assert parse_broadcast(name, payload) is None
    assert_dropped(dropped, "not a pgflow event name")


@pytest.mark.parametrize(
    "payload",
    [None, [], [run_payload("completed", completed_at=STAMP)], "text", 42, True, print, object()],
    ids=["none", "empty-list", "list", "str", "int", "bool", "function", "object"],
)
def test_non_object_payloads(dropped: pytest.LogCaptureFixture, payload: object) -> None:
    assert parse_broadcast("run:completed", payload) is None
    assert_dropped(dropped, "not an object")


def test_deeply_nested_and_circular_values_do_not_break_parsing(
    dropped: pytest.LogCaptureFixture,
) -> None:
    nested: dict[str, Any] = {}
    node = nested
    for _ in range(200):
        node["next"] = {}
        node = node["next"]
    event = parse_broadcast(
        "step:s:completed", step_payload("s", "completed", output=nested, completed_at=STAMP)
    )
    assert isinstance(event, StepCompletedEvent)
    assert event.output is nested

    circular: dict[str, Any] = {"status": "completed"}
    circular["self"] = circular
    assert parse_broadcast("step:s:completed", circular) is None
    assert_dropped(dropped, "step:s:completed")


def test_large_payloads_are_parsed_and_logged_briefly(dropped: pytest.LogCaptureFixture) -> None:
    big = [{"index": i, "value": "x" * 20} for i in range(10_000)]
    event = parse_broadcast(
        "step:s:completed", step_payload("s", "completed", output=big, completed_at=STAMP)
    )
    assert isinstance(event, StepCompletedEvent)
    assert len(event.output) == 10_000

    assert parse_broadcast("step:s:completed", step_payload("s", "completed", output=big)) is None
    assert len(dropped.records[-1].getMessage()) < 1_000


def test_events_are_immutable() -> None:
    event = parse_broadcast(
        "step:s:completed", step_payload("s", "completed", output=1, completed_at=STAMP)
    )
    assert event is not None
    with pytest.raises(ValueError, match="frozen"):
        event.status = FlowStepStatus.FAILED


def test_very_deep_malformed_payloads_are_logged_briefly(
    dropped: pytest.LogCaptureFixture,
) -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        child: list[Any] = []
        node.append(child)
        node = child
    assert parse_broadcast("step:s:completed", step_payload("s", "completed", output=deep)) is None
    assert len(dropped.records[-1].getMessage()) < 1_000
