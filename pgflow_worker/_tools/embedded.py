"""A PostgreSQL server kept in a per-user cache folder: started on demand, reused, always stopped.

``pgflow demo`` runs on it when no database is configured. It runs the machine's PostgreSQL
binaries through :class:`LocalPostgres`, or, when the machine has none, the binaries bundled in
the PyPI ``pgserver`` package (``pip install 'pgflow-py[embedded]'``). One process at a time
owns a folder, through an advisory lock that dies with its process: a server found running
there at start is therefore the leftover of a killed process, and is stopped before ours starts.
Each PostgreSQL major version gets its own default folder, and a second demo while one runs
gets the next free one, so neither ever meets a cluster it cannot use.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from ..errors import PostgresStartError, ServerFolderInUse
from .cluster import FAST_SETTINGS, LocalPostgres, find_bindir
from .folders import SERVER_USERS, cache_home, create_folder, make_own_folder

__all__ = [
    "EmbeddedPostgres",
    "ServerSource",
    "default_directory",
    "pgserver_bindir",
    "server_processes",
]

log = logging.getLogger("pgflow.database")

ServerSource = Literal["system", "pgserver"]
"""Where a server's binaries come from: the machine's PostgreSQL, or the ``pgserver`` wheel."""

_TOOLS = ("initdb", "pg_ctl", "postgres")
_HAVE_PROC = Path("/proc/self").is_dir()
_LOCK_NAME = "owner.lock"
_OWN_NAMES = frozenset({"data", "server.log", _LOCK_NAME})
#: The file that marks a folder as the persistent server of ``pgflow db``.
DB_STATE_NAME = "pgflow-db.json"
_SLOTS = 5  # default folders a demo tries before saying they are all in use
_LEFTOVER_GRACE = 5.0  # seconds a leftover server gets to exit before it is killed
_START_ATTEMPTS_SECONDS = 10.0  # how long start() retries while a killed server's children exit


def pgserver_bindir() -> Path | None:
    """The binaries bundled in the ``pgserver`` package, or ``None`` when it is not installed.

    The package is located without being imported: importing it has side effects (it prepares
    runtime folders) and only its binaries are needed.
    """
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if all((bindir / tool).is_file() for tool in _TOOLS):
            return bindir
    return None


def default_directory(major: int | None = None) -> Path:
    """Where the demo server lives unless ``PGFLOW_DEMO_DIR`` says otherwise.

    ``<cache_home()>/demo-pg<major>``: ``~/.cache/pgflow-py/demo-pg16``, say, or
    ``/var/lib/pgflow-py/demo-pg16`` for root when its home is private (the server then runs
    as another OS user, which must reach the folder). One folder per major version, so new
    binaries never meet a cluster they cannot read.
    """
    if explicit := os.environ.get("PGFLOW_DEMO_DIR"):
        return Path(explicit).expanduser().absolute()
    return cache_home() / (f"demo-pg{major}" if major is not None else "demo-pg")


def server_processes(data_dir: Path) -> list[int]:
    """Ids of the running processes of the server whose data folder is ``data_dir``.

    PostgreSQL's processes all work inside their data folder, so they are found by their
    current directory. Linux only (it reads ``/proc``); elsewhere the list is empty.
    """
    target = str(data_dir.resolve())
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") != target:
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _major_version(text: str) -> int | None:
    match = re.search(r"(\d+)(?:\.\d+)?", text)
    return int(match.group(1)) if match else None


def binaries_version(bindir: Path) -> str:
    """The version of the PostgreSQL in ``bindir``, e.g. ``15.18``."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"\d+(?:\.\d+)?", out.stdout)
    return match.group(0) if match else out.stdout.strip()


