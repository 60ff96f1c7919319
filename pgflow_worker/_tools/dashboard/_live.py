"""Which runs changed, as the database announces it: the client's LISTEN/NOTIFY transport.

One LISTEN connection serves every open run page. A page's event stream registers a
:class:`Watch` for its run; each broadcast event of that run (and each resync after the LISTEN
connection was re-established) sets the watch's flag, and the stream then reads the run afresh.
Several events arriving together make one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from pgflow_client._postgres import PostgresTransport
from pgflow_client._transport import TransportHooks
from pgflow_client.errors import PgflowClientError

__all__ = ["LiveRuns", "Watch"]

log = logging.getLogger("pgflow.dashboard")


async def _without_notifications(dsn: str) -> str | None:
    """Why broadcasts raise no NOTIFY here, or None when they do.

    pgflow-py's realtime stand-in (plain PostgreSQL) notifies on every broadcast; Supabase's
    own ``realtime`` schema does not, and its changes reach browsers through its Realtime
    server instead.
    """
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "select 1 from pg_catalog.pg_trigger "
                "where tgname = 'notify_message_inserted' "
                "and tgrelid = to_regclass('realtime.messages')"
            )
            found = await cur.fetchone()
    except psycopg.Error as exc:
        return f"cannot check for the broadcast trigger: {exc}"
    if found is None:
        return (
            "realtime.messages has no NOTIFY trigger in this database (it is a Supabase "
            "database, or pgflow-py's realtime stand-in is not installed): reload to see changes"
        )
    return None


class Watch:
    """One page's interest in one run: an event flag set whenever the run may have changed."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.changed = asyncio.Event()


class LiveRuns:
    """Run-change notifications for the dashboard's event streams."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._watches: dict[str, set[Watch]] = {}
        self._transport: PostgresTransport | None = None
        self.problem: str | None = None
        """Why live updates are off (e.g. notifications do not reach this connection)."""

    async def open(self) -> None:
        """Start listening; on failure, pages still load and say why they are not live."""
        self.problem = await _without_notifications(self._dsn)
        if self.problem is not None:
            log.warning("live updates are off: %s", self.problem)
            return
        transport = PostgresTransport(
            self._dsn, TransportHooks(deliver=self._deliver, resync=self._resync), pool_size=2
        )
        try:
            await transport.open()
        except PgflowClientError as exc:
            self.problem = str(exc)
            log.warning("live updates are off: %s", exc)
            with contextlib.suppress(Exception):
                await transport.close()
            return
        self._transport = transport

    async def close(self) -> None:
        """Stop listening and wake every stream so it ends."""
        transport, self._transport = self._transport, None
        for watches in self._watches.values():
            for watch in watches:
                watch.changed.set()
        if transport is not None:
            await transport.close()

    @property
    def available(self) -> bool:
        """Whether run changes are being delivered."""
        return self._transport is not None

    @contextlib.asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[Watch]:
        """Watch a run for as long as the block runs; subscribed before the block starts, so
        a change committed after the page's first read is not missed."""
        watch = Watch(run_id)
        watches = self._watches.setdefault(run_id, set())
        watches.add(watch)
        try:
            if self._transport is not None and len(watches) == 1:
                await self._transport.subscribe(run_id)
            yield watch
        finally:
            watches.discard(watch)
            if not watches:
                del self._watches[run_id]
                if self._transport is not None:
                    await self._transport.unsubscribe(run_id)

    def _deliver(self, run_id: str, event: str, payload: Any) -> None:
        for watch in self._watches.get(run_id, ()):
            watch.changed.set()

    async def _resync(self, run_id: str) -> None:
        self._deliver(run_id, "resync", None)
