"""Applying pgflow-py's SQL to a database: pgmq, the realtime stand-in, then the migrations.

Each migration runs in its own transaction and is recorded in ``pgflow.migrations`` with a
checksum, so running :func:`migrate` again does nothing. Every transaction :func:`migrate` runs
first takes one transaction-scoped advisory lock, then looks at what is already installed: two
concurrent ``pgflow migrate`` calls never interleave, and the lock also holds through a
transaction-mode pooler (a session lock would be taken on one server connection and released,
or not, on another).

The first migration is the baseline derived from ``sql/schema``. It replaced three earlier,
never released migrations; a database that applied all three holds exactly the baseline's
schema and is recorded as holding the baseline, while one that applied only some of them is
refused with what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import MigrationError
from .pgmq import ensure_pgmq
from .sqlfiles import Migration, list_migrations, realtime_compat_sql

__all__ = ["MigrationReport", "migrate"]

log = logging.getLogger("pgflow.database")

_LOCK_KEY = 7_151_987_313  # an arbitrary constant shared by every pgflow-py migrate call
_COMPAT_MARKER = "pgflow-py realtime stand-in"


#: The migrations the baseline replaced, by version: file name and checksum. All three applied
#: build the very schema the baseline builds (tests/sql/test_upgrade.py compares the catalogs).
_PRE_BASELINE: dict[str, tuple[str, str]] = {
    "0001": (
        "0001_pgflow_core.sql",
        "98d8546108053d77dd8b31c7cb0478111f5c76fd4519c19bd940cd68b0323918",
    ),
    "0002": (
        "0002_conditions.sql",
        "1a67ba838f032d5d5b4d815e4dc373a577dbb097debb4d3bf05e6ace95d68173",
    ),
    "0003": (
        "0003_lock_order.sql",
        "560921c2c05f0f0afa714c7a919cb027852a971ea02b6d31db0d37312eeca9d6",
    ),
}


@dataclass(slots=True)
class MigrationReport:
    """What :func:`migrate` found and did."""

    pgmq: str = ""
    realtime: str = ""
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)


def _scalar(conn: psycopg.Connection[Any], query: bytes, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


@contextmanager
def _locked(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction holding the migration lock until it ends."""
    with conn.transaction():
        conn.execute(b"select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        yield


def _ensure_realtime(conn: psycopg.Connection[Any]) -> str:
    """Install the realtime stand-in unless a real (Supabase) ``realtime.send`` exists."""
    with _locked(conn):
        existing = _scalar(
            conn,
            b"select obj_description(to_regprocedure('realtime.send(jsonb,text,text,boolean)'),"
            b" 'pg_proc')",
        )
        exists = _scalar(
            conn, b"select to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null"
        )
        if exists and _COMPAT_MARKER not in (existing or ""):
            return "supabase"
        conn.execute(realtime_compat_sql().encode())
    return "stand-in"


def ensure_tracking_table(conn: psycopg.Connection[Any]) -> None:
    """Create ``pgflow.migrations`` unless it exists; refuse a pgflow schema installed otherwise."""
    with _locked(conn):
        has_flows = _scalar(conn, b"select to_regclass('pgflow.flows') is not null")
        has_tracking = _scalar(conn, b"select to_regclass('pgflow.migrations') is not null")
        if has_flows and not has_tracking:
            raise MigrationError(
                "this database already has a pgflow schema that pgflow-py did not install "
                "(probably the official @pgflow/core migrations); pgflow-py's worker and "
                "client work with it as it is, so there is nothing to migrate"
            )
        conn.execute(
            b"create schema if not exists pgflow;"
            b"create table if not exists pgflow.migrations ("
            b"  version text primary key,"
            b"  name text not null,"
            b"  checksum text not null,"
            b"  applied_at timestamptz not null default now())"
        )


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> bool:
    """Apply one migration unless a concurrent call has meanwhile; True when this one did."""
    try:
        with _locked(conn):
            if _scalar(
                conn, b"select 1 from pgflow.migrations where version = %s", (migration.version,)
            ):
                return False
            conn.execute(migration.sql.encode())
            conn.execute(
                b"insert into pgflow.migrations (version, name, checksum) values (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        said = [str(exc).strip()]
        said += [f"{label}: {text}" for label, text in _diagnostics(exc) if text not in said[0]]
        raise MigrationError(
            f"migration {migration.path.name} failed and was rolled back: " + "\n".join(said)
        ) from exc
    return True


def _diagnostics(exc: psycopg.Error) -> list[tuple[str, str]]:
    """The DETAIL and HINT of a database error (a migration refusing to run explains itself
    there)."""
    diag = exc.diag
    return [
        (label, text)
        for label, text in (("DETAIL", diag.message_detail), ("HINT", diag.message_hint))
        if text
    ]


def _applied(conn: psycopg.Connection[Any], baseline: Migration) -> dict[str, str]:
    """The applied versions and their checksums, after adopting a pre-baseline database.

    A database built by the three pre-baseline migrations is recorded as holding the baseline.
    Only the complete set is adopted: a database that stopped part way holds a schema no
    migration shipped now starts from.
    """
    with _locked(conn):
        done: dict[str, str] = {
            row[0]: row[1]
            for row in conn.execute(b"select version, checksum from pgflow.migrations")
        }
        found = [v for v, (_, checksum) in _PRE_BASELINE.items() if done.get(v) == checksum]
        if not found:
            return done
        if set(done) != set(_PRE_BASELINE) or len(found) != len(_PRE_BASELINE):
            applied = ", ".join(_PRE_BASELINE[v][0] for v in found)
            every = ", ".join(name for name, _ in _PRE_BASELINE.values())
            raise MigrationError(
                f"this database applied pre-release migrations ({applied}; versions recorded: "
                f"{', '.join(sorted(done))}), but not exactly the set {every} that "
                f"{baseline.path.name} replaces, so no migration shipped now starts from its "
                "schema. Finish them with the pgflow-py build that applied them (its "
                "'pgflow migrate'), then run 'pgflow migrate' again; or, if the flows and runs in "
                "it can go, 'drop schema pgflow cascade' and migrate afresh"
            )
        conn.execute(b"delete from pgflow.migrations where version <> %s", (baseline.version,))
        conn.execute(
            b"update pgflow.migrations set name = %s, checksum = %s where version = %s",
            (baseline.name, baseline.checksum, baseline.version),
        )
        log.info(
            "this database applied the pre-release migrations %s, which build the same schema as "
            "%s; it is now recorded as holding %s",
            ", ".join(name for name, _ in _PRE_BASELINE.values()),
            baseline.path.name,
            baseline.path.name,
        )
        return {baseline.version: baseline.checksum}


def migrate(
    conninfo: str | psycopg.Connection[Any], *, target: str | None = None
) -> MigrationReport:
    """Bring a database up to date with pgflow-py's SQL; safe to run any number of times.

    ``target`` (a version such as ``"0001"``) stops after that migration instead of the last.
    """
    report = MigrationReport()
    migrations = list_migrations()
    baseline = migrations[0]
    if target is not None:
        versions = [m.version for m in migrations]
        if target not in versions:
            raise MigrationError(
                f"there is no migration {target!r} to stop at (known: {', '.join(versions)})"
            )
        migrations = migrations[: versions.index(target) + 1]
    conn = (
        # Never prepared: through a transaction-mode pooler the next statement may run in
        # another server session, which does not have it.
        psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        if isinstance(conninfo, str)
        else conninfo
    )
    if not conn.autocommit:
        raise MigrationError("migrate() needs a connection in autocommit mode")
    try:
        with _locked(conn):
            report.pgmq = ensure_pgmq(conn)
        report.realtime = _ensure_realtime(conn)
        ensure_tracking_table(conn)
        done = _applied(conn, baseline)
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning(
                        "migration %s was applied from a different file than the one "
                        "shipped now (checksum differs); it is not applied again",
                        migration.path.name,
                    )
                report.already_applied.append(migration.path.name)
            elif _apply(conn, migration):
                log.info("applied migration %s", migration.path.name)
                report.applied.append(migration.path.name)
            else:
                report.already_applied.append(migration.path.name)
    finally:
        if isinstance(conninfo, str):
            conn.close()
    return report
