"""Pytest fixtures for Supabase: the stand-in, the stack to talk to, and async clients.

``supabase_target`` is a real Supabase stack when ``PGFLOW_TEST_SUPABASE_URL``,
``PGFLOW_TEST_SUPABASE_KEY`` and ``PGFLOW_TEST_SUPABASE_DB_URL`` are set (see ``_env``),
otherwise a stand-in over the test's database. ``supabase_env`` is its ``(url, key)``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from ._env import URL_VARIABLE, Misconfigured, RealStack, stack_from_env
from ._server import SupabaseStandIn

ClientFactory = Callable[..., Awaitable[AsyncClient]]


@dataclass(frozen=True)
class SupabaseTarget:
    """Where a test's Supabase clients connect; ``standin`` is None on a real stack."""

    url: str
    key: str
    standin: SupabaseStandIn | None


def require_standin(target: SupabaseTarget, what: str) -> SupabaseStandIn:
    """The target's stand-in; skips the test (saying why) when it is a real stack."""
    if target.standin is None:
        pytest.skip(f"{what} needs the Supabase stand-in; {URL_VARIABLE} names a real stack")
    return target.standin


@pytest.fixture
async def supabase_standin(db_url: str) -> AsyncIterator[SupabaseStandIn]:
    """A started stand-in serving Realtime and PostgREST over the test's database."""
    async with SupabaseStandIn(db_url) as standin:
        yield standin


@pytest.fixture
async def supabase_target(request: pytest.FixtureRequest) -> AsyncIterator[SupabaseTarget]:
    """The real Supabase stack from the environment, or a stand-in over ``db_url``."""
    env = stack_from_env(os.environ)
    if isinstance(env, Misconfigured):
        pytest.skip(env.reason)
    if isinstance(env, RealStack):
        request.getfixturevalue("db_url")  # the stack's database, reset for this test
        yield SupabaseTarget(env.url, env.key, None)
        return
    db_url: str = request.getfixturevalue("db_url")
    async with SupabaseStandIn(db_url) as standin:
        yield SupabaseTarget(standin.url, standin.key, standin)


@pytest.fixture
def supabase_env(supabase_target: SupabaseTarget) -> tuple[str, str]:
    """``(url, key)`` of a real Supabase stack from the environment, or of a stand-in."""
    return supabase_target.url, supabase_target.key


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