class _OwnerLock:
    """An exclusive ``flock`` on a file in the server's folder, held while a process uses it.

    The kernel drops the lock when its process dies, however it dies, so a killed process
    never blocks the next one. The file is removed on release.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl  # POSIX only; imported here so the package still imports elsewhere

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise ServerFolderInUse(
                    f"another process (pid {holder or 'unknown'}) is using the server in "
                    f"{self.path.parent}; wait for it to finish, or use another folder",
                    holder=int(holder) if holder.isdigit() else None,
                ) from None
            # The previous owner may have removed the file between our open and our lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class _CachedServer(LocalPostgres):
    """A :class:`LocalPostgres` that also stops servers it did not start in its folder."""

    def postmaster_pid(self) -> int | None:
        """The id of a live postmaster serving the data folder, or ``None``.

        ``postmaster.pid`` may outlive its process (kill -9), and a killed postmaster may stay
        a zombie for a while; neither counts as live.
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if _HAVE_PROC:
            return pid if pid in server_processes(self.data_dir) else None
        status = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        return pid if self._run(status).returncode == 0 else None

    def shut_down(self) -> None:
        """Stop whatever server runs in the data folder: fast shutdown, then immediate."""
        pg_ctl = str(self.bindir / "pg_ctl")
        for mode in ("fast", "immediate"):
            if self.postmaster_pid() is None:
                break
            self._run([pg_ctl, "-D", str(self.data_dir), "-m", mode, "-w", "-t", "20", "stop"])
        self._started = False

    def stop(self) -> None:
        # The base class stops only a server it saw start; a start interrupted half-way can
        # leave one running all the same.
        self.shut_down()


