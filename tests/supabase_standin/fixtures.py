"""Pytest fixtures for Supabase: the stand-in, the URL/key pair to use, and async clients.

``supabase_env`` is a real Supabase stack when ``PGFLOW_TEST_SUPABASE_URL`` (and
``PGFLOW_TEST_SUPABASE_KEY``) are set, otherwise a stand-in over the test's database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from ._server import SupabaseStandIn

URL_VARIABLE = "PGFLOW_TEST_SUPABASE_URL"
KEY_VARIABLE = "PGFLOW_TEST_SUPABASE_KEY"

ClientFactory = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def supabase_standin(db_url: str) -> AsyncIterator[SupabaseStandIn]:
    """A started stand-in serving Realtime and PostgREST over the test's database."""
    async with SupabaseStandIn(db_url) as standin:
        yield standin


@pytest.fixture
async def supabase_env(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """``(url, key)`` of a real Supabase stack from the environment, or of a stand-in."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        key = os.environ.get(KEY_VARIABLE)
        if not key:
            pytest.skip(f"{URL_VARIABLE} is set but {KEY_VARIABLE} is not")
        yield url, key
        return
    db_url: str = request.getfixturevalue("db_url")
    async with SupabaseStandIn(db_url) as standin:
        yield standin.url, standin.key


async def close_client(client: AsyncClient) -> None:
    """Leave every channel, close the realtime socket and the REST connections."""
    try:
        await client.remove_all_channels()
    finally:
        await client.postgrest.aclose()


@pytest.fixture
async def asupabase_factory(
    supabase_env: tuple[str, str],
) -> AsyncIterator[ClientFactory]:
    """Makes ``supabase`` async clients for ``supabase_env``; all are closed afterwards.

    Keyword arguments become ``AsyncClientOptions`` (e.g. ``realtime={"initial_backoff": 0.1}``).
    """
    url, key = supabase_env
    clients: list[AsyncClient] = []

    async def make(**options: Any) -> AsyncClient:
        client = await acreate_client(url, key, AsyncClientOptions(**options) if options else None)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in reversed(clients):
            await close_client(client)


@pytest.fixture
async def asupabase(asupabase_factory: ClientFactory) -> AsyncClient:
    """A ``supabase`` async client for ``supabase_env``, closed (channels removed) afterwards."""
    return await asupabase_factory()
