"""``pgflow db``: a local PostgreSQL server, with pgmq and pgflow migrated, that keeps running
after the command that started it.

Unlike the demo's server, it is owned by no process. The folder's owner lock is held only
while a ``pgflow db`` command starts or stops the server, so commands do not race each other;
a server found running by ``start`` is the one to keep, never a leftover to clean up. The demo
refuses such a folder, and ``pgflow db`` never touches the demo's. The port is remembered in
the folder so that the URL stays the same from one start to the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .._database import migrate
from ..errors import PostgresStartError, ServerFolderInUse, ServerNotRunning
from .embedded import (
    _HAVE_PROC,
    DB_STATE_NAME,
    EmbeddedPostgres,
    _CachedServer,
    server_processes,
)
from .folders import data_home, make_own_folder

__all__ = ["DB_SETTINGS", "DbStatus", "PersistentPostgres", "db_directory", "db_status"]

#: How long a command waits for another one starting or stopping the same server.
LOCK_WAIT_SECONDS = 60.0

#: Settings of the persistent server: durable (its data is worth keeping), room for workers.
DB_SETTINGS = {"max_connections": "200"}


def db_directory(directory: Path | str | None = None) -> Path:
    """``directory``, else ``PGFLOW_DB_DIR``, else ``<data_home()>/db``:
    ``~/.local/share/pgflow-py/db``, or ``/var/lib/pgflow-py/db`` for root when its home is
    private."""
    chosen = directory or os.environ.get("PGFLOW_DB_DIR")
    if chosen:
        return Path(chosen).expanduser().absolute()
    return data_home() / "db"


@dataclass(frozen=True, slots=True)
class DbStatus:
    """What ``pgflow db status`` reports about a folder."""

    directory: Path
    running: bool
    port: int | None = None
    version: str | None = None
    source: str | None = None
    bindir: Path | None = None

    @property
    def url(self) -> str | None:
        """The server's ``DATABASE_URL`` while it runs."""
        if not self.running or self.port is None:
            return None
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def require_url(self) -> str:
        """The URL, or :class:`ServerNotRunning` saying how to start the server."""
        if self.url is None:
            raise ServerNotRunning(
                f"no server is running in {self.directory}; start it with 'pgflow db start"
                + ("'" if self.directory == db_directory() else f" --dir {self.directory}'")
            )
        return self.url


def _read_state(directory: Path) -> dict[str, object]:
    try:
        state = json.loads((directory / DB_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _live_postmaster(data_dir: Path) -> tuple[int, int] | None:
    """``(pid, port)`` of a live postmaster serving ``data_dir``, from its ``postmaster.pid``."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if _HAVE_PROC:
        return (pid, port) if pid in server_processes(data_dir) else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid, port


def db_status(directory: Path | str | None = None) -> DbStatus:
    """Whether a server runs in the folder, on which port, from which binaries."""
    folder = db_directory(directory)
    state = _read_state(folder)
    live = _live_postmaster(folder / "data")
    bindir = state.get("bindir")
    return DbStatus(
        directory=folder,
        running=live is not None,
        port=live[1] if live else _int(state.get("port")),
        version=str(state["version"]) if "version" in state else None,
        source=str(state["source"]) if "source" in state else None,
        bindir=Path(bindir) if isinstance(bindir, str) else None,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As PostgreSQL binds: connections of its last run waiting out TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PersistentPostgres(EmbeddedPostgres):
    """The server of ``pgflow db`` in ``directory`` (see :func:`db_directory`)."""

    def __init__(self, directory: Path | str | None = None, *, bindir: Path | None = None) -> None:
        self._default = not directory and not os.environ.get("PGFLOW_DB_DIR")
        folder = db_directory(directory)
        if bindir is None:
            # Keep to the binaries the cluster was made with, while they are there.
            recorded = db_status(folder).bindir
            if recorded is not None and (recorded / "postgres").is_file():
                bindir = recorded
        super().__init__(folder, bindir=bindir, settings=DB_SETTINGS)
        self.already_running = False
        """Whether ``start()`` found the server running (and left it as it was)."""

    def start(self, *, reset: bool = False, port: int | None = None) -> Self:
        """Start the server unless it runs already, then migrate it; leave it running."""
        if reset:
            raise ValueError("the persistent server is never wiped by pgflow")
        if self._default:
            make_own_folder(self.directory.parent)
        self._prepare_directory(frozenset({DB_STATE_NAME}))
        self._wait_for_folder()
        try:
            server = _CachedServer(self.directory, bindir=self.bindir, settings=self._settings)
            live = _live_postmaster(self.data_dir)
            if live is not None:
                if port is not None and port != live[1]:
                    raise PostgresStartError(
                        f"the server in {self.directory} already runs on port {live[1]}; stop "
                        f"it first ('pgflow db stop') to move it to port {port}"
                    )
                self.already_running = True
                server.port = live[1]
            else:
                self._clear_leftovers(server)
                if not (self.data_dir / "PG_VERSION").is_file():
                    self._wipe()  # the remains of an interrupted initdb, if anything
                self._check_version()
                self.reused = (self.data_dir / "PG_VERSION").is_file()
                server.port = port or self._remembered_port()
                self._start_with_retries(server)
                self._remember(server)
            self._server = server
            migrate(server.dsn())
        finally:
            self._lock.release()
        return self

    def stop(self) -> None:
        """Stop the server if it runs; the folder and its data stay."""
        self._prepare_directory(frozenset({DB_STATE_NAME}))
        self._wait_for_folder()
        try:
            server = _CachedServer(self.directory, bindir=self.bindir, settings=self._settings)
            self._clear_leftovers(server, quiet=True)
        finally:
            self._server = None
            self._lock.release()

    def _wait_for_folder(self) -> None:
        """Take the folder's lock, waiting (bounded) while another command holds it: two
        starts at once both end with the server running, one of them finding it so."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                self._lock.acquire()
                return
            except ServerFolderInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _remembered_port(self) -> int | None:
        port = _int(_read_state(self.directory).get("port"))
        return port if port is not None and _port_free(port) else None

    def _remember(self, server: _CachedServer) -> None:
        state = {
            "port": server.port,
            "version": self.version,
            "source": self.source,
            "bindir": str(self.bindir),
        }
        path = self.directory / DB_STATE_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        path.chmod(0o644)
