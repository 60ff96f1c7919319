"""FlowStep: the live state of one step of a run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar, overload
from uuid import UUID

from ._callbacks import Callback, CallbackRegistry, Unsubscribe
from ._events import (
    StepCompletedEvent,
    StepEvent,
    StepFailedEvent,
    StepSkippedEvent,
    StepStartedEvent,
    canonical_run_id,
)
from ._html import render_step
from ._snapshot import StepStateRow
from ._status import FlowStepStatus, SkipReason
from ._tracked import Tracked

__all__ = ["FlowStep"]

_F = TypeVar("_F", bound=Callable[..., Any])

StepEventName = Literal["started", "completed", "failed", "skipped", "*"]

UNKNOWN_ERROR = "Unknown error"


class FlowStep(Tracked[FlowStepStatus]):
    """One step of a :class:`FlowRun`, kept up to date from the run's events.

    Get it with ``run.step(slug)``; its status only moves forward
    (created < started < completed < failed < skipped).
    """

    _kind = "step"

    def __init__(
        self,
        run_id: str | UUID,
        step_slug: str,
        *,
        status: FlowStepStatus | str = FlowStepStatus.CREATED,
        output: Any = None,
        error_message: str | None = None,
        started_at: datetime | None = None,
        completed_at: datetime | None = None,
        failed_at: datetime | None = None,
        skipped_at: datetime | None = None,
        skip_reason: SkipReason | str | None = None,
    ) -> None:
        super().__init__(
            canonical_run_id(run_id),
            FlowStepStatus(status),
            started_at=started_at,
            error_message=error_message,
        )
        self._slug = step_slug
        self._through_started = started_at is not None
        self._output = output
        self._completed_at = completed_at
        self._failed_at = failed_at
        self._skipped_at = skipped_at
        self._skip_reason = SkipReason(skip_reason) if skip_reason is not None else None
        self._callbacks: CallbackRegistry[Any] = CallbackRegistry(
            ("started", "completed", "failed", "skipped"),
            self._describe(),
            self._listener_removed,
        )

    # -- state ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """Id of the run this step belongs to."""
        return self._run_id

    @property
    def step_slug(self) -> str:
        return self._slug

    @property
    def status(self) -> FlowStepStatus:
        return self._status

    @property
    def output(self) -> Any:
        """The step's output once completed (an array for map steps)."""
        return self._output

    @property
    def error_message(self) -> str | None:
        return self._error_message

    @property
    def started_at(self) -> datetime | None:
        return self._started_at

    @property
    def completed_at(self) -> datetime | None:
        return self._completed_at

    @property
    def failed_at(self) -> datetime | None:
        return self._failed_at

    @property
    def skipped_at(self) -> datetime | None:
        return self._skipped_at

    @property
    def skip_reason(self) -> SkipReason | None:
        return self._skip_reason

    # -- callbacks --------------------------------------------------------------------

    @overload
    def on(
        self, event: Literal["started"], callback: Callback[StepStartedEvent]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["completed"], callback: Callback[StepCompletedEvent]
    ) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["failed"], callback: Callback[StepFailedEvent]) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["skipped"], callback: Callback[StepSkippedEvent]
    ) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["*"], callback: Callback[StepEvent]) -> Unsubscribe: ...
    @overload
    def on(self, event: StepEventName) -> Callable[[_F], _F]: ...

    def on(
        self, event: str, callback: Callback[Any] | None = None
    ) -> Unsubscribe | Callable[[_F], _F]:
        """Call ``callback`` with each accepted event of this step; return an unsubscribe function.

        ``event`` is ``'started'``, ``'completed'``, ``'failed'``, ``'skipped'`` or ``'*'``
        (every event, after the specific callbacks). Without ``callback``, returns a
        decorator that registers the function and returns it unchanged.
        """
        if callback is not None:
            return self._callbacks.add(event, callback)
        self._callbacks.check_event(event)

        def register(func: _F) -> _F:
            self._callbacks.add(event, func)
            return func

        return register

    # -- updates (called by FlowRun) --------------------------------------------------

    def _describe(self) -> str:
        return f"step '{self._slug}' of run {self._run_id}"

    def _step_slug(self) -> str | None:
        return self._slug

    def _passed_started(self) -> bool:
        return self._through_started

    def _listener_count(self) -> int:
        return len(self._callbacks) + len(self._watchers)

    def _apply_event(self, event: StepEvent) -> bool:
        """Apply ``event`` if it is for this step and moves it forward; fire callbacks if so."""
        if event.run_id != self._run_id or event.step_slug != self._slug:
            return False
        if not self._can_move_to(event.status):
            return False
        self._status = event.status
        if isinstance(event, StepStartedEvent):
            self._started_at = event.started_at
            self._through_started = True
        elif isinstance(event, StepCompletedEvent):
            self._completed_at = event.completed_at
            self._output = event.output
        elif isinstance(event, StepFailedEvent):
            self._failed_at = event.failed_at
            self._error_message = (
                event.error_message if event.error_message is not None else UNKNOWN_ERROR
            )
        else:
            self._skipped_at = event.skipped_at
            self._skip_reason = event.skip_reason
            self._error_message = event.error_message
        self._notify()
        self._callbacks.emit(event.status.value, event)
        return True

    def _merge_row(self, row: StepStateRow, *, advance: bool) -> None:
        """Take state from a snapshot row without firing callbacks.

        The status moves to the row's only when ``advance`` is set and the move is forward;
        when the statuses then agree, fields still unknown here are filled from the row.
        """
        if advance and self._can_move_to(row.status):
            self._status = row.status
        if row.status.rank <= self._status.rank:
            # Passing through 'started' is a fact later transitions never change.
            self._started_at = self._started_at or row.started_at
        if row.status is FlowStepStatus.STARTED or (
            row.started_at is not None and row.initial_tasks != 0
        ):
            # A step completed without tasks (an empty map) has a started_at but never ran.
            self._through_started = True
        if self._status is row.status:
            self._completed_at = self._completed_at or row.completed_at
            self._failed_at = self._failed_at or row.failed_at
            self._skipped_at = self._skipped_at or row.skipped_at
            self._skip_reason = self._skip_reason or row.skip_reason
            if self._output is None:
                self._output = row.output
            if self._error_message is None:
                self._error_message = row.error_message
            if self._status is FlowStepStatus.FAILED and self._error_message is None:
                self._error_message = UNKNOWN_ERROR
        self._notify()

    def _settled(self) -> bool:
        """Completed, with every field a snapshot row would fill already known."""
        return self._status is FlowStepStatus.COMPLETED and None not in (
            self._started_at,
            self._completed_at,
            self._output,
        )

    def _detach(self) -> None:
        """Drop callbacks and end pending waits: the run was disposed. State stays readable."""
        self._disposed = True
        self._callbacks.clear()
        self._notify()

    # -- display ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<FlowStep step_slug={self._slug!r} status={self._status.value!r} "
            f"run_id={self._run_id!r}>"
        )

    def _repr_html_(self) -> str:
        return render_step(self)
