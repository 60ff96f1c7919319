"""PgflowClient: start flows and watch their runs, over Supabase or plain Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from ._events import FlowEvent, canonical_run_id, parse_broadcast
from ._postgres import PostgresTransport
from ._records import RunRecord, parse_run_record
from ._run import FlowRun
from ._status import FlowRunStatus
from ._supabase import SupabaseTransport
from ._telemetry import start_flow_span, tracer
from ._transport import Transport, TransportHooks, check_json
from .errors import (
    ClientClosed,
    InvalidRunData,
    InvalidRunFilter,
    PgflowClientError,
    RunNotFound,
    TransportError,
)

if TYPE_CHECKING:
    from supabase import AsyncClient

__all__ = ["PgflowClient"]

log = logging.getLogger("pgflow.client")

#: What ``list_runs`` filters on: a run status, or ``cancelled`` for the cancelled failed runs.
LIST_STATUSES = ("started", "completed", "failed", "cancelled")
#: The most runs one ``list_runs`` call returns (the SQL function's bound).
MAX_LIST_LIMIT = 10000


class PgflowClient:
    """Starts flows and keeps :class:`FlowRun` objects up to date from their events.

    ``PgflowClient(supabase_async_client)`` talks to Supabase (PostgREST RPCs and Realtime
    broadcast); ``await PgflowClient.connect(dsn)`` talks to PostgreSQL directly (SQL calls
    and LISTEN/NOTIFY). Both behave the same. Use ``async with client:`` (or ``aclose()``)
    to release every subscription and connection.
    """

    def __init__(
        self,
        supabase: AsyncClient | None = None,
        *,
        subscribe_timeout: float = 20.0,
        reconcile_after: Sequence[float] = (0.5, 2.0),
        transport: Callable[[TransportHooks], Transport] | None = None,
    ) -> None:
        self._runs: dict[str, FlowRun] = {}
        # Finished runs need no subscription, but get_run must keep returning the same object
        # for as long as anyone holds it; held weakly so long-lived clients do not grow.
        self._finished: weakref.WeakValueDictionary[str, FlowRun] = weakref.WeakValueDictionary()
        self._buffers: dict[str, list[FlowEvent]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._tracer = tracer()
        hooks = TransportHooks(deliver=self._deliver, resync=self._resync)
        self._transport: Transport
        if transport is not None:
            self._transport = transport(hooks)
        elif supabase is not None:
            self._transport = SupabaseTransport(
                supabase,
                hooks,
                subscribe_timeout=subscribe_timeout,
                reconcile_after=reconcile_after,
            )
        else:
            raise TypeError(
                "PgflowClient needs a supabase AsyncClient; for plain PostgreSQL use "
                "'await PgflowClient.connect(dsn)'"
            )

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 30.0,
        subscribe_timeout: float = 20.0,
    ) -> Self:
        """A client over plain PostgreSQL (pgflow SQL plus pgflow-py's realtime stand-in).

        ``subscribe_timeout`` bounds how long ``start_flow`` and ``get_run`` wait for the
        shared LISTEN connection while it is being re-established after a loss; past it they
        raise :class:`SubscriptionError` (and start nothing).
        """
        opened: list[PostgresTransport] = []

        def make(hooks: TransportHooks) -> PostgresTransport:
            opened.append(
                PostgresTransport(
                    dsn, hooks, pool_size=pool_size, subscribe_timeout=subscribe_timeout
                )
            )
            return opened[0]

        client = cls(transport=make)
        try:
            await opened[0].open(timeout=connect_timeout)
        except BaseException:
            await opened[0].close()
            raise
        return client

    # -- starting and finding runs ------------------------------------------------------------

    async def start_flow(
        self, flow_slug: str, input: Any, run_id: str | uuid.UUID | None = None
    ) -> FlowRun:
        """Start a run of ``flow_slug`` and return it, already subscribed and up to date.

        The subscription is confirmed before the run starts, so no event is missed. On any
        error (unknown flow, bad input, duplicate run id) nothing is left subscribed.
        """
        self._check_open()
        check_json(flow_slug, input)
        rid = canonical_run_id(run_id) if run_id is not None else str(uuid.uuid4())
        if rid in self._runs:
            raise PgflowClientError(f"run {rid} is already tracked by this client")
        run = FlowRun(rid, flow_slug, input=input, on_dispose=self._released)
        self._runs[rid] = run
        try:
            with start_flow_span(self._tracer, flow_slug, rid) as trace:
                await self._transport.subscribe(rid)
                snapshot = await self._transport.start_flow_with_states(
                    flow_slug, input, rid, trace=trace
                )
            run._apply_snapshot(snapshot["run"], snapshot.get("steps") or (), emit=False)
        except BaseException:
            self._runs.pop(rid, None)
            try:
                await self._transport.unsubscribe(rid)  # released before the error reaches you
            finally:
                run.dispose()
            raise
        if not run.disposed:
            self._transport.after_start(rid)
        return run

    async def get_run(self, run_id: str | uuid.UUID) -> FlowRun | None:
        """The run with this id, or None when there is none.

        A run this client watches is returned as it is, without a call to the server. So is a
        finished run it has returned before, for as long as that object is referenced: its
        state is final, so it is kept without a subscription. Other runs are fetched,
        subscribed (unless already finished) and cached.
        """
        self._check_open()
        rid = canonical_run_id(run_id)
        cached = self._runs.get(rid) or self._finished.get(rid)
        if cached is not None:
            return cached
        return await self._track(rid)

    async def _track(self, rid: str, before: Callable[[], Any] | None = None) -> FlowRun | None:
        """Subscribe to ``rid``, await ``before()`` if given (what creates the run), fetch its
        snapshot and return the run, tracked; None when there is no such run."""
        self._buffers[rid] = []
        try:
            await self._transport.subscribe(rid)
            if before is not None:
                await before()
            snapshot = await self._transport.get_run_with_states(rid)
            if snapshot is None:
                await self._transport.unsubscribe(rid)
                return None
            row = snapshot.get("run")
            if not isinstance(row, dict) or not isinstance(row.get("flow_slug"), str):
                raise InvalidRunData(f"run {rid}: the snapshot has no run row with a flow_slug")
            run = FlowRun(rid, row["flow_slug"], on_dispose=self._released)
            self._runs[rid] = run
            run._apply_snapshot(row, snapshot.get("steps") or (), emit=False)
            for event in self._buffers.get(rid, ()):
                run._apply_event(event)
        except BaseException:
            stale = self._runs.pop(rid, None)
            try:
                await self._transport.unsubscribe(rid)
            finally:
                if stale is not None:
                    stale.dispose()
            raise
        finally:
            self._buffers.pop(rid, None)
        if not run.disposed:
            # The same cover as after start_flow: the subscription is as young here.
            self._transport.after_start(rid)
        return run

    # -- operating runs -----------------------------------------------------------------------

    async def list_runs(
        self,
        *,
        flow_slug: str | None = None,
        status: FlowRunStatus | str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        before: str | uuid.UUID | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first: at most ``limit``, optionally of one flow, with one status
        (``started``, ``completed``, ``failed``, or ``cancelled`` for the cancelled among the
        failed) and started at or after ``since``. For the next page pass the last record's
        ``run_id`` as ``before``. Records are plain values: nothing is subscribed.
        """
        self._check_open()
        wanted = status.value if isinstance(status, FlowRunStatus) else status
        if wanted is not None and wanted not in LIST_STATUSES:
            raise InvalidRunFilter(f"status {wanted!r} is not one of {', '.join(LIST_STATUSES)}")
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not (1 <= limit <= MAX_LIST_LIMIT)
        ):
            raise InvalidRunFilter(
                f"limit must be an int from 1 to {MAX_LIST_LIMIT}, not {limit!r}"
            )
        if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise InvalidRunFilter(f"since must be a timezone-aware datetime, not {since!r}")
        cursor = uuid.UUID(canonical_run_id(before)) if before is not None else None
        rows = await self._transport.call_rows(
            "list_runs",
            {
                "flow_slug": flow_slug,
                "status": wanted,
                "since": since,
                "max_runs": limit,
                "before_run_id": cursor,
            },
        )
        return [parse_run_record(row) for row in rows]

    async def cancel_run(self, run_id: str | uuid.UUID, *, reason: str | None = None) -> FlowRun:
        """Cancel a started run and return it, ``failed`` and marked cancelled.

        Its queued tasks and those waiting for a retry never start, its messages leave the
        queue, no step starts afterwards, and a handler still running sees the cancellation
        through its context. Raises :class:`RunNotFound` for an unknown run and
        :class:`RunAlreadyFinished` when it has already ended (nothing changes then).
        """
        self._check_open()
        rid = canonical_run_id(run_id)
        (row,) = await self._call_one(
            "cancel_run", {"run_id": uuid.UUID(rid), "reason": reason}, rid
        )
        run = self._runs.get(rid) or self._finished.get(rid)
        if run is not None:
            # Up to date now, without waiting for the broadcast (which is then a no-op).
            run._apply_snapshot(row, (), emit=True)
            return run
        fetched = await self._track(rid)
        if fetched is None:
            raise RunNotFound(
                f"cancel_run: run {rid} was deleted meanwhile", run_id=rid, function="cancel_run"
            )
        return fetched

    async def retry_run(self, run_id: str | uuid.UUID) -> FlowRun:
        """Start a new run of a failed (or cancelled) run's flow with the same input, and
        return it, subscribed before it starts; its ``restart_of_run_id`` is ``run_id``.

        The source run is left as it was. Raises :class:`RunNotFound` for an unknown run and
        :class:`RunNotFailed` for one that has not failed.
        """
        self._check_open()
        source = canonical_run_id(run_id)
        new_id = str(uuid.uuid4())

        async def start() -> None:
            await self._call_one(
                "retry_run", {"run_id": uuid.UUID(source), "new_run_id": uuid.UUID(new_id)}, source
            )

        run = await self._track(new_id, start)
        if run is None:
            raise TransportError(f"retry_run: the new run {new_id} of run {source} is missing")
        return run

    async def _call_one(
        self, function: str, params: dict[str, Any], rid: str
    ) -> list[dict[str, Any]]:
        rows = await self._transport.call_rows(function, params)
        if len(rows) != 1:
            raise TransportError(f"{function} returned {len(rows)} rows for run {rid}, not one")
        return rows

    # -- releasing ----------------------------------------------------------------------------

    def dispose(self, run_id: str | uuid.UUID) -> None:
        """Stop watching one run: its callbacks are dropped and its subscription released.

        The client forgets the run: a later ``get_run`` fetches it again.
        """
        rid = canonical_run_id(run_id)
        run = self._runs.pop(rid, None)
        if run is not None:
            run.dispose()
        self._finished.pop(rid, None)

    def dispose_all(self) -> None:
        """Stop watching every run of this client, and forget the finished ones."""
        for rid in list(self._runs):
            self.dispose(rid)
        self._finished.clear()

    def _released(self, run: FlowRun) -> None:
        """A run was disposed (by the caller or by itself): drop its subscription.

        A finished run is remembered (weakly) so that ``get_run`` keeps returning it.
        """
        if self._runs.get(run.run_id) is run:
            del self._runs[run.run_id]
            if run.status.is_terminal:
                self._finished[run.run_id] = run
        self._spawn(self._transport.unsubscribe(run.run_id))

    async def aclose(self) -> None:
        """Dispose every run and close the transport (idempotent)."""
        if self._closed:
            return
        self.dispose_all()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        self._closed = True
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def runs(self) -> dict[str, FlowRun]:
        """The runs this client currently watches, by id (a copy)."""
        return dict(self._runs)

    def subscriptions(self) -> frozenset[str]:
        """Run ids the transport is subscribed to (for diagnostics and tests)."""
        return self._transport.subscribed()

    # -- events -------------------------------------------------------------------------------

    def _deliver(self, run_id: str, event_name: str, payload: Any) -> None:
        event = parse_broadcast(event_name, payload)
        if event is None:
            return
        if event.run_id != run_id:
            log.warning(
                "dropped %s for run %s that arrived on the topic of run %s",
                event_name,
                event.run_id,
                run_id,
            )
            return
        run = self._runs.get(event.run_id)
        if run is not None:
            run._apply_event(event)
            return
        buffer = self._buffers.get(event.run_id)
        if buffer is not None:
            buffer.append(event)

    async def _resync(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is None or run.disposed or run._settled():
            # A settled run has nothing left to learn: the call would only load the client,
            # the server and every start_flow waiting behind them.
            return
        try:
            snapshot = await self._transport.get_run_with_states(run_id)
        except PgflowClientError as exc:
            log.warning("resync of run %s failed: %s", run_id, exc)
            return
        if snapshot is None or self._runs.get(run_id) is not run:
            return
        try:
            run._apply_snapshot(snapshot["run"], snapshot.get("steps") or (), emit=True)
        except InvalidRunData as exc:
            log.warning("resync of run %s ignored an invalid snapshot: %s", run_id, exc)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("this pgflow client is closed")
