"""pgflow-py client: start flows and watch their runs live."""

from ._callbacks import Unsubscribe
from ._events import (
    FlowEvent,
    FlowRunEvent,
    RunCompletedEvent,
    RunFailedEvent,
    RunStartedEvent,
    StepCompletedEvent,
    StepEvent,
    StepFailedEvent,
    StepSkippedEvent,
    StepStartedEvent,
)
from ._run import FlowRun
from ._status import FlowRunStatus, FlowStepStatus, SkipReason
from ._step import FlowStep
from .errors import (
    InvalidRunData,
    PgflowClientError,
    StatusUnreachable,
    TransportError,
    WaitCancelled,
    WaitTimeout,
)

__all__ = [
    "FlowEvent",
    "FlowRun",
    "FlowRunEvent",
    "FlowRunStatus",
    "FlowStep",
    "FlowStepStatus",
    "InvalidRunData",
    "PgflowClientError",
    "RunCompletedEvent",
    "RunFailedEvent",
    "RunStartedEvent",
    "SkipReason",
    "StatusUnreachable",
    "StepCompletedEvent",
    "StepEvent",
    "StepFailedEvent",
    "StepSkippedEvent",
    "StepStartedEvent",
    "TransportError",
    "Unsubscribe",
    "WaitCancelled",
    "WaitTimeout",
]
