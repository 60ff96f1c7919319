"""A PostgreSQL server of our own, in a folder of its own, on a free loopback port.

Used by the test suite and ``pgflow demo`` (through :class:`~.embedded.EmbeddedPostgres`), and
from Python as ``LocalPostgres``. It runs the machine's PostgreSQL binaries (Debian's
``/usr/lib/postgresql/<N>/bin`` or whatever ``pg_config`` on PATH names), or those of the
``pgserver`` package when the machine has none. ``initdb`` and ``postgres`` refuse to run as
root, so as root they run as the ``postgres`` OS user, or ``nobody`` where there is none, from
a copy of the binaries when that user cannot reach them (see :mod:`.folders`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .._database.pgmq import install_extension_files
from ..errors import PostgresNotFound, PostgresStartError
from .folders import create_folder, reachable_binaries, reachable_by_others, server_user

__all__ = [
    "FAST_SETTINGS",
    "LocalPostgres",
    "bindir_for_pgmq_extension",
    "choose_bindir",
    "find_bindir",
    "pgmq_extension_possible",
    "sharedir_of",
]

log = logging.getLogger("pgflow.database")

#: Settings for throwaway servers: durability traded for speed.
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
}

#: Where Debian and Ubuntu install PostgreSQL, one ``<major>/bin`` folder per version.
SYSTEM_PG_ROOT = Path("/usr/lib/postgresql")

_INSTALL_HINT = (
    "install PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql), or a bundled server with "
    "pip install 'pgflow-py[embedded]', or point DATABASE_URL at a server you already run"
)


def find_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``PGFLOW_PG_BINDIR``, then ``pg_config --bindir`` on PATH, then the newest
    ``/usr/lib/postgresql/<N>/bin``, then the binaries bundled in the ``pgserver`` package
    (the ``pgflow-py[embedded]`` extra).
    """
    candidates: list[Path] = []
    if env := os.environ.get("PGFLOW_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    debian = SYSTEM_PG_ROOT
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()),
            key=lambda p: int(p.name),
            reverse=True,
        )
        candidates.extend(v / "bin" for v in versions)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    # Fallback: the embedded server's binaries, when the optional extra is installed.
    from .embedded import pgserver_bindir

    if (bundled := pgserver_bindir()) is not None:
        return bundled
    raise PostgresNotFound(f"no PostgreSQL server binaries found; {_INSTALL_HINT}")


def sharedir_of(bindir: Path) -> Path:
    """The share directory of the server run from ``bindir`` (where extension files go).

    ``pg_config --sharedir`` when the folder has ``pg_config``, else ``../share/postgresql``.
    """
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        out = subprocess.run(
            [str(pg_config), "--sharedir"], capture_output=True, text=True, check=True
        )
        return Path(out.stdout.strip())
    return bindir.parent / "share" / "postgresql"


def pgmq_extension_possible(bindir: Path) -> bool:
    """Whether a server run from ``bindir`` can have pgmq as a real extension: its control file
    is in the server's extension folder already, or this process may write it there."""
    extension_dir = sharedir_of(bindir) / "extension"
    return (extension_dir / "pgmq.control").is_file() or os.access(extension_dir, os.W_OK)


def choose_bindir(candidates: Sequence[Path]) -> Path:
    """The first of ``candidates`` whose server can have pgmq as a real extension; the first
    candidate when none can (pgmq is then loaded as plain SQL)."""
    if not candidates:
        raise ValueError("choose_bindir needs at least one folder of binaries")
    for candidate in candidates:
        if pgmq_extension_possible(candidate):
            if candidate != candidates[0]:
                log.info(
                    "pgmq cannot be installed as an extension of the server in %s (its "
                    "extension folder is not writable); using the binaries in %s instead",
                    candidates[0],
                    candidate,
                )
            return candidate
    return candidates[0]


