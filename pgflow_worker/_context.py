"""What a step handler gets besides its input: where it is, how to reach the database, when
to stop."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.abc import Params, QueryNoTemplate
from psycopg_pool import AsyncConnectionPool

from ._settings import WorkerSettings
from ._sql_client import PgflowSqlClient, StepTask
from .errors import HandlerContextError

_T = TypeVar("_T")

__all__ = ["FlowInputCache", "StepContext"]


class FlowInputCache:
    """Flow inputs per run, loaded once; concurrent requests for one run share one query."""

    def __init__(self, client: PgflowSqlClient | None, max_runs: int = 1024) -> None:
        self._client = client
        self._max_runs = max_runs
        self._values: dict[uuid.UUID, Any] = {}
        self._pending: dict[uuid.UUID, asyncio.Future[Any]] = {}

    def remember(self, run_id: uuid.UUID, value: Any) -> None:
        if run_id not in self._values and len(self._values) >= self._max_runs:
            self._values.pop(next(iter(self._values)))
        self._values[run_id] = value

    def peek(self, run_id: uuid.UUID) -> tuple[bool, Any]:
        if run_id in self._values:
            return True, self._values[run_id]
        return False, None

    async def get(self, run_id: uuid.UUID) -> Any:
        found, value = self.peek(run_id)
        if found:
            return value
        pending = self._pending.get(run_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[run_id] = pending
            try:
                if self._client is None:
                    raise HandlerContextError(
                        f"the input of run {run_id} is not known and this context has no "
                        "database to load it from; pass flow_input= when building it"
                    )
                value = await self._client.load_flow_input(run_id)
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: the caller re-raises it below
                raise
            else:
                self.remember(run_id, value)
                pending.set_result(value)
            finally:
                self._pending.pop(run_id, None)
            return value
        return await asyncio.shield(pending)


@dataclass(eq=False)
class StepContext:
    """The second argument of a handler.

    ``flow_input`` is the run's input (loaded on first use and cached per run): sync handlers
    read the property; async handlers ``await ctx.get_flow_input()``. ``shutdown`` is set when
    the worker begins a graceful stop, so long handlers can wind down early; ``cancelled`` when
    the worker learns that the task's run was cancelled (within ``cancel_check_interval``), so
    they can stop: their result would change nothing. The database is
    at hand through the worker's own connection pool: ``async with ctx.connection()`` in async
    handlers, ``ctx.execute(...)`` in sync ones.
    """

    task: StepTask
    raw_message: dict[str, Any]
    settings: WorkerSettings
    shutdown: asyncio.Event
    logger: logging.LoggerAdapter[logging.Logger]
    _pool: AsyncConnectionPool[AsyncConnection[Any]] | None
    _inputs: FlowInputCache
    _loop: asyncio.AbstractEventLoop | None
    _shutdown_flag: threading.Event = field(default_factory=threading.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    _cancel_flag: threading.Event = field(default_factory=threading.Event)
    _cancel_reason: str | None = None

    @property
    def run_id(self) -> uuid.UUID:
        return self.task.run_id

    @property
    def flow_slug(self) -> str:
        return self.task.flow_slug

    @property
    def step_slug(self) -> str:
        return self.task.step_slug

    @property
    def task_index(self) -> int:
        return self.task.task_index

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, and so on."""
        return self.task.attempt

    @property
    def shutdown_requested(self) -> bool:
        """True once the worker is stopping (safe to read from any thread)."""
        return self._shutdown_flag.is_set()

    def wait_for_shutdown(self, timeout: float | None = None) -> bool:
        """Block a sync handler's thread until the worker begins a graceful stop, or until
        ``timeout`` seconds have passed; True when the stop has begun.

        The thread-safe twin of ``await ctx.shutdown.wait()``, for handlers that pause between
        units of work and should wake up early when the worker stops.
        """
        self._refuse_on_loop("ctx.wait_for_shutdown()", "await ctx.shutdown.wait()")
        return self._shutdown_flag.wait(timeout)

    @property
    def cancel_requested(self) -> bool:
        """True once the worker has seen that this task's run was cancelled (safe to read from
        any thread). The worker checks every ``cancel_check_interval`` seconds (1 by default)
        while handlers run, so this turns True within about that time of the cancellation."""
        return self._cancel_flag.is_set()

    @property
    def cancel_reason(self) -> str | None:
        """The reason given when the run was cancelled, if any (``None`` before that)."""
        return self._cancel_reason

    def wait_for_cancel(self, timeout: float | None = None) -> bool:
        """Block a sync handler's thread until its run is seen cancelled, or until ``timeout``
        seconds have passed; True when cancelled. The thread-safe twin of
        ``await ctx.cancelled.wait()``."""
        self._refuse_on_loop("ctx.wait_for_cancel()", "await ctx.cancelled.wait()")
        return self._cancel_flag.wait(timeout)

    def _mark_cancelled(self, reason: str | None) -> None:
        """Called on the worker's loop when the run is found cancelled."""
        if self._cancel_flag.is_set():
            return
        self._cancel_reason = reason
        self._cancel_flag.set()
        self.cancelled.set()

    async def get_flow_input(self) -> Any:
        """The run's input, from the task itself when the SQL supplied it, else loaded once."""
        return await self._inputs.get(self.task.run_id)

    @property
    def flow_input(self) -> Any:
        """The run's input, for sync handlers (blocks this worker thread until loaded)."""
        found, value = self._inputs.peek(self.task.run_id)
        if found:
            return value
        self._refuse_on_loop("reading ctx.flow_input", "await ctx.get_flow_input()")
        return self._on_loop(self.get_flow_input())

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """Borrow a connection from the worker's pool for the duration of the block."""
        async with self._require_pool().connection() as conn:
            yield conn

    def execute(
        self, query: QueryNoTemplate, params: Params | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one SQL statement from a sync handler and return its rows (``[]`` when it
        returns none), on a connection of the worker's pool, in autocommit.

        The statement is run by the worker's event loop (``run_coroutine_threadsafe``) while
        the handler's thread waits for it. That was chosen over opening a psycopg connection
        of the handler's own: the query shares the pool, so a worker never holds more than
        ``max_pg_connections`` connections however many sync handlers run, its connections
        keep the worker's ``application_name``, and no connection set-up is paid per call.
        Each call is its own transaction; work that needs several statements in one
        transaction belongs in a single statement (a CTE, a function) or an async handler
        using :meth:`connection`.
        """
        self._refuse_on_loop("ctx.execute()", "'async with ctx.connection() as conn:'")
        return self._on_loop(self._execute(query, params))

    async def _execute(
        self, query: QueryNoTemplate, params: Params | None
    ) -> list[tuple[Any, ...]]:
        async with self._require_pool().connection() as conn:
            cursor = await conn.execute(query, params)
            if cursor.description is None:
                return []
            return [tuple(row) for row in await cursor.fetchall()]

    def _require_pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        if self._pool is None:
            raise HandlerContextError(
                f"step {self.step_slug!r}: this context has no database (it was built for a "
                "unit test without one); run the flow on a worker to use ctx.connection() "
                "or ctx.execute()"
            )
        return self._pool

    def _refuse_on_loop(self, what: str, instead: str) -> None:
        """Blocking calls from the worker's loop would deadlock it: refuse them, saying why."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._loop is not None and running is self._loop:
            raise HandlerContextError(
                f"step {self.step_slug!r}: {what} blocks, and an async handler runs on the "
                f"worker's event loop; use {instead} instead"
            )

    def _on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:  # a context built for a unit test: no worker, no database
            coro.close()
            self._require_pool()
            raise HandlerContextError(f"step {self.step_slug!r}: this context has no event loop")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed: an abandoned handler outlived its worker
            coro.close()
            raise
        return future.result()
