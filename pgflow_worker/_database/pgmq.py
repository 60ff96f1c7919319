"""Getting pgmq into a database: as a real extension where possible, as plain SQL otherwise.

pgmq is pure SQL. The pinned PyPI ``pgmq`` wheel carries that SQL, so a server we start ourselves
gets it as a real extension (control file + script in the server's share directory) and
``CREATE EXTENSION pgmq`` works exactly as on Supabase.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import psycopg

from ..errors import PgmqUnavailable

__all__ = ["ensure_pgmq", "install_extension_files", "pgmq_sql_path", "pgmq_version"]

log = logging.getLogger("pgflow.database")

_CONTROL = """\
comment = 'A lightweight message queue (SQL build from the PyPI pgmq wheel, installed by pgflow-py)'
default_version = '{version}'
schema = 'pgmq'
relocatable = false
superuser = false
"""


def _pgmq_sql_dir() -> Path:
    spec = importlib.util.find_spec("pgmq")
    if spec is None or not spec.submodule_search_locations:
        raise PgmqUnavailable(
            "the 'pgmq' Python package (which carries pgmq's SQL) is not installed; "
            "install pgflow-py with its dependencies: pip install pgflow-py"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "sql"
    if not (folder / "pgmq.sql").is_file():
        raise PgmqUnavailable(f"pgmq's SQL was not found at {folder / 'pgmq.sql'}")
    return folder


def pgmq_sql_path() -> Path:
    """The ``pgmq.sql`` file inside the installed ``pgmq`` wheel."""
    return _pgmq_sql_dir() / "pgmq.sql"


def pgmq_version() -> str:
    """The pgmq version that SQL file installs (1.13.0 for the pinned wheel)."""
    return (_pgmq_sql_dir() / "VERSION").read_text(encoding="utf-8").strip()


def install_extension_files(sharedir: Path) -> bool:
    """Write ``pgmq.control`` and the install script into a server's share directory.

    Returns False, touching nothing, when the directory is not writable by this process.
    """
    ext_dir = sharedir / "extension"
    version = pgmq_version()
    script = ext_dir / f"pgmq--{version}.sql"
    control = ext_dir / "pgmq.control"
    wanted_script = pgmq_sql_path().read_bytes()
    wanted_control = _CONTROL.format(version=version).encode()
    if (
        script.is_file()
        and control.is_file()
        and script.read_bytes() == wanted_script
        and f"default_version = '{version}'" in control.read_text(encoding="utf-8")
    ):
        return True
    if control.is_file() and "installed by pgflow-py" not in control.read_text(encoding="utf-8"):
        # Somebody else's pgmq build lives here (a distribution package); leave it alone.
        return True
    if not os.access(ext_dir, os.W_OK):
        return False
    script.write_bytes(wanted_script)
    control.write_bytes(wanted_control)
    for written in (script, control):  # the server may run as another OS user
        written.chmod(0o644)
    log.info("installed pgmq %s extension files into %s", version, ext_dir)
    return True


def ensure_pgmq(conn: psycopg.Connection[Any]) -> str:
    """Make pgmq usable in the connected database; return how it is present.

    ``"extension"`` when pgmq is (now) a real extension, ``"schema"`` when its SQL was loaded
    directly because the server offers no pgmq extension and we cannot add one.
    """
    with conn.transaction():
        row = conn.execute("select extversion from pg_extension where extname = 'pgmq'").fetchone()
        if row is not None:
            return "extension"
        loaded = conn.execute("select to_regprocedure('pgmq.send_batch(text,jsonb[],integer)')")
        if (loaded.fetchone() or (None,))[0] is not None:
            return "schema"
        available = conn.execute(
            "select 1 from pg_available_extensions where name = 'pgmq'"
        ).fetchone()
        if available is not None:
            conn.execute("create extension if not exists pgmq")
            return "extension"
        log.warning(
            "the server has no pgmq extension; loading pgmq %s as plain SQL into schema pgmq",
            pgmq_version(),
        )
        conn.execute(pgmq_sql_path().read_bytes())
        return "schema"
