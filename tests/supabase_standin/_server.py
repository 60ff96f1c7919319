"""``SupabaseStandIn``: Realtime and PostgREST for the tests, in one aiohttp server on loopback.

The unmodified ``supabase``/``realtime`` libraries talk to it exactly as to a Supabase stack:
``url`` is the project URL and ``key`` the API key. Behind it is the test's real PostgreSQL.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from ._jwt import unsigned_jwt
from ._listener import BroadcastListener, Message
from ._postgrest import PostgrestEndpoints
from ._realtime import BroadcastRecord, RealtimeHub

DEFAULT_KEY = unsigned_jwt({"iss": "supabase-standin", "role": "anon"})


class SupabaseStandIn:
    """Supabase's Realtime server and a PostgREST subset, backed by the database at ``dsn``.

    ``use_jwt_role`` runs each REST request under the ``role`` claim of its bearer token (as
    PostgREST does); by default requests run as the ``dsn`` user. ``schemas`` lists the schemas
    exposed over REST (every schema when None). ``withhold_after_join_ms`` drops broadcasts
    for channels joined less than that long ago (Realtime's window between confirming a join
    and routing to it); ``record_broadcasts`` keeps a log of them for ``broadcasts(topic)``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        key: str = DEFAULT_KEY,
        use_jwt_role: bool = False,
        schemas: Sequence[str] | None = None,
        anon_role: str = "anon",
        pool_size: int = 4,
        withhold_after_join_ms: float = 0.0,
        record_broadcasts: bool = False,
    ) -> None:
        self._dsn = dsn
        self._key = key
        self._hub = RealtimeHub(
            withhold_after_join=withhold_after_join_ms / 1000, record=record_broadcasts
        )
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            dsn, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=False
        )
        self._rest = PostgrestEndpoints(
            self._pool, use_jwt_role=use_jwt_role, schemas=schemas, anon_role=anon_role
        )
        self._listener = BroadcastListener(dsn, self._deliver)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the database connections, LISTEN, and serve on a free loopback port."""
        if self._runner is not None:
            return self
        await self._pool.open(wait=True)
        try:
            await self._listener.start()
            app = web.Application()
            app.add_routes(self._hub.routes())
            app.add_routes(self._rest.routes())
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            self._port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
        except BaseException:
            await self._listener.stop()
            await self._pool.close()
            raise
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Close every websocket, stop serving, and release the database connections."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await self._hub.close()
        await runner.cleanup()
        await self._listener.stop()
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- what clients need ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The project URL to give ``supabase.acreate_client``."""
        if self._port is None:
            raise RuntimeError("the Supabase stand-in is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def key(self) -> str:
        """The API key: an unsigned JWT with ``role: anon`` (signatures are never checked)."""
        return self._key

    # -- observation and fault injection --------------------------------------------------------

    def joined_topics(self) -> dict[str, int]:
        """Realtime joins per topic, named without the ``realtime:`` prefix."""
        return self._hub.joined_topics()

    @property
    def open_connections(self) -> int:
        """Realtime websockets currently open."""
        return self._hub.open_connections

    @property
    def accepted_connections(self) -> int:
        """Realtime websockets accepted since start (reconnects count again)."""
        return self._hub.accepted_connections

    @property
    def refused_connections(self) -> int:
        """Realtime connection attempts refused while paused."""
        return self._hub.refused_connections

    async def wait_for_joins(self, topic: str, count: int, *, within: float = 5.0) -> None:
        """Wait until ``topic`` has exactly ``count`` joins (TimeoutError after ``within`` s)."""
        await self._hub.wait_until(lambda: self.joined_topics().get(topic, 0) == count, within)

    async def wait_until(self, predicate: Callable[[], bool], *, within: float = 5.0) -> None:
        """Wait until ``predicate`` holds; it is checked whenever a realtime connection opens,
        closes or is refused, and whenever a join or leave happens. TimeoutError after ``within`` s.
        """
        await self._hub.wait_until(predicate, within)

    async def drop_realtime_connections(self) -> int:
        """Abort every realtime websocket (no close frame); returns how many were dropped."""
        return await self._hub.drop_connections()

    def withhold_after_join(self, ms: float) -> None:
        """From now on, drop broadcasts for channels joined less than ``ms`` ago (0: never)."""
        self._hub.withhold_after_join = ms / 1000

    def broadcasts(self, topic: str) -> list[BroadcastRecord]:
        """Broadcasts handled for ``topic`` (no prefix), with how many joins got each and how
        many it was withheld from; needs ``record_broadcasts=True``. Waits with ``wait_until``
        see every new one."""
        return self._hub.broadcasts(topic)

    def refuse_joins(self, count: int, *, reason: str = "join refused by the stand-in") -> None:
        """Answer the next ``count`` channel joins (any topic) with an error reply."""
        self._hub.refuse_joins(count, reason)

    @property
    def refused_joins(self) -> int:
        """Channel joins refused since start."""
        return self._hub.refused_joins

    async def close_channel(self, topic: str) -> int:
        """Close ``topic``'s channels from the server side (``phx_close``, as Realtime does
        when it stops a channel); returns how many were closed."""
        return await self._hub.close_channel(topic)

    def pause_realtime(self) -> None:
        """Refuse new realtime connections (HTTP 503) until ``resume_realtime``."""
        self._hub.pause()

    def resume_realtime(self) -> None:
        self._hub.resume()

    # -- wiring ---------------------------------------------------------------------------------

    async def _deliver(self, message: Message) -> None:
        await self._hub.deliver(
            message.topic,
            message.event,
            message.payload_json,
            private=message.private,
            message_id=message.id,
        )
