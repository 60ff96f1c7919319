"""A real pgbouncer in front of the tests' PostgreSQL, started and stopped by the tests.

Debian's ``pgbouncer`` package supplies the binary. Each instance gets a scratch folder (its
configuration and auth file), a free loopback port, and a wildcard database entry, so every
per-test database of the server is reachable through it by name. pgbouncer refuses to run as
root, so as root it runs as ``nobody`` (``-u``); the scratch folder is made readable for it.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["PgBouncer", "PgBouncerUnavailable", "PoolMode", "find_pgbouncer"]

PoolMode = Literal["session", "transaction"]

#: The password clients give pgbouncer (checked with SCRAM against the auth file).
CLIENT_PASSWORD = "pooler-test-secret"

_START_TIMEOUT = 30.0


class PgBouncerUnavailable(Exception):
    """pgbouncer is not installed or did not start; tests needing it skip with this reason."""


def find_pgbouncer() -> str | None:
    """The pgbouncer binary: on PATH, or in /usr/sbin (often missing from a plain user's
    PATH)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One pgbouncer process in ``mode``, pooling ``server_url``'s server."""

    def __init__(self, server_url: str, mode: PoolMode, *, pool_size: int = 2) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerUnavailable(
                "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
            )
        self._binary = binary
        self.mode = mode
        self.pool_size = pool_size
        self._server = conninfo_to_dict(server_url)
        self._dir = Path(tempfile.mkdtemp(prefix=f"pgflow-pgbouncer-{mode}-"))
        self._dir.chmod(0o755)
        self._proc: subprocess.Popen[str] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self._up = threading.Event()
        self.port = 0

    def url(self, database_url: str) -> str:
        """``database_url`` (a database of the pooled server) as reached through pgbouncer."""
        params = conninfo_to_dict(database_url)
        params.update(host="127.0.0.1", port=str(self.port), password=CLIENT_PASSWORD)
        return make_conninfo("", **params)

    def _write_config(self, port: int) -> Path:
        server = self._server
        user = str(server.get("user") or os.environ.get("PGUSER") or "postgres")
        target = f"host={server.get('host') or '127.0.0.1'} port={server.get('port') or 5432}"
        if server.get("password"):
            target += f" user={user} password={server['password']}"
        auth = self._dir / "userlist.txt"
        auth.write_text(f"{_quote(user)} {_quote(CLIENT_PASSWORD)}\n", encoding="utf-8")
        config = self._dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = {target}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {port}",
                    "unix_socket_dir =",
                    "auth_type = scram-sha-256",
                    f"auth_file = {auth}",
                    f"pool_mode = {self.mode}",
                    f"default_pool_size = {self.pool_size}",
                    f"min_pool_size = {self.pool_size}",
                    "max_client_conn = 500",
                    # Keep the pool full and hand its server connections out in turn, so that
                    # one client's consecutive transactions run on different server sessions:
                    # what a busy production pooler does anyway.
                    "server_round_robin = 1",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        for path in (auth, config):
            path.chmod(0o644)
        return config

    def start(self) -> PgBouncer:
        """Start on a free port; returns once pgbouncer accepts connections."""
        last = ""
        for _ in range(5):
            port = _free_port()
            config = self._write_config(port)
            argv = [self._binary, str(config)]
            if os.geteuid() == 0:
                argv[1:1] = ["-u", "nobody"]
            self._up.clear()
            self._log.clear()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            threading.Thread(target=self._read_log, args=(proc,), daemon=True).start()
            self._up.wait(_START_TIMEOUT)
            if self._up.is_set() and proc.poll() is None:
                self._proc, self.port = proc, port
                return self
            proc.kill()
            proc.wait(timeout=10)
            last = "\n".join(self._log)
            if "Address already in use" not in last:
                break
        raise PgBouncerUnavailable(f"pgbouncer did not start: {last.strip()[-600:]}")

    def _read_log(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._log.append(line.rstrip())
            if "process up" in line:
                self._up.set()
        self._up.set()  # exited: wake the starter, which sees the exit

    @property
    def log(self) -> str:
        """The last lines pgbouncer logged."""
        return "\n".join(self._log)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)
