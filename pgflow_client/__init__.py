"""pgflow-py client: start flows and watch their runs live."""

from ._callbacks import Unsubscribe
from ._client import PgflowClient
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
from ._live import LiveRunView, live
from ._records import RunRecord
from ._run import FlowRun
from ._status import FlowRunStatus, FlowStepStatus, FlowTaskStatus, SkipReason
from ._step import FlowStep
from ._sync import SyncFlowRun, SyncFlowStep, SyncPgflowClient
from .errors import (
    ClientClosed,
    FlowNotFound,
    InvalidFlowInput,
    InvalidRunData,
    InvalidRunFilter,
    InvalidRunId,
    ListenUnavailable,
    PgflowClientError,
    RpcError,
    RunAlreadyExists,
    RunAlreadyFinished,
    RunNotFailed,
    RunNotFound,
    StatusUnreachable,
    SubscriptionError,
    TransportError,
    WaitCancelled,
    WaitTimeout,
)

__all__ = [
    "ClientClosed",
    "FlowEvent",
    "FlowNotFound",
    "FlowRun",
    "FlowRunEvent",
    "FlowRunStatus",
    "FlowStep",
    "FlowStepStatus",
    "FlowTaskStatus",
    "InvalidFlowInput",
    "InvalidRunData",
    "InvalidRunFilter",
    "InvalidRunId",
    "ListenUnavailable",
    "LiveRunView",
    "PgflowClient",
    "PgflowClientError",
    "RpcError",
    "RunAlreadyExists",
    "RunAlreadyFinished",
    "RunCompletedEvent",
    "RunFailedEvent",
    "RunNotFailed",
    "RunNotFound",
    "RunRecord",
    "RunStartedEvent",
    "SkipReason",
    "StatusUnreachable",
    "StepCompletedEvent",
    "StepEvent",
    "StepFailedEvent",
    "StepSkippedEvent",
    "StepStartedEvent",
    "SubscriptionError",
    "SyncFlowRun",
    "SyncFlowStep",
    "SyncPgflowClient",
    "TransportError",
    "Unsubscribe",
    "WaitCancelled",
    "WaitTimeout",
    "live",
]