class EmbeddedPostgres:
    """A PostgreSQL server in ``directory``, reused from one start to the next.

    ``start()`` takes the folder's owner lock, clears what a killed earlier owner left (a
    running server, orphaned server processes, a stale ``postmaster.pid`` or socket lock),
    creates the cluster on first use and starts it on a free loopback port. ``stop()`` stops
    the server and releases the lock. ``reset=True`` wipes the cluster first.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        bindir: Path | None = None,
        settings: Mapping[str, str] = FAST_SETTINGS,
    ) -> None:
        self.bindir = bindir or find_bindir()
        self.version = binaries_version(self.bindir)
        """The server binaries' version, e.g. ``15.18``."""
        self._chosen = directory is not None or bool(os.environ.get("PGFLOW_DEMO_DIR"))
        self.directory = (
            Path(directory).absolute()
            if directory
            else default_directory(_major_version(self.version))
        )
        bundled = pgserver_bindir()
        self.source: ServerSource = (
            "pgserver"
            if bundled is not None and bundled.resolve() == self.bindir.resolve()
            else "system"
        )
        self._settings = dict(settings)
        self._server: _CachedServer | None = None
        self._lock = _OwnerLock(self.directory / _LOCK_NAME)
        self.reused = False
        """Whether ``start()`` found an existing cluster (and so skipped ``initdb``)."""

    # -- information --------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        if self._server is None:
            raise PostgresStartError(f"the server in {self.directory} has not been started")
        return self._server.dsn(dbname)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, *, reset: bool = False) -> Self:
        """Own the folder, clear leftovers, (re)create the cluster if asked or new, start it."""
        if self._server is not None:
            return self
        self._own_a_folder()
        try:
            server = _CachedServer(self.directory, bindir=self.bindir, settings=self._settings)
            self._server = server
            self._clear_leftovers(server)
            if reset or not (self.data_dir / "PG_VERSION").is_file():
                # Asked to, or the remains of an initdb that was interrupted.
                self._wipe()
            self._check_version()
            self.reused = (self.data_dir / "PG_VERSION").is_file()
            self._start_with_retries(server)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (if this object owns the folder) and release the folder."""
        try:
            if self._server is not None:
                self._clear_leftovers(self._server, quiet=True)
        finally:
            self._server = None
            self._lock.release()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- steps of start() ---------------------------------------------------------------------

    def _own_a_folder(self) -> None:
        """Take the folder's owner lock; when it is in use and was not chosen by the user,
        the next free default folder's (``demo-pg16-2``, ...)."""
        first = self.directory
        slots = (
            [first]
            if self._chosen
            else [first, *(Path(f"{first}-{n}") for n in range(2, _SLOTS + 1))]
        )
        if not self._chosen:
            make_own_folder(first.parent)
        for slot in slots:
            self.directory = slot
            self._lock = _OwnerLock(slot / _LOCK_NAME)
            self._prepare_directory()
            try:
                self._lock.acquire()
            except ServerFolderInUse as exc:
                if slot == slots[-1]:
                    if len(slots) > 1:
                        raise ServerFolderInUse(
                            f"the demo's {len(slots)} folders ({first}, {first}-2, ...) are all "
                            "in use by other processes; wait for one to finish, or set "
                            "PGFLOW_DEMO_DIR to another folder",
                            holder=exc.holder,
                        ) from None
                    raise
                log.info("%s; using the next folder", exc)
                continue
            return

    def _prepare_directory(self, extra_names: frozenset[str] = frozenset()) -> None:
        if self.directory.is_symlink():
            raise PostgresStartError(
                f"{self.directory} is a symbolic link; name the real folder instead"
            )
        if self.directory.exists():
            owner = self.directory.stat().st_uid
            # As root, the folder belongs to whichever OS user ran its server last.
            server_uids = [_uid_of(name) for name in SERVER_USERS] if os.geteuid() == 0 else []
            if owner not in (os.geteuid(), *server_uids):
                raise PostgresStartError(
                    f"{self.directory} belongs to another user (uid {owner}); "
                    "set PGFLOW_DEMO_DIR to a folder of your own"
                )
            # The folder is handed to the server (and wiped on reset): never someone's files.
            names = _OWN_NAMES | extra_names
            if DB_STATE_NAME not in names and (self.directory / DB_STATE_NAME).exists():
                raise PostgresStartError(
                    f"{self.directory} holds the server of 'pgflow db'; the demo needs a "
                    "folder of its own: unset PGFLOW_DEMO_DIR or point it elsewhere"
                )
            foreign = sorted(
                child.name
                for child in self.directory.iterdir()
                if child.name not in names and not child.name.startswith(".s.PGSQL.")
            )
            if foreign:
                listing = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
                raise PostgresStartError(
                    f"{self.directory} holds files that are not a server's ({listing}); "
                    "PGFLOW_DEMO_DIR must name a folder of its own, empty or made by pgflow demo"
                )
        create_folder(self.directory)

    def _clear_leftovers(self, server: _CachedServer, *, quiet: bool = False) -> None:
        """Stop a server left running, let orphans of a killed one exit, drop stale files."""
        if not self.data_dir.is_dir():
            return
        if server.postmaster_pid() is not None:
            if not quiet:
                log.warning("stopping a server left running in %s", self.data_dir)
            server.shut_down()
        deadline = time.monotonic() + _LEFTOVER_GRACE
        while (pids := server_processes(self.data_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            log.warning("killing leftover server process %s of %s", pid, self.data_dir)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if _HAVE_PROC and not server_processes(self.data_dir):
            # Nothing works in the folder any more: what PostgreSQL left behind is stale.
            # (Without /proc this cannot be known, and PostgreSQL's own checks take over.)
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            for leftover in self.directory.glob(".s.PGSQL.*"):
                leftover.unlink(missing_ok=True)

    def _wipe(self) -> None:
        if self.data_dir.exists():
            log.info("removing the cluster in %s", self.data_dir)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        (self.directory / "server.log").unlink(missing_ok=True)

    def _check_version(self) -> None:
        marker = self.data_dir / "PG_VERSION"
        if not marker.is_file():
            return
        cluster = _major_version(marker.read_text())
        binaries = _major_version(self.version)
        if cluster is not None and binaries is not None and cluster != binaries:
            raise PostgresStartError(
                f"the server in {self.directory} was created by PostgreSQL {cluster}, but the "
                f"binaries found are PostgreSQL {binaries} ({self.bindir})",
                cluster_at_fault=True,
            )

    def _start_with_retries(self, server: _CachedServer) -> None:
        # Children of a killed server may hold its shared memory for a moment after the
        # postmaster is gone; PostgreSQL refuses to start until they have exited.
        deadline = time.monotonic() + _START_ATTEMPTS_SECONDS
        while True:
            try:
                server.start()
                return
            except PostgresStartError as exc:
                transient = "shared memory block" in str(exc) or "lock file" in str(exc)
                if not transient or time.monotonic() > deadline:
                    raise
                log.info("waiting for a previous server's processes to exit: %s", exc)
                time.sleep(0.2)


def _uid_of(user: str) -> int | None:
    try:
        import pwd

        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None
