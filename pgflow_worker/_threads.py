"""Threads for sync handlers: a call takes an idle thread, or starts one when none is idle.

Starting a thread per call costs more than many handlers do. A pool of fixed size would be
cheaper still but wrong here: a handler that never returns cannot be stopped, so it would hold a
pool thread for good, starving later handlers, and block the process's exit. Here a hung
handler keeps only its own thread, every other call still finds a thread, and all of them are
daemons, so an abandoned one never keeps the process alive.

Outcomes go back to the event loop through an inbox: a thread appends its outcome and wakes the
loop only when no wake-up is pending already, so handlers finishing together cost the loop one
wake-up, not one each.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

#: A call, the inbox of the loop that waits for it, and where its outcome goes.
_Job = tuple[Callable[[], Any], "_Inbox", "asyncio.Future[Any]"]


class _Inbox:
    """Outcomes on their way to one event loop, delivered together by one wake-up."""

    __slots__ = ("_lock", "_outcomes", "_wake_pending", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._outcomes: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False

    def put(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """Hand an outcome to the loop (from any thread); wakes it unless a wake-up is due."""
        self._outcomes.append((future, result, error))
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is gone: the worker stopped
            with self._lock:
                self._wake_pending = False

    def _deliver(self) -> None:
        with self._lock:
            # Cleared first: an outcome added from now on either is taken below or wakes the
            # loop again.
            self._wake_pending = False
        outcomes = self._outcomes
        while outcomes:
            _settle(*outcomes.popleft())


class HandlerThreads:
    """Daemon threads that run sync handlers, reused while idle and gone when idle too long.

    One per worker; :meth:`close` lets the idle ones leave at once when the worker stops.
    """

    def __init__(self, name: str, *, idle_seconds: float = 10.0) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job, less the jobs queued for them
        self._started = 0
        self._closed = False
        self._inbox: _Inbox | None = None

    @property
    def started(self) -> int:
        """Threads started so far."""
        return self._started

    def run(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``call`` on a thread; its result or exception arrives as a future of the running
        event loop. Cancelling the future (or timing out on it) abandons the call."""
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(loop)
        job: _Job = (call, inbox, loop.create_future())
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return job[2]
            self._started += 1
            name = f"{self._name}-{self._started}"
        threading.Thread(target=self._serve, args=(job,), name=name, daemon=True).start()
        return job[2]

    def close(self) -> None:
        """Let the idle threads leave now; threads still running a call leave after it."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)

    def _serve(self, job: _Job | None) -> None:
        while job is not None:
            call, inbox, future = job
            job = None  # keep nothing of the call alive while this thread idles
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they fail it
                error = exc
            del call
            with self._lock:
                closed = self._closed
                if not closed:
                    # Idle before the caller hears of the outcome, so that its next call, made
                    # as soon as it does, finds this thread.
                    self._idle += 1
            inbox.put(future, result, error)
            del inbox, future, result, error
            if closed:
                return
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    # A job may have been queued for this thread while its wait ran out.
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        if not self._closed:
                            self._idle -= 1
                        return


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # timed out or cancelled meanwhile: nobody wants the outcome
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, StopIteration):
        # A future refuses StopIteration; a coroutine would turn it into a RuntimeError too.
        wrapped = RuntimeError(f"the call raised {type(error).__name__}")
        wrapped.__cause__ = error
        future.set_exception(wrapped)
    else:
        future.set_exception(error)
