"""SyncPgflowClient: the blocking twin of PgflowClient, for scripts and notebooks.

Each sync client runs the async client on an event loop of its own, in a daemon thread started
with the client and stopped by ``close()``. Blocking calls hand a coroutine to that loop and
wait for its result, so they work from any thread, including one whose own event loop is
running (a Jupyter kernel): that loop is simply not used, and it is blocked while the call
waits. In notebooks, the async client with top-level ``await`` keeps the kernel responsive.

State lives on the private loop. Properties read single attributes directly (each read is
atomic; two reads may straddle an event); anything that walks or changes state (``steps``,
``step()``, ``on()``, ``dispose()``, HTML rendering) runs on the loop thread. Callbacks given
to ``on()`` run on the loop thread too: keep them short, and call no blocking method of
this module from them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import logging
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeAlias, TypeVar, overload

from ._callbacks import Callback, Unsubscribe
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
from ._records import RunRecord
from ._run import FlowRun
from ._status import FlowRunStatus, FlowStepStatus, SkipReason
from ._step import FlowStep
from .errors import ClientClosed

if TYPE_CHECKING:
    from supabase import AsyncClient, AsyncClientOptions

__all__ = ["SyncFlowRun", "SyncFlowStep", "SyncPgflowClient"]

log = logging.getLogger("pgflow.client")

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Any])
_TrackedT = TypeVar("_TrackedT", FlowRun, FlowStep)

SupabaseFactory: TypeAlias = "Callable[[], AsyncClient | Awaitable[AsyncClient]]"
"""Makes the supabase ``AsyncClient`` (called on the sync client's own loop)."""

CANCEL_POLL_SECONDS = 0.05
"""How often a blocking wait looks at its ``cancel`` event."""

INTERRUPT_GRACE_SECONDS = 5.0
"""How long an interrupted call waits for its coroutine to finish cleaning up."""


class _LoopThread:
    """An event loop in a daemon thread of its own, and ways to call into it from outside."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called: no new coroutines are accepted."""
        return self._stopping

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                leftovers = asyncio.all_tasks(loop)
                for task in leftovers:
                    task.cancel()
                if leftovers:
                    loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def refuse_loop_thread(self, what: str) -> None:
        if self.on_loop_thread():
            raise RuntimeError(
                f"{what} cannot be called on the sync pgflow client's own loop thread (from a "
                "callback, for example): it would wait for that thread forever"
            )

    def _schedule(self, coro: Coroutine[Any, Any, T]) -> tuple[cf.Future[T], list[asyncio.Task[T]]]:
        """Start ``coro`` as a task on the loop (the caller holds the lock)."""
        result: cf.Future[T] = cf.Future()
        started: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self._loop.create_task(coro)
            started.append(task)
            task.add_done_callback(partial(_settle, result))

        # The caller's context variables go with the call (its current span, for one).
        self._loop.call_soon_threadsafe(start, context=contextvars.copy_context())
        return result, started

    def run(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        cancel: threading.Event | None = None,
        on_cancel: Callable[[], object] | None = None,
    ) -> T:
        """Run ``coro`` on the loop and block until it is done; return or raise its outcome.

        When ``cancel`` is set meanwhile, ``on_cancel`` is called once on the loop (it should
        make the coroutine end). An interruption of the caller (``KeyboardInterrupt``)
        cancels the coroutine and waits a little for it to clean up before propagating.
        """
        if self.on_loop_thread():
            coro.close()
            self.refuse_loop_thread("a blocking method")
        with self._lock:
            if self._stopping:
                coro.close()
                raise ClientClosed("this pgflow client is closed")
            result, started = self._schedule(coro)
        try:
            if cancel is None:
                return result.result()
            while True:
                cf.wait((result,), timeout=CANCEL_POLL_SECONDS)
                if result.done():
                    return result.result()
                if on_cancel is not None and cancel.is_set():
                    self._loop.call_soon_threadsafe(on_cancel)
                    on_cancel = None
        except BaseException:
            if not result.done():
                self._interrupt(result, started)
            raise

    def _interrupt(self, result: cf.Future[Any], started: list[asyncio.Task[Any]]) -> None:
        def cancel_task() -> None:
            # Scheduled after start(), so the task exists by now.
            if started:
                started[0].cancel()

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(cancel_task)
        cf.wait((result,), timeout=INTERRUPT_GRACE_SECONDS)

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """Call ``func(*args)`` on the loop thread and return its result.

        Runs it directly when already on the loop thread, or once the loop has stopped
        (nothing else touches the state then).
        """
        if self.on_loop_thread():
            return func(*args)
        with self._lock:
            stopped = self._stopping
            if not stopped:
                result: cf.Future[T] = cf.Future()

                def invoke() -> None:
                    try:
                        value = func(*args)
                    except BaseException as exc:
                        result.set_exception(exc)
                    else:
                        result.set_result(value)

                self._loop.call_soon_threadsafe(invoke)
        if stopped:
            self._thread.join()
            return func(*args)
        return result.result()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` on the loop without waiting for it (dropped once the loop stops)."""
        with self._lock:
            if self._stopping:
                coro.close()
                return
            self._loop.call_soon_threadsafe(self._loop.create_task, coro)

    def stop(self, final: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run ``final()`` on the loop, cancel what is left, stop the loop and join the thread.

        Idempotent; a second caller waits for the first to finish. Raises what ``final``
        raised, after the thread is gone.
        """
        self.refuse_loop_thread("close()")
        with self._lock:
            first = not self._stopping
            self._stopping = True
            if first:
                outcome, _ = self._schedule(final() if final is not None else _nothing())
        if not first:
            self._thread.join()
            return
        try:
            outcome.result()
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()


async def _nothing() -> None:
    return None


def _settle(result: cf.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        result.set_exception(ClientClosed("the pgflow client was closed while this call waited"))
    elif (exc := task.exception()) is not None:
        result.set_exception(exc)
    else:
        result.set_result(task.result())


async def _next_event(events: AsyncGenerator[FlowEvent, None]) -> FlowEvent:
    return await events.__anext__()


async def _close_events(events: AsyncGenerator[FlowEvent, None]) -> None:
    await events.aclose()


class _SyncTracked(Generic[_TrackedT]):
    """What the sync run and step share: the wrapped object, its loop, and blocking waits."""

    def __init__(self, target: _TrackedT, portal: _LoopThread) -> None:
        self._target: _TrackedT = target
        self._portal = portal

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _SyncTracked):
            return other._target is self._target
        return NotImplemented

    def __hash__(self) -> int:
        return hash(id(self._target))

    def _repr_html_(self) -> str:
        return self._portal.call(self._target._repr_html_)

    def _wait(
        self,
        status: str,
        timeout: float | None,
        cancel: threading.Event | None,
    ) -> None:
        self._portal.refuse_loop_thread("wait_for_status()")
        if self._portal.stopping:
            self._wait_after_close(status)
            return
        stop = asyncio.Event()
        if cancel is not None and cancel.is_set():
            stop.set()
        waiting = self._target.wait_for_status(
            status,
            timeout=timeout,
            cancel=stop if cancel is not None else None,
        )
        self._portal.run(waiting, cancel=cancel, on_cancel=stop.set)

    def _wait_after_close(self, status: str) -> None:
        """Answer a wait from the final state: once the loop is gone nothing changes."""
        self._portal.thread.join()
        target = self._target
        wanted: Any = target._coerce_status(status)
        if target._reached(wanted):
            return
        raise target._wait_blocker(wanted) or ClientClosed(
            f"cannot wait for {target._describe()}: its pgflow client is closed"
        )


class SyncFlowStep(_SyncTracked[FlowStep]):
    """A :class:`FlowStep` seen from blocking code: same properties, blocking waits.

    Get it with ``run.step(slug)`` on a :class:`SyncFlowRun`.
    """

    @property
    def run_id(self) -> str:
        return self._target.run_id

    @property
    def step_slug(self) -> str:
        return self._target.step_slug

    @property
    def status(self) -> FlowStepStatus:
        return self._target.status

    @property
    def output(self) -> Any:
        return self._target.output

    @property
    def error_message(self) -> str | None:
        return self._target.error_message

    @property
    def started_at(self) -> datetime | None:
        return self._target.started_at

    @property
    def completed_at(self) -> datetime | None:
        return self._target.completed_at

    @property
    def failed_at(self) -> datetime | None:
        return self._target.failed_at

    @property
    def skipped_at(self) -> datetime | None:
        return self._target.skipped_at

    @property
    def skip_reason(self) -> SkipReason | None:
        return self._target.skip_reason

    @property
    def async_step(self) -> FlowStep:
        """The wrapped :class:`FlowStep` (it lives on the client's loop thread)."""
        return self._target

    def wait_for_status(
        self,
        status: FlowStepStatus | str,
        *,
        timeout: float | None = 300.0,
        cancel: threading.Event | None = None,
    ) -> Self:
        """Block until the step reaches ``status``; return it.

        Raises like :meth:`FlowStep.wait_for_status`; ``cancel`` is a ``threading.Event``
        (setting it from any thread ends the wait with :class:`WaitCancelled`).
        """
        self._wait(status, timeout, cancel)
        return self

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
    def on(
        self, event: Literal["started", "completed", "failed", "skipped", "*"]
    ) -> Callable[[_F], _F]: ...

    def on(
        self, event: str, callback: Callback[Any] | None = None
    ) -> Unsubscribe | Callable[[_F], _F]:
        """Like :meth:`FlowStep.on`; the callback runs on the client's loop thread."""
        return _register(self._portal, self._target.on, self._target._callbacks, event, callback)

    def __repr__(self) -> str:
        return f"<SyncFlowStep step_slug={self.step_slug!r} status={self.status.value!r}>"


class SyncFlowRun(_SyncTracked[FlowRun]):
    """A :class:`FlowRun` seen from blocking code: same properties, blocking waits and events.

    Kept up to date by the client's loop thread as events arrive.
    """

    def __init__(self, run: FlowRun, portal: _LoopThread) -> None:
        super().__init__(run, portal)
        self._steps: dict[str, SyncFlowStep] = {}

    @property
    def run_id(self) -> str:
        return self._target.run_id

    @property
    def flow_slug(self) -> str:
        return self._target.flow_slug

    @property
    def status(self) -> FlowRunStatus:
        return self._target.status

    @property
    def input(self) -> Any:
        return self._target.input

    @property
    def output(self) -> Any:
        return self._target.output

    @property
    def error_message(self) -> str | None:
        return self._target.error_message

    @property
    def started_at(self) -> datetime | None:
        return self._target.started_at

    @property
    def completed_at(self) -> datetime | None:
        return self._target.completed_at

    @property
    def failed_at(self) -> datetime | None:
        return self._target.failed_at

    @property
    def remaining_steps(self) -> int | None:
        return self._target.remaining_steps

    @property
    def cancelled(self) -> bool:
        return self._target.cancelled

    @property
    def cancelled_at(self) -> datetime | None:
        return self._target.cancelled_at

    @property
    def cancel_reason(self) -> str | None:
        return self._target.cancel_reason

    @property
    def restart_of_run_id(self) -> str | None:
        return self._target.restart_of_run_id

    @property
    def disposed(self) -> bool:
        return self._target.disposed

    @property
    def async_run(self) -> FlowRun:
        """The wrapped :class:`FlowRun` (it lives on the client's loop thread)."""
        return self._target

    @property
    def steps(self) -> dict[str, SyncFlowStep]:
        """The steps known so far, by slug (a copy, taken on the loop thread)."""
        known = self._portal.call(lambda: dict(self._target.steps))
        return {slug: self._wrap_step(step) for slug, step in known.items()}

    def step(self, step_slug: str) -> SyncFlowStep:
        """The step ``step_slug`` of this run, created (as ``created``) on first access."""
        return self._wrap_step(self._portal.call(self._target.step, step_slug))

    def _wrap_step(self, step: FlowStep) -> SyncFlowStep:
        wrapper = self._steps.get(step.step_slug)
        if wrapper is None or wrapper._target is not step:
            wrapper = self._steps.setdefault(step.step_slug, SyncFlowStep(step, self._portal))
        return wrapper

    def wait_for_status(
        self,
        status: FlowRunStatus | str,
        *,
        timeout: float | None = 300.0,
        cancel: threading.Event | None = None,
    ) -> Self:
        """Block until the run reaches ``status``; return it.

        Raises like :meth:`FlowRun.wait_for_status`: :class:`StatusUnreachable` as soon as
        another terminal status came, :class:`WaitTimeout` after ``timeout`` seconds,
        :class:`WaitCancelled` when ``cancel`` (a ``threading.Event``) is set or the run is
        disposed. ``KeyboardInterrupt`` ends the wait (and is re-raised).
        """
        self._wait(status, timeout, cancel)
        return self

    def events(self) -> Iterator[FlowEvent]:
        """Yield every accepted event of the run and its steps, blocking between them.

        Like :meth:`FlowRun.events`: starts listening at the first ``next()``, ends after
        the run's terminal event or when the run is disposed. Leaving the loop early (or
        closing the iterator) stops listening.
        """
        events = self._target.events()
        try:
            while True:
                try:
                    event = self._portal.run(_next_event(events))
                except (StopAsyncIteration, ClientClosed):
                    # Closing the client disposed the run, which ends its events.
                    return
                yield event
        finally:
            closing = _close_events(events)
            if self._portal.on_loop_thread():
                self._portal.spawn(closing)
            else:
                with contextlib.suppress(ClientClosed, RuntimeError):
                    self._portal.run(closing)

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
    def on(self, event: Literal["started", "completed", "failed", "*"]) -> Callable[[_F], _F]: ...

    def on(
        self, event: str, callback: Callback[Any] | None = None
    ) -> Unsubscribe | Callable[[_F], _F]:
        """Like :meth:`FlowRun.on`; the callback runs on the client's loop thread."""
        return _register(self._portal, self._target.on, self._target._callbacks, event, callback)

    def dispose(self) -> None:
        """Stop observing the run (see :meth:`FlowRun.dispose`); its state stays readable."""
        self._portal.call(self._target.dispose)

    def __repr__(self) -> str:
        return (
            f"<SyncFlowRun run_id={self.run_id!r} flow_slug={self.flow_slug!r} "
            f"status={self.status.value!r}>"
        )


def _register(
    portal: _LoopThread,
    on: Callable[[Any, Any], Unsubscribe],
    registry: Any,
    event: str,
    callback: Callback[Any] | None,
) -> Unsubscribe | Callable[[_F], _F]:
    """``on(event, callback)`` on the loop thread, with an unsubscribe that goes there too."""
    if callback is None:
        registry.check_event(event)

        def register(func: _F) -> _F:
            _register(portal, on, registry, event, func)
            return func

        return register
    unsubscribe = portal.call(on, event, callback)

    def unsubscribe_on_loop() -> None:
        portal.call(unsubscribe)

    return unsubscribe_on_loop


class SyncPgflowClient:
    """Starts flows and watches runs with blocking calls; the twin of :class:`PgflowClient`.

    ``SyncPgflowClient.connect(dsn)`` talks to PostgreSQL directly;
    ``SyncPgflowClient.from_supabase(url, key)`` talks to Supabase. A supabase
    ``AsyncClient`` belongs to the event loop it was made on, so the constructor takes a
    function that makes one (``SyncPgflowClient(lambda: acreate_client(url, key))``): it is
    called on the client's own loop, and the client it returns is closed with this one.

    Each instance runs a private event loop in a daemon thread until :meth:`close` (or the
    end of a ``with`` block). Several can live side by side.
    """

    _portal: _LoopThread
    _client: PgflowClient
    _supabase: AsyncClient | None

    def __init__(
        self,
        supabase: SupabaseFactory,
        *,
        subscribe_timeout: float = 20.0,
        reconcile_after: Sequence[float] = (0.5, 2.0),
    ) -> None:
        if not callable(supabase):
            raise TypeError(
                "SyncPgflowClient needs a function that makes the supabase AsyncClient, since "
                "the AsyncClient must be made on the sync client's own event loop: use "
                "SyncPgflowClient.from_supabase(url, key) or "
                "SyncPgflowClient(lambda: acreate_client(url, key)); for plain PostgreSQL use "
                "SyncPgflowClient.connect(dsn)"
            )

        async def make() -> tuple[PgflowClient, AsyncClient | None]:
            made = supabase()
            async_client = await made if isinstance(made, Awaitable) else made
            client = PgflowClient(
                async_client,
                subscribe_timeout=subscribe_timeout,
                reconcile_after=reconcile_after,
            )
            return client, async_client

        self._start(make)

    @classmethod
    def connect(
        cls,
        dsn: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 30.0,
        subscribe_timeout: float = 20.0,
    ) -> Self:
        """A client over plain PostgreSQL, connected before it is returned."""

        async def make() -> tuple[PgflowClient, AsyncClient | None]:
            client = await PgflowClient.connect(
                dsn,
                pool_size=pool_size,
                connect_timeout=connect_timeout,
                subscribe_timeout=subscribe_timeout,
            )
            return client, None

        self = cls.__new__(cls)
        self._start(make)
        return self

    @classmethod
    def from_supabase(
        cls,
        url: str,
        key: str,
        *,
        options: AsyncClientOptions | None = None,
        subscribe_timeout: float = 20.0,
        reconcile_after: Sequence[float] = (0.5, 2.0),
    ) -> Self:
        """A client over Supabase at ``url`` with API ``key`` (needs ``pgflow-py[supabase]``)."""

        async def make() -> AsyncClient:
            try:
                from supabase import acreate_client
            except ImportError as exc:
                raise ImportError(
                    "SyncPgflowClient.from_supabase needs the supabase package: "
                    "pip install 'pgflow-py[supabase]'"
                ) from exc
            return await acreate_client(url, key, options)

        return cls(make, subscribe_timeout=subscribe_timeout, reconcile_after=reconcile_after)

    def _start(
        self, make: Callable[[], Coroutine[Any, Any, tuple[PgflowClient, AsyncClient | None]]]
    ) -> None:
        self._portal = _LoopThread(f"pgflow-client-{id(self):x}")
        try:
            self._client, self._supabase = self._portal.run(make())
        except BaseException:
            self._portal.stop()
            raise

    # -- starting and finding runs ------------------------------------------------------------

    def start_flow(
        self, flow_slug: str, input: Any, run_id: str | uuid.UUID | None = None
    ) -> SyncFlowRun:
        """Start a run of ``flow_slug`` and return it, subscribed and up to date.

        See :meth:`PgflowClient.start_flow`; raises the same errors.
        """
        run = self._portal.run(self._client.start_flow(flow_slug, input, run_id))
        return SyncFlowRun(run, self._portal)

    def get_run(self, run_id: str | uuid.UUID) -> SyncFlowRun | None:
        """The run with this id (cached, or fetched and subscribed), or ``None``."""
        run = self._portal.run(self._client.get_run(run_id))
        return SyncFlowRun(run, self._portal) if run is not None else None

    def list_runs(
        self,
        *,
        flow_slug: str | None = None,
        status: FlowRunStatus | str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        before: str | uuid.UUID | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first; see :meth:`PgflowClient.list_runs`."""
        return self._portal.run(
            self._client.list_runs(
                flow_slug=flow_slug, status=status, since=since, limit=limit, before=before
            )
        )

    def cancel_run(self, run_id: str | uuid.UUID, *, reason: str | None = None) -> SyncFlowRun:
        """Cancel a started run; see :meth:`PgflowClient.cancel_run`."""
        run = self._portal.run(self._client.cancel_run(run_id, reason=reason))
        return SyncFlowRun(run, self._portal)

    def retry_run(self, run_id: str | uuid.UUID) -> SyncFlowRun:
        """Start a new run retrying a failed one; see :meth:`PgflowClient.retry_run`."""
        run = self._portal.run(self._client.retry_run(run_id))
        return SyncFlowRun(run, self._portal)

    @property
    def runs(self) -> dict[str, SyncFlowRun]:
        """The runs this client currently watches, by id (a copy)."""
        runs = self._portal.call(lambda: self._client.runs)
        return {rid: SyncFlowRun(run, self._portal) for rid, run in runs.items()}

    def subscriptions(self) -> frozenset[str]:
        """Run ids the transport is subscribed to (for diagnostics and tests)."""
        return self._portal.call(self._client.subscriptions)

    @property
    def async_client(self) -> PgflowClient:
        """The wrapped :class:`PgflowClient`; it lives on this client's loop thread."""
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """This client's private event loop (for ``asyncio.run_coroutine_threadsafe``)."""
        return self._portal._loop

    # -- releasing ----------------------------------------------------------------------------

    def dispose(self, run_id: str | uuid.UUID) -> None:
        """Stop watching one run: its callbacks are dropped and its subscription released."""
        self._portal.call(self._client.dispose, run_id)

    def dispose_all(self) -> None:
        """Stop watching every run of this client."""
        self._portal.call(self._client.dispose_all)

    @property
    def closed(self) -> bool:
        return self._portal.stopping

    def close(self) -> None:
        """Dispose every run, close the connections and stop the loop thread (idempotent).

        Calls still waiting in other threads end with :class:`WaitCancelled` (their run
        was disposed) or :class:`ClientClosed`.
        """
        self._portal.stop(self._aclose)

    async def _aclose(self) -> None:
        try:
            await self._client.aclose()
        finally:
            if self._supabase is not None:
                await _close_supabase(self._supabase)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SyncPgflowClient {state} runs={len(self._client.runs)}>"


async def _close_supabase(client: AsyncClient) -> None:
    """Close the realtime socket and the REST connections of a supabase client we made."""
    try:
        await client.remove_all_channels()
    except Exception as exc:
        log.warning("closing the supabase realtime connection failed: %s", exc)
    try:
        await client.postgrest.aclose()
    except Exception as exc:
        log.warning("closing the supabase REST connection failed: %s", exc)
