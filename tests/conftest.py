"""Fixtures shared by every test: the database stack, per-test databases, connections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from tests._stack import Stack, TemplateUnavailable

pytest_plugins = ["tests.supabase_standin.fixtures"]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's PostgreSQL server (DATABASE_URL, or one started for the tests)."""
    s = Stack()
    try:
        yield s
    finally:
        s.close()


def _clone(stack: Stack, kind: str) -> Iterator[str]:
    try:
        name = stack.clone(kind)
    except TemplateUnavailable as exc:
        pytest.skip(f"{kind} pgflow SQL unavailable: {exc}")
    try:
        yield stack.url(name)
    finally:
        stack.drop(name)


@pytest.fixture
def db_url(stack: Stack) -> Iterator[str]:
    """A fresh database migrated with pgflow-py's SQL."""
    yield from _clone(stack, "ours")


@pytest.fixture
def official_db_url(stack: Stack) -> Iterator[str]:
    """A fresh database migrated with the official @pgflow/core SQL (fetched with npm)."""
    yield from _clone(stack, "official")


@pytest.fixture(params=["ours", "official"])
def any_db_url(request: pytest.FixtureRequest, stack: Stack) -> Iterator[str]:
    """Runs the test twice: on pgflow-py's SQL and on the official SQL."""
    yield from _clone(stack, request.param)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
async def aconn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit async connection to the test's database."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        yield c
