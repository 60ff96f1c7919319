"""The pytest plugin the distribution registers: fixtures for testing flows.

Only fixture definitions live here, so loading the plugin costs nothing: the server, the
database and the worker are imported and started the first time a test asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._runner import FlowRunner
    from ._server import PgflowTestServer


@pytest.fixture(scope="session")
def pgflow_test_server() -> Iterator[PgflowTestServer]:
    """The session's server: ``DATABASE_URL``'s, else a local one started once."""
    from ._server import PgflowTestServer

    server = PgflowTestServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pgflow_database(pgflow_test_server: PgflowTestServer) -> Iterator[str]:
    """The connection string of a fresh, migrated database of this test's own."""
    url = pgflow_test_server.create_database()
    try:
        yield url
    finally:
        pgflow_test_server.drop_database(url)


@pytest.fixture
def pgflow_run(pgflow_database: str) -> FlowRunner:
    """``pgflow_run(flow, input, *, timeout=30.0)``: run a flow on a real worker in process,
    against this test's database, and return the ended run."""
    from ._runner import FlowRunner

    return FlowRunner(pgflow_database)
