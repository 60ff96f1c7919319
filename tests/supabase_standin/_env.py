"""Which Supabase the tests talk to, and which database goes with it.

By default the tests talk to the stand-in, over a fresh local database per test. With
``PGFLOW_TEST_SUPABASE_URL`` set they talk to a real Supabase stack instead; that needs the
stack's API key (``PGFLOW_TEST_SUPABASE_KEY``) and its database
(``PGFLOW_TEST_SUPABASE_DB_URL``), because a test that starts runs through the stack's API
must define its flows and run its workers in the database behind that API, not in a local
clone the stack never sees.

Only the tests that reach Supabase through the ``supabase_env`` / ``supabase_target``
fixtures (or carry the ``supabase_stack`` marker) move to the real stack. Every other test,
including those driving the stand-in's fault controls (dropped sockets, refused joins,
withheld broadcasts), keeps its local database: those faults cannot be caused on a real stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

URL_VARIABLE = "PGFLOW_TEST_SUPABASE_URL"
KEY_VARIABLE = "PGFLOW_TEST_SUPABASE_KEY"
DB_URL_VARIABLE = "PGFLOW_TEST_SUPABASE_DB_URL"

#: Fixtures that reach Supabase; a test needing any of them (directly or not) uses its stack.
SUPABASE_FIXTURES = frozenset({"supabase_target", "supabase_env"})
#: The marker for tests that reach Supabase without requesting those fixtures statically.
SUPABASE_MARKER = "supabase_stack"


@dataclass(frozen=True)
class RealStack:
    """A real Supabase stack: its project URL, an API key, and its database."""

    url: str
    key: str
    db_url: str


@dataclass(frozen=True)
class Misconfigured:
    """The variables are set inconsistently; tests that need Supabase skip with ``reason``."""

    reason: str


def stack_from_env(environ: Mapping[str, str]) -> RealStack | Misconfigured | None:
    """The real stack the variables describe, None for the stand-in, or why they are wrong.

    Messages never repeat the key or the database URL (which may hold a password).
    """
    url = environ.get(URL_VARIABLE, "").strip()
    key = environ.get(KEY_VARIABLE, "").strip()
    db_url = environ.get(DB_URL_VARIABLE, "").strip()
    if not url:
        stray = [name for name, value in ((KEY_VARIABLE, key), (DB_URL_VARIABLE, db_url)) if value]
        if stray:
            return Misconfigured(
                f"{' and '.join(stray)} set without {URL_VARIABLE}: set all three to test "
                "against a real Supabase stack, or none to use the stand-in"
            )
        return None
    if not url.startswith(("http://", "https://")):
        return Misconfigured(f"{URL_VARIABLE} must be the project's http(s) URL, got {url!r}")
    if not key:
        return Misconfigured(f"{URL_VARIABLE} is set but {KEY_VARIABLE} (an API key) is not")
    if not db_url:
        return Misconfigured(
            f"{URL_VARIABLE} is set but {DB_URL_VARIABLE} is not: tests that talk to a real "
            "Supabase stack define flows and run workers in the database behind it"
        )
    try:
        conninfo_to_dict(db_url)
    except psycopg.ProgrammingError:
        return Misconfigured(f"{DB_URL_VARIABLE} is not a PostgreSQL connection string")
    return RealStack(url=url.rstrip("/"), key=key, db_url=db_url)


def talks_to_supabase(fixturenames: Iterable[str], markers: Iterable[str]) -> bool:
    """Whether a test reaches Supabase, from the fixtures it needs and its markers."""
    return bool(SUPABASE_FIXTURES.intersection(fixturenames)) or SUPABASE_MARKER in markers


def database_for(
    env: RealStack | Misconfigured | None, *, talks_to_supabase: bool
) -> str | Misconfigured | None:
    """The database of a test: the real stack's URL, None for a fresh local clone, or
    :class:`Misconfigured` when the test needs Supabase and the variables are wrong."""
    if not talks_to_supabase or env is None:
        return None
    if isinstance(env, Misconfigured):
        return env
    return env.db_url


#: The roles of a Supabase project that call pgflow's two client functions over its API.
API_ROLES = ("anon", "authenticated", "service_role")


def prepare_real_database(db_url: str, roles: Sequence[str] = API_ROLES) -> None:
    """Migrate the real stack's database with pgflow-py's SQL (a no-op once done) and grant
    the API ``roles`` that exist what ``docs/supabase.md`` grants them, so PostgREST may call
    the functions (the three that operate runs included: the tests call them with the same
    key).
    The schema must also be exposed over the API, which only the stack's settings can do."""
    from pgflow_worker._database import migrate

    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        present = [
            row[0]
            for row in conn.execute(
                "select rolname from pg_roles where rolname = any(%s)", (list(roles),)
            )
        ]
        for role in present:
            ident = sql.Identifier(role)
            conn.execute(sql.SQL("grant usage on schema pgflow to {}").format(ident))
            for function in (
                "pgflow.start_flow_with_states(text, jsonb, uuid)",
                "pgflow.start_flow_with_states_traced(text, jsonb, uuid, text, text)",
                "pgflow.get_run_with_states(uuid)",
                "pgflow.list_runs(text, text, timestamptz, integer, uuid)",
                "pgflow.cancel_run(uuid, text)",
                "pgflow.retry_run(uuid, uuid)",
            ):
                conn.execute(
                    sql.SQL("grant execute on function {} to {}").format(sql.SQL(function), ident)
                )


def reset_real_database(db_url: str) -> None:
    """Empty what earlier tests left in the real stack's database: every flow's queue, and
    every pgflow table but the migration record. Realtime's own messages are left alone."""
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        queues = [
            row[0]
            for row in conn.execute(
                "select queue_name from pgmq.list_queues()"
                " where queue_name in (select flow_slug from pgflow.flows)"
            )
        ]
        for queue in queues:
            conn.execute("select pgmq.drop_queue(%s)", (queue,))
        tables = [
            row[0]
            for row in conn.execute(
                "select tablename from pg_tables"
                " where schemaname = 'pgflow' and tablename <> 'migrations'"
            )
        ]
        if tables:
            conn.execute(
                sql.SQL("truncate {} cascade").format(
                    sql.SQL(", ").join(sql.Identifier("pgflow", table) for table in tables)
                )
            )
