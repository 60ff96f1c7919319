"""Clients over both transports, for end-to-end tests with a real worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from pgflow_client import PgflowClient
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin._env import SUPABASE_MARKER
from tests.supabase_standin.fixtures import SupabaseTarget

LEAVE_WITHIN = 5.0


class ClientFactory:
    """Makes clients over one transport, and checks what they leave subscribed."""

    def __init__(
        self,
        transport: str,
        db_url: str,
        clients: list[PgflowClient],
        supabase_factory: Callable[..., Awaitable[Any]] | None = None,
        standin: SupabaseStandIn | None = None,
    ) -> None:
        self.transport = transport
        self.db_url = db_url
        self.standin = standin
        self._clients = clients
        self._supabase_factory = supabase_factory

    async def __call__(self) -> PgflowClient:
        if self._supabase_factory is None:
            client = await PgflowClient.connect(self.db_url)
        else:
            client = PgflowClient(await self._supabase_factory())
        self._clients.append(client)
        return client

    async def listen_sessions(self) -> int:
        """Sessions of the test's database that are LISTENing (the clients' shared ones)."""
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
            cur = await conn.execute(
                "select count(*) from pg_stat_activity"
                " where datname = current_database() and query ilike 'listen %%'"
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def assert_nothing_subscribed(
        self, client: PgflowClient, *, listeners: int = 1, settle: bool = False
    ) -> None:
        """Nothing of ``client`` is subscribed any more, client side and server side.

        Over Supabase the stand-in has no channel joined (on a real stack only the client
        side can be seen); with ``settle``, leaves still in flight are waited for (a bounded
        wait on the stand-in's join bookkeeping). Over Postgres no run is watched and the
        database has ``listeners`` LISTEN sessions: the client's one shared connection, never
        one per run.
        """
        assert client.subscriptions() == frozenset()
        if self.transport == "supabase":
            standin = self.standin
            if standin is not None:
                if settle:
                    await standin.wait_until(
                        lambda: not standin.joined_topics(), within=LEAVE_WITHIN
                    )
                assert standin.joined_topics() == {}
        else:
            assert await self.listen_sessions() == listeners


@pytest.fixture
async def _clients() -> AsyncIterator[list[PgflowClient]]:
    clients: list[PgflowClient] = []
    yield clients
    for client in clients:
        await client.aclose()


@pytest.fixture(
    params=["postgres", pytest.param("supabase", marks=getattr(pytest.mark, SUPABASE_MARKER))]
)
def make_client(request: pytest.FixtureRequest, db_url: str) -> ClientFactory:
    """Makes clients over one transport (the test runs once per transport); the Supabase
    variant carries the marker that gives it a real stack's database when one is set."""
    transport: str = request.param
    supabase_factory: Callable[..., Awaitable[Any]] | None = None
    standin: SupabaseStandIn | None = None
    if transport == "supabase":
        supabase_factory = request.getfixturevalue("asupabase_factory")
        target: SupabaseTarget = request.getfixturevalue("supabase_target")
        standin = target.standin
    # Requested last so it is torn down first: clients close before what they run on.
    clients: list[PgflowClient] = request.getfixturevalue("_clients")
    return ClientFactory(transport, db_url, clients, supabase_factory, standin)


@pytest.fixture
async def client(make_client: ClientFactory) -> PgflowClient:
    return await make_client()
