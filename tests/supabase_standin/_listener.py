"""Turns committed ``realtime.messages`` rows into broadcasts, in commit order.

``sql/compat/realtime.sql`` raises a NOTIFY on ``realtime_broadcast`` for each inserted row,
carrying only ``{"id", "topic"}``; NOTIFY is delivered at commit, in commit order. One connection
listens, another reads each row by id, and notifications are handled one at a time so every
topic sees its events in the order they were committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

CHANNEL = "realtime_broadcast"
_START_SECONDS = 10.0

_READ_MESSAGE = """
select topic, event, payload::text, private
from realtime.messages
where id = %s and extension = 'broadcast'
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
            async for notify in listen.notifies():
                message = await self._read(reader, notify.payload)
                if message is None:
                    continue
                try:
                    await self._deliver(message)
                except Exception:
                    logger.exception("realtime: delivering message %s failed", message.id)

    @staticmethod
    async def _read(reader: psycopg.AsyncConnection[Any], payload: str) -> Message | None:
        try:
            message_id = str(json.loads(payload)["id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("realtime: ignoring a notification that names no message: %r", payload)
            return None
        cur = await reader.execute(_READ_MESSAGE, (message_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        topic, event, payload_json, private = row
        return Message(
            id=message_id,
            topic=topic,
            event=event or "",
            payload_json=payload_json if payload_json is not None else "null",
            private=bool(private),
        )
