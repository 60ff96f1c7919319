"""Snapshot rows (runs / step_states) validated and turned into the events they imply."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from pgflow_client import (
    InvalidRunData,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    SkipReason,
    StepCompletedEvent,
    StepFailedEvent,
    StepSkippedEvent,
    StepStartedEvent,
)
from pgflow_client._snapshot import (
    parse_run_row,
    parse_step_row,
    run_row_to_event,
    step_row_to_event,
)

from ._factories import RUN_ID, STEP_SLUG, T0, run_row, step_row

STAMP = "2024-01-01T12:00:05+00:00"


def test_started_run_row() -> None:
    event = run_row_to_event(parse_run_row(run_row()))
    assert isinstance(event, RunStartedEvent)
    assert event.started_at == T0
    assert event.remaining_steps == 2
    assert event.input == {"foo": "bar"}


def test_completed_run_row() -> None:
    row = run_row(status="completed", output={"s": 1}, remaining_steps=0, completed_at=STAMP)
    event = run_row_to_event(parse_run_row(row))
    assert isinstance(event, RunCompletedEvent)
    assert event.output == {"s": 1}


def test_failed_run_row_takes_the_message_from_the_caller() -> None:
    row = parse_run_row(run_row(status="failed", failed_at=STAMP))
    plain = run_row_to_event(row)
    assert isinstance(plain, RunFailedEvent)
    assert plain.error_message is None
    named = run_row_to_event(row, error_message="step boom")
    assert isinstance(named, RunFailedEvent)
    assert named.error_message == "step boom"


def test_created_step_row_has_no_event() -> None:
    assert step_row_to_event(parse_step_row(step_row())) is None


def test_started_step_row() -> None:
    event = step_row_to_event(parse_step_row(step_row(status="started", started_at=STAMP)))
    assert isinstance(event, StepStartedEvent)
    assert (event.remaining_tasks, event.remaining_deps) == (1, 0)


def test_completed_step_row_keeps_its_output() -> None:
    row = step_row(status="completed", output=[1, 2, 3], started_at=STAMP, completed_at=STAMP)
    event = step_row_to_event(parse_step_row(row))
    assert isinstance(event, StepCompletedEvent)
    assert event.output == [1, 2, 3]


def test_failed_step_row() -> None:
    row = step_row(status="failed", error_message="boom", failed_at=STAMP)
    event = step_row_to_event(parse_step_row(row))
    assert isinstance(event, StepFailedEvent)
    assert event.error_message == "boom"


def test_skipped_step_row() -> None:
    row = step_row(status="skipped", skip_reason="dependency_skipped", skipped_at=STAMP)
    event = step_row_to_event(parse_step_row(row))
    assert isinstance(event, StepSkippedEvent)
    assert event.skip_reason is SkipReason.DEPENDENCY_SKIPPED


def test_rows_of_older_sql_without_output_or_skip_columns() -> None:
    row = step_row(status="completed", completed_at=STAMP)
    for column in ("output", "skip_reason", "skipped_at"):
        del row[column]
    event = step_row_to_event(parse_step_row(row))
    assert isinstance(event, StepCompletedEvent)
    assert event.output is None


def test_rows_read_with_psycopg_hold_python_values() -> None:
    row: dict[str, Any] = run_row(run_id=UUID(RUN_ID), started_at=datetime(2024, 1, 1, 12))
    parsed = parse_run_row(row)
    assert parsed.run_id == RUN_ID
    assert parsed.started_at == T0
    assert parsed.started_at is not None
    assert parsed.started_at.tzinfo is not None


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"run_id": RUN_ID, "flow_slug": "f"}, "status"),
        (run_row(status="paused"), "status"),
        (run_row(run_id=None), "run_id"),
        (run_row(flow_slug=""), "flow_slug"),
        (run_row(remaining_steps="two"), "remaining_steps"),
        (None, "expected an object"),
        ([run_row()], "expected an object"),
    ],
)
def test_invalid_run_rows(row: object, fragment: str) -> None:
    with pytest.raises(InvalidRunData, match="Invalid run data") as info:
        parse_run_row(row)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"run_id": RUN_ID, "status": "created"}, "step_slug"),
        (step_row(status=None), "status"),
        (step_row(status="pending"), "status"),
        (step_row(skip_reason="bored"), "skip_reason"),
        ("step", "expected an object"),
    ],
)
def test_invalid_step_rows(row: object, fragment: str) -> None:
    with pytest.raises(InvalidRunData, match="Invalid step data") as info:
        parse_step_row(row)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("row", "column"),
    [
        (step_row(status="started"), "started_at"),
        (step_row(status="completed"), "completed_at"),
        (step_row(status="failed"), "failed_at"),
        (step_row(status="skipped", skip_reason="condition_unmet"), "skipped_at"),
        (step_row(status="skipped", skipped_at=STAMP), "skip_reason"),
    ],
)
def test_step_row_lacking_the_timestamp_of_its_status(row: dict[str, Any], column: str) -> None:
    with pytest.raises(InvalidRunData, match=f"{column} is null") as info:
        step_row_to_event(parse_step_row(row))
    assert STEP_SLUG in str(info.value)


@pytest.mark.parametrize(
    ("row", "column"),
    [
        (run_row(started_at=None), "started_at"),
        (run_row(remaining_steps=None), "remaining_steps"),
        (run_row(status="completed"), "completed_at"),
        (run_row(status="failed"), "failed_at"),
    ],
)
def test_run_row_lacking_the_timestamp_of_its_status(row: dict[str, Any], column: str) -> None:
    with pytest.raises(InvalidRunData, match=f"{column} is null") as info:
        run_row_to_event(parse_run_row(row))
    assert RUN_ID in str(info.value)


def test_row_timestamps_are_parsed_from_postgres_text() -> None:
    row = parse_step_row(step_row(status="started", started_at="2024-01-01 12:00:00.25+00"))
    assert row.started_at == datetime(2024, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)
