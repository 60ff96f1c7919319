"""Typed run and step events, and the parser that turns raw broadcasts into them.

The SQL core broadcasts ``run:<status>`` and ``step:<slug>:<status>`` events on the topic
``pgflow:run:<run_id>``. Every transport hands those raw ``(event name, payload)`` pairs to
:func:`parse_broadcast`, which returns a typed event or ``None`` for anything malformed.
"""

from __future__ import annotations

import json
import logging
import reprlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as _ValidationError

from ._status import FlowRunStatus, FlowStepStatus, SkipReason
from .errors import InvalidRunId

__all__ = [
    "FlowEvent",
    "FlowRunEvent",
    "RunCompletedEvent",
    "RunFailedEvent",
    "RunStartedEvent",
    "StepCompletedEvent",
    "StepEvent",
    "StepFailedEvent",
    "StepSkippedEvent",
    "StepStartedEvent",
    "canonical_run_id",
    "parse_broadcast",
]

logger = logging.getLogger("pgflow.client")


def canonical_run_id(value: object) -> str:
    """Return a run id in its canonical text form (lowercase, hyphenated UUID).

    Raises :class:`InvalidRunId` (a ``ValueError``) for anything that is not a UUID.
    """
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(UUID(value))
        except ValueError:
            raise InvalidRunId(f"run_id {value!r} is not a UUID", run_id=value) from None
    raise InvalidRunId(f"run_id must be a UUID, got {type(value).__name__}", run_id=value) from None


def _parse_timestamp(value: object) -> object:
    # Postgres renders timestamptz as '2024-01-01 12:00:00.5+00', which pydantic rejects.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None
    return value


def _assume_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


RunId = Annotated[str, BeforeValidator(canonical_run_id)]
"""A run id, accepted as UUID or text and stored as canonical UUID text."""

Timestamp = Annotated[datetime, BeforeValidator(_parse_timestamp), AfterValidator(_assume_utc)]
"""A timezone-aware moment; naive input is taken as UTC."""

Slug = Annotated[str, Field(min_length=1)]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: RunId


class RunStartedEvent(_Event):
    """The run was created and its root steps started."""

    event_type: Literal["run:started"] = "run:started"
    flow_slug: Slug
    status: Literal[FlowRunStatus.STARTED] = FlowRunStatus.STARTED
    input: Any = None
    started_at: Timestamp
    remaining_steps: int


class RunCompletedEvent(_Event):
    """Every step finished; ``output`` holds the outputs of the leaf steps."""

    event_type: Literal["run:completed"] = "run:completed"
    flow_slug: Slug
    status: Literal[FlowRunStatus.COMPLETED] = FlowRunStatus.COMPLETED
    output: Any = None
    completed_at: Timestamp


class RunFailedEvent(_Event):
    """A step failed for good, failing the run.

    ``error_message`` is ``None`` when the SQL sent none (it omits it on type violations).
    """

    event_type: Literal["run:failed"] = "run:failed"
    flow_slug: Slug
    status: Literal[FlowRunStatus.FAILED] = FlowRunStatus.FAILED
    error_message: str | None = None
    failed_at: Timestamp


class _StepEvent(_Event):
    step_slug: Slug


class StepStartedEvent(_StepEvent):
    """The step's dependencies completed and its tasks were queued."""

    event_type: Literal["step:started"] = "step:started"
    status: Literal[FlowStepStatus.STARTED] = FlowStepStatus.STARTED
    started_at: Timestamp
    remaining_tasks: int | None = None
    remaining_deps: int | None = None


class StepCompletedEvent(_StepEvent):
    """Every task of the step completed (or it had none, like an empty map)."""

    event_type: Literal["step:completed"] = "step:completed"
    status: Literal[FlowStepStatus.COMPLETED] = FlowStepStatus.COMPLETED
    output: Any = None
    completed_at: Timestamp


class StepFailedEvent(_StepEvent):
    """A task of the step failed after its last attempt."""

    event_type: Literal["step:failed"] = "step:failed"
    status: Literal[FlowStepStatus.FAILED] = FlowStepStatus.FAILED
    error_message: str | None = None
    failed_at: Timestamp


class StepSkippedEvent(_StepEvent):
    """The step will not run; ``skip_reason`` says why.

    ``error_message`` is set when the step was skipped because its handler failed.
    """

    event_type: Literal["step:skipped"] = "step:skipped"
    status: Literal[FlowStepStatus.SKIPPED] = FlowStepStatus.SKIPPED
    skip_reason: SkipReason
    error_message: str | None = None
    skipped_at: Timestamp


FlowRunEvent: TypeAlias = RunStartedEvent | RunCompletedEvent | RunFailedEvent
"""Any event about the run itself."""

StepEvent: TypeAlias = StepStartedEvent | StepCompletedEvent | StepFailedEvent | StepSkippedEvent
"""Any event about one step of a run."""

FlowEvent: TypeAlias = FlowRunEvent | StepEvent
"""Any event of a run: about the run or about one of its steps."""

_FLOW_EVENT: TypeAdapter[FlowEvent] = TypeAdapter(
    Annotated[FlowEvent, Field(discriminator="event_type")]
)

_RUN_EVENT_STATUSES = frozenset(s.value for s in FlowRunStatus)
_STEP_EVENT_STATUSES = frozenset(s.value for s in FlowStepStatus) - {FlowStepStatus.CREATED.value}


def _split_event_name(event: str) -> tuple[str, str | None, str] | None:
    """Split ``run:<status>`` / ``step:<slug>:<status>`` into (kind, slug, status)."""
    kind, _, rest = event.partition(":")
    if kind == "run" and rest in _RUN_EVENT_STATUSES:
        return kind, None, rest
    if kind == "step":
        slug, _, status = rest.rpartition(":")
        if slug and status in _STEP_EVENT_STATUSES:
            return kind, slug, status
    return None


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def brief_repr(value: object) -> str:
    """A short ``repr`` that stays safe on huge, deep or circular values."""
    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxdict = short.maxlist = 12
    short.maxstring = short.maxother = 80
    return short.repr(value)


def _drop(event: object, payload: object, reason: str) -> None:
    logger.warning("Dropping broadcast %r: %s (payload: %s)", event, reason, brief_repr(payload))


def _validation_summary(exc: _ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_broadcast(event: str, payload: object) -> FlowEvent | None:
    """Turn one raw broadcast into a typed event, or ``None`` when it is malformed.

    JSON text in ``input`` / ``output`` is decoded (and kept as text when it is not JSON);
    extra payload keys are ignored. Malformed broadcasts are logged on the
    ``pgflow.client`` logger and dropped; this function never raises.
    """
    parts = _split_event_name(event) if isinstance(event, str) else None
    if parts is None:
        _drop(event, payload, "not a pgflow event name")
        return None
    kind, slug, status = parts
    if not isinstance(payload, Mapping):
        _drop(event, payload, f"payload is a {type(payload).__name__}, not an object")
        return None
    data = dict(payload)
    if data.get("status") != status:
        _drop(event, payload, f"status {data.get('status')!r} does not match the event name")
        return None
    if slug is not None:
        data.setdefault("step_slug", slug)
        if data["step_slug"] != slug:
            _drop(event, payload, f"step_slug {data['step_slug']!r} does not match the event name")
            return None
    data["event_type"] = f"{kind}:{status}"
    for key in ("input", "output"):
        value = data.get(key)
        if isinstance(value, str):
            data[key] = _maybe_json(value)
    try:
        return _FLOW_EVENT.validate_python(data)
    except _ValidationError as exc:
        _drop(event, payload, _validation_summary(exc))
        return None
