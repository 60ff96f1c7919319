"""Fixtures shared by every test: the database stack, per-test databases, connections.

Each test gets a fresh database cloned from a migrated template on the session's PostgreSQL.
The exception is a test that talks to a real Supabase stack (``PGFLOW_TEST_SUPABASE_URL``,
``_KEY`` and ``_DB_URL`` set; see ``tests/supabase_standin/_env.py``): its ``db_url`` is that
stack's database, migrated once per session and emptied of pgflow's rows and queues before
each test, since a run started through the stack's API lives there and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from tests._stack import Stack, TemplateUnavailable
from tests.supabase_standin._env import (
    SUPABASE_MARKER,
    Misconfigured,
    database_for,
    prepare_real_database,
    reset_real_database,
    stack_from_env,
    talks_to_supabase,
)

pytest_plugins = ["tests.supabase_standin.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SUPABASE_MARKER}: the test talks to Supabase without requesting supabase_env "
        "statically; against a real stack its db_url is the stack's database",
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's PostgreSQL server (DATABASE_URL, or one started for the tests)."""
    s = Stack()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def _real_stack_databases() -> set[str]:
    """The real stacks' databases already migrated in this session."""
    return set()


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
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database migrated with pgflow-py's SQL (a real Supabase stack's, emptied, for
    tests that talk to that stack)."""
    markers = {marker.name for marker in request.node.iter_markers()}
    choice = database_for(
        stack_from_env(os.environ),
        talks_to_supabase=talks_to_supabase(request.fixturenames, markers),
    )
    if isinstance(choice, Misconfigured):
        pytest.skip(choice.reason)
    if choice is None:
        yield from _clone(request.getfixturevalue("stack"), "ours")
    else:
        prepared: set[str] = request.getfixturevalue("_real_stack_databases")
        if choice not in prepared:
            prepare_real_database(choice)
            prepared.add(choice)
        reset_real_database(choice)
        yield choice


@pytest.fixture
def empty_db_url(stack: Stack) -> Iterator[str]:
    """A database with nothing in it: no pgmq, no realtime, no pgflow."""
    name = stack.empty()
    try:
        yield stack.url(name)
    finally:
        stack.drop(name)


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
