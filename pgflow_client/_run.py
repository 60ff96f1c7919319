"""FlowRun: the live state of one run and its steps."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, TypeVar, overload
from uuid import UUID

from ._callbacks import Callback, CallbackRegistry, Unsubscribe, spawn
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
    canonical_run_id,
)
from ._html import render_run
from ._snapshot import (
    RunRow,
    StepStateRow,
    parse_run_row,
    parse_step_row,
    run_row_to_event,
    step_row_to_event,
)
from ._status import FlowRunStatus, FlowStepStatus
from ._step import UNKNOWN_ERROR, FlowStep
from ._tracked import Tracked
from .errors import InvalidRunData

__all__ = ["FlowRun"]

logger = logging.getLogger("pgflow.client")

_F = TypeVar("_F", bound=Callable[..., Any])

RunEventName = Literal["started", "completed", "failed", "*"]

_STEP_EVENTS = (StepStartedEvent, StepCompletedEvent, StepFailedEvent, StepSkippedEvent)


def _event_time(event: StepEvent) -> datetime:
    if isinstance(event, StepStartedEvent):
        return event.started_at
    if isinstance(event, StepCompletedEvent):
        return event.completed_at
    if isinstance(event, StepFailedEvent):
        return event.failed_at
    return event.skipped_at


class FlowRun(Tracked[FlowRunStatus]):
    """One run of a flow, kept up to date from its events.

    The status only moves forward (started < completed < failed), so late, duplicate and
    out-of-order events are harmless. A run disposes itself once it is terminal and nothing
    listens to it (no callbacks, pending waits or event iterators on it or its steps).

    ``on_dispose`` is called with the run when it is disposed, so whoever delivers its
    events can stop; it may return an awaitable, which is run as a task.
    """

    _kind = "run"

    def __init__(
        self,
        run_id: str | UUID,
        flow_slug: str,
        *,
        status: FlowRunStatus | str = FlowRunStatus.STARTED,
        input: Any = None,
        output: Any = None,
        error_message: str | None = None,
        started_at: datetime | None = None,
        completed_at: datetime | None = None,
        failed_at: datetime | None = None,
        remaining_steps: int | None = None,
        on_dispose: Callable[[FlowRun], object] | None = None,
    ) -> None:
        super().__init__(
            canonical_run_id(run_id),
            FlowRunStatus(status),
            started_at=started_at,
            error_message=error_message,
        )
        self._flow_slug = flow_slug
        self._input = input
        self._output = output
        self._completed_at = completed_at
        self._failed_at = failed_at
        self._remaining_steps = remaining_steps
        self._cancelled_at: datetime | None = None
        self._cancel_reason: str | None = None
        self._restart_of_run_id: str | None = None
        self._on_dispose = on_dispose
        self._steps: dict[str, FlowStep] = {}
        self._sinks: list[asyncio.Queue[FlowEvent | None]] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._emitting = 0
        self._release_hook = self._maybe_auto_dispose
        self._callbacks: CallbackRegistry[Any] = CallbackRegistry(
            ("started", "completed", "failed"), self._describe(), self._listener_removed
        )

    # -- state ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run's id, as canonical UUID text."""
        return self._run_id

    @property
    def flow_slug(self) -> str:
        return self._flow_slug

    @property
    def status(self) -> FlowRunStatus:
        return self._status

    @property
    def input(self) -> Any:
        return self._input

    @property
    def output(self) -> Any:
        """The run's output once completed: the outputs of its leaf steps by slug."""
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
    def remaining_steps(self) -> int | None:
        """Steps not yet finished, as last reported by the server; ``None`` when unknown."""
        return self._remaining_steps

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled (``cancel_run``): it is then ``failed``.

        Known from a snapshot (``get_run``, ``cancel_run``, a resync); the broadcast
        ``run:failed`` of a cancellation carries only its error message."""
        return self._cancelled_at is not None

    @property
    def cancelled_at(self) -> datetime | None:
        """When the run was cancelled; ``None`` when it was not (or not known yet)."""
        return self._cancelled_at

    @property
    def cancel_reason(self) -> str | None:
        """The reason given to ``cancel_run``, if any."""
        return self._cancel_reason

    @property
    def restart_of_run_id(self) -> str | None:
        """The run this one retries (``retry_run``), or ``None``."""
        return self._restart_of_run_id

    @property
    def steps(self) -> Mapping[str, FlowStep]:
        """The steps known so far, by slug, in the order they became known."""
        return MappingProxyType(self._steps)

    @property
    def disposed(self) -> bool:
        """Whether the run was disposed: no more callbacks fire and no more events arrive."""
        return self._disposed

    def step(self, step_slug: str) -> FlowStep:
        """The step ``step_slug`` of this run, created (as ``created``) on first access."""
        step = self._steps.get(step_slug)
        if step is None:
            step = FlowStep(self._run_id, step_slug)
            step._release_hook = self._listener_removed
            if self._disposed:
                step._detach()
            self._steps[step_slug] = step
        return step

    # -- callbacks and iteration ------------------------------------------------------

    @overload
    def on(self, event: Literal["started"], callback: Callback[RunStartedEvent]) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["completed"], callback: Callback[RunCompletedEvent]
    ) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["failed"], callback: Callback[RunFailedEvent]) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["*"], callback: Callback[FlowRunEvent]) -> Unsubscribe: ...
    @overload
    def on(self, event: RunEventName) -> Callable[[_F], _F]: ...

    def on(
        self, event: str, callback: Callback[Any] | None = None
    ) -> Unsubscribe | Callable[[_F], _F]:
        """Call ``callback`` with each accepted event of the run; return an unsubscribe function.

        ``event`` is ``'started'``, ``'completed'``, ``'failed'`` or ``'*'`` (every run
        event, after the specific callbacks). Without ``callback``, returns a decorator
        that registers the function and returns it unchanged.
        """
        if callback is not None:
            return self._callbacks.add(event, callback)
        self._callbacks.check_event(event)

        def register(func: _F) -> _F:
            self._callbacks.add(event, func)
            return func

        return register

    async def events(self) -> AsyncGenerator[FlowEvent, None]:
        """Yield every accepted event of the run and its steps, from the first iteration on.

        Ends after the run's terminal event (at once if the run is already terminal) or
        when the run is disposed.
        """
        if self._disposed or self._status.is_terminal:
            return
        queue: asyncio.Queue[FlowEvent | None] = asyncio.Queue()
        self._sinks.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._sinks.remove(queue)
            self._listener_removed()

    # -- disposal ---------------------------------------------------------------------

    def dispose(self) -> None:
        """Stop observing the run: drop callbacks, end waits and iterators, release the
        subscription. State (the run's and its steps') stays readable. Safe to call twice.
        """
        if self._disposed:
            return
        self._disposed = True
        self._callbacks.clear()
        for step in self._steps.values():
            step._detach()
        self._close_sinks()
        self._notify()
        hook, self._on_dispose = self._on_dispose, None
        if hook is None:
            return
        what = f"on_dispose hook {hook!r} of {self._describe()}"
        try:
            result = hook(self)
        except Exception:
            logger.exception("%s raised", what)
            return
        if inspect.isawaitable(result):
            spawn(result, self._tasks, what)

    def _listener_count(self) -> int:
        steps = sum(step._listener_count() for step in self._steps.values())
        return len(self._callbacks) + len(self._watchers) + len(self._sinks) + steps

    def _maybe_auto_dispose(self) -> None:
        if self._disposed or self._emitting or not self._status.is_terminal:
            return
        if self._listener_count() == 0:
            self.dispose()

    def _close_sinks(self) -> None:
        for queue in self._sinks:
            queue.put_nowait(None)

    def _publish(self, event: FlowEvent) -> None:
        if self._disposed:  # iterators already ended
            return
        for queue in self._sinks:
            queue.put_nowait(event)

    # -- updates (called by transports) -----------------------------------------------

    def _describe(self) -> str:
        return f"run {self._run_id}"

    def _apply_event(self, event: FlowEvent) -> bool:
        """Apply a run or step event if it moves state forward; fire callbacks if so.

        Events for other runs, lower or equal statuses and anything after a terminal
        status are ignored (``False``). Step events create the step when unknown.
        """
        if event.run_id != self._run_id:
            logger.debug("Ignoring %s for run %s on %s", event.event_type, event.run_id, self)
            return False
        self._emitting += 1
        try:
            if isinstance(event, _STEP_EVENTS):
                accepted = self.step(event.step_slug)._apply_event(event)
                if accepted:
                    self._publish(event)
            else:
                accepted = self._apply_run_event(event)
        finally:
            self._emitting -= 1
        self._maybe_auto_dispose()
        return accepted

    def _apply_run_event(self, event: FlowRunEvent) -> bool:
        if not self._can_move_to(event.status):
            return False
        self._status = event.status
        if isinstance(event, RunStartedEvent):
            self._started_at = event.started_at
            self._remaining_steps = event.remaining_steps
            self._input = event.input
        elif isinstance(event, RunCompletedEvent):
            self._completed_at = event.completed_at
            self._output = event.output
            self._remaining_steps = 0
        else:
            self._failed_at = event.failed_at
            self._error_message = (
                event.error_message if event.error_message is not None else UNKNOWN_ERROR
            )
        self._notify()
        self._publish(event)
        self._callbacks.emit(event.status.value, event)
        if self._status.is_terminal:
            self._close_sinks()
        return True

    def _apply_snapshot(
        self,
        run_row: Mapping[str, Any] | RunRow,
        step_rows: Iterable[Mapping[str, Any] | StepStateRow] = (),
        *,
        emit: bool,
    ) -> None:
        """Bring the run up to date with a ``get_run_with_states`` snapshot.

        With ``emit=False`` (initial snapshots) state is set silently; with ``emit=True``
        (after a reconnect) rows become events applied like live ones, so callbacks fire
        for transitions missed meanwhile. Either way no status moves backwards, and
        fields still unknown are filled from rows of the same status. All rows are
        validated first: :class:`InvalidRunData` leaves the run untouched. The run may
        dispose itself if the snapshot leaves it terminal with nobody listening.
        """
        run = parse_run_row(run_row)
        steps = [parse_step_row(row) for row in step_rows]
        self._check_snapshot(run, steps)
        failure = run.cancel_message() or next(
            (s.error_message for s in steps if s.status is FlowStepStatus.FAILED), None
        )
        if emit:
            self._replay(run, steps, failure)
            return
        for row in steps:
            self.step(row.step_slug)._merge_row(row, advance=True)
        was_terminal = self._status.is_terminal
        self._merge_row(run, advance=True, failure=failure)
        if self._status.is_terminal and not was_terminal:
            self._close_sinks()
            self._maybe_auto_dispose()

    def _settled(self) -> bool:
        """Whether no snapshot could add anything: the run and every step completed, with
        every field a snapshot would fill already known. Failed runs never count: a snapshot
        may still bring their cancellation or other steps' states."""
        return (
            self._status is FlowRunStatus.COMPLETED
            and None not in (self._input, self._started_at, self._completed_at, self._output)
            and bool(self._steps)
            and all(step._settled() for step in self._steps.values())
        )

    def _check_snapshot(self, run: RunRow, steps: list[StepStateRow]) -> None:
        if run.run_id != self._run_id or run.flow_slug != self._flow_slug:
            raise InvalidRunData(
                f"Invalid run data: snapshot of run {run.run_id} (flow {run.flow_slug!r}) "
                f"does not belong to run {self._run_id} (flow {self._flow_slug!r})"
            )
        for row in steps:
            if row.run_id != self._run_id:
                raise InvalidRunData(
                    f"Invalid step data: step {row.step_slug} belongs to run {row.run_id}, "
                    f"not {self._run_id}"
                )

    def _replay(self, run: RunRow, steps: list[StepStateRow], failure: str | None) -> None:
        # Convert everything before applying anything, so a bad row changes nothing.
        step_events = [(row, step_row_to_event(row)) for row in steps]
        run_event = run_row_to_event(run, error_message=failure)
        with_events = sorted(
            ((row, ev) for row, ev in step_events if ev is not None),
            key=lambda pair: _event_time(pair[1]),
        )
        for _, step_event in with_events:
            self._apply_event(step_event)
        for row, _ in step_events:
            self.step(row.step_slug)._merge_row(row, advance=False)
        self._apply_event(run_event)
        self._merge_row(run, advance=False, failure=failure)

    def _merge_row(self, row: RunRow, *, advance: bool, failure: str | None) -> None:
        if advance and self._can_move_to(row.status):
            self._status = row.status
        if row.status.rank <= self._status.rank:
            # Facts that later transitions never change.
            if self._input is None:
                self._input = row.input
            self._started_at = self._started_at or row.started_at
            self._restart_of_run_id = self._restart_of_run_id or row.restart_of_run_id
        if row.cancelled_at is not None and self._cancelled_at is None:
            self._cancelled_at = row.cancelled_at
            self._cancel_reason = row.cancel_reason
        if self._status is row.status:
            if self._output is None:
                self._output = row.output
            self._completed_at = self._completed_at or row.completed_at
            self._failed_at = self._failed_at or row.failed_at
            # remaining_steps only ever decreases: keep the lower count.
            if row.remaining_steps is not None and (
                self._remaining_steps is None or row.remaining_steps < self._remaining_steps
            ):
                self._remaining_steps = row.remaining_steps
            if self._status is FlowRunStatus.FAILED and self._error_message is None:
                self._error_message = failure if failure is not None else UNKNOWN_ERROR
        self._notify()

    # -- display ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<FlowRun run_id={self._run_id!r} flow_slug={self._flow_slug!r} "
            f"status={self._status.value!r}>"
        )

    def _repr_html_(self) -> str:
        return render_run(self)
