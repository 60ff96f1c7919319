"""Run and step statuses, ranked so that state only ever moves forward."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FlowRunStatus", "FlowStepStatus", "FlowTaskStatus", "SkipReason"]


class _RankedStatus(StrEnum):
    """A status whose members are declared in precedence order, lowest first."""

    @property
    def rank(self) -> int:
        """Position in the precedence order: an update applies only to a strictly higher rank."""
        return list(type(self)).index(self)

    @property
    def is_terminal(self) -> bool:
        """Whether nothing can follow this status."""
        raise NotImplementedError


class FlowRunStatus(_RankedStatus):
    """Status of a run: ``started`` < ``completed`` < ``failed``."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self is not FlowRunStatus.STARTED


class FlowStepStatus(_RankedStatus):
    """Status of a step: ``created`` < ``started`` < ``completed`` < ``failed`` < ``skipped``."""

    CREATED = "created"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self not in (FlowStepStatus.CREATED, FlowStepStatus.STARTED)


class FlowTaskStatus(StrEnum):
    """Status of a task (a row of ``pgflow.step_tasks``), for code that reads tasks itself.

    A task is ``queued``, then ``started`` by a worker, and ends ``completed`` or ``failed``
    (a failed attempt with attempts left goes back to ``queued``). It ends ``skipped`` when its
    step is skipped, and ``cancelled`` when its run fails while it is queued or started. Not
    ranked: a retry moves a task back.
    """

    QUEUED = "queued"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the task is done with for good (no attempt can follow)."""
        return self not in (FlowTaskStatus.QUEUED, FlowTaskStatus.STARTED)


class SkipReason(StrEnum):
    """Why a step was skipped instead of run."""

    CONDITION_UNMET = "condition_unmet"
    HANDLER_FAILED = "handler_failed"
    DEPENDENCY_SKIPPED = "dependency_skipped"
