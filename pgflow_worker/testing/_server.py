"""The PostgreSQL server a test session runs flows on, and a fresh database per test.

``DATABASE_URL``'s server when it is set, else a throwaway local server started once per
session. A migrated template database is built once; each test gets a copy of it, which is
far quicker than migrating a database per test and keeps every test's runs apart.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._database import migrate
from .._tools import LocalPostgres, bindir_for_pgmq_extension

__all__ = ["PgflowTestServer"]


class PgflowTestServer:
    """A server holding a migrated template database, handing out fresh copies of it.

    ``dsn`` is the server's admin connection string (a database the role may create
    databases from); ``None`` means ``DATABASE_URL``, and without it a local server started
    here (and stopped by :meth:`close`).
    """

    def __init__(self, dsn: str | None = None) -> None:
        self._local: LocalPostgres | None = None
        self._dsn = dsn if dsn is not None else os.environ.get("DATABASE_URL") or None
        self._suffix = uuid.uuid4().hex[:8]
        self._template: str | None = None
        self._databases: list[str] = []
        self._lock = threading.RLock()

    @property
    def admin_dsn(self) -> str:
        """The server's admin connection string, starting a local server on first use."""
        with self._lock:
            if self._dsn is None:
                self._local = LocalPostgres(bindir=bindir_for_pgmq_extension()).start()
                self._dsn = self._local.dsn("postgres")
            return self._dsn

    @property
    def started_locally(self) -> bool:
        """Whether this object started the server it uses (no ``DATABASE_URL`` was given)."""
        return self._local is not None

    def url(self, dbname: str) -> str:
        """The connection string of one database of the server."""
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        return make_conninfo("", **params)

    def create_database(self) -> str:
        """A new database copied from the migrated template; its connection string."""
        template = self._ensure_template()
        name = f"pgflow_test_{uuid.uuid4().hex[:12]}"
        self._admin(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        with self._lock:
            self._databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing its connections."""
        name = conninfo_to_dict(url).get("dbname")
        if not isinstance(name, str):
            return
        self._admin(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        with self._lock, contextlib.suppress(ValueError):
            self._databases.remove(name)

    def close(self) -> None:
        """Drop every database made here, the template last; stop a server started here."""
        try:
            if self._dsn is not None:
                names = [*self._databases, *([self._template] if self._template else [])]
                for name in names:
                    with contextlib.suppress(psycopg.Error):
                        self._admin(
                            sql.SQL("drop database if exists {} with (force)").format(
                                sql.Identifier(name)
                            )
                        )
                self._databases.clear()
                self._template = None
        finally:
            if self._local is not None:
                self._local.stop()
                self._local = None
                self._dsn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_template(self) -> str:
        admin = self.admin_dsn
        with self._lock:
            if self._template is not None:
                return self._template
            name = f"pgflow_template_{self._suffix}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            try:
                migrate(self.url(name))
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    self._admin(
                        sql.SQL("drop database if exists {} with (force)").format(
                            sql.Identifier(name)
                        )
                    )
                raise
            self._template = name
            return name

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(statement)
