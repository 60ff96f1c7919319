"""Run and step statuses, ranked so that state only ever moves forward."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FlowRunStatus", "FlowStepStatus", "SkipReason"]


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


class SkipReason(StrEnum):
    """Why a step was skipped instead of run."""

    CONDITION_UNMET = "condition_unmet"
    HANDLER_FAILED = "handler_failed"
    DEPENDENCY_SKIPPED = "dependency_skipped"
