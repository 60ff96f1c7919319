"""Preparing databases for pgflow: a local server, pgmq, the realtime stand-in, migrations."""

from .cluster import (
    FAST_SETTINGS,
    LocalPostgres,
    bindir_for_pgmq_extension,
    choose_bindir,
    find_bindir,
    pgmq_extension_possible,
    sharedir_of,
)
from .embedded import EmbeddedPostgres, pgserver_bindir
from .migrate import MigrationReport, migrate
from .pgmq import ensure_pgmq, install_extension_files, pgmq_sql_path, pgmq_version
from .sqlfiles import Migration, list_migrations, realtime_compat_sql, sql_root

__all__ = [
    "FAST_SETTINGS",
    "EmbeddedPostgres",
    "LocalPostgres",
    "Migration",
    "MigrationReport",
    "bindir_for_pgmq_extension",
    "choose_bindir",
    "ensure_pgmq",
    "find_bindir",
    "install_extension_files",
    "list_migrations",
    "migrate",
    "pgmq_extension_possible",
    "pgmq_sql_path",
    "pgmq_version",
    "pgserver_bindir",
    "realtime_compat_sql",
    "sharedir_of",
    "sql_root",
]
