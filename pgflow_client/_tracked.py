"""What runs and steps share: a ranked status that only moves forward, and waiting for one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, Self, TypeVar

from ._status import _RankedStatus
from .errors import PgflowClientError, StatusUnreachable, WaitCancelled, WaitTimeout

__all__ = ["Tracked"]

StatusT = TypeVar("StatusT", bound=_RankedStatus)


class Tracked(Generic[StatusT]):
    """Base of :class:`FlowRun` and :class:`FlowStep`.

    Subclasses update ``_status`` (and the fields below) and call ``_notify()`` after every
    change, which re-checks pending ``wait_for_status`` calls.
    """

    _kind: str  # "run" or "step", for messages

    def __init__(
        self,
        run_id: str,
        status: StatusT,
        *,
        started_at: datetime | None,
        error_message: str | None,
    ) -> None:
        self._run_id = run_id
        self._status = status
        self._started_at = started_at
        self._error_message = error_message
        self._disposed = False
        self._watchers: list[Callable[[], None]] = []
        self._release_hook: Callable[[], None] | None = None

    # -- subclass contract ------------------------------------------------------------

    def _describe(self) -> str:
        """How messages name this object, e.g. ``run <id>``."""
        raise NotImplementedError

    def _step_slug(self) -> str | None:
        return None

    # -- state helpers ----------------------------------------------------------------

    def _can_move_to(self, status: StatusT) -> bool:
        """Whether an update to ``status`` applies: strictly higher rank, not yet terminal."""
        return not self._status.is_terminal and status.rank > self._status.rank

    def _notify(self) -> None:
        for watcher in list(self._watchers):
            watcher()

    def _listener_removed(self) -> None:
        if self._release_hook is not None:
            self._release_hook()

    def _coerce_status(self, status: StatusT | str) -> StatusT:
        kind = type(self._status)
        try:
            return kind(status)
        except ValueError:
            allowed = ", ".join(repr(s.value) for s in kind)
            raise ValueError(
                f"{status!r} is not a {self._kind} status; expected one of {allowed}"
            ) from None

    def _reached(self, target: StatusT) -> bool:
        if self._status is target or target.rank == 0:
            return True
        # 'started' counts as reached once passed through, not only while current.
        return target.value == "started" and self._passed_started()

    def _passed_started(self) -> bool:
        return self._started_at is not None

    def _wait_blocker(self, target: StatusT) -> PgflowClientError | None:
        """Why waiting for ``target`` is pointless now, or ``None`` while it may still come."""
        if self._status.is_terminal:
            detail = f": {self._error_message}" if self._error_message else ""
            return StatusUnreachable(
                f"{self._describe()} ended with status '{self._status}' and can no longer "
                f"reach status '{target}'{detail}",
                status=self._status.value,
                target=target.value,
                error_message=self._error_message,
                run_id=self._run_id,
                step_slug=self._step_slug(),
            )
        if self._disposed:
            return self._cancelled(target, f"the {self._kind} was disposed")
        return None

    def _cancelled(self, target: StatusT, why: str) -> WaitCancelled:
        return WaitCancelled(
            f"Cancelled waiting for {self._describe()} to reach status '{target}': {why}",
            target=target.value,
        )

    # -- public -----------------------------------------------------------------------

    async def wait_for_status(
        self,
        status: StatusT | str,
        *,
        timeout: float | None = 300.0,
        cancel: asyncio.Event | None = None,
    ) -> Self:
        """Wait until this reaches ``status``, and return it.

        Returns at once when the status was already reached. Raises
        :class:`StatusUnreachable` as soon as another terminal status makes ``status``
        impossible, :class:`WaitTimeout` after ``timeout`` seconds (``None`` waits forever)
        and :class:`WaitCancelled` when ``cancel`` is set. Cancelling the awaiting task
        works too.
        """
        target = self._coerce_status(status)
        if self._reached(target):
            return self
        if (blocker := self._wait_blocker(target)) is not None:
            raise blocker
        if cancel is not None and cancel.is_set():
            raise self._cancelled(target, "its cancel event was set")

        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[PgflowClientError | None] = loop.create_future()

        def watch() -> None:
            if outcome.done():
                return
            if self._reached(target):
                outcome.set_result(None)
            elif (blocker := self._wait_blocker(target)) is not None:
                outcome.set_result(blocker)

        self._watchers.append(watch)
        cancel_waiter: asyncio.Task[Any] | None = None
        try:
            async with asyncio.timeout(timeout):
                if cancel is not None:
                    cancel_waiter = loop.create_task(cancel.wait())
                    await asyncio.wait(
                        (outcome, cancel_waiter), return_when=asyncio.FIRST_COMPLETED
                    )
                    if not outcome.done():
                        raise self._cancelled(target, "its cancel event was set")
                error = await outcome
        except TimeoutError:
            raise WaitTimeout(
                f"Timeout waiting for {self._describe()} to reach status '{target}'",
                target=target.value,
                timeout=timeout if timeout is not None else float("inf"),
            ) from None
        finally:
            if cancel_waiter is not None:
                cancel_waiter.cancel()
            self._watchers.remove(watch)
            self._listener_removed()
        if error is not None:
            raise error
        return self
