"""The database stack the tests run on: one server per session, one fresh database per test.

The server is ``DATABASE_URL`` when that is set, otherwise a throwaway PostgreSQL started from
the machine's binaries, or from the ``pgserver`` package's (a dev dependency) when pgmq cannot be
installed as an extension of the machine's server (a non-root user, a system extension folder
without pgmq). Two template databases are built once per session: ``ours`` (pgflow-py's
migrations) and, when npm can fetch it, ``official`` (the ``@pgflow/core`` package's migrations).
Each test clones one of them, which takes about a tenth of a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgflow_worker._database import ensure_pgmq, migrate, realtime_compat_sql
from pgflow_worker._tools import (
    LocalPostgres,
    bindir_for_pgmq_extension,
    pgmq_extension_possible,
    sharedir_of,
)
from tests._cache import safe_extract, user_cache

OFFICIAL_VERSION = "0.8.1"


class TemplateUnavailable(Exception):
    """A template database cannot be built here; tests needing it skip with this reason."""


class TemplateBuildFailed(RuntimeError):
    """A template database could not be built for a reason that is a fault, not an absence."""


class Stack:
    """One PostgreSQL server and the template databases built on it."""

    def __init__(self) -> None:
        self._server: LocalPostgres | None = None
        url = os.environ.get("DATABASE_URL")
        if url:
            self.admin_url = url
        else:
            self._server = LocalPostgres(bindir=bindir_for_pgmq_extension()).start()
            self.admin_url = self._server.dsn("postgres")
        self._suffix = uuid.uuid4().hex[:8]
        self._templates: dict[str, str] = {}
        self._failures: dict[str, BaseException] = {}
        self._lock = threading.Lock()
        self._created: list[str] = []

    # -- what the server offers ----------------------------------------------------------------

    def pgmq_extension_missing(self) -> str | None:
        """Why pgmq cannot be a real extension on this server, or None when it can."""
        if self._server is not None:
            if pgmq_extension_possible(self._server.bindir):
                return None
            return (
                f"the server's extension folder ({sharedir_of(self._server.bindir)}/extension) "
                "has no pgmq and is not writable here, and no pgserver binaries whose folder "
                "is were found"
            )
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("select 1 from pg_available_extensions where name = 'pgmq'")
            if row.fetchone() is not None:
                return None
        return "the DATABASE_URL server offers no pgmq extension"

    # -- urls ---------------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        params = conninfo_to_dict(self.admin_url)
        params["dbname"] = dbname
        return make_conninfo("", **params)

    def _admin(self, sql: bytes, params: tuple[Any, ...] = ()) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql, params)

    # -- templates ----------------------------------------------------------------------------

    def template(self, kind: str) -> str:
        """The name of a built template database; raises TemplateUnavailable with the reason."""
        with self._lock:
            if kind in self._templates:
                return self._templates[kind]
            if (failure := self._failures.get(kind)) is not None:
                if isinstance(failure, TemplateUnavailable):
                    raise TemplateUnavailable(str(failure))
                raise TemplateBuildFailed(
                    f"building the {kind!r} template failed earlier: {failure!r}"
                ) from failure
            name = f"pgflow_tpl_{kind}_{self._suffix}"
            self._admin(f'create database "{name}"'.encode())
            try:
                if kind == "ours":
                    migrate(self.url(name))
                elif kind == "official":
                    _install_official(self.url(name))
                else:
                    raise ValueError(kind)
            except BaseException as exc:
                # Leave nothing behind, and answer every later test with the same cause rather
                # than a retry that trips over the half-built database.
                with contextlib.suppress(psycopg.Error):
                    self.drop(name)
                self._failures[kind] = exc
                raise
            self._created.append(name)
            self._templates[kind] = name
            return name

    def clone(self, kind: str = "ours") -> str:
        """A fresh database copied from a template; returns its name."""
        template = self.template(kind)
        name = f"pgflow_test_{uuid.uuid4().hex[:12]}"
        self._admin(f'create database "{name}" template "{template}"'.encode())
        return name

    def empty(self, prefix: str = "pgflow_empty") -> str:
        """A new database with nothing in it (no pgmq, no realtime, no pgflow); its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'create database "{name}"'.encode())
        return name

    def drop(self, name: str) -> None:
        self._admin(f'drop database if exists "{name}" with (force)'.encode())

    def close(self) -> None:
        for name in self._created:
            with contextlib.suppress(psycopg.Error):
                self.drop(name)
        if self._server is not None:
            self._server.stop()


def _npm_package(name: str, version: str) -> Path:
    """Unpack an npm package into a scratch cache folder (never into the repository)."""
    cache = user_cache("npm-cache")
    target = cache / f"{name.replace('/', '__').lstrip('@')}-{version}"
    if (target / "package" / "package.json").is_file():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        raise TemplateUnavailable(f"npm is not installed, so {name}@{version} cannot be fetched")
    work = Path(tempfile.mkdtemp(dir=cache))
    result = subprocess.run(
        [npm, "pack", f"{name}@{version}", "--silent"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    tarballs = list(work.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        raise TemplateUnavailable(
            f"npm pack {name}@{version} failed: {(result.stderr or result.stdout).strip()[-300:]}"
        )
    safe_extract(tarballs[0], work)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    (work / "package").rename(target / "package")
    shutil.rmtree(work, ignore_errors=True)
    return target / "package"


def official_migrations() -> list[Path]:
    package = _npm_package("@pgflow/core", OFFICIAL_VERSION)
    files = sorted((package / "dist" / "supabase" / "migrations").glob("*.sql"))
    if not files:
        raise TemplateUnavailable(f"@pgflow/core@{OFFICIAL_VERSION} holds no migrations")
    return files


def _install_official(url: str) -> None:
    files = official_migrations()
    with psycopg.connect(url, autocommit=True) as conn:
        if ensure_pgmq(conn) != "extension":
            raise TemplateUnavailable(
                "the official pgflow SQL needs pgmq as a real extension, and this server has "
                "none (run the tests as root, with the dev dependencies installed by this user "
                "(pgserver), or against a server with pgmq installed)"
            )
        conn.execute(realtime_compat_sql().encode())
        for path in files:
            with conn.transaction():
                conn.execute(path.read_bytes())
