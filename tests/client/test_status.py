"""Statuses: string enums ranked in precedence order, with terminal ones marked."""

from __future__ import annotations

import pytest

from pgflow_client import FlowRunStatus, FlowStepStatus, FlowTaskStatus, SkipReason


def test_run_statuses_rank_started_completed_failed() -> None:
    ranked = sorted(FlowRunStatus, key=lambda s: s.rank)
    assert ranked == [FlowRunStatus.STARTED, FlowRunStatus.COMPLETED, FlowRunStatus.FAILED]
    assert [s.rank for s in ranked] == [0, 1, 2]


def test_step_statuses_rank_created_to_skipped() -> None:
    ranked = sorted(FlowStepStatus, key=lambda s: s.rank)
    assert [s.value for s in ranked] == ["created", "started", "completed", "failed", "skipped"]


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (FlowRunStatus.STARTED, False),
        (FlowRunStatus.COMPLETED, True),
        (FlowRunStatus.FAILED, True),
        (FlowStepStatus.CREATED, False),
        (FlowStepStatus.STARTED, False),
        (FlowStepStatus.COMPLETED, True),
        (FlowStepStatus.FAILED, True),
        (FlowStepStatus.SKIPPED, True),
    ],
)
def test_terminal_statuses(status: FlowRunStatus | FlowStepStatus, terminal: bool) -> None:
    assert status.is_terminal is terminal


def test_statuses_are_plain_strings() -> None:
    text: str = "completed"
    assert text == FlowRunStatus.COMPLETED
    assert FlowStepStatus("skipped") is FlowStepStatus.SKIPPED
    assert f"{FlowStepStatus.STARTED}" == "started"
    assert isinstance(FlowRunStatus.FAILED, str)


def test_skip_reasons() -> None:
    assert {r.value for r in SkipReason} == {
        "condition_unmet",
        "handler_failed",
        "dependency_skipped",
    }


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        ("queued", False),
        ("started", False),
        ("completed", True),
        ("failed", True),
        ("skipped", True),
        ("cancelled", True),
    ],
)
def test_task_statuses_and_which_end_a_task(status: str, terminal: bool) -> None:
    assert FlowTaskStatus(status).is_terminal is terminal
