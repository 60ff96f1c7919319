"""Snapshot rows from ``get_run_with_states`` / ``start_flow_with_states``, and their events.

A snapshot holds one ``pgflow.runs`` row and the run's ``pgflow.step_states`` rows. After a
reconnect, rows are turned into the typed events a live subscriber would have seen, so missed
transitions can be replayed through the normal precedence rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as _ValidationError

from ._events import (
    FlowRunEvent,
    RunCompletedEvent,
    RunFailedEvent,
    RunId,
    RunStartedEvent,
    Slug,
    StepCompletedEvent,
    StepEvent,
    StepFailedEvent,
    StepSkippedEvent,
    StepStartedEvent,
    Timestamp,
)
from ._status import FlowRunStatus, FlowStepStatus, SkipReason
from .errors import InvalidRunData

__all__ = [
    "RunRow",
    "StepStateRow",
    "parse_run_row",
    "parse_step_row",
    "run_row_to_event",
    "step_row_to_event",
]


class RunRow(BaseModel):
    """The columns of a ``pgflow.runs`` row the client uses."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: RunId
    flow_slug: Slug
    status: FlowRunStatus
    input: Any = None
    output: Any = None
    remaining_steps: int | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    failed_at: Timestamp | None = None
    cancelled_at: Timestamp | None = None
    cancel_reason: str | None = None
    restart_of_run_id: RunId | None = None

    def cancel_message(self) -> str | None:
        """The error message a cancellation broadcasts, or None when the run was not
        cancelled."""
        if self.cancelled_at is None:
            return None
        return "Run cancelled" + (f": {self.cancel_reason}" if self.cancel_reason else "")


class StepStateRow(BaseModel):
    """The columns of a ``pgflow.step_states`` row the client uses (older SQL lacks some)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: RunId
    step_slug: Slug
    status: FlowStepStatus
    output: Any = None
    error_message: str | None = None
    skip_reason: SkipReason | None = None
    remaining_tasks: int | None = None
    remaining_deps: int | None = None
    initial_tasks: int | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    failed_at: Timestamp | None = None
    skipped_at: Timestamp | None = None


def _problems(exc: _ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def parse_run_row(row: object) -> RunRow:
    """Validate a runs row; raise :class:`InvalidRunData` naming what is wrong."""
    if isinstance(row, RunRow):
        return row
    if not isinstance(row, Mapping):
        raise InvalidRunData(f"Invalid run data: expected an object, got {type(row).__name__}")
    try:
        return RunRow.model_validate(dict(row))
    except _ValidationError as exc:
        run = row.get("run_id", "<unknown>")
        raise InvalidRunData(f"Invalid run data for run {run}: {_problems(exc)}") from None


def parse_step_row(row: object) -> StepStateRow:
    """Validate a step_states row; raise :class:`InvalidRunData` naming what is wrong."""
    if isinstance(row, StepStateRow):
        return row
    if not isinstance(row, Mapping):
        raise InvalidRunData(f"Invalid step data: expected an object, got {type(row).__name__}")
    try:
        return StepStateRow.model_validate(dict(row))
    except _ValidationError as exc:
        step = row.get("step_slug", "<unknown>")
        run = row.get("run_id", "<unknown>")
        raise InvalidRunData(
            f"Invalid step data for step {step} of run {run}: {_problems(exc)}"
        ) from None


def _missing(what: str, column: str, status: str) -> InvalidRunData:
    return InvalidRunData(f"Invalid {what} data: status is '{status}' but {column} is null")


def run_row_to_event(row: RunRow, *, error_message: str | None = None) -> FlowRunEvent:
    """The event announcing the status a runs row is in.

    The runs table keeps no error message, so a failed run's message comes from the
    caller (typically the failed step's message), else stays ``None``.
    """
    what = f"run {row.run_id}"
    if row.status is FlowRunStatus.STARTED:
        if row.started_at is None:
            raise _missing(what, "started_at", row.status)
        if row.remaining_steps is None:
            raise _missing(what, "remaining_steps", row.status)
        return RunStartedEvent(
            run_id=row.run_id,
            flow_slug=row.flow_slug,
            input=row.input,
            started_at=row.started_at,
            remaining_steps=row.remaining_steps,
        )
    if row.status is FlowRunStatus.COMPLETED:
        if row.completed_at is None:
            raise _missing(what, "completed_at", row.status)
        return RunCompletedEvent(
            run_id=row.run_id,
            flow_slug=row.flow_slug,
            output=row.output,
            completed_at=row.completed_at,
        )
    if row.failed_at is None:
        raise _missing(what, "failed_at", row.status)
    return RunFailedEvent(
        run_id=row.run_id,
        flow_slug=row.flow_slug,
        error_message=error_message,
        failed_at=row.failed_at,
    )


def step_row_to_event(row: StepStateRow) -> StepEvent | None:
    """The event announcing the status a step_states row is in (``None`` while ``created``)."""
    what = f"step {row.step_slug} of run {row.run_id}"
    status = row.status
    if status is FlowStepStatus.CREATED:
        return None
    if status is FlowStepStatus.STARTED:
        if row.started_at is None:
            raise _missing(what, "started_at", status)
        return StepStartedEvent(
            run_id=row.run_id,
            step_slug=row.step_slug,
            started_at=row.started_at,
            remaining_tasks=row.remaining_tasks,
            remaining_deps=row.remaining_deps,
        )
    if status is FlowStepStatus.COMPLETED:
        if row.completed_at is None:
            raise _missing(what, "completed_at", status)
        return StepCompletedEvent(
            run_id=row.run_id,
            step_slug=row.step_slug,
            output=row.output,
            completed_at=row.completed_at,
        )
    if status is FlowStepStatus.FAILED:
        if row.failed_at is None:
            raise _missing(what, "failed_at", status)
        return StepFailedEvent(
            run_id=row.run_id,
            step_slug=row.step_slug,
            error_message=row.error_message,
            failed_at=row.failed_at,
        )
    if row.skipped_at is None:
        raise _missing(what, "skipped_at", status)
    if row.skip_reason is None:
        raise _missing(what, "skip_reason", status)
    return StepSkippedEvent(
        run_id=row.run_id,
        step_slug=row.step_slug,
        skip_reason=row.skip_reason,
        error_message=row.error_message,
        skipped_at=row.skipped_at,
    )
