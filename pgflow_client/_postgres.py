"""The client over plain PostgreSQL: RPCs as SQL calls, events through LISTEN/NOTIFY.

Every committed ``realtime.send`` inserts a row into ``realtime.messages``, whose trigger (from
pgflow-py's realtime stand-in) NOTIFYs ``realtime_broadcast`` with the row's id and topic.
One LISTEN connection serves every run of the client; the rows of the runs it watches are read
by id, in batches, in notification (that is, commit) order. When the LISTEN connection is lost
it reconnects with bounded backoff and asks the client to resync every watched run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ._transport import TRACED_START, TransportHooks, nothing, rpc_error, subject_run
from .dsn import describe_dsn, redact
from .errors import ClientClosed, ListenUnavailable, SubscriptionError, TransportError

__all__ = ["PostgresTransport"]

log = logging.getLogger("pgflow.client")

CHANNEL = "realtime_broadcast"
_TOPIC_PREFIX = "pgflow:run:"

#: How long :meth:`PostgresTransport.open` waits for its test notification once it is
#: committed. On a direct connection it arrives in about a round trip; the wait is paid in full
#: only where notifications never arrive, so it is generous enough that a slow server is not
#: mistaken for a transaction pooler.
NOTIFY_CHECK_TIMEOUT = 5.0

_TRACED_SIGNATURE = f"pgflow.{TRACED_START}(text,jsonb,uuid,text,text)"


class PostgresTransport:
    """RPCs over a small connection pool, events over one LISTEN connection."""

    def __init__(
        self,
        dsn: str,
        hooks: TransportHooks,
        *,
        pool_size: int = 4,
        subscribe_timeout: float = 20.0,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._dsn = dsn
        self._hooks = hooks
        self._subscribe_timeout = subscribe_timeout
        self._backoff = reconnect_backoff
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max(2, pool_size),
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="pgflow-client",
        )
        self._topics: dict[str, str] = {}
        self._inbox: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._listening = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._resyncs: set[asyncio.Future[None]] = set()
        self._traced_start: bool | None = None

    async def open(self, timeout: float = 30.0) -> None:
        """Open the LISTEN connection and the pool; fails fast when the server is unreachable."""
        try:
            listener = await AsyncConnection.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise TransportError(
                f"cannot connect to {describe_dsn(self._dsn)}: {redact(str(exc)).strip()}"
            ) from None
        try:
            await self._pool.open(wait=True, timeout=timeout)
            await self._check_notifications(listener)
            await self._start_listening(listener)
        except BaseException:
            await listener.close()
            raise
        self._tasks = [
            asyncio.create_task(self._listen(listener), name="pgflow-client-listen"),
            asyncio.create_task(self._dispatch(), name="pgflow-client-dispatch"),
        ]

    # -- subscriptions ------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the shared LISTEN connection is up (False while it is being re-established)."""
        return self._listening.is_set() and not self._closed

    async def subscribe(self, run_id: str) -> None:
        """Watch the run's topic; waits (at most ``subscribe_timeout``) for LISTEN to be up.

        The LISTEN is shared and normally already active. While it is being re-established
        (the connection was lost), an event committed now would never be seen, so the
        subscription is confirmed only once it is back, and refused with
        :class:`SubscriptionError` when that takes longer than ``subscribe_timeout``.
        """
        self._check_open()
        topic = _TOPIC_PREFIX + run_id
        added = topic not in self._topics
        self._topics[topic] = run_id
        if self._listening.is_set():
            return
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await self._listening.wait()
            self._check_open()  # closing wakes the wait too
        except BaseException as exc:
            if added:
                self._topics.pop(topic, None)
            if isinstance(exc, TimeoutError):
                raise SubscriptionError(
                    f"cannot subscribe to run {run_id}: the LISTEN connection to "
                    f"{describe_dsn(self._dsn)} was not re-established within "
                    f"{self._subscribe_timeout:g} s"
                ) from None
            raise

    def unsubscribe(self, run_id: str) -> Coroutine[Any, Any, None]:
        """Stop delivering the run's events at once; the shared LISTEN stays (nothing to await)."""
        self._topics.pop(_TOPIC_PREFIX + run_id, None)
        return nothing()

    def subscribed(self) -> frozenset[str]:
        return frozenset(self._topics.values())

    def after_start(self, run_id: str) -> None:
        """Nothing to reconcile: LISTEN was active before the run's transaction committed."""

    # -- RPCs ---------------------------------------------------------------------------------

    async def start_flow_with_states(
        self, flow_slug: str, input: Any, run_id: str, *, trace: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        self._check_open()
        trace = trace or {}
        traceparent = trace.get("traceparent")
        function = "start_flow_with_states"
        try:
            async with self._pool.connection() as conn:
                if traceparent and await self._can_trace(conn):
                    function = TRACED_START
                    cur = await conn.execute(
                        "select pgflow.start_flow_with_states_traced(%s, %s, %s::uuid, %s, %s)",
                        (
                            flow_slug,
                            Jsonb(input),
                            run_id,
                            traceparent,
                            trace.get("tracestate"),
                        ),
                    )
                else:
                    cur = await conn.execute(
                        "select pgflow.start_flow_with_states(%s, %s, %s::uuid)",
                        (flow_slug, Jsonb(input), run_id),
                    )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise self._error(function, exc, flow_slug) from None
        if row is None or not isinstance(row[0], dict):
            raise TransportError(f"start_flow_with_states returned no run for flow {flow_slug!r}")
        return row[0]

    async def _can_trace(self, conn: AsyncConnection[Any]) -> bool:
        """Whether runs can be started with their trace context: asked once, on the first
        start made inside a trace."""
        if self._traced_start is None:
            cur = await conn.execute(
                "select to_regprocedure(%s) is not null,"
                " has_function_privilege(to_regprocedure(%s), 'execute')",
                (_TRACED_SIGNATURE, _TRACED_SIGNATURE),
            )
            row = await cur.fetchone()
            exists, allowed = row if row is not None else (False, None)
            self._traced_start = bool(exists and allowed)
            if not exists:
                log.info(
                    "runs start without their trace context: %s has no %s (pgflow-py's SQL "
                    "has it from migration 0006)",
                    describe_dsn(self._dsn),
                    _TRACED_SIGNATURE,
                )
            elif not allowed:
                log.warning(
                    "runs start without their trace context: this role has no EXECUTE on %s",
                    _TRACED_SIGNATURE,
                )
        return self._traced_start

    async def get_run_with_states(self, run_id: str) -> dict[str, Any] | None:
        self._check_open()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute("select pgflow.get_run_with_states(%s::uuid)", (run_id,))
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise self._error("get_run_with_states", exc, None) from None
        return None if row is None or row[0] is None else row[0]

    async def call_rows(self, function: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self._check_open()
        given = {name: value for name, value in params.items() if value is not None}
        query = sql.SQL(
            "select coalesce(jsonb_agg(to_jsonb(r)), '[]'::jsonb) from {}({}) as r"
        ).format(
            sql.Identifier("pgflow", function),
            sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder())
                for name in given
            ),
        )
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, list(given.values()))
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise self._error(function, exc, None, subject_run(params)) from None
        return [] if row is None else list(row[0])

    @staticmethod
    def _error(
        function: str, exc: psycopg.Error, flow_slug: str | None, run_id: str | None = None
    ) -> TransportError:
        diag = exc.diag
        message = diag.message_primary or str(exc)
        # psycopg files SQLSTATE class 55 (a run not in the state an operation needs) under
        # OperationalError too: that is the server's answer, not a lost connection.
        if isinstance(exc, psycopg.OperationalError) and not (exc.sqlstate or "").startswith("55"):
            return TransportError(f"{function} failed: the database connection failed: {exc}")
        return rpc_error(function, exc.sqlstate, message, flow_slug=flow_slug, run_id=run_id)

    # -- events -------------------------------------------------------------------------------

    async def _connect_listener(self) -> AsyncConnection[Any]:
        conn = await AsyncConnection.connect(self._dsn, autocommit=True)
        await self._start_listening(conn)
        return conn

    async def _start_listening(self, conn: AsyncConnection[Any]) -> None:
        await conn.execute(f"listen {CHANNEL}")
        self._listening.set()

    async def _check_notifications(self, listener: AsyncConnection[Any]) -> None:
        """Refuse, with :class:`ListenUnavailable`, a connection notifications do not reach.

        LISTEN on a channel of its own, NOTIFY it from a pooled connection, wait for the
        notification. Through a transaction-mode pooler the LISTEN stays behind in a server
        session the listener no longer holds, so nothing arrives; no query on the listener
        is made while waiting, since it could borrow that very session and get the
        notification by chance. This is the one check that does not depend on the pooler's
        kind: none of them announces itself.
        """
        channel = f"pgflow_check_{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        async with self._pool.connection() as conn:
            await conn.execute("select pg_notify(%s, %s)", (channel, token))
        async for note in listener.notifies(timeout=NOTIFY_CHECK_TIMEOUT):
            if note.channel == channel and note.payload == token:
                break
        else:
            raise ListenUnavailable(
                f"notifications do not reach a connection to {describe_dsn(self._dsn)}: a test "
                f"NOTIFY sent through a second connection did not arrive within "
                f"{NOTIFY_CHECK_TIMEOUT:g} s. This is what a transaction-mode pooler does "
                "(Supabase's port 6543, pgbouncer's pool_mode = transaction): LISTEN stays in "
                "a server session the client does not keep. Connect the client directly or "
                "through a session-mode pooler (Supabase's port 5432)."
            )
        await listener.execute(sql.SQL("unlisten {}").format(sql.Identifier(channel)))

    async def _listen(self, conn: AsyncConnection[Any]) -> None:
        delay = self._backoff[0]
        while not self._closed:
            try:
                async for note in conn.notifies():
                    self._on_notify(note.payload)
            except (psycopg.Error, OSError) as exc:
                if self._closed:
                    return
                log.warning("lost the LISTEN connection (%s); reconnecting", exc)
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            while not self._closed:
                try:
                    conn = await self._connect_listener()
                except (psycopg.OperationalError, OSError) as exc:
                    log.info("LISTEN reconnect failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
                delay = self._backoff[0]
                log.info("LISTEN connection restored; resyncing %d run(s)", len(self._topics))
                for run_id in list(self._topics.values()):
                    self._spawn_resync(run_id)
                break

    def _on_notify(self, payload: str) -> None:
        # Any role may NOTIFY this channel: an id that is not a UUID would fail the read of
        # every event batched with it, so it is dropped here, on its own.
        try:
            data = json.loads(payload)
            message_id, topic = str(uuid.UUID(data["id"])), str(data["topic"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignored a malformed %s notification: %.200r", CHANNEL, payload)
            return
        if topic in self._topics:
            self._inbox.put_nowait((message_id, topic))

    async def _dispatch(self) -> None:
        while True:
            first = await self._inbox.get()
            if first is None:
                return  # closing
            batch = [first]
            while not self._inbox.empty():
                item = self._inbox.get_nowait()
                if item is None:
                    return
                batch.append(item)
            try:
                rows = await self._fetch([message_id for message_id, _ in batch])
            except (psycopg.Error, OSError) as exc:
                if self._closed:
                    return  # a cancelled query surfaces as QueryCanceled, not CancelledError
                log.warning("could not read %d event(s): %s; resyncing their runs", len(batch), exc)
                for run_id in {self._topics.get(topic) for _, topic in batch} - {None}:
                    assert run_id is not None
                    self._spawn_resync(run_id)
                continue
            if self._closed:
                return
            for message_id, topic in batch:
                run_id = self._topics.get(topic)
                found = rows.get(message_id)
                if run_id is None or found is None:
                    continue
                event, payload = found
                try:
                    self._hooks.deliver(run_id, event, payload)
                except Exception:
                    log.exception("delivering %s for run %s failed", event, run_id)

    async def _fetch(self, message_ids: list[str]) -> dict[str, tuple[str, Any]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "select id::text, event, payload from realtime.messages where id = any(%s::uuid[])",
                (message_ids,),
            )
            return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}

    def _spawn_resync(self, run_id: str) -> None:
        task = asyncio.ensure_future(self._hooks.resync(run_id))
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    # -- lifecycle ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("this pgflow client is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._topics.clear()
        self._listening.set()  # wake subscribers waiting for LISTEN: they see the close
        self._inbox.put_nowait(None)
        listen, dispatch = self._tasks or (None, None)
        pending = [t for t in (listen, *self._resyncs) if t is not None]
        for task in pending:
            task.cancel()
        if dispatch is not None:
            # Stopped by the sentinel, not cancelled: a cancelled pool checkout can swallow
            # the cancellation and leave the task waiting forever.
            done, _ = await asyncio.wait({dispatch}, timeout=5)
            if not done:
                dispatch.cancel()
            pending.append(dispatch)
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        await self._pool.close()
