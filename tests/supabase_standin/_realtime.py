"""Supabase Realtime's websocket endpoint: Phoenix frames, channels, and broadcast routing.

Clients join ``realtime:<name>`` topics; database messages and client broadcasts for ``<name>``
go to every socket joined to it. As in Supabase, public and private channels are separate: a
message sent with ``private`` reaches only channels joined with the same ``private`` flag.
Each socket speaks the wire format its ``vsn`` query parameter asks for (1.0.0 by default).

For fault injection it can refuse joins, close a topic's channels from the server side
(``phx_close``), and withhold broadcasts from channels joined less than a given time ago, as
Realtime may do while a fresh subscription is not yet routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ._serializers import SERIALIZERS, FrameError, Serializer

logger = logging.getLogger(__name__)

TOPIC_PREFIX = "realtime:"
DEFAULT_VSN = "1.0.0"
_CLOSE_SECONDS = 2.0  # how long a server-side close waits for the client's close frame


@dataclass(eq=False)
class _Join:
    """One socket's membership of one topic, with the options it joined with."""

    socket: _Socket
    topic: str
    join_ref: str | None
    private: bool
    self_broadcast: bool
    ack: bool
    joined_at: float = 0.0  # event-loop time of the join


@dataclass(eq=False)
class _Socket:
    """One websocket connection; sends are serialised so frames never interleave."""

    ws: web.WebSocketResponse
    request: web.Request
    serializer: Serializer
    joins: dict[str, _Join] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: str) -> None:
        if self.ws.closed:
            return
        async with self.send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(frame)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(self.serializer.encode(frame))

    async def reply(
        self,
        topic: str,
        ref: Any,
        status: str,
        response: dict[str, Any],
        *,
        join_ref: Any = None,
    ) -> None:
        await self.send_frame(
            {
                "event": "phx_reply",
                "topic": topic,
                "ref": ref,
                "join_ref": join_ref,
                "payload": {"status": status, "response": response},
            }
        )


def broadcast_frame(
    topic: str,
    event: str,
    payload_json: str,
    message_id: str | None,
    serializer: Serializer = SERIALIZERS[DEFAULT_VSN],
) -> str:
    """A server broadcast frame; ``payload_json`` is spliced in as-is to keep it byte-exact."""
    meta = f',"meta":{json.dumps({"id": message_id})}' if message_id is not None else ""
    return serializer.broadcast(TOPIC_PREFIX + topic, event, payload_json, meta)


@dataclass(frozen=True)
class BroadcastRecord:
    """One broadcast the hub handled: how many joins got it and how many it was withheld from."""

    event: str
    delivered: int
    withheld: int


