"""What the SQL emitted: every committed ``realtime.messages`` row, in commit order.

``realtime.messages`` has no column that orders the rows of one transaction, so the order is
taken from the ``realtime_broadcast`` notifications (one per row, delivered at commit, in
order). A sentinel broadcast marks "everything committed before now": once it is seen here, or
by a client, every earlier event of its topic has been seen too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg.types.json import Jsonb

SENTINEL_EVENT = "run:sentinel"


@dataclass(frozen=True)
class Emitted:
    """One broadcast row: its message id, event name and payload."""

    id: str
    event: str
    payload: dict[str, Any]


class EmittedEvents:
    """Listens to ``realtime_broadcast`` from before a run starts; see the module docstring."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._seen: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()
        self._listen: psycopg.AsyncConnection[Any] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._listen = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        await self._listen.execute("listen realtime_broadcast")
        self._reader = asyncio.create_task(self._read(self._listen))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._listen is not None:
            await self._listen.close()

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for notify in conn.notifies():
            body = json.loads(notify.payload)
            async with self._changed:
                self._seen.append((str(body["id"]), str(body["topic"])))
                self._changed.notify_all()

    async def send_sentinel(self, topic: str) -> str:
        """Broadcast a marker on ``topic`` (an event no client acts on); returns its id."""
        marker = str(uuid.uuid4())
        payload = {"id": marker, "run_id": str(uuid.uuid4()), "sentinel": True}
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            await conn.execute(
                "select realtime.send(%s, %s, %s, false)", (Jsonb(payload), SENTINEL_EVENT, topic)
            )
        return marker

    async def settled(self, topic: str, *, timeout: float = 10.0) -> tuple[list[Emitted], str]:
        """Every event committed on ``topic`` so far, in order, and the sentinel's id."""
        marker = await self.send_sentinel(topic)
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: (marker, topic) in self._seen), timeout
            )
            ids = [i for i, t in self._seen if t == topic]
        ids = ids[: ids.index(marker)]
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "select id::text, event, payload from realtime.messages where id = any(%s::uuid[])",
                (ids,),
            )
            rows = {row[0]: Emitted(row[0], row[1], row[2]) for row in await cur.fetchall()}
        return [rows[i] for i in ids], marker


def topic_of(run_id: str | uuid.UUID) -> str:
    return f"pgflow:run:{run_id}"
