"""Clients over both transports, for end-to-end tests with a real worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pgflow_client import PgflowClient

ClientFactory = Callable[[], Awaitable[PgflowClient]]


@pytest.fixture
async def _clients() -> AsyncIterator[list[PgflowClient]]:
    clients: list[PgflowClient] = []
    yield clients
    for client in clients:
        await client.aclose()


@pytest.fixture(params=["postgres", "supabase"])
def make_client(request: pytest.FixtureRequest, db_url: str) -> ClientFactory:
    """Makes clients over one transport (the test runs once per transport)."""
    transport: str = request.param
    supabase_factory: Callable[..., Awaitable[Any]] | None = None
    if transport == "supabase":
        supabase_factory = request.getfixturevalue("asupabase_factory")
    # Requested last so it is torn down first: clients close before what they run on.
    clients: list[PgflowClient] = request.getfixturevalue("_clients")

    async def make() -> PgflowClient:
        if supabase_factory is None:
            client = await PgflowClient.connect(db_url)
        else:
            client = PgflowClient(await supabase_factory())
        clients.append(client)
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> PgflowClient:
    return await make_client()