class RealtimeHub:
    """Sockets, their joins, and delivery of broadcasts to the sockets joined to a topic."""

    def __init__(self, *, withhold_after_join: float = 0.0, record: bool = False) -> None:
        self._sockets: set[_Socket] = set()
        self._topics: dict[str, set[_Join]] = {}
        self._paused = False
        self._changed = asyncio.Condition()
        self._refusals: list[str] = []
        self._records: dict[str, list[BroadcastRecord]] | None = {} if record else None
        self.withhold_after_join = withhold_after_join
        self.accepted_connections = 0
        self.refused_connections = 0
        self.refused_joins = 0

    def routes(self, prefix: str = "/realtime/v1") -> list[web.AbstractRouteDef]:
        return [
            web.get(f"{prefix}/websocket", self._websocket),
            web.post(f"{prefix}/api/broadcast/{{topic}}/events/{{event}}", self._http_broadcast),
        ]

    # -- observation and faults -----------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._sockets)

    def joined_topics(self) -> dict[str, int]:
        """Number of joins per topic name (without the ``realtime:`` prefix)."""
        return {
            topic.removeprefix(TOPIC_PREFIX): len(joins)
            for topic, joins in self._topics.items()
            if joins
        }

    async def wait_until(self, predicate: Callable[[], bool], within: float) -> None:
        """Wait (at most ``within`` seconds) until ``predicate`` holds; it is checked after every
        connect, refusal, disconnect, join and leave."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    def broadcasts(self, topic: str) -> list[BroadcastRecord]:
        """The broadcasts handled for ``topic`` (only recorded when the hub records)."""
        if self._records is None:
            raise RuntimeError("this hub does not record broadcasts (record=False)")
        return list(self._records.get(topic, ()))

    def refuse_joins(self, count: int, reason: str) -> None:
        """Answer the next ``count`` joins with an error reply carrying ``reason``."""
        self._refusals.extend([reason] * count)

    async def close_channel(self, topic: str) -> int:
        """Close every channel joined to ``topic`` from the server side; returns how many."""
        joins = list(self._topics.get(TOPIC_PREFIX + topic, ()))
        for join in joins:
            await self._leave(join)
            await join.socket.send_frame(
                {
                    "event": "phx_close",
                    "topic": join.topic,
                    "ref": None,
                    "join_ref": join.join_ref,
                    "payload": {},
                }
            )
        return len(joins)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    async def drop_connections(self) -> int:
        """Abort every socket's TCP connection without a close frame; returns how many."""
        sockets = list(self._sockets)
        for socket in sockets:
            transport = socket.request.transport
            if transport is not None:
                transport.abort()
            await self._forget(socket)
        return len(sockets)

    async def close(self) -> None:
        """Close every socket cleanly (the server is going away)."""
        for socket in list(self._sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
            await self._forget(socket)

    # -- delivery -------------------------------------------------------------------------------

    async def deliver(
        self,
        topic: str,
        event: str,
        payload_json: str,
        *,
        private: bool,
        message_id: str | None = None,
        sender: _Socket | None = None,
    ) -> int:
        """Send a broadcast to the joins of ``topic`` with the same privacy; returns how many."""
        frames: dict[int, str] = {}
        targets = [
            join
            for join in self._topics.get(TOPIC_PREFIX + topic, ())
            if join.private == private and (join.socket is not sender or join.self_broadcast)
        ]
        if self.withhold_after_join > 0:
            fresh_until = asyncio.get_running_loop().time() - self.withhold_after_join
            withheld = [join for join in targets if join.joined_at > fresh_until]
            targets = [join for join in targets if join.joined_at <= fresh_until]
        else:
            withheld = []
        for join in targets:
            serializer = join.socket.serializer
            frame = frames.get(id(serializer))
            if frame is None:
                frame = broadcast_frame(topic, event, payload_json, message_id, serializer)
                frames[id(serializer)] = frame
            await join.socket.send(frame)
        if self._records is not None:
            record = BroadcastRecord(event, len(targets), len(withheld))
            self._records.setdefault(topic, []).append(record)
            await self._notify()
        return len(targets)

    # -- websocket protocol ---------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self._paused:
            self.refused_connections += 1
            await self._notify()
            return web.Response(status=503, text="realtime is paused")
        vsn = request.query.get("vsn", DEFAULT_VSN)
        serializer = SERIALIZERS.get(vsn)
        if serializer is None:
            return web.Response(status=400, text=f"unsupported vsn {vsn!r}")
        ws = web.WebSocketResponse(autoping=True, timeout=_CLOSE_SECONDS)
        await ws.prepare(request)
        socket = _Socket(ws, request, serializer)
        self._sockets.add(socket)
        self.accepted_connections += 1
        await self._notify()
        try:
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    frame = serializer.decode(message.data)
                except FrameError as exc:
                    logger.warning("realtime: ignoring a frame (vsn %s): %s", vsn, exc)
                    continue
                await self._on_frame(socket, frame)
        finally:
            await self._forget(socket)
        return ws

    async def _on_frame(self, socket: _Socket, frame: dict[str, Any]) -> None:
        topic, event, ref = frame.get("topic"), frame.get("event"), frame.get("ref")
        join_ref = frame.get("join_ref")
        payload = frame.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        if not isinstance(topic, str) or not isinstance(event, str):
            return
        if topic == "phoenix":
            if event == "heartbeat":
                await socket.reply(topic, ref, "ok", {})
            else:
                await socket.reply(topic, ref, "error", {"reason": "unmatched topic"})
            return
        if event == "phx_join":
            await self._join(socket, topic, ref, join_ref, payload)
            return
        join = socket.joins.get(topic)
        if join is None:
            reason = {"reason": "unmatched topic"}
            await socket.reply(topic, ref, "error", reason, join_ref=join_ref)
        elif event == "phx_leave":
            await self._leave(join)
            await socket.reply(topic, ref, "ok", {}, join_ref=join_ref)
        elif event == "access_token":
            return
        elif event == "broadcast":
            await self._client_broadcast(join, ref, payload)
        elif event == "presence":
            await socket.reply(topic, ref, "ok", {}, join_ref=join_ref)
        else:
            reason = {"reason": f"unknown event {event!r}"}
            await socket.reply(topic, ref, "error", reason, join_ref=join_ref)

    async def _join(
        self, socket: _Socket, topic: str, ref: Any, join_ref: Any, payload: dict[str, Any]
    ) -> None:
        if not topic.startswith(TOPIC_PREFIX):
            reason = {"reason": "unmatched topic"}
            await socket.reply(topic, ref, "error", reason, join_ref=join_ref)
            return
        if self._refusals:
            self.refused_joins += 1
            refusal = {"reason": self._refusals.pop(0)}
            await socket.reply(topic, ref, "error", refusal, join_ref=join_ref)
            await self._notify()
            return
        config = payload.get("config")
        config = config if isinstance(config, dict) else {}
        broadcast = config.get("broadcast")
        broadcast = broadcast if isinstance(broadcast, dict) else {}
        bindings = config.get("postgres_changes")
        bindings = bindings if isinstance(bindings, list) else []
        previous = socket.joins.get(topic)
        if previous is not None:
            await self._leave(previous)
        join = _Join(
            socket=socket,
            topic=topic,
            join_ref=join_ref if isinstance(join_ref, str) else None,
            private=bool(config.get("private", False)),
            self_broadcast=bool(broadcast.get("self", False)),
            ack=bool(broadcast.get("ack", False)),
            joined_at=asyncio.get_running_loop().time(),
        )
        socket.joins[topic] = join
        self._topics.setdefault(topic, set()).add(join)
        await self._notify()
        echoed = [
            {**binding, "id": index + 1}
            for index, binding in enumerate(bindings)
            if isinstance(binding, dict)
        ]
        await socket.reply(topic, ref, "ok", {"postgres_changes": echoed}, join_ref=join_ref)
        presence = config.get("presence")
        if isinstance(presence, dict) and presence.get("enabled"):
            await socket.send_frame(
                {
                    "event": "presence_state",
                    "topic": topic,
                    "ref": None,
                    "join_ref": join_ref,
                    "payload": {},
                }
            )

    async def _leave(self, join: _Join) -> None:
        if join.socket.joins.get(join.topic) is join:
            del join.socket.joins[join.topic]
        members = self._topics.get(join.topic)
        if members is not None:
            members.discard(join)
            if not members:
                del self._topics[join.topic]
        await self._notify()

    async def _client_broadcast(self, join: _Join, ref: Any, payload: dict[str, Any]) -> None:
        event = payload.get("event")
        if not isinstance(event, str):
            await join.socket.reply(
                join.topic,
                ref,
                "error",
                {"reason": "broadcast needs an event"},
                join_ref=join.join_ref,
            )
            return
        await self.deliver(
            join.topic.removeprefix(TOPIC_PREFIX),
            event,
            json.dumps(payload.get("payload")),
            private=join.private,
            sender=join.socket,
        )
        if join.ack:
            await join.socket.reply(join.topic, ref, "ok", {}, join_ref=join.join_ref)

    async def _http_broadcast(self, request: web.Request) -> web.StreamResponse:
        """Realtime's REST broadcast (``channel.http_send``): the body is the message payload."""
        raw = await request.read()
        try:
            json.loads(raw)
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        await self.deliver(
            request.match_info["topic"],
            request.match_info["event"],
            raw.decode(),
            private=request.query.get("private") == "true",
        )
        return web.Response(status=202)

    async def _forget(self, socket: _Socket) -> None:
        if socket not in self._sockets:
            return
        self._sockets.discard(socket)
        for join in list(socket.joins.values()):
            await self._leave(join)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
