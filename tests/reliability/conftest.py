"""Fixtures of the reliability tests: a scratch folder for worker logs, and a PostgreSQL server
of the test's own (for faults that would disturb the session's server, like a restart)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgflow_worker import LocalPostgres, migrate


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where worker processes write their logs (kept by pytest for a failed test)."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def own_server() -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL server used by this test alone, so it may be stopped and started.

    Its folder is ours (not a temporary one owned by the server object), so stopping it keeps
    the data and a later start reuses the same port.
    """
    folder = Path(tempfile.mkdtemp(prefix="pgflow-reliability-"))
    server = LocalPostgres(folder)
    try:
        server.start()
        migrate(server.dsn("postgres"))
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
