"""Builders for events, snapshot rows and runs used across the client tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pgflow_client import (
    FlowRun,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    SkipReason,
    StepCompletedEvent,
    StepFailedEvent,
    StepSkippedEvent,
    StepStartedEvent,
)

RUN_ID = "5f0c6a4e-2f6e-4d0e-9a57-3b1f2d7c9e10"
OTHER_RUN_ID = "0b7d3c1a-8e2f-4a6b-9c5d-1e2f3a4b5c6d"
FLOW_SLUG = "test_flow"
STEP_SLUG = "test_step"
ANOTHER_STEP_SLUG = "another_step"

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A moment ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def run_started(**overrides: Any) -> RunStartedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "flow_slug": FLOW_SLUG,
        "input": {"foo": "bar"},
        "started_at": T0,
        "remaining_steps": 2,
    }
    return RunStartedEvent(**(fields | overrides))


def run_completed(**overrides: Any) -> RunCompletedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "flow_slug": FLOW_SLUG,
        "output": {"result": "success"},
        "completed_at": at(10),
    }
    return RunCompletedEvent(**(fields | overrides))


def run_failed(**overrides: Any) -> RunFailedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "flow_slug": FLOW_SLUG,
        "error_message": "Something went wrong",
        "failed_at": at(10),
    }
    return RunFailedEvent(**(fields | overrides))


def step_started(step_slug: str = STEP_SLUG, **overrides: Any) -> StepStartedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "step_slug": step_slug,
        "started_at": at(1),
        "remaining_tasks": 1,
        "remaining_deps": 0,
    }
    return StepStartedEvent(**(fields | overrides))


def step_completed(step_slug: str = STEP_SLUG, **overrides: Any) -> StepCompletedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "step_slug": step_slug,
        "output": {"step_result": "done"},
        "completed_at": at(2),
    }
    return StepCompletedEvent(**(fields | overrides))


def step_failed(step_slug: str = STEP_SLUG, **overrides: Any) -> StepFailedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "step_slug": step_slug,
        "error_message": "Step failed",
        "failed_at": at(2),
    }
    return StepFailedEvent(**(fields | overrides))


def step_skipped(step_slug: str = STEP_SLUG, **overrides: Any) -> StepSkippedEvent:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "step_slug": step_slug,
        "skip_reason": SkipReason.CONDITION_UNMET,
        "skipped_at": at(2),
    }
    return StepSkippedEvent(**(fields | overrides))


def make_run(**overrides: Any) -> FlowRun:
    """A run as the client holds it after a snapshot: started, with known fields."""
    fields: dict[str, Any] = {
        "input": {"foo": "bar"},
        "started_at": T0,
        "remaining_steps": 2,
    }
    return FlowRun(RUN_ID, FLOW_SLUG, **(fields | overrides))


def run_row(**overrides: Any) -> dict[str, Any]:
    """A ``pgflow.runs`` row as ``get_run_with_states`` returns it (JSON)."""
    row: dict[str, Any] = {
        "run_id": RUN_ID,
        "flow_slug": FLOW_SLUG,
        "status": "started",
        "input": {"foo": "bar"},
        "output": None,
        "remaining_steps": 2,
        "started_at": "2024-01-01T12:00:00+00:00",
        "completed_at": None,
        "failed_at": None,
    }
    return row | overrides


def step_row(
    step_slug: str = STEP_SLUG, status: str | None = "created", **overrides: Any
) -> dict[str, Any]:
    """A ``pgflow.step_states`` row as ``get_run_with_states`` returns it (JSON)."""
    row: dict[str, Any] = {
        "flow_slug": FLOW_SLUG,
        "run_id": RUN_ID,
        "step_slug": step_slug,
        "status": status,
        "remaining_tasks": 1,
        "initial_tasks": 1,
        "remaining_deps": 0,
        "output": None,
        "error_message": None,
        "skip_reason": None,
        "created_at": "2024-01-01T12:00:00+00:00",
        "started_at": None,
        "completed_at": None,
        "failed_at": None,
        "skipped_at": None,
    }
    return row | overrides


class Recorder:
    """A callback that collects the events passed to it."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    @property
    def types(self) -> list[str]:
        return [e.event_type for e in self.events]


async def until(condition: Callable[[], bool], *, turns: int = 100) -> None:
    """Let other tasks run until ``condition`` holds (a bounded number of loop turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")