def bindir_for_pgmq_extension() -> Path:
    """:func:`find_bindir`'s binaries, unless their server cannot have pgmq as a real extension
    (a non-root user and a system extension folder without pgmq) while the ``pgserver``
    package's can: then those. ``PGFLOW_PG_BINDIR`` is always used as given.

    The test suite starts its server from these, since the official pgflow SQL needs
    ``CREATE EXTENSION pgmq``.
    """
    found = find_bindir()
    if os.environ.get("PGFLOW_PG_BINDIR"):
        return found
    from .embedded import pgserver_bindir

    bundled = pgserver_bindir()
    if bundled is None or bundled.resolve() == found.resolve():
        return found
    return choose_bindir([found, bundled])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL server whose data lives in ``directory``.

    The data folder is created on first start and reused afterwards, so a server kept in a
    cache folder survives between runs. Use it as a context manager, or call :meth:`start`
    and :meth:`stop`.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        port: int | None = None,
        settings: Mapping[str, str] = FAST_SETTINGS,
        bindir: Path | None = None,
    ) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="pgflow-pg-")).resolve()
        self._run_as = server_user()
        self.source_bindir = bindir or find_bindir()
        self.bindir = reachable_binaries(self.source_bindir, self._run_as)
        self.port = port
        self.settings = dict(settings)
        self._started = False

    # -- paths and connection strings ---------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def run_as(self) -> str | None:
        """The OS user the server runs as; ``None`` for this process's own."""
        return self._run_as

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def sharedir(self) -> Path:
        """The server's share directory (where extension control files go)."""
        return sharedir_of(self.bindir)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for one database of this server."""
        if self.port is None:
            raise PostgresStartError("the local PostgreSQL server has not been started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Create the data folder if needed, install pgmq's extension files, start the server."""
        if self._started:
            return self
        create_folder(self.directory)
        self._hand_over(self.directory)
        existing = (self.data_dir / "PG_VERSION").is_file()
        if not existing:
            self._initdb()
        if not install_extension_files(self.sharedir):
            log.info(
                "cannot write pgmq's extension files into %s; pgmq will be loaded as plain SQL",
                self.sharedir,
            )
        last_error = ""
        for _ in range(5):
            port = self.port or _free_port()
            result = self._pg_ctl_start(port)
            if result.returncode == 0:
                self.port = port
                self._started = True
                return self
            last_error = self._tail_log() or result.stderr
            if self.port is not None or "already in use" not in last_error:
                break
        raise PostgresStartError(
            f"PostgreSQL did not start from {self.data_dir}: {last_error.strip()}",
            # A cluster that existed before may be what fails; a new one cannot be.
            cluster_at_fault=existing and "already in use" not in last_error,
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown); remove the folder if it was a temporary one."""
        if self._started:
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            )
            self._started = False
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------------

    def _hand_over(self, path: Path) -> None:
        if self._run_as is None:
            return
        if not reachable_by_others(path):
            blocked = next(p for p in path.parents if not p.stat().st_mode & 0o001)
            raise PostgresStartError(
                f"the '{self._run_as}' OS user that runs PostgreSQL (it refuses to run as root) "
                f"cannot reach {path}: {blocked} is not searchable by other users; choose a "
                "folder outside it"
            )
        shutil.chown(path, user=self._run_as, group=None)
        path.chmod(0o755)
        # A cluster made by another account (the 'postgres' user was created since) changes
        # hands with its folder: PostgreSQL insists on owning its data, and appends to its log.
        uid = path.stat().st_uid
        made = [p for p in (self.data_dir, self.log_file) if p.exists()]
        if any(p.stat().st_uid != uid for p in made):
            import pwd

            gid = pwd.getpwnam(self._run_as).pw_gid
            for folder, dirs, files in os.walk(path):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(folder, name), uid, gid)

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if self._run_as is not None:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    def _initdb(self) -> None:
        result = self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ]
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed for {self.data_dir}: {(result.stderr or result.stdout).strip()}"
            )

    def _pg_ctl_start(self, port: int) -> subprocess.CompletedProcess[str]:
        options = [f"-p {port}", f"-k {self.directory}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        started = time.monotonic()
        result = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join(options),
                "start",
            ]
        )
        log.debug("pg_ctl start took %.2fs (rc=%s)", time.monotonic() - started, result.returncode)
        return result

    def _tail_log(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])
