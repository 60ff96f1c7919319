"""Fixtures for tests through a connection pooler: one real pgbouncer per pool mode, per session.

In transaction mode pgbouncer has two server connections per database (``default_pool_size =
2``) and hands them out in turn, so a client's consecutive transactions run on different server
sessions; in session mode it has ten, enough for a worker's whole pool.
Tests needing pgbouncer skip, with the reason, when it is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._stack import Stack
from tests.pooler._pgbouncer import PgBouncer, PgBouncerUnavailable, PoolMode


class Bouncers:
    """The session's pgbouncers, started on first use."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._running: dict[PoolMode, PgBouncer] = {}
        self._failures: dict[PoolMode, str] = {}

    def get(self, mode: PoolMode) -> PgBouncer:
        if mode in self._failures:
            pytest.skip(self._failures[mode])
        if mode not in self._running:
            try:
                # In session mode each client connection holds a server connection for
                # good: the pool must cover a worker's whole connection pool.
                size = 2 if mode == "transaction" else 10
                self._running[mode] = PgBouncer(self._stack.admin_url, mode, pool_size=size).start()
            except PgBouncerUnavailable as exc:
                self._failures[mode] = str(exc)
                pytest.skip(str(exc))
        return self._running[mode]

    def close(self) -> None:
        for bouncer in self._running.values():
            bouncer.stop()


@pytest.fixture(scope="session")
def bouncers(stack: Stack) -> Iterator[Bouncers]:
    running = Bouncers(stack)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def transaction_url(db_url: str, bouncers: Bouncers) -> str:
    """The test's database through pgbouncer in transaction mode."""
    return bouncers.get("transaction").url(db_url)


@pytest.fixture
def session_url(db_url: str, bouncers: Bouncers) -> str:
    """The test's database through pgbouncer in session mode."""
    return bouncers.get("session").url(db_url)


@pytest.fixture(params=["transaction", "session"])
def pooled_url(request: pytest.FixtureRequest, db_url: str, bouncers: Bouncers) -> str:
    """The test's database through pgbouncer, once per pool mode."""
    mode: PoolMode = request.param
    return bouncers.get(mode).url(db_url)
