"""Turns committed ``realtime.messages`` rows into broadcasts, in commit order.

``sql/compat/realtime.sql`` raises a NOTIFY on ``realtime_broadcast`` for each inserted row,
carrying only ``{"id", "topic"}``; NOTIFY is delivered at commit, in commit order. One connection
listens, another reads the rows by id, and messages are delivered one at a time in the order
of their notifications, so every topic sees its events in the order they were committed.

Notifications that arrived together (the events of one commit, or of commits made while the
last ones were being read) are read in one query: one round trip for the batch, not one per
message, as Realtime itself reads the messages table in batches rather than row by row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

CHANNEL = "realtime_broadcast"
_START_SECONDS = 10.0

_READ_MESSAGES = """
select id::text, topic, event, payload::text, private
from realtime.messages
where id = any(%s::uuid[]) and extension = 'broadcast'
"""


@dataclass(frozen=True)
class Message:
    """One broadcast row: its id, topic, event, payload as JSON text, and privacy."""

    id: str
    topic: str
    event: str
    payload_json: str
    private: bool


Deliver = Callable[[Message], Awaitable[object]]


class BroadcastListener:
    """LISTENs on ``realtime_broadcast`` and hands each committed message to ``deliver``."""

    def __init__(self, dsn: str, deliver: Deliver) -> None:
        self._dsn = dsn
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Start listening; returns once LISTEN is in effect (later commits will be seen)."""
        self._task = asyncio.create_task(self._run(), name="supabase-standin-listener")
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._task}, timeout=_START_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            if self._task.done():
                self._task.result()
            raise TimeoutError(f"LISTEN {CHANNEL} was not in effect after {_START_SECONDS} s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except psycopg.OperationalError as exc:
                if not self._ready.is_set():
                    raise
                logger.warning("realtime listener lost its connection (%s); reconnecting", exc)
            # Back off before reconnecting so a database that is gone is not hammered.
            await asyncio.sleep(0.2)

    async def _listen(self) -> None:
        async with (
            await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as listen,
            await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as reader,
        ):
            await listen.execute(f"LISTEN {CHANNEL}")
            self._ready.set()
            pending: list[str] = []
            arrived = asyncio.Event()
            receiver = asyncio.create_task(self._receive(listen, pending, arrived))
            try:
                while True:
                    await arrived.wait()
                    arrived.clear()
                    batch = pending[:]
                    pending.clear()
                    for message in await self._read(reader, batch):
                        try:
                            await self._deliver(message)
                        except Exception:
                            logger.exception("realtime: delivering message %s failed", message.id)
                    if receiver.done() and not pending:
                        receiver.result()  # the listening connection failed: raise it here
                        raise psycopg.OperationalError("the LISTEN connection stopped")
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await receiver

    @staticmethod
    async def _receive(
        listen: psycopg.AsyncConnection[Any], pending: list[str], arrived: asyncio.Event
    ) -> None:
        """Queue each notification's payload; wake the reader (also when listening fails)."""
        try:
            async for notify in listen.notifies():
                pending.append(notify.payload)
                arrived.set()
        finally:
            arrived.set()

    @staticmethod
    async def _read(reader: psycopg.AsyncConnection[Any], payloads: list[str]) -> list[Message]:
        """The messages the notifications name, in the notifications' order; rows gone (or
        never broadcasts) are skipped."""
        ids: list[str] = []
        for payload in payloads:
            try:
                ids.append(str(uuid.UUID(json.loads(payload)["id"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                logger.warning(
                    "realtime: ignoring a notification that names no message: %r", payload
                )
        if not ids:
            return []
        cur = await reader.execute(_READ_MESSAGES, (ids,))
        rows = {row[0]: row for row in await cur.fetchall()}
        messages = []
        for message_id in ids:
            row = rows.get(message_id)
            if row is None:
                continue
            _, topic, event, payload_json, private = row
            messages.append(
                Message(
                    id=message_id,
                    topic=topic,
                    event=event or "",
                    payload_json=payload_json if payload_json is not None else "null",
                    private=bool(private),
                )
            )
        return messages
